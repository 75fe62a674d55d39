//! [`ExecutorExporter`] and its builder: the public handle on one series, and the options that pick it.

use std::fmt;
use std::sync::Arc;

use prometheus::Registry;

use super::buckets::{resolve_buckets, validate_namespace};
use super::collector::families_for;
use super::exemplars::{ExemplarHook, ExemplarLabels};
use super::native::{MAX_SCHEMA, MIN_SCHEMA};
use super::series::Series;
use super::snapshot::Snapshot;
use super::steps::Step;
use crate::error::{BuildError, BuildErrorKind};
use crate::sync::lock;

/// Owns the metric series of one (`exporter_id`, `executor_type`) pair in one
/// registry, and records into them.
///
/// Cloning is cheap and clones share the series. Exporters built with the same
/// id, type and namespace in the same registry share one set of series, so
/// their pools are combined; different ids are separate series of the same
/// families.
///
/// ```
/// use executor_exporter::ExecutorExporter;
/// use prometheus::{Encoder, Registry, TextEncoder};
///
/// let registry = Registry::new();
/// let exporter = ExecutorExporter::builder()
///     .exporter_id("ingest")
///     .executor_type("my_pool")
///     .registry(registry.clone())
///     .build()
///     .unwrap();
/// // A custom executor reports what it does:
/// exporter.add_max_workers(4);
/// exporter.worker_started();
/// // ... and when a worker exits, and when the pool shuts down:
/// // exporter.worker_stopped();
/// // exporter.remove_max_workers(4);
///
/// let mut text = Vec::new();
/// TextEncoder::new().encode(&registry.gather(), &mut text).unwrap();
/// let text = String::from_utf8(text).unwrap();
/// assert!(text.contains(
///     r#"executor_initialized_workers_total{executor="ingest",executor_type="my_pool"} 1"#
/// ));
/// assert!(text.contains(r#"executor_workers{executor="ingest",executor_type="my_pool"} 1"#));
/// assert!(text.contains(r#"executor_max_workers{executor="ingest",executor_type="my_pool"} 4"#));
/// ```
#[derive(Clone)]
pub struct ExecutorExporter {
    series: Arc<Series>,
    /// Every series of this namespace in `registry`, this one's included.
    #[cfg(feature = "prometheus-client")]
    families: Arc<super::collector::Families>,
    registry: Registry,
    namespace: Arc<str>,
    exemplar: Option<ExemplarHook>,
}

