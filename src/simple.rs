//! The simple API: [`connect`], then [`Connection::send_frame`] and
//! [`Frames::receive_frame`] — Minch's `connect/3`, `send_frame/2`, `receive_frame/2` and
//! `close/1`, for scripts, tests and tools that want no handler type.
//!
//! It runs the same actor client underneath (pings answered, close handshake completed,
//! messages reassembled and validated) but never reconnects: when the connection ends,
//! [`Frames`] reports why.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::{poll_fn, Future as _},
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use actix::{dev::Request, Addr};
use futures_util::{Sink, Stream};
use tokio::sync::oneshot;

use crate::{
    client::{Client, Close, GetStats, SendFrame, SendFrames, Stats, TrySendFrame},
    error::SendError,
    frame::Frame,
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    inbox::{Inbox, Receiver},
    options::{ConnectOptions, ConnectRequest},
    protocol::validate_outgoing,
    transport::Response,
    Error,
};

/// Connects to `url` and returns once the server accepted the upgrade, or with the error that
/// prevented it (DNS or TCP failure, TLS, a rejected upgrade with its status, a timeout).
///
/// Must run inside an actix System (`#[actix_rt::main]`, `#[actix_rt::test]`, actix-web). For
/// programs without one, see [`blocking`](crate::blocking). The opening handshake is bounded by
/// [`ConnectOptions::connect_timeout`], `tls_timeout` and `upgrade_timeout` (10 s each by
/// default, 30 s in all).
///
/// ```no_run
/// use std::time::Duration;
/// use minch::{ConnectOptions, Frame};
///
/// # #[actix_rt::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (connection, mut frames) = minch::connect(
///     "ws://127.0.0.1:4000/echo",
///     vec![("authorization", "Bearer secret")],
///     ConnectOptions::default(),
/// )
/// .await?;
/// connection.send_frame(Frame::text("hello")).await?;
/// let echo = frames.receive_frame(Duration::from_secs(5)).await?;
/// assert_eq!(echo.as_text(), Some("hello"));
/// connection.close().await;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// Whatever stopped the connection from opening, as an [`Error`].
pub async fn connect<U, K, V>(
    url: U,
    headers: Vec<(K, V)>,
    options: ConnectOptions,
) -> Result<(Connection, Frames), Error>
where
    U: Into<String>,
    K: Into<String>,
    V: Into<String>,
{
    open((url, headers, options).into()).await
}

/// [`connect`] with the request already assembled.
pub(crate) async fn open(request: ConnectRequest) -> Result<(Connection, Frames), Error> {
    let options = &request.options;
    let inbox = Inbox::new(options.max_queue, options.max_queue_bytes);
    let batch_bytes = options.max_buffered_bytes;
    let (opened_tx, opened) = oneshot::channel();
    let addr = Client::start_with_queue(
        Forwarder {
            request: Some(request),
            opened: Some(opened_tx),
            inbox: inbox.clone(),
        },
        inbox.clone(),
    );
    match opened.await {
        Ok(Ok(response)) => Ok((
            Connection {
                shared: Rc::new(Shared {
                    addr,
                    response,
                    inbox: inbox.clone(),
                    batch_bytes,
                }),
                outgoing: RefCell::default(),
            },
            Frames {
                receiver: Receiver(inbox),
                end: None,
            },
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::io(std::io::Error::other(
            "the connection task stopped before the handshake finished",
        ))),
    }
}

/// The sending side of a connection opened by [`connect`]. Cheap to clone; dropping the last
/// clone closes the connection gracefully (code 1000), as Minch does when its caller exits.
///
/// Send one frame at a time with [`send_frame`](Self::send_frame), or many with
/// [`send_frames`](Self::send_frames) or the [`Sink`] implementation:
/// [`feed`](futures_util::SinkExt::feed) queues frames in the handle and
/// [`flush`](futures_util::SinkExt::flush) hands them to the connection in one message and
/// resolves once they were written to the socket.
///
/// ```no_run
/// use futures_util::SinkExt as _;
/// use minch::Frame;
///
/// # async fn demo(mut connection: minch::Connection) -> Result<(), minch::SendError> {
/// for n in 0..1000 {
///     connection.feed(Frame::text(n.to_string())).await?;
/// }
/// connection.flush().await?; // all 1 000 written
/// # Ok(())
/// # }
/// ```
///
/// Each clone has its own queue of fed frames; `send_frame`, `send_frames`, `try_send_frame`
/// and `close` on a handle send the frames fed to it (and not flushed yet) first, in order.
/// Whether those were written, its next flush reports.
pub struct Connection {
    shared: Rc<Shared>,
    outgoing: RefCell<Outgoing>,
}

struct Shared {
    addr: Addr<Client<Forwarder>>,
    response: Response,
    inbox: Arc<Inbox>,
    /// A handle hands its fed frames over once they reach this many bytes (the connection's
    /// `max_buffered_bytes`).
    batch_bytes: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.addr.do_send(Close);
    }
}

