//! The actor that runs a [`MinchHandler`]: connecting, the frame loop, keepalive, the close
//! handshake and the reconnect loop.

use std::{
    io,
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant, SystemTime},
};

use actix::{fut::ActorFuture, prelude::*, Supervised, Supervisor};

use crate::{
    connection::{Closing, Connection, Counters, Deferred, PendingPing, Sent, Waiters},
    error::{SendError, Timeout},
    frame::{CloseCode, CloseFrame, Frame},
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    options::ConnectOptions,
    protocol::CodecError,
    transport, Error, ProtocolError,
};

/// At most this many frames are handled per wake-up, so one busy connection cannot starve the
/// other actors on its arbiter.
const FRAMES_PER_POLL: usize = 64;

/// The actix actor that runs a [`MinchHandler`]: it connects, answers pings, completes close
/// handshakes, hands frames to the handler and reconnects as
/// [`handle_disconnect`](MinchHandler::handle_disconnect) decides.
///
/// Start it with [`Client::start`]; talk to it through its [`Addr`] with [`SendFrame`],
/// [`TrySendFrame`], [`Info`], [`GetStats`] and [`Close`]. The address stays valid across
/// reconnects.
pub struct Client<H: MinchHandler> {
    handler: H,
    state: State,
    /// Failures since the last successful upgrade.
    attempt: u32,
    /// Bumped for every attempt, so that timers of an earlier connection can tell they are stale.
    generation: u64,
    /// Set once the client is to stop; it does after the close handshake.
    stopping: Option<StopReason>,
    stopped: Waiters<()>,
    /// The close frame this client sent, reported to `handle_disconnect` once the handshake ends.
    pending_client_close: Option<CloseFrame>,
    /// The options of the current (or last) attempt.
    options: ConnectOptions,
    keepalive: Option<SpawnHandle>,
    /// Traffic of the connections that have ended.
    past_traffic: Counters,
    upgrades: u64,
    last_rtt: Option<Duration>,
}

enum State {
    /// Not started, or waiting to reconnect.
    Idle(Option<SpawnHandle>),
    Connecting(SpawnHandle),
    Connected(Box<Connection>),
    Stopped,
}

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

/// Like [`SendFrame`], but fails at once with [`SendError::BufferFull`] instead of waiting when
/// the outgoing buffer is over [`ConnectOptions::max_buffered_bytes`].
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

/// [`ClientContext::stop`](crate::ClientContext::stop)'s message to its own client.
pub(crate) struct StopRequest(pub(crate) String);

impl Message for StopRequest {
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
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Frames written to the buffer, over all connections.
    pub frames_out: u64,
    /// Payload bytes written to the buffer.
    pub bytes_out: u64,
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

    fn new(handler: H) -> Self {
        Client {
            handler,
            state: State::Idle(None),
            attempt: 0,
            generation: 0,
            stopping: None,
            stopped: Waiters::default(),
            pending_client_close: None,
            options: ConnectOptions::default(),
            keepalive: None,
            past_traffic: Counters::default(),
            upgrades: 0,
            last_rtt: None,
        }
    }

    /// Runs a callback with a [`ClientContext`].
    fn with_context<R>(
        &mut self,
        ctx: &mut Context<Self>,
        callback: impl FnOnce(&mut H, &mut ClientContext<'_, H>) -> R,
    ) -> R {
        let connected = matches!(&self.state, State::Connected(conn) if conn.is_open());
        let mut client_ctx = ClientContext {
            actor: ctx,
            connected,
            attempt: self.attempt,
        };
        callback(&mut self.handler, &mut client_ctx)
    }

    fn connection(&mut self, generation: u64) -> Option<&mut Connection> {
        match &mut self.state {
            State::Connected(conn) if self.generation == generation => Some(conn),
            _ => None,
        }
    }

    fn open_connection(&mut self) -> Result<&mut Connection, SendError> {
        match &mut self.state {
            State::Connected(conn) if conn.is_open() => Ok(conn),
            State::Connected(_) => Err(SendError::Closing),
            State::Stopped => Err(SendError::Stopped),
            _ => Err(SendError::NotConnected),
        }
    }

    /// Ends the current connection: stops its keepalive and keeps its traffic counters.
    fn take_connection(&mut self, ctx: &mut Context<Self>) -> Option<Box<Connection>> {
        let conn = match std::mem::replace(&mut self.state, State::Idle(None)) {
            State::Connected(conn) => conn,
            other => {
                self.state = other;
                return None;
            }
        };
        if let Some(keepalive) = self.keepalive.take() {
            ctx.cancel_future(keepalive);
        }
        self.past_traffic += conn.counters;
        Some(conn)
    }

    // ---- connecting -------------------------------------------------------------------------

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let request = self.with_context(ctx, |handler, ctx| handler.connect(ctx));
        self.options = request.options.clone();
        log::debug!("minch: connecting to {request:?}");
        let opening = async move { transport::open(&request).await }
            .into_actor(self)
            .map(move |result, client, ctx| client.on_open(generation, result, ctx));
        let handle = ctx.spawn(opening);
        self.state = State::Connecting(handle);
    }

