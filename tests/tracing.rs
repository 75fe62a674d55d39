//! Feature `tracing`: a task runs inside the span that was current when it
//! was submitted, checked with a real subscriber (tracing-subscriber's
//! registry under a layer that records, for every event, the request span
//! it belongs to).
//!
//! One subscriber is the global default for the whole binary (pool threads
//! see only the global one); each test tells its own events apart by a
//! `marker` field and its own requests by a `request` field, both unique.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::{counts, scrape};
use executor_exporter::prometheus::Registry;
use executor_exporter::{
    Executor, ExecutorExporter, InstrumentedExecutorProxy, RejectReason, Rejected, Task,
    ThreadPoolExecutor,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The `request` field of a span, kept in its extensions.
struct Request(u64);

/// Reads one integer field of a span or an event.
struct IntField {
    name: &'static str,
    value: Option<u64>,
}

impl IntField {
    fn named(name: &'static str) -> IntField {
        IntField { name, value: None }
    }
}

impl Visit for IntField {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == self.name {
            self.value = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == self.name {
            self.value = u64::try_from(value).ok();
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// Each event with a `marker`: the marker, and the request of the nearest
/// enclosing span that has one (`None`: outside any request).
static EVENTS: Mutex<Vec<(u64, Option<u64>)>> = Mutex::new(Vec::new());
/// Requests whose span has closed (every handle to it dropped).
static CLOSED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

struct Recorder;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut request = IntField::named("request");
        attrs.record(&mut request);
        if let (Some(request), Some(span)) = (request.value, ctx.span(id)) {
            span.extensions_mut().insert(Request(request));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut marker = IntField::named("marker");
        event.record(&mut marker);
        let Some(marker) = marker.value else { return };
        let request = ctx.event_scope(event).and_then(|mut scope| {
            scope.find_map(|span| span.extensions().get::<Request>().map(|r| r.0))
        });
        EVENTS.lock().unwrap().push((marker, request));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(request) = ctx
            .span(&id)
            .and_then(|span| span.extensions().get::<Request>().map(|r| r.0))
        {
            CLOSED.lock().unwrap().push(request);
        }
    }
}

/// Installs the recording subscriber as the global default, once.
fn subscriber() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder))
            .expect("no other global subscriber in this binary");
    });
}

/// A number no other test uses, for a marker or a request.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The request the event with `marker` was emitted in (it must have been).
fn request_of(marker: u64) -> Option<u64> {
    let events = EVENTS.lock().unwrap();
    let found: Vec<_> = events.iter().filter(|(m, _)| *m == marker).collect();
    assert_eq!(found.len(), 1, "event {marker} recorded once: {found:?}");
    found[0].1
}

fn closed(request: u64) -> bool {
    CLOSED.lock().unwrap().contains(&request)
}

/// Emits the event `marker`.
fn emit(marker: u64) {
    tracing::info!(marker, "in a task");
}

/// What each entry point is given, and the marker its task emits.
struct Markers {
    submit: u64,
    submit_fallible: u64,
    spawn: u64,
    map: [u64; 3],
    execute: u64,
}

impl Markers {
    fn new() -> Markers {
        Markers {
            submit: unique(),
            submit_fallible: unique(),
            spawn: unique(),
            map: [unique(), unique(), unique()],
            execute: unique(),
        }
    }

    fn all(&self) -> Vec<u64> {
        let mut all = vec![self.submit, self.submit_fallible, self.spawn, self.execute];
        all.extend(self.map);
        all
    }
}

/// Inside a request span: gives a task to every entry point of `proxy`,
/// waits for them all (outside the span), and checks that each task's event
/// belongs to the request.
fn every_entry_point_runs_in_the_request<E: Executor>(proxy: &InstrumentedExecutorProxy<E>) {
    subscriber();
    let request = unique();
    let m = Markers::new();
    let span = tracing::info_span!("request", request);
    let (submitted, fallible, mapped) = span.in_scope(|| {
        let marker = m.submit;
        let submitted = proxy.submit(move || emit(marker)).unwrap();
        let marker = m.submit_fallible;
        let fallible = proxy
            .submit_fallible(move || -> Result<(), String> {
                emit(marker);
                Ok(())
            })
            .unwrap();
        let marker = m.spawn;
        proxy.spawn(move || emit(marker)).unwrap();
        let marker = m.execute;
        Executor::execute(proxy, Task::new(move || emit(marker))).unwrap();
        // Created in the span: its items run in it wherever it is iterated.
        let mapped = proxy.map(emit, m.map);
        (submitted, fallible, mapped)
    });
    drop(span);
    // Iterated outside the span: the items still belong to the request.
    assert_eq!(mapped.count(), 3);
    submitted.join().unwrap();
    fallible.join().unwrap().unwrap();
    proxy.join();
    for marker in m.all() {
        assert_eq!(request_of(marker), Some(request), "event {marker}");
    }
    // Every task has ended and released the span, which is closed.
    common::eventually(5, "the request's span to close", || closed(request));
}

