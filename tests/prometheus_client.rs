//! The families in a real `prometheus-client` registry, encoded by its
//! OpenMetrics encoder, hold the samples of the `prometheus` exposition:
//! the same names, labels and values, read back by parsing both, for one
//! workload of pools that fail, cancel, reject, time steps, share an id and
//! bound their queues.

mod common;

use common::{Exposition, Gate};
use executor_exporter::prometheus::Registry;
use executor_exporter::prometheus_client::encoding::text::encode;
use executor_exporter::prometheus_client::registry::Registry as ClientRegistry;
use executor_exporter::{
    ExecutorExporter, OpenMetricsEncoder, PrometheusClientCollector, TaskError, ThreadPoolExecutor,
};

/// The OpenMetrics text of `registry`, as `prometheus-client` encodes it.
fn openmetrics(registry: &ClientRegistry) -> Exposition {
    let mut text = String::new();
    encode(&mut text, registry).expect("the registry encodes");
    common::parse(&text)
}

/// Pools that have done a bit of everything, every one idle now (no age
/// gauge moves between two reads). Returns what must stay alive.
fn workload(registry: &Registry) -> (Vec<ThreadPoolExecutor>, ExecutorExporter) {
    let images = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("images \"v2\" \\ ✓")
        .registry(registry.clone())
        .build()
        .unwrap();
    let resize = images.exporter().step("resize");
    for i in 0..5u32 {
        let resize = resize.clone();
        assert_eq!(
            images.submit(move || resize.time(|| i)).unwrap().join(),
            Ok(i)
        );
    }
    let panicked = images.submit(|| -> u8 { panic!("prometheus-client panic") });
    assert!(matches!(
        panicked.unwrap().join(),
        Err(TaskError::Panicked { .. })
    ));
    let failed = images.submit_fallible(|| "x".parse::<u8>()).unwrap();
    assert!(failed.join().unwrap().is_err());
    let gate = Gate::new();
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let gate = gate.clone();
            images.submit(move || gate.wait()).unwrap()
        })
        .collect();
    let queued = images.submit(|| ()).unwrap();
    assert!(queued.cancel());
    gate.open();
    for handle in busy {
        handle.join().unwrap();
    }

    // Same id, same registry: one series with both pools' counts.
    let images_too = ThreadPoolExecutor::builder()
        .max_workers(3)
        .exporter_id("images \"v2\" \\ ✓")
        .registry(registry.clone())
        .build()
        .unwrap();
    images_too.submit(|| ()).unwrap().join().unwrap();

    let bounded = ThreadPoolExecutor::builder()
        .max_workers(1)
        .queue_capacity(4)
        .exporter_id("bounded")
        .registry(registry.clone())
        .build()
        .unwrap();
    bounded.submit(|| ()).unwrap().join().unwrap();

    let stopped = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("stopped")
        .registry(registry.clone())
        .build()
        .unwrap();
    stopped.shutdown();
    assert!(stopped.submit(|| ()).is_err());

    let custom = ExecutorExporter::builder()
        .exporter_id("custom")
        .registry(registry.clone())
        .build()
        .unwrap();
    custom.add_max_workers(8);
    custom.worker_started();

    for pool in [&images, &images_too, &bounded] {
        pool.join();
    }
    // A thread a submit started counts itself once it runs, which may be
    // after the tasks ended (another worker ran them); the two reads must
    // not straddle that.
    for (id, threads) in [
        (
            "images \"v2\" \\ ✓",
            images.workers() + images_too.workers(),
        ),
        ("bounded", bounded.workers()),
    ] {
        common::eventually(30, "every started thread counted", || {
            common::scrape(registry).value("executor_workers", &[("executor", id)])
                == threads as f64
        });
    }
    (vec![images, images_too, bounded, stopped], custom)
}

