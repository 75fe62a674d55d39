//! Errors of submitting to a pool.

use std::fmt;

/// A task was not accepted; nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The pool is shutting down or was shut down or killed.
    Shutdown,
    /// The pool is broken (workers cannot start); the message says why.
    Broken(String),
    /// The input could not be encoded, or is larger than the maximum frame size.
    Serialization(String),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Shutdown => f.write_str("cannot schedule new tasks after shutdown"),
            SubmitError::Broken(msg) => write!(f, "the process pool is broken: {msg}"),
            SubmitError::Serialization(msg) => write!(f, "task not submitted: {msg}"),
        }
    }
}

impl std::error::Error for SubmitError {}