#[test]
fn every_entry_point_of_a_thread_pool_runs_its_task_in_the_submitters_span() {
    let pool = ThreadPoolExecutor::builder()
        .max_workers(2)
        .exporter_id("tracing_pool")
        .registry(Registry::new())
        .build()
        .unwrap();
    every_entry_point_runs_in_the_request(&pool);
}

#[cfg(feature = "rayon")]
#[test]
fn every_entry_point_of_a_rayon_pool_runs_its_task_in_the_submitters_span() {
    let pool =
        executor_exporter::RayonExecutor::builder(rayon::ThreadPoolBuilder::new().num_threads(2))
            .exporter_id("tracing_rayon")
            .registry(Registry::new())
            .build()
            .unwrap();
    every_entry_point_runs_in_the_request(&pool);
}

/// Runs its tasks later, on the thread that calls `run_all`: whatever span
/// that thread is in then, a task must run in its submitter's.
#[derive(Default, Clone)]
struct Later(Arc<Mutex<Vec<Task>>>);

impl Later {
    fn run_all(&self) {
        let tasks = std::mem::take(&mut *self.0.lock().unwrap());
        tasks.into_iter().for_each(Task::run);
    }
}

impl Executor for Later {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        self.0.lock().unwrap().push(task);
        Ok(())
    }
}

fn exporter(registry: &Registry, id: &str) -> ExecutorExporter {
    ExecutorExporter::builder()
        .exporter_id(id)
        .registry(registry.clone())
        .build()
        .unwrap()
}

#[test]
fn a_proxy_runs_each_task_in_its_submitters_span_not_the_runners() {
    subscriber();
    let registry = Registry::new();
    let later = Later::default();
    let proxy = InstrumentedExecutorProxy::new(later.clone(), exporter(&registry, "later"), None);
    let (first, second) = (unique(), unique());
    let (a, b, c) = (unique(), unique(), unique());
    tracing::info_span!("request", request = first)
        .in_scope(|| proxy.spawn(move || emit(a)).unwrap());
    tracing::info_span!("request", request = second)
        .in_scope(|| Executor::execute(&proxy, Task::new(move || emit(b))).unwrap());
    proxy.spawn(move || emit(c)).unwrap();
    // Run by a thread inside a third request: each task keeps its own.
    let runner = unique();
    tracing::info_span!("request", request = runner).in_scope(|| later.run_all());
    assert_eq!(request_of(a), Some(first));
    assert_eq!(request_of(b), Some(second));
    assert_eq!(
        request_of(c),
        Some(runner),
        "a task submitted outside any span runs as it is"
    );
    let k = counts(&scrape(&registry), "executor", "later");
    assert_eq!((k.submitted, k.completed), (3.0, 3.0));
    k.assert_invariant();
}

/// An executor that refuses every task.
struct Refuses;

impl Executor for Refuses {
    fn execute(&self, task: Task) -> Result<(), Rejected> {
        Err(Rejected::new(task, RejectReason::Full))
    }
}

