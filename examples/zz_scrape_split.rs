use executor_exporter::{Executor, ExecutorExporter, InstrumentedExecutorProxy, Rejected, Task};
use prometheus::{Encoder, Registry, TextEncoder};
use std::time::Instant;
struct Inline;
impl Executor for Inline {
    fn execute(&self, t: Task) -> Result<(), Rejected> {
        t.run();
        Ok(())
    }
}
fn main() {
    let registry = Registry::new();
    let mut keep = vec![];
    for i in 0..100 {
        let exporter = ExecutorExporter::builder()
            .exporter_id(format!("pool-{i}"))
            .registry(registry.clone())
            .build()
            .unwrap();
        let proxy = InstrumentedExecutorProxy::new(Inline, exporter, Some(4));
        for k in 0..10u32 {
            proxy.submit(move || k).unwrap().join().unwrap();
        }
        keep.push(proxy);
    }
    let mut buf = Vec::new();
    for _ in 0..3 {
        let n = 200;
        let t = Instant::now();
        let mut fams = vec![];
        for _ in 0..n {
            fams = registry.gather();
        }
        let g = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            buf.clear();
            TextEncoder::new().encode(&fams, &mut buf).unwrap();
        }
        let e = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            drop(registry.gather());
        }
        let gd = t.elapsed() / n;
        let mut s = String::new();
        let t = Instant::now();
        for _ in 0..n {
            s.clear();
            TextEncoder::new().encode_utf8(&fams, &mut s).unwrap();
        }
        let e8 = t.elapsed() / n;
        println!(
            "gather(+drop prev) {g:?} gather+drop {gd:?} encode {e:?} encode_utf8 {e8:?} bytes {}",
            buf.len()
        );
    }
}
