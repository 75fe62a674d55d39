//! Exemplars of the wait and duration histograms: the labels an exporter's
//! hook gives at submit reach the OpenMetrics exposition on every way a task
//! goes in (submit, spawn, `map`, a `Task` given to `Executor::execute`,
//! rayon), each in the bucket of its own value, failed tasks' under
//! `result="failed"`; nothing changes without a hook. Read back from
//! `OpenMetricsEncoder::encode_with_exemplars` and from a `MetricsServer`.

mod common;

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use executor_exporter::prometheus::Registry;
use executor_exporter::{
    Executor, ExecutorExporter, ExemplarLabels, InstrumentedExecutorProxy, OpenMetricsEncoder,
    RejectReason, Rejected, Task, TaskError, ThreadPoolExecutor,
};

thread_local! {
    /// The trace of the "request" this thread works for, as a service would
    /// keep it; the hook reads it at submit.
    static TRACE_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn set_trace(id: Option<&str>) {
    TRACE_ID.with(|t| *t.borrow_mut() = id.map(str::to_owned));
}

fn hook() -> Option<ExemplarLabels> {
    let id = TRACE_ID.with(|t| t.borrow().clone())?;
    ExemplarLabels::new([("trace_id", id)])
}

fn pool(registry: &Registry, id: &str) -> ThreadPoolExecutor {
    ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id(id)
        .registry(registry.clone())
        .exemplar(hook)
        .build()
        .unwrap()
}

fn openmetrics(registry: &Registry) -> String {
    let mut out = Vec::new();
    OpenMetricsEncoder::new()
        .encode_with_exemplars(&registry.gather(), registry, &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One exemplar of a bucket line.
#[derive(Debug, Clone)]
struct Found {
    /// The sample's name and labels up to the exemplar, as written.
    sample: String,
    /// The bucket: above `lower`, at most `le`.
    lower: f64,
    le: f64,
    labels: String,
    value: f64,
    timestamp: f64,
}

fn bound(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        other => other.parse().unwrap(),
    }
}

/// Every exemplar of `text`, with the bounds of its bucket (a series'
/// bucket lines come in order, so the previous line of the same series has
/// the bucket's lower bound).
fn exemplars(text: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut previous: Option<(String, f64)> = None;
    for line in text.lines().filter(|l| l.contains("_bucket{")) {
        let le_at = line.find("le=\"").expect("a bucket line has le") + 4;
        let le = bound(&line[le_at..le_at + line[le_at..].find('"').unwrap()]);
        let series = line[..le_at].to_owned();
        let lower = match &previous {
            Some((s, b)) if *s == series => *b,
            _ => f64::NEG_INFINITY,
        };
        previous = Some((series, le));
        let Some((sample, exemplar)) = line.split_once(" # ") else {
            continue;
        };
        let close = exemplar.find("} ").expect("exemplar labels close");
        let labels = exemplar[..=close].to_owned();
        let mut numbers = exemplar[close + 2..].split(' ');
        let value = numbers.next().unwrap().parse().unwrap();
        let timestamp = numbers.next().expect("a timestamp").parse().unwrap();
        assert!(numbers.next().is_none(), "{line}");
        found.push(Found {
            sample: sample.to_owned(),
            lower,
            le,
            labels,
            value,
            timestamp,
        });
    }
    found
}

/// The exemplar with `trace` in the histogram `family` of executor `id`
/// (`result` selects a duration series), checked against its bucket and
/// the time window `[since, now]`.
fn exemplar_of(text: &str, family: &str, id: &str, result: &str, trace: &str, since: f64) -> Found {
    let prefix = format!("{family}_bucket{{executor=\"{id}\"");
    let labels = format!("{{trace_id=\"{trace}\"}}");
    let all = exemplars(text);
    let found: Vec<_> = all
        .iter()
        .filter(|f| f.sample.starts_with(&prefix) && f.sample.contains(result))
        .filter(|f| f.labels == labels)
        .collect();
    assert_eq!(found.len(), 1, "{family} {result} {trace}: {all:#?}");
    let f = found[0].clone();
    assert!(
        f.lower < f.value && f.value <= f.le,
        "exemplar outside its bucket: {f:?}"
    );
    let now = now_seconds();
    // Written to the millisecond.
    assert!(
        since - 0.001 <= f.timestamp && f.timestamp <= now,
        "timestamp {} not in [{since}, {now}]",
        f.timestamp
    );
    f
}

const WAIT: &str = "executor_task_wait_seconds";
const DURATION: &str = "executor_tasks_duration_seconds";

#[test]
fn every_way_in_carries_the_submitters_labels() {
    let registry = Registry::new();
    let pool = pool(&registry, "paths");
    let since = now_seconds();

    set_trace(Some("submit"));
    pool.submit(|| std::thread::sleep(Duration::from_millis(30)))
        .unwrap()
        .join()
        .unwrap();
    let text = openmetrics(&registry);
    exemplar_of(&text, WAIT, "paths", "", "submit", since);
    let ran = exemplar_of(&text, DURATION, "paths", "completed", "submit", since);
    assert!(ran.value >= 0.03, "{ran:?}");

    set_trace(Some("spawn"));
    pool.spawn(|| ()).unwrap();
    pool.join();
    let text = openmetrics(&registry);
    exemplar_of(&text, WAIT, "paths", "", "spawn", since);
    exemplar_of(&text, DURATION, "paths", "completed", "spawn", since);

    // The drop-in path: a `Task` through `&dyn Executor`.
    set_trace(Some("execute"));
    let executor: &dyn Executor = &*pool;
    executor
        .execute(Task::new(|| std::thread::sleep(Duration::from_millis(2))))
        .unwrap();
    pool.join();
    let text = openmetrics(&registry);
    exemplar_of(&text, DURATION, "paths", "completed", "execute", since);

    set_trace(Some("map"));
    let out: Vec<u32> = pool.map(|x: u32| x + 1, [1]).map(Result::unwrap).collect();
    assert_eq!(out, [2]);
    exemplar_of(
        &openmetrics(&registry),
        DURATION,
        "paths",
        "completed",
        "map",
        since,
    );

    // Failures: an `Err` and a panic go where their observations go.
    set_trace(Some("error"));
    let handle = pool.submit_fallible(|| "x".parse::<u32>()).unwrap();
    assert!(handle.join().unwrap().is_err());
    exemplar_of(
        &openmetrics(&registry),
        DURATION,
        "paths",
        "failed",
        "error",
        since,
    );
    set_trace(Some("panic"));
    let handle = pool
        .submit(|| -> u32 { panic!("exemplar test panic") })
        .unwrap();
    assert!(matches!(handle.join(), Err(TaskError::Panicked { .. })));
    let text = openmetrics(&registry);
    exemplar_of(&text, DURATION, "paths", "failed", "panic", since);
    set_trace(None);

    // The exposition is otherwise the plain encoder's, line for line.
    let mut plain = Vec::new();
    executor_exporter::prometheus::Encoder::encode(
        &OpenMetricsEncoder::new(),
        &registry.gather(),
        &mut plain,
    )
    .unwrap();
    let stripped: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(" # ").map_or(l, |(sample, _)| sample))
        .collect();
    assert_eq!(
        stripped,
        String::from_utf8(plain)
            .unwrap()
            .lines()
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_bucket_keeps_the_latest_exemplar() {
    let registry = Registry::new();
    let pool = pool(&registry, "latest");
    let since = now_seconds();
    for trace in ["first", "second"] {
        set_trace(Some(trace));
        pool.submit(|| std::thread::sleep(Duration::from_millis(30)))
            .unwrap()
            .join()
            .unwrap();
    }
    set_trace(None);
    let text = openmetrics(&registry);
    let completed = |f: &&Found| f.sample.contains("result=\"completed\"");
    let buckets: Vec<Found> = exemplars(&text)
        .into_iter()
        .filter(|f| completed(&f))
        .collect();
    // Both took 30 ms and a little more: one bucket unless one straddled a
    // bound, and then the later one is in its own.
    let second = exemplar_of(&text, DURATION, "latest", "completed", "second", since);
    let first_too = buckets.iter().any(|f| f.labels.contains("first"));
    assert!(!first_too || buckets.len() == 2, "{buckets:#?}");
    assert!(buckets.iter().any(|f| f.le == second.le));
}

#[test]
fn no_hook_no_labels_or_a_failing_hook_write_no_exemplar() {
    let registry = Registry::new();
    let plain = ThreadPoolExecutor::builder()
        .exporter_id("plain")
        .registry(registry.clone())
        .build()
        .unwrap();
    let none = ThreadPoolExecutor::builder()
        .exporter_id("none")
        .registry(registry.clone())
        .exemplar(|| None)
        .build()
        .unwrap();
    let panics = ThreadPoolExecutor::builder()
        .exporter_id("panics")
        .registry(registry.clone())
        .exemplar(|| panic!("the hook's own bug"))
        .build()
        .unwrap();
    // A label set OpenMetrics refuses (over 128 characters) is never built.
    let too_long = ThreadPoolExecutor::builder()
        .exporter_id("too_long")
        .registry(registry.clone())
        .exemplar(|| ExemplarLabels::new([("trace_id", "x".repeat(121))]))
        .build()
        .unwrap();
    for pool in [&plain, &none, &panics, &too_long] {
        assert_eq!(pool.submit(|| 7).unwrap().join(), Ok(7));
        pool.spawn(|| ()).unwrap();
        pool.join();
    }
    let text = openmetrics(&registry);
    assert!(!text.contains(" # "), "{text}");
    let counts = common::parse(&common::encode(&registry));
    for id in ["plain", "none", "panics", "too_long"] {
        let l = [("executor", id), ("result", "completed")];
        assert_eq!(counts.sum("executor_tasks_duration_seconds_count", &l), 2.0);
    }
}

/// Refuses every task, handing it back.
struct Refuses;

impl Executor for Refuses {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        Err(Rejected::new(task, RejectReason::Full))
    }
}

/// A refused task comes back as the caller gave it, labels or not, and a
/// proxy over a proxy records each its own exemplar.
#[test]
fn refused_and_nested_tasks_come_out_as_they_went_in() {
    let registry = Registry::new();
    let exporter = |id: &str| {
        ExecutorExporter::builder()
            .exporter_id(id)
            .registry(registry.clone())
            .exemplar(hook)
            .build()
            .unwrap()
    };
    set_trace(Some("refused"));
    let refusing = InstrumentedExecutorProxy::new(Refuses, exporter("refusing"), Some(1));
    let (tx, rx) = std::sync::mpsc::channel();
    let rejected = refusing
        .execute(Task::new(move || tx.send("the caller's task").unwrap()))
        .unwrap_err();
    assert_eq!(rejected.reason(), RejectReason::Full);
    rejected.into_task().run();
    assert_eq!(rx.try_recv(), Ok("the caller's task"));
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = refusing.spawn(move || tx.send(5).unwrap()).unwrap_err();
    spawned.into_inner()();
    assert_eq!(rx.try_recv(), Ok(5));

    let inner_pool = pool(&registry, "inner");
    let outer = InstrumentedExecutorProxy::new(&*inner_pool, exporter("outer"), None);
    let since = now_seconds();
    set_trace(Some("nested"));
    outer
        .execute(Task::new(|| std::thread::sleep(Duration::from_millis(2))))
        .unwrap();
    outer.join();
    // The inner task ends after the outer one it runs.
    inner_pool.join();
    set_trace(None);
    let text = openmetrics(&registry);
    for id in ["inner", "outer"] {
        exemplar_of(&text, DURATION, id, "completed", "nested", since);
    }
    let counts = common::parse(&common::encode(&registry));
    assert_eq!(
        counts.value(
            "executor_rejected_tasks_total",
            &[("executor", "refusing"), ("executor_type", "custom")]
        ),
        2.0
    );
}

#[cfg(feature = "rayon")]
#[test]
fn rayon_tasks_carry_them() {
    let registry = Registry::new();
    let pool =
        executor_exporter::RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(2))
            .exporter_id("rayon")
            .registry(registry.clone())
            .exemplar(hook)
            .build()
            .unwrap();
    let since = now_seconds();
    set_trace(Some("rayon-spawn"));
    pool.spawn(|| ());
    pool.join();
    set_trace(None);
    exemplar_of(
        &openmetrics(&registry),
        DURATION,
        "rayon",
        "completed",
        "rayon-spawn",
        since,
    );
}

/// `MetricsServer` in OpenMetrics mode serves them; text has none.
#[cfg(feature = "http")]
#[test]
fn the_server_serves_them_as_openmetrics() {
    let registry = Registry::new();
    let pool = pool(&registry, "served");
    let since = now_seconds();
    set_trace(Some("served"));
    pool.submit(|| ()).unwrap().join().unwrap();
    set_trace(None);
    let server = executor_exporter::MetricsServer::builder()
        .openmetrics(true)
        .start("127.0.0.1:0", registry)
        .unwrap();
    let url = format!("http://{}/metrics", server.local_addr());
    let get = |accept: &str| {
        ureq::get(&url)
            .header("Accept", accept)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let text = get("application/openmetrics-text;version=1.0.0");
    exemplar_of(&text, WAIT, "served", "", "served", since);
    exemplar_of(&text, DURATION, "served", "completed", "served", since);
    assert!(!get("text/plain").contains(" # {"));
}

/// With feature `tracing`, a task with labels also runs in its submitter's
/// span, and a refused one still comes back as the caller's task.
#[cfg(feature = "tracing")]
#[test]
fn spans_and_exemplars_go_together() {
    use tracing::subscriber::with_default;

    let registry = Registry::new();
    let exporter = |id: &str| {
        ExecutorExporter::builder()
            .exporter_id(id)
            .registry(registry.clone())
            .exemplar(hook)
            .build()
            .unwrap()
    };
    let inline = InstrumentedExecutorProxy::new(Inline, exporter("in_span"), Some(1));
    let refusing = InstrumentedExecutorProxy::new(Refuses, exporter("refused_in_span"), Some(1));
    let since = now_seconds();
    set_trace(Some("in-span"));
    with_default(tracing_subscriber::registry(), || {
        let request = tracing::info_span!("request");
        let _entered = request.enter();
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = tx.clone();
        inline
            .execute(Task::new(move || {
                sent.send(tracing::Span::current().id()).unwrap()
            }))
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(request.id()), "the task ran in the span");
        let rejected = refusing
            .execute(Task::new(move || tx.send(None).unwrap()))
            .unwrap_err();
        rejected.into_task().run();
        assert_eq!(rx.try_recv(), Ok(None), "the caller's task came back");
    });
    set_trace(None);
    exemplar_of(
        &openmetrics(&registry),
        DURATION,
        "in_span",
        "completed",
        "in-span",
        since,
    );
}

/// Runs each task on the caller.
#[cfg(feature = "tracing")]
struct Inline;

#[cfg(feature = "tracing")]
impl Executor for Inline {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        task.run();
        Ok(())
    }
}

