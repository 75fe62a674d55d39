//! Declaring tasks and registering them in the worker.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{Blob, Bytes, WireOutcome};
use crate::error::panic_message;

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

/// Task names starting with this byte are reserved for the pool's own derived tasks; a user task may not
/// be registered under one (the worker refuses to start, like for a duplicate name).
pub(crate) const RESERVED_PREFIX: char = '\0';

/// The prefix of the derived name a chunk of task `T` is sent under: `"\0chunk:" + T::NAME`. It starts
/// with [`RESERVED_PREFIX`], so it cannot collide with a user task's name.
pub(crate) const CHUNK_PREFIX: &str = "\0chunk:";

/// The name a chunk of `T` is sent under (see [`CHUNK_PREFIX`]).
pub(crate) fn chunk_name<T: ProcessTask>() -> String {
    let mut name = String::with_capacity(CHUNK_PREFIX.len() + T::NAME.len());
    name.push_str(CHUNK_PREFIX);
    name.push_str(T::NAME);
    name
}

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
///
/// Registering a task also registers how to run a *chunk* of it (several inputs in one round trip, for
/// [`ProcessPoolExecutor::map_chunked`](super::ProcessPoolExecutor::map_chunked)), under a derived name
/// that starts with a NUL byte. Names starting with a NUL byte are reserved: registering one is refused
/// the same way as a duplicate.
#[derive(Default)]
pub struct WorkerRegistry {
    tasks: HashMap<&'static str, Runner>,
    chunks: HashMap<&'static str, Runner>,
    duplicates: Vec<&'static str>,
    reserved: Vec<&'static str>,
}

impl WorkerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds task `T` under [`T::NAME`](ProcessTask::NAME).
    #[must_use]
    pub fn register<T: ProcessTask>(mut self) -> Self {
        if T::NAME.starts_with(RESERVED_PREFIX) {
            self.reserved.push(T::NAME);
            return self;
        }
        if self.tasks.insert(T::NAME, run_erased::<T>).is_some() {
            self.duplicates.push(T::NAME);
        }
        self.chunks.insert(T::NAME, run_chunk_erased::<T>);
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

    /// The runner of a task, or of a chunk of a task when `name` is a derived chunk name.
    pub(crate) fn get(&self, name: &str) -> Option<Runner> {
        match name.strip_prefix(CHUNK_PREFIX) {
            Some(task) => self.chunks.get(task).copied(),
            None => self.tasks.get(name).copied(),
        }
    }

    /// Why this registry cannot serve, if it cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if !self.reserved.is_empty() {
            let names: Vec<String> = self.reserved.iter().map(|n| format!("{n:?}")).collect();
            return Some(format!(
                "task names starting with a NUL byte are reserved for the pool: {}",
                names.join(", ")
            ));
        }
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
                Ok(bytes) => WireOutcome::Ok(Bytes(bytes)),
                Err(e) => WireOutcome::EncodeFailed(format!(
                    "cannot encode the output of task `{}`: {e}",
                    T::NAME
                )),
            },
            Err(err) => {
                let display = err.to_string();
                match postcard::to_stdvec(&err) {
                    Ok(bytes) => WireOutcome::Err {
                        payload: Bytes(bytes),
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

/// Runs a chunk of task `T`: the input is a sequence of items, each the postcard encoding of one
/// `T::Input` (encoded separately, so one bad item fails alone); the output is `Ok` with the encoded
/// `Vec<WireOutcome>`, one outcome per item in order, each as [`run_erased`] gives it (a panic, an
/// `Err` or a decoding failure is that item's outcome; the next items still run).
fn run_chunk_erased<T: ProcessTask>(input: &[u8]) -> WireOutcome {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let items: Vec<Blob<'_>> = match postcard::from_bytes(input) {
            Ok(v) => v,
            Err(e) => {
                return WireOutcome::DecodeFailed(format!(
                    "cannot decode a chunk of task `{}`: {e}",
                    T::NAME
                ))
            }
        };
        let outcomes: Vec<WireOutcome> =
            items.iter().map(|item| run_erased::<T>(&item.0)).collect();
        match postcard::to_stdvec(&outcomes) {
            Ok(bytes) => WireOutcome::Ok(Bytes(bytes)),
            Err(e) => WireOutcome::EncodeFailed(format!(
                "cannot encode the results of a chunk of task `{}`: {e}",
                T::NAME
            )),
        }
    }));
    result.unwrap_or_else(|panic| WireOutcome::Panicked(panic_message(panic.as_ref())))
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    struct Half;
    impl ProcessTask for Half {
        const NAME: &'static str = "half";
        type Input = u32;
        type Output = u32;
        type Error = String;
        fn run(x: u32) -> Result<u32, String> {
            match x {
                0 => panic!("zero"),
                x if x % 2 == 1 => Err(format!("{x} is odd")),
                x => Ok(x / 2),
            }
        }
    }

    struct Reserved;
    impl ProcessTask for Reserved {
        const NAME: &'static str = "\0chunk:half";
        type Input = ();
        type Output = ();
        type Error = String;
        fn run((): ()) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_chunk_runs_each_item_alone() {
        let registry = WorkerRegistry::new().register::<Half>();
        assert_eq!(registry.names(), ["half"]);
        assert!(!registry.contains(&chunk_name::<Half>()));
        let runner = registry.get(&chunk_name::<Half>()).expect("chunk runner");
        let items: Vec<Blob<'static>> = [4u32, 3, 0, 8]
            .iter()
            .map(|x| Blob(postcard::to_stdvec(x).unwrap().into()))
            .chain([Blob(Vec::new().into())]) // undecodable: fails alone
            .collect();
        let WireOutcome::Ok(bytes) = runner(&postcard::to_stdvec(&items).unwrap()) else {
            panic!("a chunk returns Ok with the per-item outcomes")
        };
        let outcomes: Vec<WireOutcome> = postcard::from_bytes(&bytes.0).unwrap();
        assert_eq!(outcomes.len(), 5);
        assert_eq!(outcomes[0], WireOutcome::Ok(Bytes(vec![2])));
        assert!(matches!(&outcomes[1], WireOutcome::Err { display, .. } if display == "3 is odd"));
        assert_eq!(outcomes[2], WireOutcome::Panicked("zero".to_owned()));
        assert_eq!(outcomes[3], WireOutcome::Ok(Bytes(vec![4])));
        assert!(matches!(&outcomes[4], WireOutcome::DecodeFailed(_)));
        // A corrupt chunk is one decoding failure.
        assert!(matches!(runner(&[0xff]), WireOutcome::DecodeFailed(_)));
    }

    #[test]
    fn names_starting_with_nul_are_reserved() {
        let registry = WorkerRegistry::new()
            .register::<Half>()
            .register::<Reserved>();
        let problem = registry.problem().expect("a reserved name is refused");
        assert!(problem.contains("reserved"), "{problem}");
        assert!(WorkerRegistry::new().register::<Half>().problem().is_none());
    }
}
