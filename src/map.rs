//! The lazy, bounded, ordered iterator returned by `map`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::error::TaskError;
use crate::executor::Executor;
use crate::proxy::{ClassifyFn, InstrumentedExecutorProxy};
use crate::task::TaskHandle;

/// Results of [`InstrumentedExecutorProxy::map`], in input order.
///
/// Each item is its own task, with its own submit time and counts. Input is
/// read lazily: at most `in_flight` items are submitted and not yet yielded
/// (they are submitted when the iterator is created, so work starts at once).
/// A failed item yields its error and iteration carries on. If the executor
/// refuses an item, that item yields [`TaskError::Rejected`] and no further
/// input is read. Dropping the iterator cancels the items that have not
/// started.
///
/// So a `map` whose result is never iterated does (almost) nothing: the
/// compiler warns about it, and with `#![deny(unused_must_use)]` refuses it.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// # use executor_exporter::ThreadPoolExecutor;
/// # let pool = ThreadPoolExecutor::builder()
/// #     .registry(executor_exporter::prometheus::Registry::new())
/// #     .build()
/// #     .unwrap();
/// pool.map(|x: u64| x * x, 0..5); // error: unused `Map` that must be used
/// ```
///
/// Iterate it instead:
///
/// ```
/// #![deny(unused_must_use)]
/// # use executor_exporter::ThreadPoolExecutor;
/// # let pool = ThreadPoolExecutor::builder()
/// #     .registry(executor_exporter::prometheus::Registry::new())
/// #     .build()
/// #     .unwrap();
/// let squares: Vec<u64> = pool.map(|x: u64| x * x, 0..5).map(Result::unwrap).collect();
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// ```
#[must_use = "the map is lazy: iterate it (`.collect()`, `for`) or only the first few items are submitted, and those not yet started are cancelled"]
pub struct Map<'a, E: Executor, F, I, T> {
    proxy: &'a InstrumentedExecutorProxy<E>,
    f: Arc<F>,
    items: Option<I>,
    pending: VecDeque<Result<TaskHandle<T>, TaskError>>,
    in_flight: usize,
    classify: ClassifyFn<T>,
}

impl<'a, E, F, I, T> Map<'a, E, F, I, T>
where
    E: Executor,
    F: Fn(I::Item) -> T + Send + Sync + 'static,
    I: Iterator,
    I::Item: Send + 'static,
    T: Send + 'static,
{
    pub(crate) fn new(
        proxy: &'a InstrumentedExecutorProxy<E>,
        f: F,
        items: I,
        in_flight: usize,
        classify: ClassifyFn<T>,
    ) -> Self {
        let mut map = Map {
            proxy,
            f: Arc::new(f),
            items: Some(items),
            pending: VecDeque::with_capacity(in_flight),
            in_flight,
            classify,
        };
        map.fill();
        map
    }

    fn fill(&mut self) {
        while self.pending.len() < self.in_flight {
            let Some(item) = self.items.as_mut().and_then(Iterator::next) else {
                self.items = None;
                return;
            };
            let f = self.f.clone();
            let handle = self
                .proxy
                .submit_classified(move || f(item), self.classify)
                .map_err(|e| TaskError::Rejected(e.reason()));
            if handle.is_err() {
                self.items = None;
            }
            self.pending.push_back(handle);
        }
    }
}

impl<E, F, I, T> Iterator for Map<'_, E, F, I, T>
where
    E: Executor,
    F: Fn(I::Item) -> T + Send + Sync + 'static,
    I: Iterator,
    I::Item: Send + 'static,
    T: Send + 'static,
{
    type Item = Result<T, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.pending.pop_front()?;
        self.fill();
        Some(next.and_then(TaskHandle::join))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.items {
            None => (self.pending.len(), Some(self.pending.len())),
            Some(items) => {
                let (lo, hi) = items.size_hint();
                let n = self.pending.len();
                (n.saturating_add(lo), hi.and_then(|h| h.checked_add(n)))
            }
        }
    }
}

impl<E: Executor, F, I, T> Drop for Map<'_, E, F, I, T> {
    fn drop(&mut self) {
        for handle in self.pending.drain(..).flatten() {
            handle.cancel();
        }
    }
}

impl<E: Executor, F, I, T> fmt::Debug for Map<'_, E, F, I, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight)
            .field("input_exhausted", &self.items.is_none())
            .finish_non_exhaustive()
    }
}
