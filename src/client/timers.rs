//! The handler's own timers, set with
//! [`ClientContext::send_info_after`](crate::ClientContext::send_info_after).
//!
//! Like `Process.send_after` messages in Minch they belong to the handler, not to a connection:
//! they survive reconnects (the supervisor's restart clears the actor's futures, so the client
//! keeps them here and sets them again), and they go with the handler at the final stop.

use std::{collections::BTreeMap, time::Instant};

use actix::SpawnHandle;

/// A message scheduled with [`ClientContext::send_info_after`](crate::ClientContext::send_info_after);
/// hand it to [`ClientContext::cancel`](crate::ClientContext::cancel) to call it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

struct Scheduled<I> {
    at: Instant,
    info: I,
    /// The actor's timer for it, while the actor runs.
    handle: SpawnHandle,
}

/// The handler's pending messages, by id (ids grow, so equal deadlines keep their order).
pub(crate) struct HandlerTimers<I> {
    next_id: u64,
    pending: BTreeMap<u64, Scheduled<I>>,
}

impl<I> Default for HandlerTimers<I> {
    fn default() -> Self {
        HandlerTimers {
            next_id: 0,
            pending: BTreeMap::new(),
        }
    }
}

impl<I> HandlerTimers<I> {
    /// Keeps `info` until `at`; `arm` sets the actor's timer for it.
    pub(crate) fn insert(
        &mut self,
        at: Instant,
        info: I,
        arm: impl FnOnce(TimerId, Instant) -> SpawnHandle,
    ) -> TimerId {
        let id = TimerId(self.next_id);
        self.next_id += 1;
        let handle = arm(id, at);
        self.pending.insert(id.0, Scheduled { at, info, handle });
        id
    }

    /// The message of a timer that fired, unless it was cancelled.
    pub(crate) fn take(&mut self, id: TimerId) -> Option<I> {
        self.pending.remove(&id.0).map(|scheduled| scheduled.info)
    }

    /// Calls a timer off; its actor timer's handle, if it was pending.
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<SpawnHandle> {
        self.pending.remove(&id.0).map(|scheduled| scheduled.handle)
    }

    /// Sets every actor timer again, after a restart cleared them.
    pub(crate) fn rearm(&mut self, mut arm: impl FnMut(TimerId, Instant) -> SpawnHandle) {
        for (id, scheduled) in &mut self.pending {
            scheduled.handle = arm(TimerId(*id), scheduled.at);
        }
    }

    /// Drops every pending message; the handles of their actor timers.
    pub(crate) fn clear(&mut self) -> Vec<SpawnHandle> {
        let handles = self.pending.values().map(|scheduled| scheduled.handle);
        let handles = handles.collect();
        self.pending.clear();
        handles
    }
}
