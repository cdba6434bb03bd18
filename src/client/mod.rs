//! The actor that runs a [`MinchHandler`]: connecting, the frame loop, keepalive, the close
//! handshake and the reconnect loop.
//!
//! The lifecycle lives in one state machine, [`lifecycle::Lifecycle`], with no I/O in it; the
//! actor carries its actions to sockets, timers and callbacks. Each connection ends the actor's
//! run: actix's [`Supervisor`] restarts it, which clears every future of the old connection, and
//! the restarted actor waits the delay `handle_disconnect` returned before it calls `connect`.
//! The [`Addr`] stays the same throughout.
//!
//! For the simple API (`simple.rs`) the client does two things more: it queues received frames
//! in a bounded [`Inbox`] itself, reading nothing while it is full, and it publishes its
//! connection so that the API's handles, on the same thread, write into it directly; they wait
//! for their frames through the connection's numbered progress. Only the driver waits for the
//! socket (readable or writable), and tasks are woken only once the connection is released.
//!
//! # Invariants
//!
//! Checked by the randomized tests (the lifecycle driven at speed in `lifecycle::tests`, and
//! the client over loopback in `tests/lifecycle_random.rs`):
//!
//! 1. `init` runs once per client; `terminate` exactly once, and no callback after it. The
//!    handler is dropped right after `terminate`, even while addresses of the client live.
//! 2. No connection attempt after the final stop. Consecutive attempts are at least the delay
//!    `handle_disconnect` returned apart. `attempt` counts the failures since the last
//!    successful upgrade, starting at 1.
//! 3. Every [`SendFrame`] and [`TrySendFrame`] resolves exactly once; `Ok` only once its frame
//!    went to the socket, and never for a frame after a close frame: no data frame follows a
//!    close frame on the wire.
//! 4. Pongs stay within the buffer limit (past it, only the latest ping waits for its
//!    answer), and nothing follows a close frame, pongs included. Nothing of one connection
//!    (its timers, frames and senders) acts on the next.
//! 5. The client never spins: a timer that fires moves the lifecycle on.
//! 6. Simple API (`tests/simple_random.rs`): the frames its handles give go on the wire in that
//!    order, each `Ok` only once written; received frames reach `Frames` in order, at most
//!    `max_queue` messages (and `max_queue_bytes` plus one message) ahead of the program, then
//!    the end. While the queue is full, keepalive waits for the program, not the peer.

mod lifecycle;
mod sender;
mod timers;

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future as _,
    pin::{pin, Pin},
    rc::Rc,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant, SystemTime},
};

use actix::{fut::ActorFuture, prelude::*, Supervised, Supervisor};

use self::lifecycle::{deadline_after, Action, Lifecycle, Reading, Settings};
use self::sender::SenderQueue;
pub(crate) use self::{lifecycle::Link, timers::HandlerTimers};
pub use self::{sender::FrameSender, timers::TimerId};
use crate::{
    connection::{
        self, ConnMut, Connection, Counters, Deferred, Published, Sent, SharedConnection, Waiters,
    },
    error::SendError,
    frame::{CloseFrame, Frame},
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    inbox::Inbox,
    options::ConnectOptions,
    protocol::{validate_outgoing, CodecError},
    transport::{self, Response},
    Error, ProtocolError,
};

/// At most this many frames are handled per wake-up, so one busy connection cannot starve the
/// other actors on its arbiter.
const FRAMES_PER_POLL: usize = 64;

/// Frames of room the senders' queue keeps between bursts; a larger burst's is given back.
const SENDER_QUEUE_KEPT: usize = 1024;

/// For the simple and blocking APIs, which only queue what they read: at most this many frames
/// are queued per wake-up. Measured with the bench's pipeline (16-byte messages, window
/// 1 000): 64 or 128 made a program and its connection swap places too often on one CPU, 512
/// or a whole window kept them from working at the same time on two.
const FRAMES_PER_QUEUING_POLL: usize = 256;

/// The actix actor that runs a [`MinchHandler`]: it connects, answers pings, completes close
/// handshakes, hands frames to the handler and reconnects as
/// [`handle_disconnect`](MinchHandler::handle_disconnect) decides.
///
/// Start it with [`Client::start`]; talk to it through its [`Addr`] with [`SendFrame`],
/// [`TrySendFrame`], [`Info`], [`GetStats`] and [`Close`], or stream frames to it through a
/// [`FrameSender`] ([`GetFrameSender`]). The address stays valid across
/// reconnects; after the final stop it answers [`SendError::Stopped`].
pub struct Client<H: MinchHandler> {
    /// `None` once `terminate` has run: the handler is dropped right after it.
    handler: Option<H>,
    lifecycle: Lifecycle<SharedConnection>,
    /// The handler's `send_info_after` messages: they outlive connections.
    timers: HandlerTimers<H::Info>,
    /// A stop asked for with [`ClientContext::stop`], carried out once the callback's reply is.
    stop_request: Option<String>,
    /// While `terminate` runs: how the connection the stop closed ended.
    ended: Option<DisconnectReason>,
    /// Bumped for every attempt: the answer and the driver of an earlier one find it stale.
    generation: u64,
    /// The attempt under way.
    opening: Option<SpawnHandle>,
    /// The server's answer to the attempt that just succeeded, for `handle_connect`.
    response: Option<Response>,
    /// The lifecycle's timer: when it fires, its number, and its handle. A timer that is no
    /// longer wanted is left to fire and find another number here, not cancelled: actix applies
    /// a cancellation made before a supervisor restart to whatever new future reuses the handle.
    alarm: Option<(Instant, u64, SpawnHandle)>,
    alarms_set: u64,
    /// An address held across a restart: actix's supervisor restarts an actor only while an
    /// address of it lives, and a client whose owner dropped every address must reconnect too.
    restart_guard: Option<Addr<Self>>,
    /// The options of the current (or last) attempt.
    options: ConnectOptions,
    /// [`Close`] messages waiting for `terminate`.
    stopped: Waiters<()>,
    /// Traffic of the connections that have ended.
    past_traffic: Counters,
    upgrades: u64,
    /// The simple API's bounded queue of received frames: while it is full, the connection
    /// reads nothing.
    receive_queue: Option<Arc<Inbox>>,
    /// Frames read in this pass of the driver, for the receive queue, and their payload bytes.
    staged: Vec<Frame>,
    staged_bytes: usize,
    /// What the receive queue can take in this pass (messages, bytes).
    room: Option<(usize, usize)>,
    /// Where the simple API's handles find the open connection, to write into it directly.
    published: Option<Rc<Published>>,
    /// Frames sent with `do_send` and refused on the spot, for `handle_error`, in order. Kept
    /// by the client (not in actix's queue of notifications, which a restart clears), and
    /// reported before the next message or event is handled.
    unheard: Unheard,
    /// The queue of the client's [`FrameSender`]s, once one was asked for.
    sender_queue: Option<Arc<SenderQueue>>,
    /// The frames taken from it, being sent (kept for its allocation).
    from_senders: Vec<Frame>,
}

