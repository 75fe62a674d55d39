//! The lazy, bounded, ordered iterator returned by `map`.

use std::fmt;
use std::marker::PhantomData;

use crate::error::TaskError;
use crate::executor::Executor;
use crate::task::{Ordered, SubmitOne};

/// Results of [`InstrumentedExecutorProxy::map`](crate::InstrumentedExecutorProxy::map), in input order.
///
/// Each item is its own task, with its own submit time and counts. Input is
/// read lazily: at most `in_flight` items are submitted and not yet yielded
/// (they are submitted when the iterator is created, so work starts at once).
/// A failed item yields its error and iteration carries on. An item that
/// finds the executor's bounded queue full waits for room and is submitted
/// then (not counted as rejected), unless the map runs on one of the
/// executor's own threads, where that item yields
/// [`TaskError::Rejected`] and the map goes on. If the executor refuses an
/// item for good (shut down, broken), that item yields its error and no
/// further input is read. Dropping the iterator cancels the items that have
/// not started.
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
pub struct Map<'a, E: Executor, F, I: Iterator, T> {
    inner: Ordered<I, Box<dyn SubmitOne<I::Item, Value = T> + 'a>, T>,
    /// The proxy (of executor `E`) and the function `F` live in the
    /// submitter; named here so the type says what it maps.
    _submitter: PhantomData<Named<'a, E, F>>,
}

/// What a [`Map`]'s type names but its submitter holds.
type Named<'a, E, F> = (&'a E, fn() -> F);

impl<'a, E, F, I, T> Map<'a, E, F, I, T>
where
    E: Executor,
    I: Iterator,
{
    /// The map of `items` through `submit` (the proxy's, for `f`), with at
    /// most `in_flight` items submitted and not yet yielded.
    pub(crate) fn new(
        submit: impl SubmitOne<I::Item, Value = T> + 'a,
        items: I,
        in_flight: usize,
    ) -> Self {
        Map {
            inner: Ordered::new(items, in_flight, Box::new(submit)),
            _submitter: PhantomData,
        }
    }
}

impl<E, F, I, T> Iterator for Map<'_, E, F, I, T>
where
    E: Executor,
    I: Iterator,
{
    type Item = Result<T, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<E: Executor, F, I: Iterator, T> fmt::Debug for Map<'_, E, F, I, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map")
            .field("pending", &self.inner.pending())
            .field("in_flight", &self.inner.in_flight())
            .field("input_exhausted", &self.inner.inputs_exhausted())
            .finish_non_exhaustive()
    }
}
