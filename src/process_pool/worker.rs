//! The worker side: the `main` hook and the request loop.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::board::StartBoard;
use super::spin::SpinState;
use super::sys;
use super::task::{Runner, WorkerRegistry};
use super::wire::{
    self, FrameReader, FromWorker, ToWorker, WireOutcome, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

/// Set (to the channel's descriptor number) in the environment of every worker the pool starts.
pub(crate) const ENV_WORKER: &str = "EXECUTOR_EXPORTER_PROCESS_WORKER";
/// The maximum frame size, so the worker checks frames against the same bound as the pool.
pub(crate) const ENV_MAX_FRAME: &str = "EXECUTOR_EXPORTER_PROCESS_MAX_FRAME";
/// How long, in nanoseconds, the worker polls its channel for the next task before it blocks.
pub(crate) const ENV_SPIN: &str = "EXECUTOR_EXPORTER_PROCESS_SPIN_NS";
/// The descriptor of the worker's start board ([`StartBoard`]), if the pool made one.
pub(crate) const ENV_BOARD: &str = "EXECUTOR_EXPORTER_PROCESS_BOARD_FD";
/// The descriptor the worker's end of the channel is placed on.
pub(crate) const CHANNEL_FD: i32 = 3;

/// Exit code of a worker whose channel is unusable (missing, corrupt frames, protocol violation).
const EXIT_PROTOCOL: i32 = 70;

/// Turns this process into a worker if the pool started it as one; otherwise returns at once.
///
/// Call it first thing in `main`, with every task the pool may ask for, before anything else runs (the
/// worker is the same binary re-executed, so whatever `main` does before this call happens in every
/// worker too). In a worker it never returns: it serves tasks until the pool shuts it down, then exits
/// the process.
///
/// ```no_run
/// use executor_exporter::process_pool::{run_if_worker, ProcessTask, WorkerRegistry};
/// # struct Square;
/// # impl ProcessTask for Square {
/// #     const NAME: &'static str = "square";
/// #     type Input = u64; type Output = u64; type Error = String;
/// #     fn run(x: u64) -> Result<u64, String> { Ok(x * x) }
/// # }
///
/// fn main() {
///     run_if_worker(&WorkerRegistry::new().register::<Square>());
///     // ... the program proper: build a ProcessPool and submit Square tasks ...
/// }
/// ```
///
/// Under `cargo test` the test binary is the worker: put the call in a dedicated test and point the
/// pool at it with [`ProcessPoolBuilder::worker_test_entry`](super::ProcessPoolBuilder::worker_test_entry):
///
/// ```no_run
/// # use executor_exporter::process_pool::{run_if_worker, WorkerRegistry};
/// # fn registry() -> WorkerRegistry { WorkerRegistry::new() }
/// #[test]
/// fn worker_entry() {
///     run_if_worker(&registry()); // returns at once when the harness runs it as a test
/// }
/// ```
///
/// The worker talks to the pool over a socket on descriptor 3; stdout and stderr are the pool process's
/// own, free for the tasks' output. The marker variables are removed from the worker's environment so
/// processes it starts are not mistaken for workers.
pub fn run_if_worker(registry: &WorkerRegistry) {
    let Some(value) = std::env::var_os(ENV_WORKER) else {
        return;
    };
    let max_frame = std::env::var(ENV_MAX_FRAME)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_FRAME);
    // Removing variables races with threads reading the environment; at the top of `main` there are none
    // yet, and under the test harness the entry test runs alone (`--test-threads=1`).
    let spin = std::env::var(ENV_SPIN)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos);
    let board_fd = std::env::var(ENV_BOARD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&fd| fd > CHANNEL_FD);
    std::env::remove_var(ENV_WORKER);
    std::env::remove_var(ENV_MAX_FRAME);
    std::env::remove_var(ENV_SPIN);
    std::env::remove_var(ENV_BOARD);
    if value.to_str() != Some(&CHANNEL_FD.to_string()) || !sys::is_socket(CHANNEL_FD) {
        eprintln!(
            "executor-exporter: {ENV_WORKER} is set but descriptor {CHANNEL_FD} is not a pool \
             channel; this process was not started by a process pool"
        );
        exit(EXIT_PROTOCOL);
    }
    let fd = sys::borrow_channel_fd(CHANNEL_FD);
    // Processes the tasks start must not inherit the channel (they would keep it open past our exit).
    let _ = sys::set_cloexec(CHANNEL_FD, true);
    let board = board_fd.and_then(StartBoard::open);
    exit(serve(fd, registry, max_frame, spin, board.as_ref()));
}