/// See [`Client::unheard`].
type Unheard = Rc<RefCell<VecDeque<SendError>>>;

/// Sends a frame. Resolves once the frame has been written to the connection, or with the
/// reason it was not: the client never buffers frames for a later connection. When the
/// outgoing buffer is full, it resolves only once there was room — so a sender that awaits
/// each send slows down to the server's pace.
///
/// Sending [`Frame::Close`] starts the close handshake, as [`Reply::Close`] does.
#[derive(Debug, Clone)]
pub struct SendFrame(pub Frame);

impl Message for SendFrame {
    type Result = Result<(), SendError>;
}

/// Sends several frames, in order, as one message: cheaper than a [`SendFrame`] each when a
/// program has many to send. Resolves once the last one has been written, or with the first
/// error; the frames after a failed one are not sent. If any frame may not be sent at all
/// ([`SendError::InvalidFrame`]), none is. An empty batch resolves at once.
///
/// ```no_run
/// use actix::Addr;
/// use minch::{Client, Frame, MinchHandler, SendError, SendFrames};
///
/// async fn send_numbers<H: MinchHandler>(client: &Addr<Client<H>>) -> Result<(), SendError> {
///     let batch = (0..100).map(|n| Frame::text(n.to_string())).collect();
///     client.send(SendFrames(batch)).await.unwrap_or(Err(SendError::Stopped))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct SendFrames(pub Vec<Frame>);

impl Message for SendFrames {
    type Result = Result<(), SendError>;
}

/// Like [`SendFrame`], but fails at once with [`SendError::BufferFull`] instead of waiting when
/// the outgoing buffer is over [`ConnectOptions::max_buffered_bytes`]. A close frame is never
/// refused for want of room: it starts the close handshake and goes after the frames before it.
#[derive(Debug, Clone)]
pub struct TrySendFrame(pub Frame);

impl Message for TrySendFrame {
    type Result = Result<(), SendError>;
}

/// A message for [`MinchHandler::handle_info`].
#[derive(Debug, Clone)]
pub struct Info<T>(pub T);

impl<T: 'static> Message for Info<T> {
    type Result = ();
}

/// Closes the connection (code 1000) and stops the client — Minch's `close/1`. Resolves once
/// [`terminate`](MinchHandler::terminate) has run.
#[derive(Debug, Clone, Copy)]
pub struct Close;

impl Message for Close {
    type Result = ();
}

/// A simple API handle put a close frame in the connection's write buffer: the close handshake
/// has begun.
pub(crate) struct CloseQueued(pub(crate) CloseFrame);

impl Message for CloseQueued {
    type Result = ();
}

/// Asks for the client's [`Stats`].
#[derive(Debug, Clone, Copy)]
pub struct GetStats;

impl Message for GetStats {
    type Result = Stats;
}

/// A snapshot of a client's state and traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Whether the WebSocket is open (upgraded and not closing).
    pub connected: bool,
    /// When the current connection was upgraded.
    pub connected_since: Option<SystemTime>,
    /// Failures since the last successful upgrade.
    pub attempt: u32,
    /// Successful upgrades after the first one.
    pub reconnects: u64,
    /// Frames received (text, binary, ping, pong, close), over all connections.
    pub frames_in: u64,
    /// Payload bytes received (of messages as delivered: inflated, if they came compressed).
    pub bytes_in: u64,
    /// Frames written to the buffer, over all connections.
    pub frames_out: u64,
    /// Payload bytes of the frames written to the buffer (as given: before any compression).
    pub bytes_out: u64,
    /// Frames accepted for sending that were never written to the socket, over the connections
    /// that have ended: held back and refused when a close went ahead of them, or lost with the
    /// connection. Their senders heard why; a frame sent with `do_send` has no sender to hear,
    /// so this is where its later failure shows.
    pub frames_unsent: u64,
    /// The round trip of the last keepalive ping.
    pub last_ping_rtt: Option<Duration>,
}