/// A registry that prefixes its families' names (`Registry::new_custom`)
/// still gets each pool's exemplars, and two namespaces on it whose names
/// end alike once prefixed (`myapp_executor_…` and `myapp_jobs_executor_…`)
/// each get their own.
#[test]
fn a_registry_with_a_name_prefix_gets_them_too() {
    let registry = Registry::new_custom(Some("myapp".into()), None).unwrap();
    let plain = pool(&registry, "prefixed");
    let namespaced = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("prefixed")
        .namespace("jobs_executor")
        .registry(registry.clone())
        .exemplar(hook)
        .build()
        .unwrap();
    let since = now_seconds();
    for (pool, trace) in [(&plain, "plain"), (&namespaced, "namespaced")] {
        set_trace(Some(trace));
        pool.submit(|| ()).unwrap().join().unwrap();
    }
    set_trace(None);
    let text = openmetrics(&registry);
    for (prefix, trace) in [("myapp_", "plain"), ("myapp_jobs_", "namespaced")] {
        exemplar_of(
            &text,
            &format!("{prefix}{WAIT}"),
            "prefixed",
            "",
            trace,
            since,
        );
        let duration = format!("{prefix}{DURATION}");
        exemplar_of(&text, &duration, "prefixed", "completed", trace, since);
    }
}