/// The error of building a process pool in a worker that never called [`run_if_worker`]: the program
/// re-entered `main` and would start workers of its own, each doing the same (a process storm). Also
/// tells the pool that started this process, over the channel, so it fails at once with these words
/// instead of starting more workers. `None` outside workers.
pub(crate) fn forgotten_hook() -> Option<String> {
    std::env::var_os(ENV_WORKER)?;
    let message = "this process is a process-pool worker that did not call `run_if_worker`, so it \
                   cannot start workers of its own: add `run_if_worker(&registry)` as the first line \
                   of `main` (under `cargo test`: in the test that `worker_test_entry` names)"
        .to_owned();
    if sys::is_socket(CHANNEL_FD) {
        let msg = FromWorker::HookMissing(message.clone());
        if let Ok(frame) = wire::encode_frame(&msg, DEFAULT_MAX_FRAME) {
            let _ = sys::send_all(sys::borrow_channel_fd(CHANNEL_FD), &frame);
        }
    }
    Some(message)
}

/// Whether the current process was started as a pool worker (and has not yet entered [`run_if_worker`]).
pub fn is_worker_process() -> bool {
    std::env::var_os(ENV_WORKER).is_some()
}

/// A frame from the pool was unusable: a bug or a version skew, worth a line on stderr.
fn protocol_error(e: &wire::FrameError) -> i32 {
    eprintln!("executor-exporter worker {}: {e}", std::process::id());
    EXIT_PROTOCOL
}

fn exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Sends a message; a failed send means the pool is gone, so the worker exits quietly.
fn send(fd: BorrowedFd<'_>, msg: &FromWorker, max_frame: usize) {
    Outbox::default().send(fd, msg, max_frame);
}

/// Encodes the worker's messages into one buffer, kept from frame to frame.
#[derive(Default)]
struct Outbox {
    frame: Vec<u8>,
}

impl Outbox {
    /// Sends a message; a failed send means the pool is gone, so the worker exits quietly.
    fn send(&mut self, fd: BorrowedFd<'_>, msg: &FromWorker, max_frame: usize) {
        if let Err(e) = wire::encode_frame_into(msg, max_frame, &mut self.frame) {
            // Only a `Finished` can be too large; report that instead of the result.
            let FromWorker::Finished { id, ended_at, .. } = msg else {
                exit(EXIT_PROTOCOL)
            };
            let fallback = FromWorker::Finished {
                id: *id,
                ended_at: *ended_at,
                outcome: WireOutcome::EncodeFailed(format!("the task's result: {e}")),
            };
            if wire::encode_frame_into(&fallback, max_frame, &mut self.frame).is_err() {
                exit(EXIT_PROTOCOL)
            }
        }
        if sys::send_all(fd, &self.frame).is_err() {
            exit(0);
        }
        if self.frame.capacity() > KEEP_FRAME {
            // One large result does not pin its memory for the worker's life.
            self.frame = Vec::new();
        }
    }
}

/// The largest send buffer a worker keeps between frames.
const KEEP_FRAME: usize = 64 << 10;

/// The worker's end of the channel. Frames are read as they arrive, several in one `recv` when the
/// pool sent several (it may send the next tasks while one runs).
struct Inbox<'a> {
    fd: BorrowedFd<'a>,
    reader: FrameReader,
    /// How long to poll for a frame before blocking.
    spin: Duration,
    spinning: SpinState,
}

impl Inbox<'_> {
    /// Waits for the next whole frame: its length, left in the reader for
    /// [`FrameReader::decode`] then [`FrameReader::consume`]; or the exit code: 0 at end of stream
    /// (the pool is gone), `EXIT_PROTOCOL` for a frame over the maximum size.
    fn next_frame(&mut self) -> Result<usize, i32> {
        loop {
            match self.reader.whole_frame() {
                Ok(Some(len)) => return Ok(len),
                Ok(None) => {}
                Err(e) => return Err(protocol_error(&e)),
            }
            let fd = self.fd;
            // Blocked in the receive itself, as the floor of a round trip is (see
            // `sys::wait_for_data`): the socket has no receive timeout, so this ends with data or
            // the end of stream.
            let wait = if self.spinning.spin(self.spin, || sys::readable_now(fd)) {
                sys::Wait::No
            } else {
                sys::Wait::Yes
            };
            match self.reader.recv(fd, wait) {
                Ok((0, _)) => return Err(0),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(0),
            }
        }
    }

    /// The next message, decoded in place: `Err` holds the exit code, as for
    /// [`next_frame`](Self::next_frame), or `EXIT_PROTOCOL` for a frame that is not a message.
    fn next(&mut self) -> Result<(ToWorker<'_>, usize), i32> {
        let len = self.next_frame()?;
        match self.reader.decode(len) {
            Ok(msg) => Ok((msg, len)),
            Err(e) => Err(protocol_error(&e)),
        }
    }
}

