//! Step timing inside tasks: `ExecutorExporter::step` records into
//! `<namespace>_step_duration_seconds{executor, executor_type, step}`, read
//! back here from the text exposition.

mod common;

use std::time::Duration;

use common::scrape;
use executor_exporter::prometheus::Registry;
use executor_exporter::{ExecutorExporter, ThreadPoolExecutor};

const STEP: &str = "executor_step_duration_seconds";

fn pool(registry: &Registry, id: &str) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id(id)
        .registry(registry.clone())
        .duration_buckets(vec![0.001, 0.01, 0.1, 1.0, 10.0])
        .build()
        .unwrap()
}

#[test]
fn smoke_steps_inside_tasks_are_read_back() {
    let registry = Registry::new();
    let pool = pool(&registry, "ingest");
    let exp = scrape(&registry);
    assert!(
        !exp.types.contains_key(STEP),
        "no step yet, so no family:\n{}",
        exp.text
    );

    let decode = pool.exporter().step("decode");
    let store = pool.exporter().step("store");
    for i in 0..10u64 {
        let decode = decode.clone();
        let store = store.clone();
        pool.submit(move || {
            let rows = decode.time(|| i * 2);
            let _timer = store.start();
            std::thread::sleep(Duration::from_millis(2));
            rows
        })
        .unwrap();
    }
    pool.join();

    let exp = scrape(&registry);
    assert_eq!(exp.types.get(STEP).map(String::as_str), Some("histogram"));
    assert!(!exp.helps[STEP].is_empty());
    let l = |step: &'static str| {
        [
            ("executor", "ingest"),
            ("executor_type", "thread_pool"),
            ("step", step),
        ]
    };
    assert_eq!(exp.value(&format!("{STEP}_count"), &l("decode")), 10.0);
    assert_eq!(exp.value(&format!("{STEP}_count"), &l("store")), 10.0);
    // Each store slept 2 ms; the sum holds at least that.
    assert!(exp.value(&format!("{STEP}_sum"), &l("store")) >= 0.02);
    // The step family uses the exporter's duration buckets.
    let bounds: Vec<String> = exp
        .matching(&format!("{STEP}_bucket"), &l("store"))
        .map(|s| s.labels["le"].clone())
        .collect();
    assert_eq!(bounds, ["0.001", "0.01", "0.1", "1", "10", "+Inf"]);
    assert_eq!(
        exp.value(
            &format!("{STEP}_bucket"),
            &[&l("store")[..], &[("le", "0.001")]].concat()
        ),
        0.0
    );
}

#[test]
fn a_name_is_one_series_and_ids_are_kept_apart() {
    let registry = Registry::new();
    let a = pool(&registry, "a");
    let b = pool(&registry, "b");
    a.exporter().step("load").observe(Duration::from_millis(5));
    a.exporter().step("load").observe(Duration::from_millis(5));
    b.exporter().step("load").observe(Duration::from_millis(5));
    let exp = scrape(&registry);
    let count = |id| {
        exp.value(
            &format!("{STEP}_count"),
            &[("executor", id), ("step", "load")],
        )
    };
    assert_eq!((count("a"), count("b")), (2.0, 1.0));
}

#[test]
fn stop_discard_and_panics() {
    let exporter = ExecutorExporter::builder()
        .exporter_id("timers")
        .registry(Registry::new())
        .build()
        .unwrap();
    let step = exporter.step("work");
    let took = step.start().stop();
    step.start().discard();
    let caught = std::panic::catch_unwind(|| step.time(|| panic!("step fails")));
    assert!(caught.is_err());
    {
        let _timer = step.start();
    }
    let exp = scrape(exporter.registry());
    let l = [("executor", "timers"), ("step", "work")];
    // stop + the panicking one + the scoped one; not the discarded one.
    assert_eq!(exp.value(&format!("{STEP}_count"), &l), 3.0);
    assert!(exp.value(&format!("{STEP}_sum"), &l) >= took.as_secs_f64());
}

#[test]
fn step_names_needing_escapes_survive_the_exposition() {
    let exporter = ExecutorExporter::builder()
        .exporter_id("esc")
        .registry(Registry::new())
        .namespace("app")
        .build()
        .unwrap();
    let name = "say \"hi\"\\\n🙂";
    exporter.step(name).observe(Duration::from_micros(3));
    let exp = scrape(exporter.registry());
    assert_eq!(
        exp.value("app_step_duration_seconds_count", &[("step", name)]),
        1.0
    );
}
