//! The start board: a few words of memory shared with one worker, where the worker records the start
//! of each task it runs, without a system call.
//!
//! A task handed to an idle worker whose joiner reads the reply would otherwise cost the worker a
//! `Started` frame before it runs: one more send, which wakes the joiner for a report it does not
//! need yet. For such a task the pool marks its id "quiet" on the board before sending it; the
//! worker then records the start on the board instead, and whoever holds the job reads it there:
//! the joiner when the reply comes or when it stops reading, the dispatcher when it takes the job
//! over, while it waits (at least every [`LOOK_EVERY`]), and when the worker dies (a task that
//! started is not sent again). The board also holds the start's time, so the wait and the duration
//! are those the worker saw.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::sys::{self, SharedPage};

/// How often the dispatcher looks at the board of a worker whose quiet job has not started yet; also
/// the receive timeout that ends each wait of a joiner reading its reply, which then looks at it.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(1);

/// The id of the last task the worker started.
const STARTED: usize = 0;
/// When it started ([`sys::monotonic_nanos`]).
const STARTED_AT: usize = 1;
/// The id of a task whose start the worker records here only, without a `Started` frame.
const QUIET: usize = 2;

/// One worker's board.
pub(crate) struct StartBoard(SharedPage);

/// How task `id` is written on a board: never 0, which a new board holds (0 for the one id that
/// cannot be written, which is then never quiet nor seen started here).
fn key(id: u64) -> u64 {
    id.wrapping_add(1)
}

impl StartBoard {
    /// A new board and the descriptor the worker opens it from.
    pub(crate) fn create() -> io::Result<(StartBoard, OwnedFd)> {
        let (page, fd) = SharedPage::create()?;
        Ok((StartBoard(page), fd))
    }

    /// The worker's side: the board on descriptor `fd`, which is closed here. `None` if `fd` holds
    /// no board: the worker then sends every `Started` frame.
    pub(crate) fn open(fd: RawFd) -> Option<StartBoard> {
        if !sys::is_shared_page(fd) {
            return None;
        }
        let page = SharedPage::map(fd).ok();
        sys::close(fd);
        page.map(StartBoard)
    }

    /// The pool's side, before it sends task `id`: the worker records its start here only.
    pub(crate) fn make_quiet(&self, id: u64) {
        self.0.word(QUIET).store(key(id), Ordering::Release);
    }

    /// The pool's side: how long ago task `id` started, if it did (it is the worker's last).
    pub(crate) fn started(&self, id: u64) -> Option<Duration> {
        let started = self.0.word(STARTED);
        let id = key(id);
        if id == 0 || started.load(Ordering::Acquire) != id {
            return None;
        }
        let at = self.0.word(STARTED_AT).load(Ordering::Acquire);
        // The worker moved on to another task meanwhile: the time read may be that one's.
        if started.load(Ordering::Acquire) != id {
            return None;
        }
        Some(sys::nanos_ago(at))
    }

    /// The worker's side, before it runs task `id`: records its start, at `at`
    /// ([`sys::monotonic_nanos`]); true if the pool also needs a `Started` frame.
    pub(crate) fn start(&self, id: u64, at: u64) -> bool {
        // The id last, so that a reader who sees it sees the time; the previous id is cleared
        // first, so none pairs with this time.
        self.0.word(STARTED).store(0, Ordering::Release);
        self.0.word(STARTED_AT).store(at, Ordering::Release);
        let id = key(id);
        self.0.word(STARTED).store(id, Ordering::Release);
        id == 0 || self.0.word(QUIET).load(Ordering::Acquire) != id
    }
}
