//! Thin wrappers over the Linux system calls the pool needs. Every `unsafe` block of the module tree lives
//! here, so the rest of the code is safe Rust over owned file descriptors.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Retries `f` while it fails with `EINTR`.
fn retry_eintr(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair(2) requires.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success both descriptors are freshly created and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends all of `buf`, blocking. `MSG_NOSIGNAL` turns a dead peer into `EPIPE` instead of a SIGPIPE that
/// would kill the process.
pub(crate) fn send_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = retry_eintr(|| {
            // SAFETY: `buf` is a valid readable region of `buf.len()` bytes for the whole call.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            }
        })?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Whether a receive blocks until something arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Takes what is there (`MSG_DONTWAIT`): `WouldBlock` if nothing is.
    No,
    /// Blocks until something arrives, the end of stream included (on a socket without a receive
    /// timeout: forever).
    Yes,
}

/// Receives straight into `buf`'s spare capacity, after making room for at least `room` bytes (no
/// more: `Vec::reserve_exact`), and appends it: no buffer to clear first and no copy. The bytes
/// received and whether they filled the spare capacity (there may be more); with `room` above
/// zero, `Ok(0)` means end of stream.
pub(crate) fn recv_append(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    room: usize,
    wait: Wait,
) -> io::Result<(usize, bool)> {
    let flags = match wait {
        Wait::No => libc::MSG_DONTWAIT,
        Wait::Yes => 0,
    };
    buf.reserve_exact(room);
    let spare = buf.spare_capacity_mut();
    let len = spare.len();
    let ptr = spare.as_mut_ptr();
    let n = retry_eintr(|| {
        // SAFETY: `ptr` points to `len` writable bytes of `buf`'s spare capacity, which nothing
        // else touches during the call; the kernel writes at most `len` of them.
        unsafe { libc::recv(fd.as_raw_fd(), ptr.cast(), len, flags) }
    })?;
    // SAFETY: the kernel initialised the first `n <= len` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, n == len))
}

/// Bounds how long one blocking `send` may wait for the peer to make room (`SO_SNDTIMEO`): past it the
/// send fails with `WouldBlock` instead of blocking forever on a peer that stopped reading.
pub(crate) fn set_send_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    set_timeout(fd, libc::SO_SNDTIMEO, timeout)
}

/// Bounds how long one blocking receive (as [`wait_for_data`]'s) waits (`SO_RCVTIMEO`). The kernel
/// counts it in clock ticks, rounded up: 1 ms lasts about two ticks (8 ms at 250 Hz).
pub(crate) fn set_recv_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    set_timeout(fd, libc::SO_RCVTIMEO, timeout)
}