impl<H: MinchHandler> Client<H> {
    /// Starts a client for `handler` on the current arbiter, under a supervisor, and returns its
    /// address.
    pub fn start(handler: H) -> Addr<Self> {
        Supervisor::start(|_| Client::new(handler))
    }

    /// Starts a client on another arbiter (thread), to spread many clients over the cores.
    /// `make_handler` runs on that arbiter.
    pub fn start_in_arbiter<F>(arbiter: &ArbiterHandle, make_handler: F) -> Addr<Self>
    where
        F: FnOnce() -> H + Send + 'static,
        H::Info: Send,
    {
        Supervisor::start_in_arbiter(arbiter, move |_| Client::new(make_handler()))
    }

    /// Starts a client for the simple API: it puts received frames in `queue` itself (and
    /// reads nothing while the queue is full), and publishes the connection it opens in
    /// `published`, for the handles to write into.
    pub(crate) fn start_simple(
        handler: H,
        queue: Arc<Inbox>,
        published: Rc<Published>,
    ) -> Addr<Self> {
        Supervisor::start(move |_| {
            let mut client = Client::new(handler);
            client.receive_queue = Some(queue);
            client.published = Some(published);
            client
        })
    }

    fn new(handler: H) -> Self {
        Client {
            handler: Some(handler),
            lifecycle: Lifecycle::new(),
            timers: HandlerTimers::default(),
            stop_request: None,
            ended: None,
            generation: 0,
            opening: None,
            response: None,
            alarm: None,
            alarms_set: 0,
            restart_guard: None,
            options: ConnectOptions::default(),
            stopped: Waiters::default(),
            past_traffic: Counters::default(),
            upgrades: 0,
            receive_queue: None,
            staged: Vec::new(),
            staged_bytes: 0,
            room: None,
            published: None,
            unheard: Unheard::default(),
            sender_queue: None,
            from_senders: Vec::new(),
        }
    }

    /// Runs a callback with a [`ClientContext`]; `None` once the handler is gone.
    fn callback<R>(
        &mut self,
        ctx: &mut Context<Self>,
        callback: impl FnOnce(&mut H, &mut ClientContext<'_, H>) -> R,
    ) -> Option<R> {
        let handler = self.handler.as_mut()?;
        let mut client_ctx = ClientContext {
            actor: ctx,
            connected: self.lifecycle.is_open(),
            attempt: self.lifecycle.attempt(),
            timers: &mut self.timers,
            stop: &mut self.stop_request,
            ended: self.ended.as_ref(),
        };
        Some(callback(handler, &mut client_ctx))
    }

    /// Carries out what the lifecycle asks, until it asks nothing more, then sets its timer.
    /// Every entry point (a message, the driver, a timer) ends here, through [`settle`](Self::settle).
    fn run(&mut self, ctx: &mut Context<Self>) {
        // Frames read before whatever happened now come first (before an end, above all).
        self.publish_received();
        // So do the refusals of frames sent before it with `do_send`.
        if !self.unheard.borrow().is_empty() {
            self.report_unheard(ctx);
        }
        loop {
            self.honour_stop_request();
            let Some(action) = self.lifecycle.next_action() else {
                break;
            };
            // Open for senders as soon as the connection is (inside `handle_connect` too), and
            // closed as soon as it is not, before any other callback: frames from senders are for
            // the connection that was open when they were sent.
            self.sync_senders_and_report(ctx);
            self.execute(action, ctx);
        }
        // After the last action, and after a close the client began (with `route`), which
        // moves the lifecycle without an action.
        self.sync_senders_and_report(ctx);
        if self.lifecycle.take_timer_moved() {
            self.rearm(ctx);
        }
        if !self.lifecycle.is_open() {
            // A closing connection must read on to the close frame; waiting for the program's
            // take is only worth it while the traffic flows.
            if let Some(queue) = &self.receive_queue {
                queue.end_hand_over();
            }
        }
    }

    /// [`run`](Self::run), if there is anything to do: the frame loop's common case costs a few
    /// comparisons.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.lifecycle.has_work()
            || self.stop_request.is_some()
            || !self.unheard.borrow().is_empty()
        {
            self.run(ctx);
        }
    }

    fn honour_stop_request(&mut self) {
        if let Some(reason) = self.stop_request.take() {
            self.lifecycle
                .stop_requested(StopReason::Requested(reason), Instant::now());
        }
    }