/// One handle's frames fed and not handed over yet, and the batches handed over and not
/// known written yet.
#[derive(Default)]
struct Outgoing {
    batch: Vec<Frame>,
    bytes: usize,
    in_flight: VecDeque<Pending<SendFrames>>,
    closing: Option<Pending<Close>>,
    /// The close through the sink is done: closing again only reports what is in flight.
    closed: bool,
}

/// A message to the connection's client, awaiting its answer.
type Pending<M> = Pin<Box<Request<Client<Forwarder>, M>>>;

/// Hand over a handle's fed frames once this many are waiting, whatever their size.
const BATCH_FRAMES: usize = 4096;

/// Bytes a frame adds to the outgoing buffer beyond its payload, at most.
const FRAME_OVERHEAD: usize = 14;

impl Outgoing {
    /// Hands the fed frames to the connection, to be tracked until written.
    fn hand_over(&mut self, addr: &Addr<Client<Forwarder>>) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.bytes = 0;
            self.in_flight
                .push_back(Box::pin(addr.send(SendFrames(batch))));
        }
    }

    /// Waits for every batch handed over; the first error, if any.
    fn poll_in_flight(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        while let Some(request) = self.in_flight.front_mut() {
            let result = ready!(request.as_mut().poll(cx));
            self.in_flight.pop_front();
            if let Err(error) = result.unwrap_or(Err(SendError::Stopped)) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush(
        &mut self,
        addr: &Addr<Client<Forwarder>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        self.hand_over(addr);
        self.poll_in_flight(cx)
    }
}

impl Connection {
    /// Sends a frame; resolves once it has been written to the socket.
    ///
    /// # Errors
    /// [`SendError::Closing`] or [`SendError::Stopped`] once the connection is closing or has
    /// ended, [`SendError::ConnectionLost`] if it broke before the frame was written,
    /// [`SendError::InvalidFrame`] for frames that may not be sent.
    pub async fn send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.hand_over_fed();
        self.shared
            .addr
            .send(SendFrame(frame))
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Sends several frames in order, as one message to the connection; resolves once the
    /// last one has been written. See [`SendFrames`].
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), for the first frame that failed; the frames after
    /// it were not sent. If any frame is invalid, none is sent.
    pub async fn send_frames(&self, frames: Vec<Frame>) -> Result<(), SendError> {
        self.hand_over_fed();
        self.shared
            .addr
            .send(SendFrames(frames))
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Like [`send_frame`](Self::send_frame), but fails at once with
    /// [`SendError::BufferFull`] instead of waiting when the outgoing buffer is full.
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), plus [`SendError::BufferFull`].
    pub async fn try_send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.hand_over_fed();
        self.shared
            .addr
            .send(TrySendFrame(frame))
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// The connection's state and traffic.
    pub async fn stats(&self) -> Stats {
        self.shared.addr.send(GetStats).await.unwrap_or_default()
    }

    /// Closes the connection with code 1000 and waits for the close handshake (at most
    /// [`ConnectOptions::close_timeout`]). [`Frames`] then reports the end. Frames fed to this
    /// handle and not flushed yet go before the close frame.
    pub async fn close(&self) {
        self.hand_over_fed();
        let _ = self.shared.addr.send(Close).await;
    }

    /// The server's `101` response.
    pub fn response(&self) -> &Response {
        &self.shared.response
    }

    /// Frames fed through the [`Sink`] go before anything sent after them.
    fn hand_over_fed(&self) {
        self.outgoing.borrow_mut().hand_over(&self.shared.addr);
    }
}