impl fmt::Debug for ExecutorExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorExporter")
            .field("exporter_id", &self.series.id)
            .field("executor_type", &self.series.ty)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ExecutorExporter {
    /// Starts building an exporter.
    pub fn builder() -> ExecutorExporterBuilder {
        ExecutorExporterBuilder::default()
    }

    pub(crate) fn series(&self) -> &Arc<Series> {
        &self.series
    }

    /// The hook of [`ExecutorExporterBuilder::exemplar`], if one was set.
    pub(crate) fn exemplar_hook(&self) -> Option<&ExemplarHook> {
        self.exemplar.as_ref()
    }

    #[cfg(feature = "prometheus-client")]
    pub(super) fn families(&self) -> &Arc<super::collector::Families> {
        &self.families
    }

    /// The `executor` label value.
    pub fn exporter_id(&self) -> &str {
        &self.series.id
    }

    /// The `executor_type` label value.
    pub fn executor_type(&self) -> &str {
        &self.series.ty
    }

    /// The metric namespace (the prefix of every family name).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The registry the families are registered in; register your own metrics
    /// there to serve them from the same `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bucket bounds of the wait histogram, in seconds.
    pub fn wait_buckets(&self) -> &[f64] {
        &self.series.wait_bounds
    }

    /// The bucket bounds of the duration histogram, in seconds.
    pub fn duration_buckets(&self) -> &[f64] {
        &self.series.duration_bounds
    }

    /// The schema of the native histograms kept beside the wait and
    /// duration histograms, `None` without (see
    /// [`ExecutorExporterBuilder::native_histograms`]).
    ///
    /// ```
    /// use executor_exporter::ExecutorExporter;
    ///
    /// let exporter = ExecutorExporter::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .build()?;
    /// assert_eq!(exporter.native_histogram_schema(), None);
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn native_histogram_schema(&self) -> Option<i8> {
        self.series.native.map(|layout| layout.schema())
    }

    /// Whether the wait and duration histograms expose their classic
    /// buckets (see [`ExecutorExporterBuilder::classic_buckets`]).
    ///
    /// ```
    /// use executor_exporter::ExecutorExporter;
    ///
    /// let exporter = ExecutorExporter::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .native_histograms(0)
    ///     .classic_buckets(false)
    ///     .build()?;
    /// assert!(!exporter.classic_buckets());
    /// assert_eq!(exporter.native_histogram_schema(), Some(0));
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn classic_buckets(&self) -> bool {
        self.series.classic
    }

    /// Adds `n` to the `max_workers` gauge: call once per pool built, and
    /// [`remove_max_workers`](Self::remove_max_workers) with the same `n`
    /// when that pool shuts down, so the gauge is the capacity of the pools
    /// alive now. The pools of this crate and
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy) do
    /// both themselves.
    pub fn add_max_workers(&self, n: usize) {
        self.series.add_max_workers(n as u64);
    }

    /// Takes `n` off the `max_workers` gauge: a pool that was counted with
    /// [`add_max_workers`](Self::add_max_workers) shut down. Removing more
    /// than was added makes the gauge negative; the exporter does not guess
    /// which pool was meant.
    pub fn remove_max_workers(&self, n: usize) {
        self.series.remove_max_workers(n as u64);
    }

    /// Counts one worker that finished starting: `initialized_workers_total`
    /// and the `workers` gauge go up by one. Call
    /// [`worker_stopped`](Self::worker_stopped) when that worker exits,
    /// or `workers` only grows.
    pub fn worker_started(&self) {
        self.series.worker_started();
    }

    /// One worker counted by [`worker_started`](Self::worker_started)
    /// exited: the `workers` gauge goes down by one.
    pub fn worker_stopped(&self) {
        self.series.worker_stopped();
    }

    /// Counts one worker replaced after a crash, timeout or task limit
    /// (`worker_restarts_total`).
    pub fn worker_restarted(&self) {
        self.series.worker_restarted();
    }

    /// This exporter's counts now, as plain numbers read from the same
    /// shards a scrape reads (see [`Snapshot`]). Exporters sharing an id
    /// share these counts.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::from_reading(&self.series.read())
    }

    /// A handle timing step `name` into `step_duration_seconds{step=name}`,
    /// with this exporter's `executor` and `executor_type` labels and its
    /// duration buckets.
    ///
    /// The series is created at zero by the first call for a name and shared
    /// by later ones; until then the family has no series and does not
    /// appear in the exposition. Resolve a step once, outside the hot path,
    /// and clone it into tasks: recording is then a clock read and one
    /// histogram observation, with no lookup. Every name is a series: use a
    /// few fixed names, never per-item values.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    ///
    /// let registry = prometheus::Registry::new();
    /// let pool = ThreadPoolExecutor::builder()
    ///     .exporter_id("ingest")
    ///     .registry(registry.clone())
    ///     .build()
    ///     .unwrap();
    /// let decode = pool.exporter().step("decode");
    /// let store = pool.exporter().step("store");
    /// pool.submit(move || {
    ///     let rows = decode.time(|| vec![1, 2, 3]);
    ///     let _timer = store.start(); // observed when dropped
    ///     rows.len()
    /// })
    /// .unwrap()
    /// .join()
    /// .unwrap();
    ///
    /// let families = registry.gather();
    /// let steps = families
    ///     .iter()
    ///     .find(|f| f.name() == "executor_step_duration_seconds")
    ///     .unwrap();
    /// assert_eq!(steps.get_metric().len(), 2);
    /// assert_eq!(steps.get_metric()[0].get_histogram().get_sample_count(), 1);
    /// ```
    pub fn step(&self, name: &str) -> Step {
        Step {
            histogram: self.series.step(name),
        }
    }
}