    fn execute(&mut self, action: Action<SharedConnection>, ctx: &mut Context<Self>) {
        match action {
            Action::Init => {
                let result = self.callback(ctx, |handler, ctx| handler.init(ctx));
                self.honour_stop_request();
                let result = result.unwrap_or(Ok(())).map_err(Arc::from);
                self.lifecycle.init_done(result);
            }
            Action::Connect => self.connect(ctx),
            Action::CancelConnect => {
                if let Some(opening) = self.opening.take() {
                    ctx.cancel_future(opening);
                }
            }
            Action::Connected => {
                let Some(response) = self.response.take() else {
                    return;
                };
                let reply =
                    self.callback(ctx, |handler, ctx| handler.handle_connect(&response, ctx));
                self.apply(reply, ctx);
            }
            Action::SendClose(close) => {
                if let Some(conn) = self.lifecycle.conn() {
                    let mut conn = connection::write(conn);
                    // Behind any held-back data, as a close the handler sends.
                    let _ = conn.send_close(close);
                    conn.wake_driver();
                }
            }
            Action::EchoClose(code) => {
                if let Some(conn) = self.lifecycle.conn() {
                    let mut conn = connection::write(conn);
                    conn.echo_close(code);
                    conn.wake_driver();
                }
            }
            Action::Ping(payload) => {
                if let Some(conn) = self.lifecycle.conn() {
                    let mut conn = connection::write(conn);
                    conn.send_ping(payload.to_vec().into());
                    conn.wake_driver();
                }
            }
            Action::Fail {
                conn,
                error,
                send_close,
            } => {
                log::debug!("minch: failing the connection: {error}");
                let close = send_close
                    .then(|| CloseFrame::new(error.close_code(), close_reason_for(&error)));
                connection::write(&conn).fail(close);
                self.retire(conn);
            }
            Action::Drop(conn) => self.retire(conn),
            Action::ReportError(error) => {
                let reply = self.callback(ctx, |handler, ctx| handler.handle_error(error, ctx));
                if let Some(reply) = reply {
                    self.apply_at_depth(reply, ctx, 1);
                }
            }
            Action::Disconnected { reason, attempt } => {
                log::debug!("minch: disconnected: {reason}");
                let decision = self.callback(ctx, |handler, ctx| {
                    handler.handle_disconnect(&reason, attempt, ctx)
                });
                // A stop asked for inside handle_disconnect wins over its answer.
                self.honour_stop_request();
                self.lifecycle.decided(decision.unwrap_or(Reconnect::Stop));
            }
            Action::Restart => {
                self.restart_guard = Some(ctx.address());
                ctx.stop();
            }
            Action::Terminate { reason, ended } => {
                log::debug!("minch: stopping: {reason}");
                if self.stop_sender_queue() {
                    self.report_unheard(ctx);
                }
                self.ended = ended;
                self.callback(ctx, |handler, ctx| handler.terminate(&reason, ctx));
                self.ended = None;
                self.handler = None;
                self.stop_request = None;
                // Nothing restarts after the final stop: cancelling is safe now, and lets a
                // client without addresses end at once.
                let alarm = self.alarm.take().map(|(.., handle)| handle);
                for handle in self.timers.clear().into_iter().chain(alarm) {
                    ctx.cancel_future(handle);
                }
                self.stopped.complete_all(());
            }
        }
    }

    /// Keeps the traffic of a connection that ended, and drops it: its senders still waiting
    /// hear [`SendError::ConnectionLost`], and its driver ends.
    fn retire(&mut self, conn: SharedConnection) {
        let conn = conn.borrow();
        let mut counters = conn.counters;
        counters.frames_unsent = conn.progress().unwritten();
        self.past_traffic += counters;
    }