    fn on_open(
        &mut self,
        generation: u64,
        result: Result<(transport::Response, transport::Transport), Error>,
        ctx: &mut Context<Self>,
    ) {
        if generation != self.generation || !matches!(self.state, State::Connecting(_)) {
            return;
        }
        match result {
            Ok((response, transport)) => {
                log::debug!("minch: connected");
                self.attempt = 0;
                self.upgrades += 1;
                let conn = Connection::new(transport, self.options.max_buffered_bytes);
                self.state = State::Connected(Box::new(conn));
                ctx.spawn(Driver { generation });
                self.start_keepalive(ctx);
                let reply =
                    self.with_context(ctx, |handler, ctx| handler.handle_connect(&response, ctx));
                self.apply(reply, ctx);
            }
            Err(error) => {
                self.state = State::Idle(None);
                self.disconnected(DisconnectReason::Error(error), ctx);
            }
        }
    }

    // ---- the frame loop ---------------------------------------------------------------------

    /// Reads and handles frames, then flushes; called by the [`Driver`] on every wake-up.
    fn drive(
        &mut self,
        generation: u64,
        ctx: &mut Context<Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let Some(conn) = self.connection(generation) else {
            return Poll::Ready(());
        };
        conn.remember_waker(cx);

        // Until the socket says Pending, no read waker is registered: a pass that stops on the
        // budget instead must wake itself, or the frames still unread would never be handled.
        let mut budget_spent = true;
        for _ in 0..FRAMES_PER_POLL {
            let Some(conn) = self.connection(generation) else {
                return Poll::Ready(());
            };
            match Pin::new(&mut conn.transport).next_item(cx) {
                Poll::Pending => {
                    budget_spent = false;
                    break;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    conn.counters.frames_in += 1;
                    conn.counters.bytes_in += frame.payload_len() as u64;
                    self.on_frame(frame, ctx);
                }
                Poll::Ready(Some(Err(CodecError::Protocol(error)))) => {
                    self.fail(error, ctx, cx);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(CodecError::Io(error)))) => {
                    self.lost(Error::io(error), ctx);
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    self.on_eof(ctx);
                    return Poll::Ready(());
                }
            }
        }
        let Some(conn) = self.connection(generation) else {
            return Poll::Ready(());
        };
        if budget_spent {
            // Come back after the other actors on this arbiter had their turn.
            cx.waker().wake_by_ref();
        }
        if let Poll::Ready(Err(error)) = conn.poll_flush(cx) {
            self.lost(Error::io(error), ctx);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn on_frame(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match frame {
            Frame::Ping(payload) => {
                // RFC 6455 §5.5.3: answer with the same payload, as soon as possible — ahead of
                // any held-back data. The driver flushes before it sleeps.
                if let State::Connected(conn) = &mut self.state {
                    if conn.is_open() {
                        let _ = conn.send_control(Frame::Pong(payload));
                    }
                }
            }
            Frame::Pong(payload) if self.is_keepalive_pong(&payload) => {}
            Frame::Close(close) => self.on_close_frame(close, ctx),
            frame => {
                let reply = self.with_context(ctx, |handler, ctx| handler.handle_frame(frame, ctx));
                self.apply(reply, ctx);
            }
        }
    }

    fn on_close_frame(&mut self, close: Option<CloseFrame>, ctx: &mut Context<Self>) {
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        match conn.closing {
            Closing::Open => {
                // RFC 6455 §5.5.1: echo the status code; 1000 when the server sent none. Then
                // the server closes TCP (§7.1.1), bounded by the close timer.
                let code = close.as_ref().map_or(CloseCode::NORMAL, |close| close.code);
                let _ = conn.send_control(Frame::close(code, ""));
                conn.closing = Closing::Received(close);
                self.start_close_timer(ctx);
            }
            Closing::Sent => {
                // The server answered our close: the handshake is complete. As in Minch, the
                // reply ends the wait; holding on for the server's FIN as well would cost a
                // second with servers that wait for the client to go first (actix-web does).
                self.take_connection(ctx);
                let reason = self.client_close_reason();
                self.disconnected(reason, ctx);
            }
            Closing::Received(_) => {}
        }
    }

    /// The server closed TCP. RFC 6455 §7.1.1: after the close handshake, the server closes
    /// first; before it, this is an abnormal closure (1006).
    fn on_eof(&mut self, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.take_connection(ctx) else {
            return;
        };
        let reason = match std::mem::replace(&mut conn.closing, Closing::Open) {
            Closing::Open => DisconnectReason::Error(Error::io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the TCP connection without a close frame (1006)",
            ))),
            Closing::Received(close) => DisconnectReason::ServerClosed(close),
            Closing::Sent => self.client_close_reason(),
        };
        drop(conn);
        self.disconnected(reason, ctx);
    }

    /// RFC 6455 §7.1.7: on a protocol violation send a close frame with the matching status
    /// code, then drop the connection.
    fn fail(&mut self, error: ProtocolError, ctx: &mut Context<Self>, cx: &mut TaskContext<'_>) {
        log::debug!("minch: failing the connection: {error}");
        if let Some(mut conn) = self.take_connection(ctx) {
            if conn.is_open() {
                let close = Frame::close(error.close_code(), close_reason_for(&error));
                if conn.send_control(close).is_ok() {
                    // Best effort: the connection is dropped whether or not this completes.
                    let _ = conn.poll_flush(cx);
                }
            }
        }
        let error = Error::Protocol(error);
        self.report_error(error.clone(), ctx);
        self.disconnected(DisconnectReason::Error(error), ctx);
    }

    /// The connection broke: reset, broken pipe, a failed write, or a keepalive timeout.
    fn lost(&mut self, error: Error, ctx: &mut Context<Self>) {
        let Some(mut conn) = self.take_connection(ctx) else {
            return;
        };
        let reason = match std::mem::replace(&mut conn.closing, Closing::Open) {
            // The handshake was under way; the break only cut its end short.
            Closing::Received(close) => DisconnectReason::ServerClosed(close),
            Closing::Sent => self.client_close_reason(),
            Closing::Open => DisconnectReason::Error(error),
        };
        drop(conn);
        self.disconnected(reason, ctx);
    }

    // ---- keepalive --------------------------------------------------------------------------

    fn start_keepalive(&mut self, ctx: &mut Context<Self>) {
        let Some(interval) = self.options.ping_interval else {
            return;
        };
        let generation = self.generation;
        let handle = ctx.run_interval(interval, move |client, ctx| {
            client.send_keepalive_ping(generation, ctx)
        });
        self.keepalive = Some(handle);
    }

    fn send_keepalive_ping(&mut self, generation: u64, ctx: &mut Context<Self>) {
        let pong_timeout = self.options.pong_timeout;
        let Some(conn) = self.connection(generation) else {
            return;
        };
        if !conn.is_open() || conn.ping.is_some() {
            // Closing, or the previous ping's timer is still running.
            return;
        }
        let payload = rand::random::<[u8; 8]>();
        if conn
            .send_control(Frame::Ping(payload.to_vec().into()))
            .is_err()
        {
            return;
        }
        conn.ping = Some(PendingPing {
            payload,
            sent_at: Instant::now(),
            frames_in_then: conn.counters.frames_in,
        });
        conn.wake_driver();
        ctx.run_later(pong_timeout, move |client, ctx| {
            let Some(conn) = client.connection(generation) else {
                return;
            };
            let Some(ping) = conn.ping.take() else {
                return;
            };
            if conn.counters.frames_in == ping.frames_in_then {
                log::debug!("minch: no pong within {pong_timeout:?}; dropping the connection");
                client.lost(Error::Timeout(Timeout::Pong), ctx);
            }
        });
    }

    /// Whether `payload` answers our keepalive ping; records the round trip if so. Such pongs
    /// are the client's own business and do not reach `handle_frame`.
    fn is_keepalive_pong(&mut self, payload: &[u8]) -> bool {
        let State::Connected(conn) = &mut self.state else {
            return false;
        };
        match &conn.ping {
            Some(ping) if ping.payload == payload => {
                let rtt = ping.sent_at.elapsed();
                self.last_rtt = Some(rtt);
                // Keep `ping` until its timer runs, so only one ping is in flight at a time.
                true
            }
            _ => false,
        }
    }

    // ---- closing ----------------------------------------------------------------------------

    /// Starts the close handshake.
    fn begin_close(&mut self, close: CloseFrame, ctx: &mut Context<Self>) -> Result<(), SendError> {
        let conn = self.open_connection()?;
        // Through `send`, so that the close goes after any held-back data.
        conn.send(Frame::Close(Some(close.clone())))?;
        conn.closing = Closing::Sent;
        conn.wake_driver();
        self.pending_client_close = Some(close);
        self.start_close_timer(ctx);
        Ok(())
    }

    fn start_close_timer(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        ctx.run_later(self.options.close_timeout, move |client, ctx| {
            let Some(conn) = client.connection(generation) else {
                return;
            };
            if !conn.is_open() {
                log::debug!("minch: close handshake timed out; dropping the connection");
                client.on_eof(ctx);
            }
        });
    }

    fn client_close_reason(&mut self) -> DisconnectReason {
        DisconnectReason::ClientClosed(
            self.pending_client_close
                .take()
                .unwrap_or_else(CloseFrame::normal),
        )
    }

    // ---- after a connection ------------------------------------------------------------------

    fn disconnected(&mut self, reason: DisconnectReason, ctx: &mut Context<Self>) {
        log::debug!("minch: disconnected: {reason}");
        if let Some(stop) = self.stopping.take() {
            self.terminate(stop, ctx);
            return;
        }
        self.attempt = self.attempt.saturating_add(1);
        let attempt = self.attempt;
        let decision = self.with_context(ctx, |handler, ctx| {
            handler.handle_disconnect(&reason, attempt, ctx)
        });
        match decision {
            Reconnect::After(delay) => {
                let handle = ctx.run_later(delay, |client, ctx| {
                    if matches!(client.state, State::Idle(_)) && client.stopping.is_none() {
                        client.connect(ctx);
                    }
                });
                self.state = State::Idle(Some(handle));
            }
            Reconnect::Stop => self.terminate(StopReason::Disconnected(reason), ctx),
        }
    }

    /// Stops after closing the connection, if there is one.
    fn stop(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Stopped) || self.stopping.is_some() {
            return;
        }
        match &self.state {
            State::Connected(conn) => {
                let open = conn.is_open();
                self.stopping = Some(reason);
                if open {
                    let _ = self.begin_close(CloseFrame::normal(), ctx);
                }
            }
            State::Connecting(handle) | State::Idle(Some(handle)) => {
                ctx.cancel_future(*handle);
                self.terminate(reason, ctx);
            }
            State::Idle(None) | State::Stopped => self.terminate(reason, ctx),
        }
    }

    fn terminate(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        log::debug!("minch: stopping: {reason}");
        self.take_connection(ctx);
        self.state = State::Stopped;
        self.with_context(ctx, |handler, ctx| handler.terminate(&reason, ctx));
        self.stopped.complete_all(());
        ctx.stop();
    }

    // ---- replies -----------------------------------------------------------------------------

    fn apply(&mut self, reply: Reply, ctx: &mut Context<Self>) {
        self.apply_at_depth(reply, ctx, 0);
    }

    fn apply_at_depth(&mut self, reply: Reply, ctx: &mut Context<Self>, depth: u8) {
        let failure = match reply {
            Reply::Continue => None,
            Reply::Send(frame) => self.send_reply(frame, ctx).err(),
            Reply::SendAll(frames) => frames
                .into_iter()
                .find_map(|frame| self.send_reply(frame, ctx).err()),
            Reply::Close(close) => self.begin_close(close, ctx).err(),
            Reply::Stop(reason) => {
                self.stop(StopReason::Requested(reason), ctx);
                None
            }
        };
        if let Some(error) = failure {
            if depth == 0 {
                let reply = self.with_context(ctx, |handler, ctx| {
                    handler.handle_error(Error::Send(error), ctx)
                });
                self.apply_at_depth(reply, ctx, depth + 1);
            } else {
                // handle_error's own reply failed too: report it without looping.
                log::error!("minch client: a reply from handle_error could not be sent: {error}");
            }
        }
    }

    fn send_reply(&mut self, frame: Frame, ctx: &mut Context<Self>) -> Result<(), SendError> {
        self.route(frame, true, ctx).map(drop)
    }

    fn report_error(&mut self, error: Error, ctx: &mut Context<Self>) {
        let reply = self.with_context(ctx, |handler, ctx| handler.handle_error(error, ctx));
        self.apply_at_depth(reply, ctx, 1);
    }

    /// The answer to a [`SendFrame`] or [`TrySendFrame`].
    fn send_message(
        &mut self,
        frame: Frame,
        wait_for_room: bool,
        ctx: &mut Context<Self>,
    ) -> Deferred<Result<(), SendError>> {
        match self.route(frame, wait_for_room, ctx) {
            Ok(Some(sent)) => match &self.state {
                State::Connected(conn) => conn.deferred(sent),
                _ => Deferred::ready(Err(SendError::ConnectionLost)),
            },
            Ok(None) => Deferred::ready(Ok(())),
            Err(error) => Deferred::ready(Err(error)),
        }
    }

    /// Where every outgoing frame goes: a close frame starts the close handshake (`None`),
    /// anything else is sent on the open connection.
    fn route(
        &mut self,
        frame: Frame,
        wait_for_room: bool,
        ctx: &mut Context<Self>,
    ) -> Result<Option<Sent>, SendError> {
        if let Frame::Close(close) = frame {
            self.begin_close(close.unwrap_or_else(CloseFrame::normal), ctx)?;
            return Ok(None);
        }
        let conn = self.open_connection()?;
        if !wait_for_room && conn.is_full() {
            return Err(SendError::BufferFull);
        }
        conn.send(frame).map(Some)
    }

    fn stats(&self) -> Stats {
        let mut traffic = self.past_traffic;
        let mut stats = Stats {
            attempt: self.attempt,
            reconnects: self.upgrades.saturating_sub(1),
            last_ping_rtt: self.last_rtt,
            ..Stats::default()
        };
        if let State::Connected(conn) = &self.state {
            traffic += conn.counters;
            stats.connected = conn.is_open();
            stats.connected_since = Some(conn.connected_at);
        }
        stats.frames_in = traffic.frames_in;
        stats.bytes_in = traffic.bytes_in;
        stats.frames_out = traffic.frames_out;
        stats.bytes_out = traffic.bytes_out;
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

    fn started(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Stopped) {
            // Restarted by the supervisor after a final stop: stay stopped, answering messages.
            return;
        }
        let init = self.with_context(ctx, |handler, ctx| handler.init(ctx));
        match init {
            Ok(()) => self.connect(ctx),
            Err(error) => self.terminate(StopReason::InitFailed(error.to_string()), ctx),
        }
    }
}

