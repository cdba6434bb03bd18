//! The handler's own timers, set with
//! [`ClientContext::send_info_after`](crate::ClientContext::send_info_after), and its futures,
//! spawned with [`ClientContext::spawn_info`](crate::ClientContext::spawn_info).
//!
//! Like `Process.send_after` messages in Minch they belong to the handler, not to a connection:
//! they survive reconnects (the supervisor's restart clears the actor's futures, so the client
//! keeps timers here and sets them again; futures run on the arbiter, outside the actor, and
//! answer through its mailbox), and they go with the handler at the final stop.

use std::{
    cell::RefCell,
    collections::{BTreeMap, VecDeque},
    future::Future,
    rc::Rc,
    time::Instant,
};

use actix::{AsyncContext, Context, Handler, Message, SpawnHandle};
use actix_rt::task::JoinHandle;

use super::Client;
use crate::MinchHandler;

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
///
/// The spawned futures are kept as their tasks' handles, to abort those still running at the
/// final stop; finished ones are dropped now and then.
pub(crate) struct HandlerTimers<I> {
    next_id: u64,
    pending: BTreeMap<u64, Scheduled<I>>,
    cancelled: Vec<SpawnHandle>,
    tasks: Vec<JoinHandle<()>>,
    /// When `tasks` grows to this length, the finished ones are dropped.
    prune_at: usize,
    /// Outputs of spawned futures, in the order they finished, each announced to the client by
    /// one [`SpawnedReady`]. Shared with the tasks, which run on the client's thread.
    ready: Rc<RefCell<VecDeque<I>>>,
}

/// The smallest `prune_at`: below it, pruning is not worth the scan.
const MIN_PRUNE_AT: usize = 16;

impl<I> Default for HandlerTimers<I> {
    fn default() -> Self {
        HandlerTimers {
            next_id: 0,
            pending: BTreeMap::new(),
            cancelled: Vec::new(),
            tasks: Vec::new(),
            prune_at: MIN_PRUNE_AT,
            ready: Rc::default(),
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

    /// Keeps a spawned future's task, to abort it at the final stop if it is still running.
    /// Finished tasks are dropped whenever the list has doubled, so it stays within twice the
    /// number running.
    pub(crate) fn track(&mut self, task: JoinHandle<()>) {
        if self.tasks.len() >= self.prune_at {
            self.tasks.retain(|task| !task.is_finished());
            self.prune_at = (self.tasks.len() * 2).max(MIN_PRUNE_AT);
        }
        self.tasks.push(task);
    }

    /// Drops every message, pending or cancelled, and aborts every spawned future still
    /// running; returns the handles of the actor timers.
    pub(crate) fn clear(&mut self) -> Vec<SpawnHandle> {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.ready.borrow_mut().clear();
        let pending = self.pending.values().map(|scheduled| scheduled.handle);
        let mut handles: Vec<_> = pending.collect();
        handles.append(&mut self.cancelled);
        self.pending.clear();
        handles
    }
}

/// A spawned future's output is in [`HandlerTimers::ready`]: deliver it. The output itself stays
/// on the client's thread, so `H::Info` need not be `Send` (actix's mailbox requires it).
pub(crate) struct SpawnedReady;

impl Message for SpawnedReady {
    type Result = ();
}

impl<H: MinchHandler> Handler<SpawnedReady> for Client<H> {
    type Result = ();

    fn handle(&mut self, _: SpawnedReady, ctx: &mut Context<Self>) {
        // Empty after the final stop, which dropped the outputs still waiting.
        let info = self.timers.ready.borrow_mut().pop_front();
        if let Some(info) = info {
            self.on_info(info, ctx);
        }
    }
}

impl<H: MinchHandler> Client<H> {
    /// Runs `future` on the client's arbiter, outside the actor (so that a supervisor restart
    /// does not cancel it), and has its output delivered to `handle_info` through the mailbox.
    pub(crate) fn spawn_info(
        actor: &mut Context<Self>,
        timers: &mut HandlerTimers<H::Info>,
        future: impl Future<Output = H::Info> + 'static,
    ) {
        // Weak: a pending future must not keep a client alive that nothing else does.
        let client = actor.address().downgrade();
        let ready = Rc::clone(&timers.ready);
        let task = actix_rt::spawn(async move {
            let info = future.await;
            // Gone (stopped for good, every address dropped): the output has nowhere to go.
            if let Some(client) = client.upgrade() {
                ready.borrow_mut().push_back(info);
                client.do_send(SpawnedReady);
            }
        });
        timers.track(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn finished_tasks_are_dropped_so_the_list_stays_bounded() {
        let mut timers = HandlerTimers::<()>::default();
        for _ in 0..1000 {
            timers.track(actix_rt::spawn(async {}));
            // Lets the task run to its end.
            for _ in 0..3 {
                actix_rt::task::yield_now().await;
            }
        }
        assert!(
            timers.tasks.len() <= 2 * MIN_PRUNE_AT,
            "{}",
            timers.tasks.len()
        );
    }

    #[actix_rt::test]
    async fn clear_aborts_the_tasks_still_running() {
        let mut timers = HandlerTimers::<()>::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        timers.track(actix_rt::spawn(async move {
            let _ = rx.await;
        }));
        timers.ready.borrow_mut().push_back(());
        timers.clear();
        assert!(timers.ready.borrow().is_empty());
        // The aborted task dropped its receiver.
        for _ in 0..10 {
            if tx.is_closed() {
                return;
            }
            actix_rt::task::yield_now().await;
        }
        panic!("the task was not aborted");
    }
}