#[test]
fn a_task_refused_inside_a_span_comes_back_as_given_and_is_counted() {
    subscriber();
    let registry = Registry::new();
    let proxy =
        InstrumentedExecutorProxy::new(Refuses, exporter(&registry, "refuses_in_span"), None);
    let outer = InstrumentedExecutorProxy::new(&proxy, exporter(&registry, "refuses_outer"), None);
    let request = unique();
    let span = tracing::info_span!("request", request);
    let _entered = span.enter();
    let err = proxy.submit(|| 6 * 7).unwrap_err();
    assert_eq!(err.reason(), RejectReason::Full);
    assert_eq!((err.into_inner())(), 42);
    let err = proxy.submit_fallible(|| Ok::<_, ()>(7)).unwrap_err();
    assert_eq!((err.into_inner())(), Ok(7));
    let err = proxy.spawn(|| ()).unwrap_err();
    (err.into_inner())();
    let ran = Arc::new(AtomicU64::new(0));
    for executor in [&proxy as &dyn Executor, &outer] {
        let r = ran.clone();
        let rejected = executor
            .execute(Task::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap_err();
        rejected.into_task().run();
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2,
        "the caller's own tasks came back"
    );
    let exp = scrape(&registry);
    let k = counts(&exp, "executor", "refuses_in_span");
    assert_eq!((k.submitted, k.rejected), (0.0, 5.0));
    k.assert_invariant();
    let k = counts(&exp, "executor", "refuses_outer");
    assert_eq!((k.submitted, k.rejected), (0.0, 1.0));
    k.assert_invariant();
}

#[test]
fn a_task_that_panics_inside_a_span_is_counted_as_failed_and_leaves_the_span() {
    subscriber();
    let registry = Registry::new();
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .exporter_id("tracing_panics")
        .registry(registry.clone())
        .build()
        .unwrap();
    let request = unique();
    let after = unique();
    let handle = tracing::info_span!("request", request)
        .in_scope(|| pool.submit(|| -> u32 { panic!("inside a span") }).unwrap());
    assert!(handle.join().is_err());
    // The same worker, next task, outside any span: the panic exited it.
    pool.submit(move || emit(after)).unwrap().join().unwrap();
    assert_eq!(request_of(after), None);
    common::eventually(5, "the request's span to close", || closed(request));
    let k = counts(&scrape(&registry), "executor", "tracing_panics");
    assert_eq!((k.submitted, k.completed, k.failed), (2.0, 1.0, 1.0));
    k.assert_invariant();
}

mod process {
    //! The process pool: the task runs in another process, which the span
    //! cannot follow; on this side the submitter's span is held for the
    //! round trip and entered while the pool handles the task's reports,
    //! such as decoding its output (the user's `Deserialize`).

    use super::*;
    use executor_exporter::process_pool::{run_if_worker, ProcessTask, WorkerRegistry};
    use executor_exporter::ProcessPoolExecutor;
    use serde::{Deserialize, Deserializer, Serialize};

    /// An output whose decoding, in this process, emits the event
    /// `marker` (the worker echoes the marker back after sleeping).
    #[derive(Serialize, Debug, PartialEq)]
    struct Decoded(u64);

    impl<'de> Deserialize<'de> for Decoded {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decoded, D::Error> {
            let marker = u64::deserialize(d)?;
            emit(marker);
            Ok(Decoded(marker))
        }
    }

    struct Echo;
    impl ProcessTask for Echo {
        const NAME: &'static str = "echo_after";
        type Input = (u64, u64);
        type Output = Decoded;
        type Error = String;
        fn run((marker, sleep_ms): (u64, u64)) -> Result<Decoded, String> {
            std::thread::sleep(Duration::from_millis(sleep_ms));
            Ok(Decoded(marker))
        }
    }

    /// This test binary is its own worker program.
    #[test]
    fn worker_entry() {
        run_if_worker(&WorkerRegistry::new().register::<Echo>());
    }

    #[test]
    fn the_submitters_span_covers_a_process_tasks_round_trip() {
        subscriber();
        let registry = Registry::new();
        let pool = ProcessPoolExecutor::builder()
            .max_workers(1)
            .worker_test_entry("process::worker_entry")
            .exporter_id("tracing_process")
            .registry(registry.clone())
            .build()
            .unwrap();
        let (request, marker) = (unique(), unique());
        let handle = {
            let span = tracing::info_span!("request", request);
            let _entered = span.enter();
            pool.submit::<Echo>(&(marker, 200)).unwrap()
            // The submitter's own handle to the span is dropped here.
        };
        // The pool holds the span while the task is out in the worker.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!handle.is_finished());
        assert!(
            !closed(request),
            "the span closed before the round trip ended"
        );
        let value = common::watchdog(60, move || handle.join());
        assert_eq!(value, Ok(Ok(Decoded(marker))));
        // Decoded on the pool's side, inside the request.
        assert_eq!(request_of(marker), Some(request));
        common::eventually(5, "the request's span to close", || closed(request));
        let k = counts(&scrape(&registry), "executor", "tracing_process");
        assert_eq!((k.submitted, k.completed), (1.0, 1.0));
        k.assert_invariant();
    }
}