impl Clone for Connection {
    /// Another handle to the same connection, with its own (empty) queue of fed frames.
    fn clone(&self) -> Self {
        Connection {
            shared: self.shared.clone(),
            outgoing: RefCell::default(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Fed frames are still sent (ahead of the close that dropping the last handle sends).
        let batch = std::mem::take(&mut self.outgoing.get_mut().batch);
        if !batch.is_empty() {
            self.shared.addr.do_send(SendFrames(batch));
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outgoing = self.outgoing.borrow();
        f.debug_struct("Connection")
            .field("fed", &outgoing.batch.len())
            .field("in_flight", &outgoing.in_flight.len())
            .field("ended", &self.shared.inbox.has_ended())
            .finish_non_exhaustive()
    }
}

/// Frames go out in batches: [`start_send`](Sink::start_send) queues a frame in the handle
/// (checking it first), [`poll_flush`](Sink::poll_flush) hands the queue to the connection and
/// is ready once every frame was written to the socket. [`poll_ready`](Sink::poll_ready) waits
/// while the handle holds [`max_buffered_bytes`](ConnectOptions::max_buffered_bytes) (or
/// 4 096 frames) and an earlier batch is still being written, so a producer slows down to the
/// server's pace; it fails with [`SendError::Stopped`] once the connection has ended.
/// [`poll_close`](Sink::poll_close) sends the fed frames and then a close with code 1000, waits
/// for the close handshake (at most [`close_timeout`](ConnectOptions::close_timeout)), and
/// reports whether every frame was written; closing again does no harm.
impl Sink<Frame> for Connection {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        if this.shared.inbox.has_ended() {
            return Poll::Ready(Err(SendError::Stopped));
        }
        let outgoing = this.outgoing.get_mut();
        if outgoing.batch.len() >= BATCH_FRAMES || outgoing.bytes >= this.shared.batch_bytes {
            // One batch being written while the next fills.
            ready!(outgoing.poll_in_flight(cx))?;
            outgoing.hand_over(&this.shared.addr);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> Result<(), SendError> {
        let this = self.get_mut();
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        if this.shared.inbox.has_ended() {
            return Err(SendError::Stopped);
        }
        let outgoing = this.outgoing.get_mut();
        outgoing.bytes += frame.payload_len() + FRAME_OVERHEAD;
        outgoing.batch.push(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        this.outgoing.get_mut().poll_flush(&this.shared.addr, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        let outgoing = this.outgoing.get_mut();
        // The close goes behind the fed frames without waiting for them to be written: a
        // server that stops reading holds the close up for at most `close_timeout`, after which
        // the frames still unwritten are reported.
        outgoing.hand_over(&this.shared.addr);
        if let Some(closing) = &mut outgoing.closing {
            let _ = ready!(closing.as_mut().poll(cx));
        } else if !outgoing.closed {
            outgoing.closing = Some(Box::pin(this.shared.addr.send(Close)));
            return Pin::new(this).poll_close(cx);
        }
        outgoing.closing = None;
        outgoing.closed = true;
        outgoing.poll_in_flight(cx)
    }
}

/// The receiving side of a connection opened by [`connect`]: text, binary and pong frames in
/// the order they arrived, then the reason the connection ended.
///
/// Frames wait in a bounded queue until received ([`ConnectOptions::max_queue`] messages,
/// [`ConnectOptions::max_queue_bytes`] bytes); while it is full the connection stops reading,
/// so the server is made to wait. It is also a [`Stream`] of frames, which ends when the
/// connection does ([`Frames::end`] then tells why). Dropping it discards frames that arrive
/// later.
pub struct Frames {
    receiver: Receiver,
    end: Option<DisconnectReason>,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Why [`Frames::receive_frame`] returned no frame.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReceiveError {
    /// Nothing arrived within the timeout; the connection is still open.
    Timeout,
    /// The connection has ended and every frame before the end has been received.
    Closed(DisconnectReason),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiveError::Timeout => write!(f, "no frame arrived within the timeout"),
            ReceiveError::Closed(reason) => write!(f, "the connection ended: {reason}"),
        }
    }
}

impl std::error::Error for ReceiveError {}

impl Frames {
    /// The next frame, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ReceiveError::Timeout`] if nothing came in time; [`ReceiveError::Closed`] with the
    /// close code and reason (or the error) once the connection has ended.
    pub async fn receive_frame(&mut self, timeout: Duration) -> Result<Frame, ReceiveError> {
        if let Some(end) = &self.end {
            return Err(ReceiveError::Closed(end.clone()));
        }
        let next = poll_fn(|cx| self.receiver.poll_take(cx));
        match actix_rt::time::timeout(timeout, next).await {
            Err(_) => Err(ReceiveError::Timeout),
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(reason)) => {
                self.end = Some(reason.clone());
                Err(ReceiveError::Closed(reason))
            }
        }
    }

    /// Why the connection ended, once it has and every frame was received.
    pub fn end(&self) -> Option<&DisconnectReason> {
        self.end.as_ref()
    }

    /// The queue itself, for the blocking API's receiver.
    pub(crate) fn into_receiver(self) -> Receiver {
        self.receiver
    }
}

impl Stream for Frames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        match ready!(self.receiver.poll_take(cx)) {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(reason) => {
                self.end = Some(reason);
                Poll::Ready(None)
            }
        }
    }
}

/// The handler behind the simple API: queues frames for [`Frames`], never reconnects.
struct Forwarder {
    request: Option<ConnectRequest>,
    opened: Option<oneshot::Sender<Result<Response, Error>>>,
    inbox: Arc<Inbox>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Receivers must not wait for a connection that is gone (only the first end counts).
        self.inbox
            .finish(DisconnectReason::Error(Error::Send(SendError::Stopped)));
    }
}

impl MinchHandler for Forwarder {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        // The simple API connects once; the request is used up by the only attempt.
        self.request.take().unwrap_or_default()
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        match self
            .opened
            .take()
            .map(|opened| opened.send(Ok(response.clone())))
        {
            // The caller of `connect` went away (its future was dropped, e.g. by a timeout):
            // nobody can reach this connection, so it must not stay open.
            Some(Err(_)) => Reply::stop("the caller of connect went away"),
            _ => Reply::Continue,
        }
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.inbox.push(frame);
        Reply::Continue
    }

    fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        log::debug!("minch simple connection: {error}");
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        match self.opened.take() {
            Some(opened) => {
                let error = match reason {
                    DisconnectReason::Error(error) => error.clone(),
                    other => Error::Handshake(other.to_string()),
                };
                let _ = opened.send(Err(error));
            }
            None => self.inbox.finish(reason.clone()),
        }
        Reconnect::Stop
    }

    fn terminate(&mut self, reason: &StopReason, ctx: &mut ClientContext<'_, Self>) {
        let reason = match (reason, ctx.ended()) {
            (StopReason::Disconnected(reason), _) => reason.clone(),
            // The close handshake the stop began (or found under way) ended this way: the
            // server's code, or a timeout when it never answered.
            (_, Some(ended)) => ended.clone(),
            _ => DisconnectReason::ClientClosed(crate::CloseFrame::normal()),
        };
        self.inbox.finish(reason);
    }
}
