//! The wire protocol between the pool and its workers.
//!
//! A frame is a `u32` little-endian body length followed by the body, one postcard-encoded message. The
//! length is checked against the maximum frame size before any buffer is sized for the body, so a corrupt
//! or hostile length cannot make the reader allocate. Decoding never panics: bad input is an error.
//!
//! A conversation: the pool sends `Hello` (with the optional initializer call); the worker answers `Ready`
//! or `InitFailed`. Then, per task, `Run` → `Started` → `Finished`, or `Run` → `Finished(UnknownTask)`
//! when the name is not registered (the task never ran). A task the pool made quiet on the worker's
//! start board (see `board`) has no `Started`: the board records its start. `Shutdown` asks the worker
//! to exit.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::job::{JobFailure, JobOutcome};
use super::sys::{self, Wait};

/// Bumped on every incompatible change of the messages below.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// Length of the frame header.
pub(crate) const HEADER_LEN: usize = 4;

/// How much room a [`FrameReader`] makes for each receive: replies and requests of most tasks fit.
const RECV_ROOM: usize = 8 << 10;

/// The largest buffer a [`FrameReader`] keeps once the frames it held are taken out.
const KEEP_BUF: usize = 64 << 10;

/// The capacity a frame is encoded into at first.
const SMALL_FRAME: usize = 64;

/// Default upper bound of a frame body: 256 MiB.
pub(crate) const DEFAULT_MAX_FRAME: usize = 256 << 20;

/// Smallest maximum frame size the builder accepts (handshake and error messages must fit).
pub(crate) const MIN_MAX_FRAME: usize = 4 << 10;

/// Opaque bytes, encoded as one length-prefixed byte string (not a sequence of `u8`, which postcard
/// would decode byte by byte). Decoded in place, borrowing the frame: the worker reads a request's
/// input without copying it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Blob<'a>(pub(crate) Cow<'a, [u8]>);

impl fmt::Debug for Blob<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Blob<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Blob<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Blob(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Blob(Cow::Owned(v.to_vec())))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(Blob(Cow::Owned(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Opaque bytes of a reply, encoded as a [`Blob`] is, and decoded into a buffer of their own: the
/// result outlives the frame it came in.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A call of a registered task: its name and its postcard-encoded input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call<'a> {
    #[serde(borrow)]
    pub(crate) task: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) payload: Blob<'a>,
}

/// Pool → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToWorker<'a> {
    /// First frame: protocol version and the initializer to run before `Ready`.
    Hello {
        version: u32,
        #[serde(borrow)]
        init: Option<Call<'a>>,
    },
    /// Run a task; `id` is echoed back in `Started` and `Finished`.
    Run {
        id: u64,
        #[serde(borrow)]
        call: Call<'a>,
    },
    /// Exit after the current frame.
    Shutdown,
}

/// Worker → pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer (if any) ran; the worker waits for `Run`.
    Ready { version: u32 },
    /// The worker cannot serve: initializer failed, unknown initializer, bad registry, wrong version.
    InitFailed(String),
    /// The task was received and is about to run, at `at` ([`sys::monotonic_nanos`]); not sent
    /// for a quiet task, whose start is on the worker's start board.
    Started { id: u64, at: u64 },
    /// The task ended, at `ended_at` ([`sys::monotonic_nanos`]).
    Finished {
        id: u64,
        outcome: WireOutcome,
        ended_at: u64,
    },
    /// The program never entered `run_if_worker` and tried to build a pool of its own: it cannot serve,
    /// and no other worker of this binary will (sent instead of a handshake, without reading `Hello`).
    HookMissing(String),
}

/// How a task ended in the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireOutcome {
    /// `run` returned `Ok`: the encoded output.
    Ok(Bytes),
    /// `run` returned `Err`: the encoded error and its `Display` text.
    Err { payload: Bytes, display: String },
    /// `run` panicked: the panic message.
    Panicked(String),
    /// No task of that name is registered in the worker (the task did not run).
    UnknownTask(String),
    /// The input could not be decoded in the worker.
    DecodeFailed(String),
    /// The output or error could not be encoded in the worker (or is larger than a frame).
    EncodeFailed(String),
}

impl WireOutcome {
    /// The outcome as the pool reports it to a job's sink (an `UnknownTask` included; the pool handles
    /// that one before it gets here when the task never started).
    pub(crate) fn into_job_outcome(self) -> JobOutcome {
        match self {
            WireOutcome::Ok(bytes) => Ok(bytes.0),
            WireOutcome::Err { payload, display } => Err(JobFailure::Error {
                payload: payload.0,
                message: display,
            }),
            WireOutcome::Panicked(message) => Err(JobFailure::Panic { message }),
            WireOutcome::UnknownTask(name) => Err(JobFailure::UnknownTask { name }),
            WireOutcome::DecodeFailed(message) | WireOutcome::EncodeFailed(message) => {
                Err(JobFailure::Serialization { message })
            }
        }
    }
}

/// Why a frame could not be read or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The header announces a body larger than the maximum frame size.
    Oversized { len: usize, max: usize },
    /// The body is not a valid message.
    Corrupt(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversized { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the maximum frame size of {max} bytes"
            ),
            FrameError::Corrupt(msg) => write!(f, "corrupt frame: {msg}"),
        }
    }
}