/// A namespace whose name ends like another's (`jobs_executor_…` and `executor_…`) never shows the
/// other's exemplars: pool `same` with a hook in the default namespace and pool `same` without one
/// in `jobs_executor`, on a registry without a prefix.
#[test]
fn a_namespace_ending_like_another_does_not_take_its_exemplars() {
    let registry = Registry::new();
    let hooked = pool(&registry, "same");
    let plain = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("same")
        .namespace("jobs_executor")
        .registry(registry.clone())
        .build()
        .unwrap();
    let since = now_seconds();
    set_trace(Some("hooked"));
    hooked.submit(|| ()).unwrap().join().unwrap();
    plain.submit(|| ()).unwrap().join().unwrap();
    set_trace(None);
    let text = openmetrics(&registry);
    exemplar_of(&text, WAIT, "same", "", "hooked", since);
    let strays: Vec<Found> = exemplars(&text)
        .into_iter()
        .filter(|f| f.sample.starts_with("jobs_executor_"))
        .collect();
    assert!(strays.is_empty(), "{strays:#?}");
}

/// A hook that panics is a bug of the hook; every call would print the
/// panic and (with `RUST_BACKTRACE`) capture a backtrace on the submit
/// path. It is called until its first panic, then no more for that
/// exporter: its tasks run without exemplars, as after any failing call.
#[test]
fn a_hook_that_panics_is_not_called_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .exporter_id("panicky")
        .registry(registry.clone())
        .exemplar(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            panic!("no trace id on this thread")
        })
        .build()
        .unwrap();
    for i in 0..50u32 {
        assert_eq!(pool.submit(move || i).unwrap().join(), Ok(i));
        pool.spawn(|| ()).unwrap();
    }
    pool.join();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "called after it panicked");
    let text = openmetrics(&registry);
    assert!(
        !exemplars(&text)
            .iter()
            .any(|f| f.sample.contains("panicky")),
        "{text}"
    );
}