/// The worker's life: handshake, then one task at a time. Returns the exit code.
/// With a `board`, a task's start is recorded there, and sent as a `Started` frame too unless the pool
/// made the task quiet.
fn serve(
    fd: BorrowedFd<'_>,
    registry: &WorkerRegistry,
    max_frame: usize,
    spin: Duration,
    board: Option<&StartBoard>,
) -> i32 {
    let mut inbox = Inbox {
        fd,
        reader: FrameReader::new(max_frame),
        spin,
        spinning: SpinState::default(),
    };
    let mut outbox = Outbox::default();
    let (init, len) = match inbox.next() {
        Ok((ToWorker::Hello { version, init }, len)) if version == PROTOCOL_VERSION => (init, len),
        Ok((ToWorker::Hello { version, .. }, _)) => {
            let msg = format!(
                "worker speaks protocol version {PROTOCOL_VERSION}, the pool speaks {version}"
            );
            send(fd, &FromWorker::InitFailed(msg), max_frame);
            return EXIT_PROTOCOL;
        }
        Ok((ToWorker::Shutdown, _)) => return 0,
        Ok(_) => return EXIT_PROTOCOL,
        Err(code) => return code,
    };
    if let Some(problem) = registry.problem() {
        send(fd, &FromWorker::InitFailed(problem), max_frame);
        return 1;
    }
    if let Some(call) = init {
        let failure = match registry.get(&call.task) {
            None => Some(format!(
                "the initializer task `{}` is not registered in the worker",
                call.task
            )),
            Some(runner) => match runner(&call.payload.0) {
                WireOutcome::Ok(_) => None,
                WireOutcome::Err { display, .. } => Some(format!("initializer failed: {display}")),
                WireOutcome::Panicked(m) => Some(format!("initializer panicked: {m}")),
                WireOutcome::UnknownTask(m)
                | WireOutcome::DecodeFailed(m)
                | WireOutcome::EncodeFailed(m) => Some(format!("initializer failed: {m}")),
            },
        };
        if let Some(msg) = failure {
            send(fd, &FromWorker::InitFailed(msg), max_frame);
            return 1;
        }
    }
    inbox.reader.consume(len);
    send(
        fd,
        &FromWorker::Ready {
            version: PROTOCOL_VERSION,
        },
        max_frame,
    );

    // The task asked for last and its runner: a pool sends mostly one task, looked up once.
    let mut last: Option<(String, Runner)> = None;
    loop {
        let (msg, len) = match inbox.next() {
            Ok(next) => next,
            Err(code) => return code,
        };
        match msg {
            ToWorker::Run { id, call } => {
                #[cfg(all(test, not(loom)))]
                let exit_after_reply = super::tests::exits_after_reply(&call.task);
                #[cfg(all(test, not(loom)))]
                let call = super::tests::before_ack_hook(call);
                let runner = match &last {
                    Some((name, runner)) if *name == call.task => Some(*runner),
                    _ => {
                        let runner = registry.get(&call.task);
                        last = runner.map(|runner| (call.task.clone().into_owned(), runner));
                        runner
                    }
                };
                // The start and the end in this process's clock (system-wide): the task's wait
                // and duration do not depend on when the pool reads them.
                let outcome = match runner {
                    None => WireOutcome::UnknownTask(call.task.into_owned()),
                    Some(runner) => {
                        let at = sys::monotonic_nanos();
                        if board.is_none_or(|b| b.start(id, at)) {
                            outbox.send(fd, &FromWorker::Started { id, at }, max_frame);
                        }
                        runner(&call.payload.0)
                    }
                };
                let ended_at = sys::monotonic_nanos();
                inbox.reader.consume(len);
                let done = FromWorker::Finished {
                    id,
                    outcome,
                    ended_at,
                };
                outbox.send(fd, &done, max_frame);
                #[cfg(all(test, not(loom)))]
                if exit_after_reply {
                    return 0;
                }
            }
            ToWorker::Shutdown => return 0,
            ToWorker::Hello { .. } => return EXIT_PROTOCOL,
        }
    }
}
