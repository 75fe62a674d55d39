//! A joiner reads its task's reply itself. When a submitting thread handed
//! a job straight to an idle worker and then waits for it, the worker's
//! reply wakes that thread directly: without this, it wakes the dispatcher
//! thread, which then wakes the joiner, one cross-CPU wake-up more per round
//! trip than a plain request and reply between two processes.
//!
//! The dispatcher does not watch the channel of a worker listed idle (its
//! pidfd tells it of a death). A joiner that finds its job still handed over
//! marks the channel as its own ([`Channel::reader`]) and reads it for at
//! most [`LEND_FOR`]; it ends the job if the reply comes, and lists the
//! worker idle again. Otherwise the dispatcher takes the job over (adopts
//! it, with what the joiner read) and the joiner waits as usual: when the
//! joiner gives up (its deadline, the bound, a report it does not expect, an
//! end of stream), and when the worker dies or the pool stops, whichever
//! comes first; every report is handled under the channel's lock by
//! whoever holds the job then, so each is handled once. A job that no
//! joiner reads is adopted when its handle is polled as a future or
//! dropped, or else when [`Shared::timer`] fires, at most [`UNREAD_AFTER`]
//! after it was handed over.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{deliver, record_start, Link, Shared};
use crate::process_pool::board::LOOK_EVERY;
use crate::process_pool::spin::joiner_spin;
use crate::process_pool::sys;
use crate::process_pool::wire::FromWorker;

/// How long a joiner reads its worker's channel before it leaves the job to the dispatcher: the
/// wake-up it saves matters for short tasks only. Waited in a receive, it lasts until the first
/// timeout past it (about a kernel tick).
pub(in crate::process_pool) const LEND_FOR: Duration = Duration::from_millis(1);
/// How near the caller's deadline must be for a joiner to wait in `poll`, exact to the millisecond,
/// rather than in a receive, whose timeout the kernel counts in ticks (a wait of 1 ms lasts about
/// two: 20 ms at 100 Hz).
const EXACT_WITHIN: Duration = Duration::from_millis(30);
/// How long after a job was handed over, at most, the dispatcher takes it over if no joiner reads
/// its reply. Each expiry wakes the dispatcher thread, also when every joiner read its reply, so
/// under a steady stream of joined tasks this is how often it wakes. A later take-over changes only
/// when the job's end is seen, not its times, which come from the worker.
pub(in crate::process_pool) const UNREAD_AFTER: Duration = Duration::from_millis(10);

/// A job a submitting thread handed to an idle worker, as its handle knows it.
#[derive(Debug)]
pub(crate) struct Lent {
    shared: Weak<Shared>,
    link: Weak<Link>,
    id: u64,
}

impl Lent {
    pub(in crate::process_pool) fn new(shared: &Arc<Shared>, link: &Arc<Link>, id: u64) -> Lent {
        Lent {
            shared: Arc::downgrade(shared),
            link: Arc::downgrade(link),
            id,
        }
    }

    /// The job's owner does not wait for it here: the dispatcher adopts it now rather than when
    /// the timer fires.
    pub(crate) fn let_go(self) {
        let (Some(shared), Some(link)) = (self.shared.upgrade(), self.link.upgrade()) else {
            return;
        };
        let unread = {
            let channel = link.channel();
            channel.reader.is_none() && channel.handed.as_ref().is_some_and(|h| h.id == self.id)
        };
        if unread {
            shared.wake.notify();
        }
    }

    /// Lists the worker idle again, after its job ended here, unless the dispatcher took it over
    /// meanwhile (it died, or the pool stops). Before the result is delivered, as the dispatcher
    /// does: the joiner's next submit can go to this worker directly. One that is dying is buried
    /// by the dispatcher, which its pidfd wakes; a job sent to it meanwhile is sent again.
    fn relist(&self, shared: &Shared, link: &Arc<Link>) {
        // The pool's lock first, as everywhere: the worker is listed idle under it.
        let mut inner = shared.lock();
        let mut channel = link.channel();
        if channel.reader != Some(self.id) {
            return;
        }
        channel.reader = None;
        inner.idle.push(Arc::clone(link));
        let backlog = inner.backlog;
        drop(channel);
        drop(inner);
        if backlog {
            shared.wake.notify();
        }
    }