#[test]
fn prometheus_client_exposes_the_samples_of_the_prometheus_exposition() {
    let registry = Registry::new();
    let (pools, _custom) = workload(&registry);
    let mut client = ClientRegistry::default();
    pools[0].exporter().register_into(&mut client);

    let text = common::scrape(&registry);
    let om = openmetrics(&client);
    om.assert_same_as_text(&text);

    // Both pools of the shared id are in its one series.
    let id = [("executor", "images \"v2\" \\ ✓")];
    assert_eq!(om.value("executor_submitted_tasks_total", &id), 11.0);
    assert_eq!(om.value("executor_max_workers", &id), 5.0);
    assert_eq!(
        om.value(
            "executor_task_failures_total",
            &[id[0], ("reason", "panic")]
        ),
        1.0
    );
    assert_eq!(om.value("executor_cancelled_tasks_total", &id), 1.0);
    assert_eq!(
        om.value("executor_rejected_tasks_total", &[("executor", "stopped")]),
        1.0
    );
    assert_eq!(
        om.value("executor_queue_capacity", &[("executor", "bounded")]),
        4.0
    );
    assert_eq!(
        om.value(
            "executor_step_duration_seconds_count",
            &[id[0], ("step", "resize")]
        ),
        5.0
    );
    assert_eq!(om.types["executor_submitted_tasks"], "counter");
    assert_eq!(om.types["executor_task_wait_seconds"], "histogram");

    // The crate's own OpenMetrics encoder, which `MetricsServer` uses, says
    // the same.
    let mut ours = Vec::new();
    use executor_exporter::prometheus::Encoder as _;
    OpenMetricsEncoder::new()
        .encode(&registry.gather(), &mut ours)
        .unwrap();
    let ours = common::parse(&String::from_utf8(ours).unwrap());
    ours.assert_same_as_text(&text);
    assert_eq!(ours.types, om.types);
}

/// Exporters of other namespaces or registries are other collectors; one
/// collector never shows another registry's series.
#[test]
fn each_collector_shows_its_own_namespace_and_registry() {
    let (a, b) = (Registry::new(), Registry::new());
    let in_a = ExecutorExporter::builder()
        .exporter_id("a")
        .registry(a.clone())
        .build()
        .unwrap();
    let other_namespace = ExecutorExporter::builder()
        .exporter_id("a2")
        .namespace("jobs")
        .registry(a)
        .build()
        .unwrap();
    let in_b = ExecutorExporter::builder()
        .exporter_id("b")
        .registry(b)
        .build()
        .unwrap();
    for e in [&in_a, &other_namespace, &in_b] {
        e.add_max_workers(1);
    }

    let mut client = ClientRegistry::default();
    client.register_collector(Box::new(PrometheusClientCollector::new(&in_a)));
    other_namespace.register_into(client.sub_registry_with_prefix("app"));
    let om = openmetrics(&client);
    assert_eq!(om.value("executor_max_workers", &[("executor", "a")]), 1.0);
    assert_eq!(om.value("app_jobs_max_workers", &[("executor", "a2")]), 1.0);
    assert!(
        om.try_value("executor_max_workers", &[("executor", "b")])
            .is_none(),
        "{}",
        om.text
    );
    assert_eq!(om.types["app_jobs_submitted_tasks"], "counter");
}

/// Pools with native histograms, classic buckets kept or not: the text
/// encoder of `prometheus-client`, handed the native buckets, writes the
/// classic ones as the `prometheus` exposition does, and without them each
/// histogram's count, sum and `+Inf` bucket.
#[test]
fn native_histograms_leave_the_text_its_classic_buckets() {
    let registry = Registry::new();
    let both = ThreadPoolExecutor::builder()
        .exporter_id("both")
        .registry(registry.clone())
        .native_histograms(3)
        .build()
        .unwrap();
    let native_only = ThreadPoolExecutor::builder()
        .exporter_id("native_only")
        .registry(registry.clone())
        .native_histograms(0)
        .classic_buckets(false)
        .build()
        .unwrap();
    for pool in [&both, &native_only] {
        for k in 0..4 {
            pool.submit(move || k).unwrap().join().unwrap();
        }
    }
    let mut client = ClientRegistry::default();
    both.exporter().register_into(&mut client);
    let om = openmetrics(&client);
    om.assert_same_as_text(&common::scrape(&registry));
    let labels = |id| [("executor", id), ("result", "completed")];
    let count = "executor_tasks_duration_seconds_count";
    assert_eq!(om.value(count, &labels("both")), 4.0);
    assert_eq!(om.value(count, &labels("native_only")), 4.0);
    let bucket = "executor_tasks_duration_seconds_bucket";
    let le = |id, le| [("executor", id), ("result", "completed"), ("le", le)];
    assert_eq!(om.value(bucket, &le("both", "+Inf")), 4.0);
    assert_eq!(om.value(bucket, &le("native_only", "+Inf")), 4.0);
    let buckets_of = |id| om.matching(bucket, &[("executor", id)]).count();
    // Both results' buckets, `+Inf` included.
    assert_eq!(
        buckets_of("both"),
        2 * (executor_exporter::DEFAULT_BUCKETS.len() + 1)
    );
    assert_eq!(buckets_of("native_only"), 2);
}