/// Options of an [`ExecutorExporter`]; every setter takes and returns the
/// builder, and [`build`](ExecutorExporterBuilder::build) checks them all.
#[derive(Debug, Clone, Default)]
pub struct ExecutorExporterBuilder {
    exporter_id: Option<String>,
    executor_type: Option<String>,
    registry: Option<Registry>,
    namespace: Option<String>,
    wait_explicit: Option<Vec<f64>>,
    wait_exponential: Option<(f64, f64, f64)>,
    duration_explicit: Option<Vec<f64>>,
    duration_exponential: Option<(f64, f64, f64)>,
    exemplar: Option<ExemplarHook>,
    native_schema: Option<i8>,
    classic: Option<bool>,
}

impl ExecutorExporterBuilder {
    /// The `executor` label (default `"default"`). Pools with the same id are
    /// combined. Any UTF-8 is accepted and escaped in the exposition.
    pub fn exporter_id(mut self, id: impl Into<String>) -> Self {
        self.exporter_id = Some(id.into());
        self
    }

    /// The `executor_type` label (default: the pool's own, e.g. `thread_pool`;
    /// `custom` for an exporter built alone).
    pub fn executor_type(mut self, ty: impl Into<String>) -> Self {
        self.executor_type = Some(ty.into());
        self
    }

    pub(crate) fn executor_type_or(mut self, ty: &str) -> Self {
        if self.executor_type.is_none() {
            self.executor_type = Some(ty.to_owned());
        }
        self
    }

    /// The registry to register the families in (default:
    /// [`prometheus::default_registry`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The prefix of every family name (default `executor`): letters, digits
    /// and `_`, not starting with a digit.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Explicit bucket bounds of the wait histogram, in seconds (strictly
    /// increasing, finite, not negative, at most 1000).
    pub fn wait_buckets(mut self, bounds: Vec<f64>) -> Self {
        self.wait_explicit = Some(bounds);
        self
    }

