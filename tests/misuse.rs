//! Mistakes that used to fail silently or without saying what to change: a
//! metric family whose name is already taken in the registry.
//!
//! (`pool.map(..);` as a statement is refused by the compiler: see the
//! `compile_fail` example on `Map`.)

use std::error::Error as _;

use executor_exporter::prometheus::{self, IntCounter, IntCounterVec, Opts, Registry};
use executor_exporter::{BuildError, ExecutorExporter, ThreadPoolExecutor};

/// The error names the family taken, says how to get out of the clash, and
/// still hands over the registry's own error as its source.
fn assert_names_family_and_fix(err: &BuildError, family: &str, fix: &str) {
    let shown = err.to_string();
    assert!(err.is_registry(), "{shown}");
    assert!(shown.contains(&format!("\"{family}\"")), "{shown}");
    assert!(shown.contains(fix), "{shown}");
    let source = err.source().expect("the registry's error as source");
    assert!(
        source.downcast_ref::<prometheus::Error>().is_some(),
        "{source:?}"
    );
}

/// A user counter with one of the crate's family names: prometheus says only
/// "Duplicate metrics collector registration attempted".
#[test]
fn a_family_name_taken_by_a_user_counter_is_named_with_the_fix() {
    let registry = Registry::new();
    let mine = IntCounter::with_opts(Opts::new("executor_running_tasks", "Mine.")).unwrap();
    registry.register(Box::new(mine)).unwrap();
    let err = ThreadPoolExecutor::builder()
        .max_workers(1)
        .registry(registry.clone())
        .build()
        .unwrap_err();
    assert_names_family_and_fix(&err, "executor_running_tasks", ".namespace(");
    // The suggested fix works.
    let pool = ThreadPoolExecutor::builder()
        .max_workers(1)
        .namespace("batch")
        .registry(registry.clone())
        .build()
        .unwrap();
    assert_eq!(pool.submit(|| 2).unwrap().join(), Ok(2));
}

/// A family of the same name with other labels (another exporter, or
/// another version of this crate, under the same namespace): prometheus
/// answers with the whole descriptor; the error still names the family.
#[test]
fn a_family_name_taken_with_other_labels_is_named_with_the_fix() {
    let registry = Registry::new();
    let theirs = IntCounterVec::new(
        Opts::new("jobs_task_failures_total", "Theirs.").const_label("owner", "other"),
        &["queue"],
    )
    .unwrap();
    registry.register(Box::new(theirs)).unwrap();
    let err = ExecutorExporter::builder()
        .namespace("jobs")
        .registry(registry)
        .build()
        .unwrap_err();
    assert_names_family_and_fix(&err, "jobs_task_failures_total", ".namespace(");
}

#[cfg(feature = "push")]
#[test]
fn the_push_failures_family_taken_is_named_with_the_fix() {
    use executor_exporter::{PushGateway, PUSH_FAILURES_METRIC};

    let registry = Registry::new();
    let mine = IntCounter::new(PUSH_FAILURES_METRIC, "Mine.").unwrap();
    registry.register(Box::new(mine)).unwrap();
    let err = PushGateway::builder("http://127.0.0.1:9", "batch")
        .registry(registry)
        .push_on_drop(false)
        .build()
        .unwrap_err();
    assert_names_family_and_fix(&err, PUSH_FAILURES_METRIC, "rename");
}