    /// Reads the job's reply on this thread until the job ends, `deadline` or [`LEND_FOR`] passes,
    /// or the dispatcher takes it over; then the job is ended or the dispatcher's. With `spin`
    /// (the pool's low-latency mode), each wait for the channel polls it for up to `spin` before
    /// it blocks.
    pub(crate) fn read(self, deadline: Option<Instant>, spin: Duration) {
        let (Some(shared), Some(link)) = (self.shared.upgrade(), self.link.upgrade()) else {
            return;
        };
        let Some(pidfd) = link.pidfd.as_ref() else {
            return;
        };
        // A quiet job's start is on the board, which this thread looks at every `LOOK_EVERY`
        // until it sees it: a long task shows as running meanwhile.
        let mut unseen = {
            let mut channel = link.channel();
            let ours = channel
                .handed
                .as_ref()
                .is_some_and(|h| h.id == self.id && h.lendable);
            if !ours || channel.reader.is_some() {
                return;
            }
            channel.reader = Some(self.id);
            channel
                .handed
                .as_ref()
                .is_some_and(|h| h.quiet && !h.started)
        };
        // One clock read per wait: for the bound, the look at the board and the poll's timeout.
        let mut now = Instant::now();
        let bound = now.checked_add(shared.lend_for);
        let until = match (deadline, bound) {
            (Some(d), Some(b)) => Some(d.min(b)),
            (d, b) => d.or(b),
        };
        loop {
            let mut fds = [link.sock.as_raw_fd(), pidfd.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            if !spin.is_zero() {
                let mut look = fds;
                joiner_spin(spin, || sys::poll(&mut look, 0).is_ok_and(|n| n > 0));
            }
            // In a receive, which the socket's timeout ends after `LOOK_EVERY` (rounded up to
            // kernel ticks), unless the caller's deadline is near: then in `poll`, to the
            // millisecond. The pidfd is looked at when the receive found nothing (a worker that
            // died behind a forked child holding its socket says nothing there).
            let near = deadline.is_some_and(|d| d.saturating_duration_since(now) < EXACT_WITHIN);
            // An error of `poll` (EINTR, ENOMEM) only means a look at the channel now.
            let exited = if link.waits_in_recv && !near {
                !sys::wait_for_data(link.sock.as_fd()) && {
                    let _ = sys::poll(&mut fds, 0);
                    fds[1].revents != 0
                }
            } else {
                let look = unseen.then(|| now + LOOK_EVERY);
                let ms = match (until, look) {
                    (Some(u), Some(l)) => Some(u.min(l)),
                    (u, l) => u.or(l),
                }
                .map_or(-1, |until| {
                    let left = until.saturating_duration_since(now);
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                });
                let _ = sys::poll(&mut fds, ms);
                fds[1].revents != 0
            };
            let mut guard = link.channel();
            let channel = &mut *guard;
            if channel.reader != Some(self.id) {
                return; // taken over: the worker died, or the pool stops
            }
            let Some(handed) = channel.handed.as_mut() else {
                // Not reached: a job read by its joiner stays handed over until it ends here.
                channel.reader = None;
                return;
            };
            let mut eof = false;
            loop {
                match channel.frames.recv(link.sock.as_fd(), sys::Wait::No) {
                    Ok((0, _)) => {
                        eof = true;
                        break;
                    }
                    Ok((_, filled)) => {
                        if !filled {
                            break; // all there was: no second call to learn it
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            // Only this job's reports are handled here; anything else stays for the dispatcher.
            let mut outcome = None;
            let mut odd = false;
            loop {
                match channel.frames.peek_message::<FromWorker>() {
                    Ok(Some((FromWorker::Started { id, at }, len)))
                        if id == self.id && !handed.started =>
                    {
                        channel.frames.consume(len);
                        #[cfg(all(test, not(loom)))]
                        link.started_frames
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        record_start(
                            &mut handed.job,
                            sys::nanos_ago(at),
                            &mut handed.started,
                            &mut handed.discard,
                            &mut handed.started_at,
                        );
                    }
                    Ok(Some((
                        FromWorker::Finished {
                            id,
                            outcome: ended,
                            ended_at,
                        },
                        len,
                    ))) if id == self.id => {
                        channel.frames.consume(len);
                        outcome = Some((ended, ended_at));
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) => {
                        odd = true;
                        break;
                    }
                }
            }
            // Before the job ends or is left to the dispatcher: a quiet job that ended started, and
            // a long one is seen running by the time this thread stops reading.
            handed.look(link.board.as_ref());
            unseen = handed.quiet && !handed.started;
            // The job is this thread's once it ended; the channel stays marked as read by it, so
            // the dispatcher takes the worker for neither a job nor an adoption meanwhile.
            let ended =
                outcome.and_then(|outcome| channel.handed.take().map(|handed| (outcome, handed)));
            if let Some(((outcome, ended_at), handed)) = ended {
                drop(guard);
                #[cfg(all(test, not(loom)))]
                crate::process_pool::tests::relist_hook(&handed.job.spec.task);
                self.relist(&shared, &link);
                deliver(
                    handed.job,
                    handed.started,
                    handed.discard,
                    outcome,
                    ended_at,
                );
                return;
            }
            now = Instant::now();
            if odd || eof || exited || until.is_some_and(|u| now >= u) {
                channel.reader = None;
                drop(guard);
                shared.wake.notify();
                return;
            }
        }
    }
}