    /// Exponential bucket bounds of the wait histogram: `min`, `min*factor`,
    /// ... up to `max` (`min > 0`, `factor > 1`).
    pub fn wait_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
        self.wait_exponential = Some((min, max, factor));
        self
    }

    /// Explicit bucket bounds of the duration histogram, in seconds (as for
    /// [`wait_buckets`](Self::wait_buckets)).
    pub fn duration_buckets(mut self, bounds: Vec<f64>) -> Self {
        self.duration_explicit = Some(bounds);
        self
    }

    /// Exponential bucket bounds of the duration histogram.
    pub fn duration_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
        self.duration_exponential = Some((min, max, factor));
        self
    }

    /// Attaches exemplars to the wait and duration histograms: `hook` is
    /// called at each submit, on the submitting thread, so it can read
    /// what identifies the request submitting the task (a trace id in a
    /// thread-local, or the current `tracing` span's), and the labels it
    /// returns go with the task. When the task starts, they become the
    /// exemplar of the wait's bucket; when it ends, of the duration's (by
    /// result), each with the observed value and the wall-clock time. Each
    /// bucket keeps its latest exemplar.
    ///
    /// `None` from the hook leaves that task without exemplars; labels
    /// [`ExemplarLabels::new`] refuses (over 128 characters, say) never get
    /// that far. A hook that panics is a bug of the hook: its task goes
    /// without exemplars, and this exporter does not call the hook again (a
    /// line on stderr says so), since each panic would print and may
    /// capture a backtrace on the submit path. So a hook that panics on
    /// some threads only (one with no trace id, say) turns the exporter's
    /// exemplars off everywhere: return `None` there instead. Built with
    /// `panic = "abort"`, its panic ends the process. A task records its exemplar
    /// without ever waiting: when a scrape or another task is writing the
    /// same bucket at that instant, it is skipped.
    ///
    /// Exemplars are written by the OpenMetrics exposition
    /// ([`MetricsServer`](crate::MetricsServer) built with
    /// `.openmetrics(true)`, or
    /// [`OpenMetricsEncoder::encode_with_exemplars`](crate::OpenMetricsEncoder::encode_with_exemplars))
    /// and by the server's protobuf one (feature `protobuf`); the text
    /// format has no place for them.
    /// Used by every task of the pools and proxies built with this
    /// exporter (thread pools, rayon, any
    /// [`InstrumentedExecutorProxy`](crate::InstrumentedExecutorProxy),
    /// whether through `submit`, `spawn`, `map` or [`Executor::execute`](crate::Executor::execute), and process pools,
    /// where the parent records them). Without a hook, nothing of it runs
    /// and a task costs what it did.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use executor_exporter::{ExemplarLabels, ThreadPoolExecutor};
    ///
    /// thread_local! {
    ///     // Set by the request handler, read by the hook on the same thread.
    ///     static TRACE_ID: RefCell<Option<String>> = const { RefCell::new(None) };
    /// }
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .exemplar(|| {
    ///         let id = TRACE_ID.with(|id| id.borrow().clone())?;
    ///         ExemplarLabels::new([("trace_id", id)])
    ///     })
    ///     .build()?;
    /// TRACE_ID.with(|id| *id.borrow_mut() = Some("4bf92f3577b34da6".into()));
    /// pool.submit(|| 2 + 2)?.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exemplar<H>(mut self, hook: H) -> Self
    where
        H: Fn() -> Option<ExemplarLabels> + Send + Sync + 'static,
    {
        self.exemplar = Some(ExemplarHook::new(hook));
        self
    }

    /// Also keep the wait and duration histograms as native histograms
    /// (sparse, exponential buckets) of `schema`, from -4 to 8: each power of
    /// two is split into `2^schema` buckets, so every bucket's upper bound is
    /// `2^(2^-schema)` times its lower one (schema 3: 8 buckets per power of
    /// two, each 9% wide; 8: 256, 0.3%). Off by default, and then recording
    /// costs nothing more.
    ///
    /// They are served in the protobuf exposition (`MetricsServer` with the
    /// `protobuf` feature, to a Prometheus run with
    /// `--enable-feature=native-histograms`) and handed to `prometheus-client`'s
    /// encoders, which write them in its protobuf format. Text and
    /// OpenMetrics text have no native histograms: they carry the classic
    /// buckets, kept alongside unless [`classic_buckets(false)`](Self::classic_buckets).
    /// A Prometheus that scrapes a native histogram keeps only it, unless its
    /// scrape config sets `scrape_classic_histograms: true`.
    ///
    /// Durations are whole nanoseconds: the zero bucket (threshold 2^-128 s)
    /// holds exactly the durations of 0. A histogram whose durations spread
    /// over more than 160 buckets is exposed at a lower schema (pairs of
    /// buckets merged, as often as needed), so a scrape stays small however
    /// spread the durations are; once lowered it stays lowered, as the
    /// counts only grow. Each recording thread keeps its counts in chunks of
    /// 64 buckets (at schemas 7 and 8, one chunk per power of two), allocated
    /// the first time a duration lands in one.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    ///
    /// let pool = ThreadPoolExecutor::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .native_histograms(3)
    ///     .build()?;
    /// assert_eq!(pool.exporter().native_histogram_schema(), Some(3));
    ///
    /// let err = ThreadPoolExecutor::builder()
    ///     .registry(prometheus::Registry::new())
    ///     .native_histograms(9)
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.is_buckets());
    /// assert!(err.to_string().contains("from -4 to 8"));
    /// # Ok::<(), executor_exporter::BuildError>(())
    /// ```
    pub fn native_histograms(mut self, schema: i8) -> Self {
        self.native_schema = Some(schema);
        self
    }

    /// Whether the wait and duration histograms expose their classic
    /// buckets (default `true`). Only with
    /// [`native_histograms`](Self::native_histograms): `false` without them
    /// is a build error, since the histograms would have no buckets. Without
    /// classic buckets the text expositions show each histogram's count and
    /// sum (and the `+Inf` bucket), and the protobuf one the native buckets
    /// alone, which halves the size of its histograms. The counts behind the
    /// task gauges are kept either way.
    ///
    /// ```
    /// use executor_exporter::ThreadPoolExecutor;
    /// use prometheus::Encoder;
    ///
    /// let registry = prometheus::Registry::new();
    /// let pool = ThreadPoolExecutor::builder()
    ///     .registry(registry.clone())
    ///     .native_histograms(3)
    ///     .classic_buckets(false)
    ///     .build()?;
    /// pool.submit(|| ())?.join()?;
    /// let mut text = Vec::new();
    /// executor_exporter::TextEncoder::new().encode(&registry.gather(), &mut text)?;
    /// let text = String::from_utf8(text)?;
    /// assert!(text.contains("executor_task_wait_seconds_count{"));
    /// assert!(!text.contains(r#"le="0.001""#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn classic_buckets(mut self, on: bool) -> Self {
        self.classic = Some(on);
        self
    }

    /// Checks the options, registers the families (once per registry and
    /// namespace) and resolves this exporter's series.
    ///
    /// Errors: bad buckets or namespace; a family of the same name with other
    /// labels or help already in the registry; an existing series with the
    /// same id and type but other buckets.
    pub fn build(self) -> Result<ExecutorExporter, BuildError> {
        // The task clock calibrates itself on first use; pay that here, not
        // in the first task's submit.
        let _ = crate::clock::Clock::now();
        let namespace = self.namespace.unwrap_or_else(|| "executor".to_owned());
        validate_namespace(&namespace)?;
        let wait = resolve_buckets(&self.wait_explicit, &self.wait_exponential, "wait buckets")?;
        let duration = resolve_buckets(
            &self.duration_explicit,
            &self.duration_exponential,
            "duration buckets",
        )?;
        let registry = self
            .registry
            .unwrap_or_else(|| prometheus::default_registry().clone());
        let id = self.exporter_id.unwrap_or_else(|| "default".to_owned());
        let ty = self.executor_type.unwrap_or_else(|| "custom".to_owned());
        let native = self.native_schema;
        if let Some(schema) = native.filter(|s| !(MIN_SCHEMA..=MAX_SCHEMA).contains(s)) {
            return Err(BuildError::new(BuildErrorKind::NativeHistograms(format!(
                "native_histograms({schema}): the schema must be from -4 to 8 (8 buckets per \
                 power of two at 3, 256 at 8); pick one in that range"
            ))));
        }
        let classic = self.classic.unwrap_or(true);
        if !classic && native.is_none() {
            return Err(BuildError::new(BuildErrorKind::NativeHistograms(
                "classic_buckets(false) without native_histograms(schema) leaves the histograms \
                 without buckets; turn native histograms on, or keep the classic buckets"
                    .to_owned(),
            )));
        }
        for (label, value) in [("exporter_id", &id), ("executor_type", &ty)] {
            if value.is_empty() {
                return Err(BuildError::new(BuildErrorKind::EmptyLabel(label)));
            }
        }

        let families = families_for(&registry, &namespace)?;
        let mut all = lock(&families.series);
        let series = match all.get(&(id.clone(), ty.clone())) {
            Some(existing) => {
                if existing.wait_bounds != wait || existing.duration_bounds != duration {
                    return Err(BuildError::new(BuildErrorKind::IncompatibleSeries(format!(
                        "exporter id {id:?} with type {ty:?} already exists in this registry with other buckets"
                    ))));
                }
                let theirs = existing.native.map(|layout| layout.schema());
                if theirs != native || existing.classic != classic {
                    return Err(BuildError::new(BuildErrorKind::IncompatibleSeries(
                        format!(
                        "exporter id {id:?} with type {ty:?} already exists in this registry with \
                         native_histograms {theirs:?} and classic_buckets({}); build this one with \
                         the same, or give it another id",
                        existing.classic
                    ),
                    )));
                }
                existing.clone()
            }
            None => {
                let series = Arc::new(Series::new(&id, &ty, wait, duration, native, classic));
                all.insert((id, ty), series.clone());
                series
            }
        };
        drop(all);
        if self.exemplar.is_some() {
            series.keep_exemplars();
        }
        Ok(ExecutorExporter {
            series,
            #[cfg(feature = "prometheus-client")]
            families,
            registry,
            namespace: namespace.into(),
            // Its own record of a panic: a builder cloned for another
            // exporter shares the hook, not that record.
            exemplar: self.exemplar.as_ref().map(ExemplarHook::for_exporter),
        })
    }
}