fn set_timeout(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    timeout: std::time::Duration,
) -> io::Result<()> {
    // A zero `timeval` means "never time out": a timeout under a microsecond is one microsecond.
    let timeout = timeout.max(std::time::Duration::from_micros(1));
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: passes a valid `timeval` and its exact size, as SO_SNDTIMEO and SO_RCVTIMEO require.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write the descriptor flags; an invalid fd gives EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `fd` is open and is a socket.
pub(crate) fn is_socket(fd: RawFd) -> bool {
    // SAFETY: `stat` is plain old data, so all-zero is a valid value that fstat(2) then overwrites.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; an invalid fd only makes fstat fail with EBADF.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// Borrows the worker's channel descriptor for the rest of the process's life.
///
/// Callers must have checked (with [`is_socket`]) that `fd` is open; it is never closed afterwards.
pub(crate) fn borrow_channel_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the worker checked that `fd` is open before calling this, and nothing in the worker ever
    // closes it, so it stays valid for the `'static` lifetime.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Runs in the forked child between `fork` and `exec`: only async-signal-safe calls, no allocation.
/// Puts the channel on `target`, asks for SIGKILL when the parent thread dies, and closes the race where
/// the parent already died before the request took effect.
/// `keep`, if any, is left open across the exec (its close-on-exec flag cleared).
pub(crate) fn child_after_fork(
    channel: RawFd,
    target: RawFd,
    keep: Option<RawFd>,
    parent_pid: libc::pid_t,
) -> io::Result<()> {
    // SAFETY: dup2, fcntl, prctl and getppid are async-signal-safe and touch no memory of ours; `channel`
    // and `keep` are open in the child because the parent keeps them open across the fork.
    unsafe {
        if let Some(fd) = keep {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if channel == target {
            // dup2 onto itself is a no-op that would leave FD_CLOEXEC set: clear it explicitly.
            let flags = libc::fcntl(target, libc::F_GETFD);
            if flags < 0 || libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(channel, target) < 0 {
            // dup2 gives the new descriptor without FD_CLOEXEC, so it survives exec.
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent_pid {
            // The parent died before PR_SET_PDEATHSIG took effect: nobody will ever talk to us.
            libc::_exit(1);
        }
    }
    Ok(())
}

/// A descriptor that becomes readable when process `pid` exits (pidfd_open(2), Linux 5.3+), so a
/// worker's death is seen from the process itself even while something else (a process its task
/// forked) keeps its channel open. `pid` must be an unreaped child of ours, so it cannot be reused.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags (none) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created (with O_CLOEXEC, as pidfds always are) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The calling process's id.
pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid(2) cannot fail and has no preconditions.
    unsafe { libc::getpid() }
}

/// An `eventfd` used to wake the dispatcher thread out of `poll`.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2) takes no pointers; the flags are valid.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the poller. Cannot block (the counter saturates long after 2^63 wakes).
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, a valid readable u64, as eventfd(2) requires.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter after a wake-up.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into `v`, a valid writable u64; non-blocking, so EAGAIN is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A `timerfd` on the monotonic clock: a deadline the dispatcher thread sleeps on, armed by other
/// threads without waking it.
#[derive(Debug)]
pub(crate) struct TimerFd(OwnedFd);

impl TimerFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create(2) takes no pointers; the clock and flags are valid.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable `after` from now (once), replacing any earlier setting.
    pub(crate) fn arm(&self, after: std::time::Duration) {
        // SAFETY: `itimerspec` is plain old data; all-zero is a valid value (no interval).
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        spec.it_value.tv_sec = after.as_secs().min(libc::time_t::MAX as u64) as libc::time_t;
        // Never zero, which would disarm it.
        spec.it_value.tv_nsec = after.subsec_nanos().max(1) as libc::c_long;
        // SAFETY: passes a valid `itimerspec` and a null old value, as timerfd_settime(2) allows.
        let _ =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    /// Resets it after it fired.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into `v`, a valid writable u64; non-blocking, so EAGAIN is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// poll(2) over `fds`; `timeout_ms` < 0 waits forever. Returns how many entries have events; `EINTR`
/// counts as a wake-up with no events.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable slice of `fds.len()` pollfd structures.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        return Ok(0);
    }
    Ok(r as usize)
}

/// Blocks in a receive that consumes nothing (`MSG_PEEK`) until something can be read from `fd`
/// (true: data, the end of stream, or an error a read will report), or the socket's receive timeout
/// passes or a signal comes (false). A receive, not `poll`: a thread blocked in a receive on a Unix
/// socket is also woken when its peer reads what this side sent, finds nothing and sleeps again. That
/// early wake-up is what a blocking round trip between two processes has (the floor of the process
/// pool's bench waits this way): the peer reads a request as it starts it, so this side's CPU is
/// waking while the request runs. Where waking an idle CPU is slow (a virtual machine's vCPU halted in
/// the hypervisor), waiting in `poll`, which only incoming data wakes, made the round trip slower by
/// tens of µs (`BENCHMARKS.md`, the process pools' run).
pub(crate) fn wait_for_data(fd: BorrowedFd<'_>) -> bool {
    peek(fd, Wait::Yes)
}

/// Whether something can be read from `fd` now (data or end of stream), without consuming it.
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    peek(fd, Wait::No)
}

/// Peeks at one byte of `fd`, waiting or not: whether something can be read (data, the end of
/// stream, or an error a read will report), false if nothing came or a signal interrupted the wait.
fn peek(fd: BorrowedFd<'_>, wait: Wait) -> bool {
    let flags = match wait {
        Wait::No => libc::MSG_PEEK | libc::MSG_DONTWAIT,
        Wait::Yes => libc::MSG_PEEK,
    };
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into `byte`, a valid writable byte.
    let r = unsafe { libc::recv(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, flags) };
    r >= 0
        || !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
}

/// The words of a [`SharedPage`].
pub(crate) const SHARED_WORDS: usize = 4;

/// A few words of memory shared with one worker process (a `memfd` mapped by both), which either side
/// reads and writes without a system call.
pub(crate) struct SharedPage {
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
}

// SAFETY: the page holds only atomics, which any thread may access through a shared reference.
unsafe impl Send for SharedPage {}
// SAFETY: as above.
unsafe impl Sync for SharedPage {}

const SHARED_LEN: usize = SHARED_WORDS * std::mem::size_of::<u64>();

impl SharedPage {
    /// A new zeroed page and the descriptor (close-on-exec) a worker maps it from.
    pub(crate) fn create() -> io::Result<(SharedPage, OwnedFd)> {
        // SAFETY: memfd_create(2) reads the NUL-terminated name and returns a new descriptor or -1.
        let fd =
            unsafe { libc::memfd_create(c"executor-exporter-worker".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate(2) on a descriptor we own; a fresh memfd reads as zeroes.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), SHARED_LEN as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Self::map(fd.as_raw_fd())?, fd))
    }

    /// Maps the page of descriptor `fd` (which may be closed afterwards: the mapping stays).
    pub(crate) fn map(fd: RawFd) -> io::Result<SharedPage> {
        // SAFETY: a new shared mapping of `SHARED_LEN` bytes of `fd` at an address the kernel picks;
        // nothing else is touched. A descriptor that is not a file of that size makes it fail (or
        // a later access fault, which `create`'s and the worker's callers rule out: the pool
        // sizes the file before any worker starts).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SHARED_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = std::ptr::NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap"))?;
        Ok(SharedPage { words })
    }

    /// Word `i` (below [`SHARED_WORDS`]).
    pub(crate) fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < SHARED_WORDS);
        // SAFETY: the mapping is `SHARED_WORDS` page-aligned u64s, live until `self` drops; atomics
        // may be shared with the other process, which only accesses them atomically too.
        unsafe { &*self.words.as_ptr().add(i) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which no reference outlives.
        unsafe {
            libc::munmap(self.words.as_ptr().cast(), SHARED_LEN);
        }
    }
}

/// Whether `fd` is open and holds at least a [`SharedPage`].
pub(crate) fn is_shared_page(fd: RawFd) -> bool {
    // SAFETY: `stat` is plain old data, so all-zero is a valid value that fstat(2) then overwrites.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; an invalid fd only makes fstat fail with EBADF.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0
        && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
        && st.st_size >= SHARED_LEN as libc::off_t
}

/// Closes a descriptor this process does not otherwise own.
pub(crate) fn close(fd: RawFd) {
    // SAFETY: close(2) on a number; the callers own `fd` and never use it afterwards.
    unsafe {
        libc::close(fd);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
pub(crate) fn monotonic_nanos() -> u64 {
    // SAFETY: `timespec` is plain old data; clock_gettime(2) fills it and cannot fail for this clock.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable `timespec`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// How long ago `at` ([`monotonic_nanos`]) was: zero for a time not yet reached.
pub(crate) fn nanos_ago(at: u64) -> std::time::Duration {
    std::time::Duration::from_nanos(monotonic_nanos().saturating_sub(at))
}