    /// Sets the lifecycle's one timer to its next deadline.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let due = self.lifecycle.poll_timeout();
        if self.alarm.map(|(at, ..)| at) == due {
            return;
        }
        self.alarm = due.map(|at| {
            self.alarms_set += 1;
            let number = self.alarms_set;
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, move |client, ctx| {
                if client.alarm.map(|(_, current, _)| current) != Some(number) {
                    return;
                }
                client.alarm = None;
                let reading = client
                    .receive_queue
                    .as_ref()
                    // A program that was handed frames and has not taken them need not hold
                    // up keepalive: only a full queue may keep pongs unread.
                    .inspect(|queue| queue.end_hand_over())
                    .map(|queue| Reading {
                        paused: queue.is_paused(),
                        taken: queue.taken(),
                    })
                    .unwrap_or_default();
                client
                    .lifecycle
                    .timeout(Instant::now(), rand::random(), reading);
                client.run(ctx);
            });
            (at, number, handle)
        });
    }

    // ---- connecting -------------------------------------------------------------------------

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let request = self.callback(ctx, |handler, ctx| handler.connect(ctx));
        // A stop asked for inside `connect` comes before the attempt.
        self.honour_stop_request();
        let Some(request) = request.filter(|_| self.lifecycle.is_connecting()) else {
            return;
        };
        self.options = request.options.clone();
        log::debug!("minch: connecting to {request:?}");
        let opening = async move { transport::open(&request).await }
            .into_actor(self)
            .map(move |result, client, ctx| client.on_open(generation, result, ctx));
        self.opening = Some(ctx.spawn(opening));
    }

    fn on_open(
        &mut self,
        generation: u64,
        result: Result<(Response, transport::Transport), Error>,
        ctx: &mut Context<Self>,
    ) {
        if generation != self.generation || !self.lifecycle.is_connecting() {
            return;
        }
        self.opening = None;
        match result {
            Ok((response, transport)) => {
                log::debug!("minch: connected");
                self.upgrades += 1;
                let options = &self.options;
                let conn = Rc::new(RefCell::new(Connection::new(
                    transport,
                    generation,
                    options.max_buffered_bytes,
                )));
                if let Some(published) = &self.published {
                    published.set(&conn);
                }
                let settings = Settings {
                    close_timeout: options.close_timeout,
                    keepalive: options
                        .ping_interval
                        .map(|interval| (interval, options.pong_timeout)),
                };
                self.response = Some(response);
                self.lifecycle.opened(conn, settings, Instant::now());
                ctx.spawn(Driver { generation });
            }
            Err(error) => self.lifecycle.open_failed(error),
        }
        self.run(ctx);
    }

    // ---- the frame loop ---------------------------------------------------------------------

    /// The connection the driver of `generation` polls, while it is the current one.
    fn connection(&self, generation: u64) -> Option<ConnMut<'_>> {
        let conn = self.lifecycle.conn()?.borrow_mut();
        (conn.generation == generation).then(|| ConnMut::from_ref_mut(conn))
    }

    /// Reads and handles frames, then flushes; called by the [`Driver`] on every wake-up.
    fn drive(
        &mut self,
        generation: u64,
        ctx: &mut Context<Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let Some(mut conn) = self.connection(generation) else {
            return Poll::Ready(());
        };
        conn.remember_waker(cx);
        drop(conn);
        self.take_from_senders(Some(cx.waker()), ctx);
        if self.connection(generation).is_none() {
            return Poll::Ready(());
        }
        // A hand-over pause lasts until the driver runs again, which is after the runtime's
        // next turn at the latest: a receiver that has not taken its frames by then has stopped
        // waiting (a receive that timed out, a `next()` dropped by a `select!`), and pings, a
        // close or more frames must not wait for it.
        if let Some(queue) = self
            .receive_queue
            .as_ref()
            .filter(|queue| queue.is_paused())
        {
            queue.end_hand_over();
        }

        // Until the socket says Pending, no read waker is registered: a pass that stops on the
        // budget instead must wake itself, or the frames still unread would never be handled.
        let mut budget_spent = true;
        let budget = if self.receive_queue.is_some() {
            FRAMES_PER_QUEUING_POLL
        } else {
            FRAMES_PER_POLL
        };
        for _ in 0..budget {
            // The program has not taken what it received: let TCP make the server wait.
            if !self.may_read(cx) {
                budget_spent = false;
                break;
            }
            let Some(mut conn) = self.connection(generation) else {
                break;
            };
            let item = conn.transport.next_item(cx);
            if let Poll::Ready(Some(Ok(frame))) = &item {
                conn.counters.frames_in += 1;
                conn.counters.bytes_in += frame.payload_len() as u64;
            }
            drop(conn);
            match item {
                Poll::Pending => {
                    budget_spent = false;
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => self.on_frame(generation, frame, ctx),
                Poll::Ready(Some(Err(CodecError::Protocol(error)))) => {
                    self.lifecycle.violation(error)
                }
                Poll::Ready(Some(Err(CodecError::Io(error)))) => {
                    self.lifecycle.lost(Error::io(error))
                }
                Poll::Ready(None) => self.lifecycle.eof(),
            }
            self.settle(ctx);
        }
        self.publish_received();
        // Stopped on the budget: come back after the other tasks on this arbiter had their
        // turn. When a waiting receiver was just handed frames, read on once it has taken them,
        // or after the runtime's next turn (when deferred wakes run) if it does not.
        if budget_spent {
            let handing_over = self.lifecycle.is_open()
                && self
                    .receive_queue
                    .as_ref()
                    .is_some_and(|queue| queue.pause_for_hand_over(cx.waker()));
            if handing_over {
                let _ = pin!(tokio::task::yield_now()).poll(cx);
            } else {
                cx.waker().wake_by_ref();
            }
        }
        let Some(mut conn) = self.connection(generation) else {
            return Poll::Ready(());
        };
        let flushed = conn.poll_flush(cx);
        drop(conn);
        if let Poll::Ready(Err(error)) = flushed {
            self.lifecycle.lost(Error::io(error));
            self.run(ctx);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Whether the receive queue (if any) has room for another frame.
    fn may_read(&mut self, cx: &TaskContext<'_>) -> bool {
        if self.receive_queue.is_none() {
            return true;
        }
        if let Some((messages, bytes)) = self.room {
            if self.staged.len() < messages && self.staged_bytes < bytes {
                return true;
            }
            self.publish_received();
        }
        self.room = self
            .receive_queue
            .as_ref()
            .and_then(|queue| queue.room(cx.waker()));
        self.room.is_some()
    }

    /// Puts the frames read so far in the receive queue, in one go.
    fn publish_received(&mut self) {
        if let Some(queue) = &self.receive_queue {
            if !self.staged.is_empty() {
                queue.push_all(&mut self.staged, self.staged_bytes);
            }
            self.staged_bytes = 0;
            self.room = None;
        }
    }

    fn on_frame(&mut self, generation: u64, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Ping(payload) => {
                // RFC 6455 §5.5.3: answer with the same payload, as soon as possible — ahead of
                // any held-back data. The driver flushes before it sleeps.
                if let Some(mut conn) = self.connection(generation) {
                    conn.answer_ping(payload);
                }
            }
            Frame::Pong(payload) if self.lifecycle.pong(&payload, Instant::now()) => {}
            Frame::Close(close) => self.lifecycle.close_received(close, Instant::now()),
            // RFC 6455 §5.5.1: nothing follows a close frame. A server that sends more anyway
            // is ignored (Autobahn 7.1.4), not handed on.
            _ if self.lifecycle.server_closed() => {
                log::debug!("minch: a frame after the server's close frame; ignored");
            }
            frame if self.receive_queue.is_some() => {
                self.staged_bytes += frame.payload_len();
                self.staged.push(frame);
            }
            frame => {
                let reply = self.callback(ctx, |handler, ctx| handler.handle_frame(frame, ctx));
                self.apply(reply, ctx);
            }
        }
    }

    // ---- replies and sends ------------------------------------------------------------------

    fn apply(&mut self, reply: Option<Reply>, ctx: &mut Context<Self>) {
        let Some(reply) = reply else {
            return;
        };
        self.apply_at_depth(reply, ctx, 0);
    }

    fn apply_at_depth(&mut self, reply: Reply, ctx: &mut Context<Self>, depth: u8) {
        let failure = match reply {
            Reply::Continue => None,
            Reply::Send(frame) => self.route(frame, true).err(),
            Reply::SendAll(frames) => frames
                .into_iter()
                .find_map(|frame| self.route(frame, true).err()),
            Reply::Close(close) => self.route(Frame::Close(Some(close)), true).err(),
            Reply::Stop(reason) => {
                self.lifecycle
                    .stop_requested(StopReason::Requested(reason), Instant::now());
                None
            }
        };
        let Some(error) = failure else {
            return;
        };
        if depth == 0 {
            let reply = self.callback(ctx, |handler, ctx| {
                handler.handle_error(Error::Send(error), ctx)
            });
            if let Some(reply) = reply {
                self.apply_at_depth(reply, ctx, depth + 1);
            }
        } else {
            // handle_error's own reply failed too: report it without looping.
            log::error!("minch client: a reply from handle_error could not be sent: {error}");
        }
    }

    /// Where every outgoing frame goes: onto the open connection. A close frame starts the
    /// close handshake.
    fn route(&mut self, frame: Frame, wait_for_room: bool) -> Result<Sent, SendError> {
        let sent = {
            let mut conn = connection::write(self.lifecycle.sendable()?);
            let close = match frame {
                Frame::Close(close) => close.unwrap_or_else(CloseFrame::normal),
                _ if !wait_for_room && conn.is_full() => return Err(SendError::BufferFull),
                frame => return conn.send(frame),
            };
            let sent = conn.send_close(close.clone())?;
            conn.wake_driver();
            (sent, close)
        };
        let (sent, close) = sent;
        self.lifecycle.close_sent(close, Instant::now());
        // No frame from senders after the close: refused at once from now on, and those
        // still queued are refused (reported when the caller settles).
        self.sync_sender_queue();
        Ok(sent)
    }

    /// The answer to a [`SendFrames`]: the fate of its last frame is the batch's.
    fn send_batch(
        &mut self,
        frames: Vec<Frame>,
        ctx: &mut Context<Self>,
    ) -> Deferred<Result<(), SendError>> {
        if let Some(error) = frames
            .iter()
            .find_map(|frame| validate_outgoing(frame).err())
        {
            return Deferred::ready(Err(SendError::InvalidFrame(error)));
        }
        let mut last = None;
        let mut failure = None;
        for frame in frames {
            match self.route(frame, true) {
                Ok(sent) => last = Some(sent),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let answer = match (failure, last, self.lifecycle.conn()) {
            (Some(error), ..) => Deferred::ready(Err(error)),
            (None, None, _) => Deferred::ready(Ok(())),
            (None, Some(sent), Some(conn)) => conn.borrow().deferred(sent),
            (None, Some(_), None) => Deferred::ready(Err(SendError::ConnectionLost)),
        };
        self.settle(ctx);
        answer
    }

    /// The answer to a [`SendFrame`] or [`TrySendFrame`].
    fn send_message(
        &mut self,
        frame: Frame,
        wait_for_room: bool,
        ctx: &mut Context<Self>,
    ) -> Deferred<Result<(), SendError>> {
        let result = self.route(frame, wait_for_room);
        let answer = match (result, self.lifecycle.conn()) {
            (Ok(sent), Some(conn)) => conn.borrow().deferred(sent),
            (Ok(_), None) => Deferred::ready(Err(SendError::ConnectionLost)),
            (Err(error), _) => Deferred::ready(Err(error)),
        };
        self.settle(ctx);
        answer
    }

    /// The answer to a send message: a refusal carries the way to `handle_error`, for a
    /// `do_send` that nobody awaits.
    fn answer(&self, deferred: Deferred<Result<(), SendError>>) -> SendAnswer {
        let unheard = deferred.refused().map(|_| self.unheard.clone());
        SendAnswer { deferred, unheard }
    }

    /// Tells `handle_error` of the frames sent with `do_send` and refused, in order.
    fn report_unheard(&mut self, ctx: &mut Context<Self>) {
        loop {
            let Some(error) = self.unheard.borrow_mut().pop_front() else {
                return;
            };
            let reply = self.callback(ctx, |handler, ctx| {
                handler.handle_error(Error::Send(error.clone()), ctx)
            });
            match reply {
                // A reply that fails too is logged, not reported again: no loop.
                Some(reply) => self.apply_at_depth(reply, ctx, 1),
                None => log::debug!("minch: a frame sent with do_send was refused: {error}"),
            }
        }
    }

    // ---- frame senders ------------------------------------------------------------------------

    /// A [`FrameSender`] for this client, its queue made on first use.
    fn frame_sender(&mut self) -> FrameSender {
        let queue = self
            .sender_queue
            .get_or_insert_with(Default::default)
            .clone();
        if self.handler.is_none() {
            queue.stop(&mut Vec::new());
        } else {
            self.sync_sender_queue();
        }
        queue.sender()
    }

    /// Sends what senders queued, in order, before whatever the caller is about to do (a
    /// message from the `Addr`, the driver's reading): frames sent before a message go
    /// before what the message does. `driver`: the waker for the next frames.
    fn take_from_senders(&mut self, driver: Option<&std::task::Waker>, ctx: &mut Context<Self>) {
        let Some(queue) = &self.sender_queue else {
            return;
        };
        let mut frames = std::mem::take(&mut self.from_senders);
        queue.take(&mut frames, driver);
        if frames.is_empty() {
            self.from_senders = frames;
            return;
        }
        for frame in frames.drain(..) {
            if let Err(error) = self.route(frame, true) {
                self.unheard.borrow_mut().push_back(error);
            }
        }
        // A burst's room is not kept for good.
        if frames.capacity() <= SENDER_QUEUE_KEPT {
            self.from_senders = frames;
        }
        if self.unheard.borrow().is_empty() {
            self.settle(ctx);
        } else {
            self.run(ctx);
        }
    }

    /// Opens the senders' queue while the connection is open, and closes it when it is not:
    /// the frames it still holds are refused (reported by the caller, or when it settles).
    fn sync_sender_queue(&mut self) {
        let Some(queue) = &self.sender_queue else {
            return;
        };
        let mut left = std::mem::take(&mut self.from_senders);
        queue.set_open(self.lifecycle.is_open(), &mut left);
        self.refuse(left);
    }

    /// Syncs the senders' queue with the lifecycle, and reports every refusal not reported
    /// yet: also those recorded while an action ran (a close from `handle_connect` closes the
    /// queue in `route`, before this looks at it).
    fn sync_senders_and_report(&mut self, ctx: &mut Context<Self>) {
        self.sync_sender_queue();
        if !self.unheard.borrow().is_empty() {
            self.report_unheard(ctx);
        }
    }

    /// Closes the senders' queue for good; whether it held frames, now refused.
    fn stop_sender_queue(&mut self) -> bool {
        let Some(queue) = &self.sender_queue else {
            return false;
        };
        let mut left = std::mem::take(&mut self.from_senders);
        queue.stop(&mut left);
        self.refuse(left)
    }

    /// Refuses frames taken from a closed queue, for `handle_error`: they were accepted for a
    /// connection that was open then.
    fn refuse(&mut self, mut frames: Vec<Frame>) -> bool {
        let refused = !frames.is_empty();
        for _ in frames.drain(..) {
            let error = match self.lifecycle.sendable() {
                Ok(_) | Err(SendError::NotConnected) => SendError::ConnectionLost,
                Err(error) => error,
            };
            self.unheard.borrow_mut().push_back(error);
        }
        if frames.capacity() <= SENDER_QUEUE_KEPT {
            self.from_senders = frames;
        }
        refused
    }

    fn wake_driver(&self) {
        if let Some(conn) = self.lifecycle.conn() {
            conn.borrow().wake_driver();
        }
    }

    // ---- the handler's timers -----------------------------------------------------------------

    /// Delivers `info` to `handle_info` after `delay`, unless cancelled.
    pub(crate) fn schedule_info(
        actor: &mut Context<Self>,
        timers: &mut HandlerTimers<H::Info>,
        delay: Duration,
        info: H::Info,
    ) -> TimerId {
        let at = deadline_after(Instant::now(), delay);
        timers.insert(at, info, |id, at| Self::arm_info(actor, id, at))
    }

    fn arm_info(actor: &mut Context<Self>, id: TimerId, at: Instant) -> SpawnHandle {
        let delay = at.saturating_duration_since(Instant::now());
        actor.run_later(delay, move |client, ctx| {
            if let Some(info) = client.timers.take(id) {
                client.on_info(info, ctx);
            }
        })
    }

    fn on_info(&mut self, info: H::Info, ctx: &mut Context<Self>) {
        // Frames sent with `do_send` before this message and refused: the handler hears first.
        if !self.unheard.borrow().is_empty() {
            self.report_unheard(ctx);
        }
        let reply = self.callback(ctx, |handler, ctx| handler.handle_info(info, ctx));
        self.apply(reply, ctx);
        // Timers and messages run outside the mailbox pass that precedes the driver's poll.
        self.wake_driver();
        self.settle(ctx);
    }

    fn stats(&self) -> Stats {
        let mut traffic = self.past_traffic;
        let mut stats = Stats {
            connected: self.lifecycle.is_open(),
            attempt: self.lifecycle.attempt(),
            reconnects: self.upgrades.saturating_sub(1),
            last_ping_rtt: self.lifecycle.last_rtt(),
            ..Stats::default()
        };
        if let Some(conn) = self.lifecycle.conn() {
            let conn = conn.borrow();
            traffic += conn.counters;
            stats.connected_since = Some(conn.connected_at);
        }
        stats.frames_in = traffic.frames_in;
        stats.bytes_in = traffic.bytes_in;
        stats.frames_out = traffic.frames_out;
        stats.bytes_out = traffic.bytes_out;
        stats.frames_unsent = traffic.frames_unsent;
        stats
    }
}

/// A short close reason naming the broken rule; RFC 6455 §5.5 limits it to 123 bytes.
fn close_reason_for(error: &ProtocolError) -> String {
    let mut reason = error.to_string();
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

impl<H: MinchHandler> Actor for Client<H> {
    type Context = Context<Self>;

    /// Runs when the client starts, and again after every restart by the supervisor.
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.timers.rearm(|id, at| Self::arm_info(ctx, id, at));
        self.lifecycle.started(Instant::now());
        self.run(ctx);
    }
}

impl<H: MinchHandler> Supervised for Client<H> {
    /// The restart cleared every future of the old run (the connection's driver, the
    /// lifecycle's and the handler's timers): forget their handles.
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.alarm = None;
        self.opening = None;
        self.restart_guard = None;
    }
}

impl<H: MinchHandler> Handler<SendFrame> for Client<H> {
    type Result = SendAnswer;

    fn handle(&mut self, SendFrame(frame): SendFrame, ctx: &mut Context<Self>) -> Self::Result {
        self.take_from_senders(None, ctx);
        let answer = self.send_message(frame, true, ctx);
        self.answer(answer)
    }
}

impl<H: MinchHandler> Handler<SendFrames> for Client<H> {
    type Result = SendAnswer;

    fn handle(&mut self, SendFrames(frames): SendFrames, ctx: &mut Context<Self>) -> Self::Result {
        self.take_from_senders(None, ctx);
        let answer = self.send_batch(frames, ctx);
        self.answer(answer)
    }
}

impl<H: MinchHandler> Handler<TrySendFrame> for Client<H> {
    type Result = SendAnswer;

    fn handle(
        &mut self,
        TrySendFrame(frame): TrySendFrame,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.take_from_senders(None, ctx);
        let answer = self.send_message(frame, false, ctx);
        self.answer(answer)
    }
}

/// The answer to [`SendFrame`], [`SendFrames`] and [`TrySendFrame`]: the frame's fate once
/// known, for a sender that awaits it (`addr.send(..)`). A message sent with `do_send` has no
/// one to answer: a refusal on the spot (not connected, closing, an invalid frame, a full
/// buffer) then goes to [`handle_error`](MinchHandler::handle_error) instead of nowhere, and a
/// frame lost later with its connection is counted in [`Stats::frames_unsent`].
///
/// `pub` only because actix's `Handler::Result` of a public impl must be: the module is private
/// and the type is not re-exported.
pub struct SendAnswer {
    deferred: Deferred<Result<(), SendError>>,
    /// The client's queue for a refusal nobody awaits; only set when the frame was refused.
    unheard: Option<Unheard>,
}

impl<H, M> actix::dev::MessageResponse<Client<H>, M> for SendAnswer
where
    H: MinchHandler,
    M: Message<Result = Result<(), SendError>>,
{
    fn handle(
        self,
        ctx: &mut Context<Client<H>>,
        tx: Option<actix::dev::OneshotSender<Result<(), SendError>>>,
    ) {
        if tx.is_none() {
            if let (Some(error), Some(unheard)) = (self.deferred.refused(), &self.unheard) {
                unheard.borrow_mut().push_back(error.clone());
                // A nudge, in case no other message or event comes soon; should a restart
                // clear it, the next event reports the refusal all the same.
                ctx.notify(ReportUnheard);
            }
            return;
        }
        actix::dev::MessageResponse::<Client<H>, M>::handle(self.deferred, ctx, tx);
    }
}

impl std::fmt::Debug for SendAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.deferred.fmt(f)
    }
}

