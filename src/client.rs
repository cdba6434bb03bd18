//! The actor that runs a [`MinchHandler`]: connecting, the frame loop, the close handshake and
//! the reconnect loop.

use std::{
    io,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use actix::{fut::ActorFuture, prelude::*, Supervised, Supervisor};

use crate::{
    connection::{Closing, Connection, Deferred, Waiters, Written},
    error::SendError,
    frame::{CloseCode, CloseFrame, Frame},
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    protocol::CodecError,
    transport, Error,
};

/// At most this many frames are handled per wake-up, so one busy connection cannot starve the
/// other actors on its arbiter.
const FRAMES_PER_POLL: usize = 64;

/// The actix actor that runs a [`MinchHandler`]: it connects, answers pings, completes close
/// handshakes, hands frames to the handler and reconnects as
/// [`handle_disconnect`](MinchHandler::handle_disconnect) decides.
///
/// Start it with [`Client::start`]; talk to it through its [`Addr`] with [`SendFrame`], [`Info`]
/// and [`Close`]. The address stays valid across reconnects.
pub struct Client<H: MinchHandler> {
    handler: H,
    state: State,
    /// Failures since the last successful upgrade.
    attempt: u32,
    /// Bumped for every attempt, so that callbacks of an earlier connection can tell they are stale.
    generation: u64,
    /// Set once the client is to stop; it does after the close handshake.
    stopping: Option<StopReason>,
    stopped: Waiters<()>,
    /// The close frame this client sent, reported to `handle_disconnect` once the handshake ends.
    pending_client_close: Option<CloseFrame>,
    close_timeout: std::time::Duration,
}

enum State {
    /// Not started, or waiting to reconnect.
    Idle(Option<SpawnHandle>),
    Connecting(SpawnHandle),
    Connected(Box<Connection>),
    Stopped,
}

/// Sends a frame. Resolves once the frame has been written to the connection, or with the
/// reason it was not: the client never buffers frames for a later connection.
///
/// Sending [`Frame::Close`] starts the close handshake, as [`Reply::Close`] does.
#[derive(Debug, Clone)]
pub struct SendFrame(pub Frame);

impl Message for SendFrame {
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
            close_timeout: crate::ConnectOptions::default().close_timeout,
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

    // ---- connecting -------------------------------------------------------------------------

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let request = self.with_context(ctx, |handler, ctx| handler.connect(ctx));
        self.close_timeout = request.options.close_timeout;
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
                self.state = State::Connected(Box::new(Connection::new(transport)));
                ctx.spawn(Driver { generation });
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
        if let Some(error) = conn.broken.take() {
            self.lost(Error::io(error), ctx);
            return Poll::Ready(());
        }

        for _ in 0..FRAMES_PER_POLL {
            let Some(conn) = self.connection(generation) else {
                return Poll::Ready(());
            };
            match Pin::new(&mut conn.transport).next_item(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => self.on_frame(frame, ctx),
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
        if conn.transport.is_read_buf_empty() {
            // Fall through to the flush; the socket will wake us for more.
        } else {
            // Budget spent with frames still buffered: come back after other actors ran.
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
                // RFC 6455 §5.5.3: answer with the same payload, as soon as possible. The driver
                // flushes before it sleeps.
                if let State::Connected(conn) = &mut self.state {
                    if conn.is_open() {
                        let _ = conn.buffer(Frame::Pong(payload));
                    }
                }
            }
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
        match &mut conn.closing {
            Closing::Open => {
                // RFC 6455 §5.5.1: echo the status code; 1000 when the server sent none.
                let code = close.as_ref().map_or(CloseCode::NORMAL, |close| close.code);
                let _ = conn.buffer(Frame::close(code, ""));
                conn.closing = Closing::Received(close);
                self.start_close_timer(ctx);
            }
            Closing::Sent { reply_received } => *reply_received = true,
            Closing::Received(_) => {}
        }
    }

    /// The server closed TCP. RFC 6455 §7.1.1: after the close handshake, the server closes
    /// first; before it, this is an abnormal closure (1006).
    fn on_eof(&mut self, ctx: &mut Context<Self>) {
        let State::Connected(conn) = &mut self.state else {
            return;
        };
        let reason = match std::mem::replace(&mut conn.closing, Closing::Open) {
            Closing::Open => DisconnectReason::Error(Error::io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the TCP connection without a close frame (1006)",
            ))),
            Closing::Received(close) => DisconnectReason::ServerClosed(close),
            Closing::Sent { .. } => self.client_close_reason(),
        };
        self.state = State::Idle(None);
        self.disconnected(reason, ctx);
    }

    /// RFC 6455 §7.1.7: on a protocol violation send a close frame with the matching status
    /// code, then drop the connection.
    fn fail(
        &mut self,
        error: crate::ProtocolError,
        ctx: &mut Context<Self>,
        cx: &mut TaskContext<'_>,
    ) {
        log::debug!("minch: failing the connection: {error}");
        if let State::Connected(conn) = &mut self.state {
            if conn.is_open() {
                let reason = close_reason_for(&error);
                if conn
                    .buffer(Frame::close(error.close_code(), reason))
                    .is_ok()
                {
                    // Best effort: the connection is dropped whether or not this completes.
                    let _ = conn.poll_flush(cx);
                }
            }
        }
        self.state = State::Idle(None);
        let error = Error::Protocol(error);
        self.report_error(error.clone(), ctx);
        self.disconnected(DisconnectReason::Error(error), ctx);
    }

    /// The connection broke: reset, broken pipe, or a write that failed.
    fn lost(&mut self, error: Error, ctx: &mut Context<Self>) {
        let closing = match &mut self.state {
            State::Connected(conn) => std::mem::replace(&mut conn.closing, Closing::Open),
            _ => return,
        };
        self.state = State::Idle(None);
        let reason = match closing {
            // The handshake was under way; the break only cut its end short.
            Closing::Received(close) => DisconnectReason::ServerClosed(close),
            Closing::Sent { .. } => self.client_close_reason(),
            Closing::Open => DisconnectReason::Error(error),
        };
        self.disconnected(reason, ctx);
    }

    // ---- closing ----------------------------------------------------------------------------

    /// Starts the close handshake. Returns false if there is no open connection to close.
    fn begin_close(&mut self, close: CloseFrame, ctx: &mut Context<Self>) -> Result<(), SendError> {
        let conn = match &mut self.state {
            State::Connected(conn) if conn.is_open() => conn,
            State::Connected(_) => return Err(SendError::Closing),
            State::Stopped => return Err(SendError::Stopped),
            _ => return Err(SendError::NotConnected),
        };
        conn.send(Frame::Close(Some(close.clone())))?;
        conn.closing = Closing::Sent {
            reply_received: false,
        };
        self.pending_client_close = Some(close);
        conn.wake_driver();
        self.start_close_timer(ctx);
        Ok(())
    }

    fn start_close_timer(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation;
        ctx.run_later(self.close_timeout, move |client, ctx| {
            let Some(conn) = client.connection(generation) else {
                return;
            };
            if conn.is_open() {
                return;
            }
            log::debug!("minch: close handshake timed out; dropping the connection");
            client.on_eof(ctx);
        });
    }

    fn client_close_reason(&mut self) -> DisconnectReason {
        DisconnectReason::ClientClosed(
            self.pending_client_close
                .take()
                .unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, "")),
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
        match std::mem::replace(&mut self.state, State::Idle(None)) {
            State::Connected(conn) => {
                let closing_already = !conn.is_open();
                self.state = State::Connected(conn);
                self.stopping = Some(reason);
                if !closing_already {
                    let _ = self.begin_close(CloseFrame::new(CloseCode::NORMAL, ""), ctx);
                }
            }
            State::Connecting(handle) | State::Idle(Some(handle)) => {
                ctx.cancel_future(handle);
                self.terminate(reason, ctx);
            }
            State::Idle(None) | State::Stopped => self.terminate(reason, ctx),
        }
    }

    fn terminate(&mut self, reason: StopReason, ctx: &mut Context<Self>) {
        log::debug!("minch: stopping: {reason}");
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
        if let Frame::Close(close) = frame {
            return self.begin_close(
                close.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, "")),
                ctx,
            );
        }
        match &mut self.state {
            State::Connected(conn) if conn.is_open() => conn.send(frame).map(drop),
            State::Connected(_) => Err(SendError::Closing),
            State::Stopped => Err(SendError::Stopped),
            _ => Err(SendError::NotConnected),
        }
    }

    fn report_error(&mut self, error: Error, ctx: &mut Context<Self>) {
        let reply = self.with_context(ctx, |handler, ctx| handler.handle_error(error, ctx));
        self.apply_at_depth(reply, ctx, 1);
    }
}

/// A short close reason naming the broken rule; RFC 6455 §5.5 limits it to 123 bytes.
fn close_reason_for(error: &crate::ProtocolError) -> String {
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
        if let Frame::Close(close) = frame {
            let close = close.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, ""));
            return Deferred::ready(self.begin_close(close, ctx));
        }
        let conn = match &mut self.state {
            State::Connected(conn) if conn.is_open() => conn,
            State::Connected(_) => return Deferred::ready(Err(SendError::Closing)),
            State::Stopped => return Deferred::ready(Err(SendError::Stopped)),
            _ => return Deferred::ready(Err(SendError::NotConnected)),
        };
        match conn.send(frame) {
            Ok(Written::Flushed) => Deferred::ready(Ok(())),
            Ok(Written::Buffered) => conn.pending_delivery(),
            Err(error) => Deferred::ready(Err(error)),
        }
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