impl<H: MinchHandler> Supervised for Client<H> {}

impl<H: MinchHandler> Handler<SendFrame> for Client<H> {
    type Result = Deferred<Result<(), SendError>>;

    fn handle(&mut self, SendFrame(frame): SendFrame, ctx: &mut Context<Self>) -> Self::Result {
        self.send_message(frame, true, ctx)
    }
}

impl<H: MinchHandler> Handler<TrySendFrame> for Client<H> {
    type Result = Deferred<Result<(), SendError>>;

    fn handle(
        &mut self,
        TrySendFrame(frame): TrySendFrame,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.send_message(frame, false, ctx)
    }
}

impl<H: MinchHandler> Handler<Info<H::Info>> for Client<H> {
    type Result = ();

    fn handle(&mut self, Info(info): Info<H::Info>, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Stopped) {
            return;
        }
        let reply = self.with_context(ctx, |handler, ctx| handler.handle_info(info, ctx));
        self.apply(reply, ctx);
        // Scheduled messages run outside the mailbox pass that precedes the driver's poll.
        if let State::Connected(conn) = &self.state {
            conn.wake_driver();
        }
    }
}

impl<H: MinchHandler> Handler<StopRequest> for Client<H> {
    type Result = ();

    fn handle(&mut self, StopRequest(reason): StopRequest, ctx: &mut Context<Self>) {
        self.stop(StopReason::Requested(reason), ctx);
        if let State::Connected(conn) = &self.state {
            conn.wake_driver();
        }
    }
}

impl<H: MinchHandler> Handler<GetStats> for Client<H> {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl<H: MinchHandler> Handler<Close> for Client<H> {
    type Result = Deferred<()>;

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) -> Self::Result {
        if matches!(self.state, State::Stopped) {
            return Deferred::ready(());
        }
        let waiters = self.stopped.clone();
        self.stop(StopReason::Closed, ctx);
        if matches!(self.state, State::Stopped) {
            Deferred::ready(())
        } else {
            Deferred::pending(&waiters)
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
        let state = match &self.state {
            State::Idle(_) => "idle",
            State::Connecting(_) => "connecting",
            State::Connected(conn) if conn.is_open() => "connected",
            State::Connected(_) => "closing",
            State::Stopped => "stopped",
        };
        f.debug_struct("Client")
            .field("state", &state)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