/// Frames sent with `do_send` were refused on the spot: the handler is to hear of them.
struct ReportUnheard;

impl Message for ReportUnheard {
    type Result = ();
}

impl<H: MinchHandler> Handler<ReportUnheard> for Client<H> {
    type Result = ();

    fn handle(&mut self, _: ReportUnheard, ctx: &mut Context<Self>) {
        self.run(ctx);
    }
}

impl<H: MinchHandler> Handler<Info<H::Info>> for Client<H> {
    type Result = ();

    fn handle(&mut self, Info(info): Info<H::Info>, ctx: &mut Context<Self>) {
        self.take_from_senders(None, ctx);
        self.on_info(info, ctx);
    }
}

impl<H: MinchHandler> Handler<CloseQueued> for Client<H> {
    type Result = ();

    fn handle(&mut self, CloseQueued(close): CloseQueued, ctx: &mut Context<Self>) {
        self.lifecycle.close_sent(close, Instant::now());
        self.run(ctx);
    }
}

impl<H: MinchHandler> Handler<GetStats> for Client<H> {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, ctx: &mut Context<Self>) -> Self::Result {
        // The frames sent before are counted as sent (or refused).
        self.take_from_senders(None, ctx);
        MessageResult(self.stats())
    }
}

impl<H: MinchHandler> Handler<Close> for Client<H> {
    type Result = Deferred<()>;

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) -> Self::Result {
        self.take_from_senders(None, ctx);
        if self.lifecycle.is_stopped() {
            return Deferred::ready(());
        }
        self.lifecycle
            .stop_requested(StopReason::Closed, Instant::now());
        self.run(ctx);
        if self.lifecycle.is_stopped() {
            Deferred::ready(())
        } else {
            Deferred::pending(&self.stopped)
        }
    }
}

