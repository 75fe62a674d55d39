//! Which tasks this thread is running: a list through the run paths' stack
//! frames, so a pool dropped, shut down or joined inside one of its own tasks
//! knows not to wait for it.

#[cfg(not(loom))]
thread_local! {
    /// The innermost task this thread is running, the head of a list of
    /// [`RunningNode`]s through the run paths' stack frames, innermost
    /// first (a task can run another inline). A `Cell` of a pointer: no
    /// destructor to register and no borrow flag, so entering and leaving a
    /// task are two loads and three stores.
    static INNERMOST_TASK: std::cell::Cell<*const RunningNode> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// One task this thread is running, in the list headed by `INNERMOST_TASK`: lives
/// in the run path's stack frame, entered with [`RunningNode::enter`] for as
/// long as the task runs.
pub(crate) struct RunningNode {
    #[cfg(not(loom))]
    /// The address of the executor's accounting: only compared, never read.
    acct: *const (),
    #[cfg(not(loom))]
    outer: std::cell::Cell<*const RunningNode>,
}

impl RunningNode {
    #[inline]
    pub(super) fn new(acct: *const ()) -> RunningNode {
        #[cfg(loom)]
        let _ = acct;
        RunningNode {
            #[cfg(not(loom))]
            acct,
            #[cfg(not(loom))]
            outer: std::cell::Cell::new(std::ptr::null()),
        }
    }

    /// Marks this thread as running a task of `acct` while the returned
    /// guard lives. The guard borrows the node, so the node cannot move or
    /// be dropped while the list points at it.
    #[inline]
    pub(crate) fn enter(&self) -> RunningHere<'_> {
        #[cfg(not(loom))]
        let _ = INNERMOST_TASK.try_with(|head| self.outer.set(head.replace(self)));
        RunningHere {
            #[cfg(not(loom))]
            node: self,
            #[cfg(loom)]
            _node: std::marker::PhantomData,
        }
    }
}

/// While alive, this thread counts as running a task of one accounting.
pub(crate) struct RunningHere<'a> {
    #[cfg(not(loom))]
    node: &'a RunningNode,
    #[cfg(loom)]
    _node: std::marker::PhantomData<&'a RunningNode>,
}

impl Drop for RunningHere<'_> {
    #[inline]
    fn drop(&mut self) {
        // Guards drop innermost first (each lives in its own run path's
        // frame), so this node is the head again.
        #[cfg(not(loom))]
        let _ = INNERMOST_TASK.try_with(|head| head.set(self.node.outer.get()));
    }
}

/// `Accounting::is_running_here` by address: `acct` is only compared,
/// never read, so it may be an accounting that is gone (a task that ended
/// no longer keeps it alive), which no thread then runs a task of.
#[inline]
pub(super) fn running_here(acct: *const ()) -> bool {
    #[cfg(not(loom))]
    return INNERMOST_TASK
        .try_with(|head| {
            let mut node = head.get();
            while !node.is_null() {
                // SAFETY: every node in the list is entered, so its guard,
                // which borrows it, is alive in a frame of this thread below
                // this one (see `RunningNode::enter`).
                let n = unsafe { &*node };
                if std::ptr::eq(n.acct, acct) {
                    return true;
                }
                node = n.outer.get();
            }
            false
        })
        .unwrap_or(false);
    #[cfg(loom)]
    {
        let _ = acct;
        false
    }
}