/// Encodes `msg` as one frame. Fails if it cannot be encoded or the body would exceed `max`.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(msg: &T, max: usize) -> Result<Vec<u8>, String> {
    // Room for a small task's request or reply at once, rather than growing through 8, 16, 32.
    let mut buf = Vec::with_capacity(SMALL_FRAME);
    encode_frame_into(msg, max, &mut buf)?;
    Ok(buf)
}

/// [`encode_frame`] into `buf`, replacing what it held and reusing its memory.
pub(crate) fn encode_frame_into<T: Serialize + ?Sized>(
    msg: &T,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut out = std::mem::take(buf);
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let out = postcard::to_extend(msg, out).map_err(|e| e.to_string())?;
    *buf = out;
    let len = buf.len() - HEADER_LEN;
    if len > max || len > u32::MAX as usize {
        return Err(format!(
            "message of {len} bytes exceeds the maximum frame size of {max} bytes"
        ));
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Decodes one frame body. Trailing bytes are an error: a frame holds exactly one message.
pub(crate) fn decode_body<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Corrupt(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Corrupt(e.to_string())),
    }
}

/// Incremental frame reader for a non-blocking stream: feed it bytes as they arrive, take whole
/// messages out.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl FrameReader {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// The bytes the reader can hold without growing.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Receives from `fd` into this reader (see [`sys::recv_append`]), without blocking or, with
    /// [`Wait::Yes`], once something arrives: the rest of the frame at the front when its length is
    /// known, else up to [`RECV_ROOM`] bytes, so a large frame is received into a buffer of its own
    /// size, and grown no further. The bytes received, and whether more may be waiting while no
    /// whole frame is here (once one is, take it out before receiving more); `Ok(0)` means end of
    /// stream.
    pub(crate) fn recv(&mut self, fd: BorrowedFd<'_>, wait: Wait) -> io::Result<(usize, bool)> {
        let pending = self.buf.len() - self.start;
        // A length over the maximum is refused when the frame is taken out, never reserved.
        let room = match self.front_len() {
            Some(total) if total > pending && total - HEADER_LEN <= self.max => total - pending,
            _ => RECV_ROOM,
        };
        let (n, filled) = sys::recv_append(fd, &mut self.buf, room, wait)?;
        let whole = self
            .front_len()
            .is_some_and(|total| self.buf.len() - self.start >= total);
        Ok((n, filled && !whole))
    }

    /// The length, header included, of the frame at the front, once its header is here.
    fn front_len(&self) -> Option<usize> {
        let pending = &self.buf[self.start..];
        (pending.len() >= HEADER_LEN).then(|| HEADER_LEN.saturating_add(frame_len(pending)))
    }

    /// The next whole message, `Ok(None)` if more bytes are needed. The length is checked as soon as the
    /// header is complete, before the body arrives.
    pub(crate) fn next_message<T: de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, FrameError> {
        let Some(len) = self.whole_frame()? else {
            return Ok(None);
        };
        let msg = decode_body(&self.buf[self.start + HEADER_LEN..self.start + len]);
        self.consume(len);
        msg.map(Some)
    }

    /// The next whole message and its frame's length, left in the reader: a reader that cannot
    /// handle it leaves it to another one, which [`consume`](Self::consume)s it or not. A frame
    /// that is not a message is an error here too, and stays.
    pub(crate) fn peek_message<T: de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<(T, usize)>, FrameError> {
        let Some(len) = self.whole_frame()? else {
            return Ok(None);
        };
        decode_body(&self.buf[self.start + HEADER_LEN..self.start + len])
            .map(|msg| Some((msg, len)))
    }

    /// Decodes the whole frame of `len` bytes at the front, borrowing from it what the message
    /// borrows.
    pub(crate) fn decode<'s, T: Deserialize<'s>>(&'s self, len: usize) -> Result<T, FrameError> {
        decode_body(&self.buf[self.start + HEADER_LEN..self.start + len])
    }

    /// Drops a frame of `len` bytes, header included, that [`peek_message`](Self::peek_message)
    /// returned.
    pub(crate) fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.buf.len() {
            self.buf.clear();
            // One large frame does not pin its memory for the channel's life.
            self.buf.shrink_to(KEEP_BUF);
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// The length, header included, of the whole frame at the front; `None` if more bytes are needed.
    /// The frame stays, for [`decode`](Self::decode) then [`consume`](Self::consume).
    pub(crate) fn whole_frame(&mut self) -> Result<Option<usize>, FrameError> {
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = frame_len(pending);
        if len > self.max {
            return Err(FrameError::Oversized { len, max: self.max });
        }
        if pending.len() < HEADER_LEN + len {
            // Reserve the rest of this frame once, now that its (allowed) length is known.
            self.buf.reserve_exact(HEADER_LEN + len - pending.len());
            return Ok(None);
        }
        Ok(Some(HEADER_LEN + len))
    }
}

fn frame_len(header: &[u8]) -> usize {
    u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize
}
