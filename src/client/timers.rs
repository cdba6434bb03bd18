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
///
/// A cancelled timer's actor future is left to run out (it finds nothing to deliver) rather than
/// cancelled at once: actix remembers cancellations past a supervisor restart and applies them to
/// whatever new future gets the same handle number, which would silently drop a reconnect.
/// Their handles are cancelled at the final stop, after which nothing restarts.
pub(crate) struct HandlerTimers<I> {
    next_id: u64,
    pending: BTreeMap<u64, Scheduled<I>>,
    cancelled: Vec<SpawnHandle>,
}

impl<I> Default for HandlerTimers<I> {
    fn default() -> Self {
        HandlerTimers {
            next_id: 0,
            pending: BTreeMap::new(),
            cancelled: Vec::new(),
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

    /// Calls a timer off. Whether it was pending.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let Some(scheduled) = self.pending.remove(&id.0) else {
            return false;
        };
        self.cancelled.push(scheduled.handle);
        true
    }

    /// Sets every actor timer again, after a restart cleared them all.
    pub(crate) fn rearm(&mut self, mut arm: impl FnMut(TimerId, Instant) -> SpawnHandle) {
        self.cancelled.clear();
        for (id, scheduled) in &mut self.pending {
            scheduled.handle = arm(TimerId(*id), scheduled.at);
        }
    }

    /// Drops every message, pending or cancelled; the handles of their actor timers.
    pub(crate) fn clear(&mut self) -> Vec<SpawnHandle> {
        let pending = self.pending.values().map(|scheduled| scheduled.handle);
        let mut handles: Vec<_> = pending.collect();
        handles.append(&mut self.cancelled);
        self.pending.clear();
        handles
    }
}