/// Asks for a [`FrameSender`]: a handle that sends frames to the client from any thread with
/// no message per frame. Any number may be asked for; they share one queue.
#[derive(Debug, Clone, Copy)]
pub struct GetFrameSender;

impl Message for GetFrameSender {
    type Result = FrameSender;
}

impl<H: MinchHandler> Handler<GetFrameSender> for Client<H> {
    type Result = MessageResult<GetFrameSender>;

    fn handle(&mut self, _: GetFrameSender, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.frame_sender())
    }
}

impl<H: MinchHandler> Drop for Client<H> {
    /// Senders of a client that is gone (its arbiter stopped, say) hear that it stopped
    /// rather than queue frames nobody will take.
    fn drop(&mut self) {
        if let Some(queue) = &self.sender_queue {
            let mut left = Vec::new();
            queue.stop(&mut left);
            if !left.is_empty() {
                log::debug!(
                    "minch: {} frames from senders were not sent: the client is gone",
                    left.len()
                );
            }
        }
    }
}

/// Polls one connection for as long as it is the client's current one.
struct Driver {
    generation: u64,
}

impl<H: MinchHandler> ActorFuture<Client<H>> for Driver {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        client: &mut Client<H>,
        ctx: &mut Context<Client<H>>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        client.drive(self.generation, ctx, cx)
    }
}

impl<H: MinchHandler> std::fmt::Debug for Client<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.lifecycle.phase_name())
            .field("attempt", &self.lifecycle.attempt())
            .finish_non_exhaustive()
    }
}
