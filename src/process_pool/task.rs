//! Declaring tasks and registering them in the worker.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{Blob, WireOutcome};

/// A task that can run in a worker process.
///
/// Closures cannot cross a process boundary, so a process-pool task is a type with a stable name, serde
/// input and output types, and a plain function. The pool sends the name and the encoded input; the
/// worker looks the name up in its [`WorkerRegistry`] and runs [`run`](ProcessTask::run).
///
/// ```
/// use executor_exporter::process_pool::ProcessTask;
///
/// struct Square;
/// impl ProcessTask for Square {
///     const NAME: &'static str = "square";
///     type Input = u64;
///     type Output = u64;
///     type Error = String;
///     fn run(x: u64) -> Result<u64, String> {
///         x.checked_mul(x).ok_or_else(|| format!("{x}² overflows"))
///     }
/// }
/// ```
///
/// A panic in `run` is caught in the worker and reported with its message; the worker stays. A task that
/// aborts, exits or is killed takes its worker down: only that task fails and the worker is replaced.
pub trait ProcessTask: 'static {
    /// The name the task is registered and called under; unique within a registry and stable between
    /// the pool and its workers (they run the same binary).
    const NAME: &'static str;
    /// The argument, encoded in the caller and decoded in the worker.
    type Input: Serialize + DeserializeOwned;
    /// The result, encoded in the worker and decoded in the caller.
    type Output: Serialize + DeserializeOwned;
    /// The task's own error; its `Display` text travels with it. `String` works.
    type Error: Serialize + DeserializeOwned + fmt::Display;
    /// Runs the task, in the worker process.
    fn run(input: Self::Input) -> Result<Self::Output, Self::Error>;
}

/// The type-erased entry of a registered task: encoded input in, outcome out. Never unwinds.
pub(crate) type Runner = fn(&[u8]) -> WireOutcome;

/// The tasks a worker process can run, built explicitly at the top of `main` and handed to
/// [`run_if_worker`](super::run_if_worker).
///
/// ```
/// # use executor_exporter::process_pool::{ProcessTask, WorkerRegistry};
/// # struct Square;
/// # impl ProcessTask for Square {
/// #     const NAME: &'static str = "square";
/// #     type Input = u64; type Output = u64; type Error = String;
/// #     fn run(x: u64) -> Result<u64, String> { Ok(x * x) }
/// # }
/// let registry = WorkerRegistry::new().register::<Square>();
/// assert!(registry.contains("square"));
/// ```
///
/// Registering two tasks under one name is a programming error: the worker refuses to start (its
/// handshake fails with a message naming the task), so the pool reports it instead of running the wrong
/// function.
#[derive(Default)]
pub struct WorkerRegistry {
    tasks: HashMap<&'static str, Runner>,
    duplicates: Vec<&'static str>,
}

impl WorkerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds task `T` under [`T::NAME`](ProcessTask::NAME).
    #[must_use]
    pub fn register<T: ProcessTask>(mut self) -> Self {
        if self.tasks.insert(T::NAME, run_erased::<T>).is_some() {
            self.duplicates.push(T::NAME);
        }
        self
    }

    /// Whether a task of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// The registered task names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.tasks.keys().copied().collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn get(&self, name: &str) -> Option<Runner> {
        self.tasks.get(name).copied()
    }

    /// Why this registry cannot serve, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.duplicates.is_empty() {
            return None;
        }
        let mut names = self.duplicates.clone();
        names.sort_unstable();
        names.dedup();
        Some(format!(
            "task names registered more than once in the worker registry: {}",
            names.join(", ")
        ))
    }
}

impl fmt::Debug for WorkerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerRegistry")
            .field("tasks", &self.names())
            .finish()
    }
}

/// Decodes, runs and encodes task `T`, turning every panic (in `run`, in serde code, in `Display`) into
/// an outcome.
fn run_erased<T: ProcessTask>(input: &[u8]) -> WireOutcome {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let input: T::Input = match postcard::from_bytes(input) {
            Ok(v) => v,
            Err(e) => {
                return WireOutcome::DecodeFailed(format!(
                    "cannot decode the input of task `{}`: {e}",
                    T::NAME
                ))
            }
        };
        match T::run(input) {
            Ok(out) => match postcard::to_stdvec(&out) {
                Ok(bytes) => WireOutcome::Ok(Blob(bytes.into())),
                Err(e) => WireOutcome::EncodeFailed(format!(
                    "cannot encode the output of task `{}`: {e}",
                    T::NAME
                )),
            },
            Err(err) => {
                let display = err.to_string();
                match postcard::to_stdvec(&err) {
                    Ok(bytes) => WireOutcome::Err {
                        payload: Blob(bytes.into()),
                        display,
                    },
                    Err(e) => WireOutcome::EncodeFailed(format!(
                        "cannot encode the error of task `{}` ({display}): {e}",
                        T::NAME
                    )),
                }
            }
        }
    }));
    result.unwrap_or_else(|panic| WireOutcome::Panicked(panic_message(panic.as_ref())))
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
