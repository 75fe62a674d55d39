//! A task's life, in one place: admission and the executor's accounting
//! (`accounting.rs`), the state machine that makes every task end exactly
//! once and records each of its moves (`core.rs`), the handle the submitter
//! holds (`handle.rs`), the same life for a task without a handle
//! (`ticket.rs`), and which tasks a thread is running (`running.rs`).
//!
//! A task moves `QUEUED -> RUNNING -> DONE`, or `QUEUED -> CANCELLED`, or
//! `QUEUED -> DONE` when it fails without starting. Leaving the queue is one
//! compare-and-swap of the task's state word, so the worker starting a task
//! and a caller cancelling it cannot both win, and the metric of each move is
//! recorded by the one thread that made it. The end publishes the result with
//! one more read-modify-write of that word; only a thread that waits for the
//! result (or an awaited handle's waker) makes it take a lock. A task whose
//! handle is gone when its worker picks it up leaves the word alone: nobody
//! can cancel, join or read it any more, so it runs as a task without a
//! handle does, and its result is dropped unpublished.
//!
//! A thread that joins a task it would otherwise wait for forever (it runs a
//! task of the same executor, so it may be the worker the queued task needs)
//! takes the task out of the queue itself, with the same compare-and-swap as
//! a worker's start, and runs it ([`Help`]).

mod accounting;
mod core;
mod handle;
mod ordered;
mod running;
mod signal;
mod ticket;

pub(crate) use self::accounting::{Accounting, CLOSED};
pub(crate) use self::core::{Help, TaskCore};
pub use self::handle::{TaskHandle, TaskState};
pub(crate) use self::ordered::{counts_refusal, refusing, Ordered, Refused, RoomWait, SubmitOne};
pub(crate) use self::ticket::{drop_quietly, TaskKey, Ticket};