/// The exporter's options on the builder of an instrumented pool, which keeps
/// them in its field `exporter: ExecutorExporterBuilder`: every instrumented
/// builder has this one set of setters, forwarding to
/// [`ExecutorExporterBuilder`], and `executor_type` defaults to `$ty`.
macro_rules! exporter_options {
    ($ty:literal) => {
        /// All the exporter's options at once (id, type, registry, namespace,
        /// buckets), replacing any set before.
        #[doc = concat!("The type defaults to `", $ty, "`.")]
        #[must_use]
        pub fn exporter(mut self, exporter: $crate::metrics::ExecutorExporterBuilder) -> Self {
            self.exporter = exporter;
            self
        }

        /// See [`ExecutorExporterBuilder::exporter_id`](crate::ExecutorExporterBuilder::exporter_id).
        #[must_use]
        pub fn exporter_id(mut self, id: impl Into<String>) -> Self {
            self.exporter = self.exporter.exporter_id(id);
            self
        }

        #[doc = concat!(
            "See [`ExecutorExporterBuilder::executor_type`](crate::ExecutorExporterBuilder::executor_type) (default `",
            $ty,
            "`)."
        )]
        #[must_use]
        pub fn executor_type(mut self, ty: impl Into<String>) -> Self {
            self.exporter = self.exporter.executor_type(ty);
            self
        }

        /// See [`ExecutorExporterBuilder::registry`](crate::ExecutorExporterBuilder::registry).
        #[must_use]
        pub fn registry(mut self, registry: ::prometheus::Registry) -> Self {
            self.exporter = self.exporter.registry(registry);
            self
        }

        /// See [`ExecutorExporterBuilder::namespace`](crate::ExecutorExporterBuilder::namespace).
        #[must_use]
        pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
            self.exporter = self.exporter.namespace(namespace);
            self
        }

        /// See [`ExecutorExporterBuilder::wait_buckets`](crate::ExecutorExporterBuilder::wait_buckets).
        #[must_use]
        pub fn wait_buckets(mut self, bounds: Vec<f64>) -> Self {
            self.exporter = self.exporter.wait_buckets(bounds);
            self
        }

        /// See [`ExecutorExporterBuilder::wait_buckets_exponential`](crate::ExecutorExporterBuilder::wait_buckets_exponential).
        #[must_use]
        pub fn wait_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
            self.exporter = self.exporter.wait_buckets_exponential(min, max, factor);
            self
        }

        /// See [`ExecutorExporterBuilder::duration_buckets`](crate::ExecutorExporterBuilder::duration_buckets).
        #[must_use]
        pub fn duration_buckets(mut self, bounds: Vec<f64>) -> Self {
            self.exporter = self.exporter.duration_buckets(bounds);
            self
        }

        /// See [`ExecutorExporterBuilder::duration_buckets_exponential`](crate::ExecutorExporterBuilder::duration_buckets_exponential).
        #[must_use]
        pub fn duration_buckets_exponential(mut self, min: f64, max: f64, factor: f64) -> Self {
            self.exporter = self.exporter.duration_buckets_exponential(min, max, factor);
            self
        }

        /// See [`ExecutorExporterBuilder::exemplar`](crate::ExecutorExporterBuilder::exemplar).
        #[must_use]
        pub fn exemplar<H>(mut self, hook: H) -> Self
        where
            H: Fn() -> Option<$crate::ExemplarLabels> + Send + Sync + 'static,
        {
            self.exporter = self.exporter.exemplar(hook);
            self
        }

        /// See [`ExecutorExporterBuilder::native_histograms`](crate::ExecutorExporterBuilder::native_histograms).
        #[must_use]
        pub fn native_histograms(mut self, schema: i8) -> Self {
            self.exporter = self.exporter.native_histograms(schema);
            self
        }

        /// See [`ExecutorExporterBuilder::classic_buckets`](crate::ExecutorExporterBuilder::classic_buckets).
        #[must_use]
        pub fn classic_buckets(mut self, on: bool) -> Self {
            self.exporter = self.exporter.classic_buckets(on);
            self
        }
    };
}
pub(crate) use exporter_options;
