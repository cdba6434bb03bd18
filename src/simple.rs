//! The simple API: [`connect`], then [`Connection::send_frame`] and
//! [`Frames::receive_frame`] — Minch's `connect/3`, `send_frame/2`, `receive_frame/2` and
//! `close/1`, for scripts, tests and tools that want no handler type.
//!
//! It runs the same actor client underneath (pings answered, close handshake completed,
//! messages reassembled and validated) but never reconnects: when the connection ends,
//! [`Frames`] reports why.

use std::{
    cell::{Cell, OnceCell},
    collections::VecDeque,
    future::{poll_fn, Future},
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use actix::{dev::Request, Addr};
use futures_util::{Sink, Stream};
use tokio::sync::oneshot;

use crate::{
    client::{Client, Close, CloseQueued, GetStats, Stats},
    connection::{self, Progress, Published},
    error::SendError,
    frame::{CloseFrame, Frame},
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    http::{
        header::{HeaderName, HeaderValue},
        HeaderMap, StatusCode,
    },
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
    let published = Rc::new(Published::default());
    let (opened_tx, opened) = oneshot::channel();
    let addr = Client::start_simple(
        Forwarder {
            request: Some(Box::new(request)),
            opened: Some(opened_tx),
            inbox: inbox.clone(),
        },
        inbox.clone(),
        published.clone(),
    );
    match opened.await {
        Ok(Ok(response)) => Ok((
            Connection {
                shared: Rc::new(Shared {
                    addr,
                    response: OnceCell::new(),
                    handshake: response,
                    inbox: inbox.clone(),
                    published,
                    closing: Cell::new(false),
                }),
                fed: None,
                closing: None,
            },
            Frames {
                receiver: Receiver(inbox),
                batch: VecDeque::new(),
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
/// [`feed`](futures_util::SinkExt::feed) puts frames in the connection's write buffer and
/// [`flush`](futures_util::SinkExt::flush) resolves once they were written to the socket.
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
/// The handle writes into the connection directly (it runs on the same thread), so frames go
/// out in the order they were given, whichever method and clone gave them. A close frame
/// (or [`close`](Self::close)) goes through the client, which runs the close handshake; frames
/// given after it fail with [`SendError::Closing`].
pub struct Connection {
    shared: Rc<Shared>,
    /// The last frame fed through the [`Sink`] and not flushed yet.
    fed: Option<Ticket>,
    /// The close begun by [`Sink::poll_close`].
    closing: Option<Pending<Close>>,
}

struct Shared {
    addr: Addr<Client<Forwarder>>,
    /// The server's response, rebuilt from `handshake` when first asked for: a header map
    /// costs kilobytes, which idle connections need not pay.
    response: OnceCell<Response>,
    handshake: Handshake,
    inbox: Arc<Inbox>,
    /// The client's open connection, which the handles write into.
    published: Rc<Published>,
    /// A close was asked for through a handle: nothing may be sent after it.
    closing: Cell<bool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.addr.do_send(Close);
    }
}

/// A message to the connection's client, awaiting its answer.
type Pending<M> = Pin<Box<Request<Client<Forwarder>, M>>>;

/// A frame handed to the connection: its number, to learn when it was written.
struct Ticket {
    progress: Rc<Progress>,
    number: u64,
}

impl Ticket {
    /// The frame `conn` accepted last.
    fn last_accepted(conn: &connection::Connection) -> Ticket {
        Ticket {
            progress: conn.progress().clone(),
            number: conn.progress().accepted(),
        }
    }
}

impl Shared {
    /// Why nothing can be sent once the connection is gone.
    fn gone(&self) -> SendError {
        if self.inbox.has_ended() {
            SendError::Stopped
        } else {
            SendError::ConnectionLost
        }
    }

    /// Puts a data or ping/pong frame in the connection's write buffer (or holds it back in
    /// order, when the buffer is full and `wait_for_room`).
    fn hand_over(&self, frame: Frame, wait_for_room: bool) -> Result<Ticket, SendError> {
        let conn = self.published.get().ok_or_else(|| self.gone())?;
        if self.closing.get() {
            return Err(SendError::Closing);
        }
        let mut conn = connection::write(&conn);
        if !wait_for_room && !conn.is_closing() && conn.is_full() {
            return Err(SendError::BufferFull);
        }
        conn.send(frame)?;
        Ok(Ticket::last_accepted(&conn))
    }

    /// Puts a close frame in the write buffer behind the frames given before it, and has the
    /// client start the close handshake (its timeout, then the end).
    fn send_close(&self, close: Option<CloseFrame>) -> Result<Ticket, SendError> {
        let conn = self.published.get().ok_or_else(|| self.gone())?;
        if self.closing.get() {
            return Err(SendError::Closing);
        }
        let close = close.unwrap_or_else(CloseFrame::normal);
        let mut conn = connection::write(&conn);
        conn.send_close(close.clone())?;
        self.closing.set(true);
        // Not a request that could be dropped unanswered (actix skips those): the handshake
        // must begin whatever the caller does next.
        self.addr.do_send(CloseQueued(close));
        conn.wake_driver();
        Ok(Ticket::last_accepted(&conn))
    }

    /// Hands any frame over: data directly, a close through [`send_close`](Self::send_close).
    fn give(&self, frame: Frame, wait_for_room: bool) -> Result<Ticket, SendError> {
        match frame {
            Frame::Close(close) => self.send_close(close),
            frame => self.hand_over(frame, wait_for_room),
        }
    }

    /// Asks the client to close with 1000 and stop; the request is carried out even if the
    /// caller stops waiting for its answer.
    fn request_close(&self) -> Pending<Close> {
        self.closing.set(true);
        self.addr.do_send(Close);
        Box::pin(self.addr.send(Close))
    }

    /// Flushes the connection from this task if the socket takes it at once; otherwise leaves
    /// it to the connection's driver, which alone waits for the socket to be writable.
    fn flush_or_wake(&self) {
        if let Some(conn) = self.published.get() {
            let mut conn = connection::write(&conn);
            if !conn
                .poll_flush(&mut Context::from_waker(Waker::noop()))
                .is_ready()
            {
                conn.wake_driver();
            }
            // An error is the driver's to find (the next read or write fails too) and report.
        }
    }

    /// Ready once the frame of `ticket` was written (or with what prevented it).
    fn poll_written(&self, ticket: &Ticket, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if let Some(outcome) = ticket.progress.outcome(ticket.number) {
            return Poll::Ready(outcome);
        }
        self.flush_or_wake();
        if let Some(outcome) = ticket.progress.outcome(ticket.number) {
            return Poll::Ready(outcome);
        }
        ticket.progress.wait(cx.waker());
        if let Some(conn) = self.published.get() {
            conn.borrow().wake_driver();
        }
        Poll::Pending
    }

    /// Ready while the connection's write buffer has room.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let Some(conn) = self.published.get() else {
            return Poll::Ready(Err(self.gone()));
        };
        if self.closing.get() || conn.borrow().is_closing() {
            return Poll::Ready(Err(SendError::Closing));
        }
        if !conn.borrow().is_full() {
            return Poll::Ready(Ok(()));
        }
        self.flush_or_wake();
        let conn = conn.borrow();
        if conn.is_closing() {
            return Poll::Ready(Err(SendError::Closing));
        }
        if !conn.is_full() {
            return Poll::Ready(Ok(()));
        }
        conn.progress().wait(cx.waker());
        conn.wake_driver();
        Poll::Pending
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
        self.send_one(frame, true).await
    }

    /// Sends several frames in order; resolves once the last one has been written. Cheaper
    /// than a [`send_frame`](Self::send_frame) each: one wait for the whole batch.
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), for the first frame that failed; the frames after
    /// it were not sent. If any frame is invalid, none is sent.
    pub async fn send_frames(&self, frames: Vec<Frame>) -> Result<(), SendError> {
        if let Some(error) = frames
            .iter()
            .find_map(|frame| validate_outgoing(frame).err())
        {
            return Err(SendError::InvalidFrame(error));
        }
        let mut last = None;
        let mut failure = None;
        for frame in frames {
            match self.shared.give(frame, true) {
                Ok(ticket) => last = Some(ticket),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        // The frames given before a failure still go out: wait for them, then report it.
        if let Some(ticket) = last {
            poll_fn(|cx| self.shared.poll_written(&ticket, cx)).await?;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Like [`send_frame`](Self::send_frame), but fails at once with
    /// [`SendError::BufferFull`] instead of waiting when the outgoing buffer is full.
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), plus [`SendError::BufferFull`].
    pub async fn try_send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.send_one(frame, false).await
    }

    async fn send_one(&self, frame: Frame, wait_for_room: bool) -> Result<(), SendError> {
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        let ticket = self.shared.give(frame, wait_for_room)?;
        poll_fn(|cx| self.shared.poll_written(&ticket, cx)).await
    }

    /// The connection's state and traffic.
    pub async fn stats(&self) -> Stats {
        self.shared.addr.send(GetStats).await.unwrap_or_default()
    }

    /// Closes the connection with code 1000 and waits for the close handshake (at most
    /// [`ConnectOptions::close_timeout`]). [`Frames`] then reports the end. Frames given before
    /// go before the close frame.
    pub async fn close(&self) {
        let _ = self.shared.request_close().await;
    }

    /// The server's `101` response.
    pub fn response(&self) -> &Response {
        self.shared
            .response
            .get_or_init(|| self.shared.handshake.response())
    }
}

impl Clone for Connection {
    /// Another handle to the same connection; its [`Sink`] flushes its own frames.
    fn clone(&self) -> Self {
        Connection {
            shared: self.shared.clone(),
            fed: None,
            closing: None,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Frames fed and not flushed are in the write buffer: have the driver write them.
        if self.fed.is_some() {
            if let Some(conn) = self.shared.published.get() {
                conn.borrow().wake_driver();
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closing", &self.shared.closing.get())
            .field("ended", &self.shared.inbox.has_ended())
            .finish_non_exhaustive()
    }
}

/// Frames go straight into the connection's write buffer: [`start_send`](Sink::start_send)
/// checks a frame and buffers it, [`poll_flush`](Sink::poll_flush) is ready once every frame
/// fed was written to the socket. [`poll_ready`](Sink::poll_ready) waits while the buffer holds
/// [`max_buffered_bytes`](ConnectOptions::max_buffered_bytes), so a producer slows down to the
/// server's pace; it fails with [`SendError::Stopped`] once the connection has ended (or
/// [`SendError::Closing`] once it is closing). A close frame starts the close handshake.
/// [`poll_close`](Sink::poll_close) closes the connection with code 1000 behind the fed frames,
/// waits for the close handshake (at most [`close_timeout`](ConnectOptions::close_timeout)),
/// and reports whether every frame was written; closing again does no harm.
impl Sink<Frame> for Connection {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.shared.poll_room(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> Result<(), SendError> {
        let this = self.get_mut();
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        this.fed = Some(this.shared.give(frame, true)?);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        if let Some(ticket) = &this.fed {
            let written = ready!(this.shared.poll_written(ticket, cx));
            this.fed = None;
            written?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        let this = self.get_mut();
        if this.closing.is_none() && !this.shared.inbox.has_ended() {
            this.closing = Some(this.shared.request_close());
        }
        if let Some(closing) = &mut this.closing {
            let _ = ready!(closing.as_mut().poll(cx));
            this.closing = None;
        }
        // The connection is gone or closed: every frame's fate is known by now.
        Pin::new(this).poll_flush(cx)
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
    /// Frames taken from the queue in one go, handed to the program one by one.
    batch: VecDeque<Frame>,
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
    /// The next frame, waiting at most `timeout`. Works on any executor: with a tokio runtime
    /// on the calling thread (an actix System included) the timeout is tokio's timer,
    /// elsewhere a thread of its own keeps it.
    ///
    /// # Errors
    /// [`ReceiveError::Timeout`] if nothing came in time; [`ReceiveError::Closed`] with the
    /// close code and reason (or the error) once the connection has ended.
    pub async fn receive_frame(&mut self, timeout: Duration) -> Result<Frame, ReceiveError> {
        if let Some(end) = &self.end {
            return Err(ReceiveError::Closed(end.clone()));
        }
        let next = poll_fn(|cx| self.poll_take(cx));
        // `Frames` is `Send`: it may be received on a thread with no tokio runtime (a plain
        // executor), where tokio's timer cannot run.
        let taken = if tokio::runtime::Handle::try_current().is_ok() {
            actix_rt::time::timeout(timeout, next).await.ok()
        } else {
            within_on_any_executor(timeout, next).await
        };
        match taken {
            None => Err(ReceiveError::Timeout),
            Some(Ok(frame)) => Ok(frame),
            Some(Err(reason)) => {
                self.end = Some(reason.clone());
                Err(ReceiveError::Closed(reason))
            }
        }
    }

    /// The next frame if one has arrived, without waiting: `Ok(None)` if none has.
    ///
    /// # Errors
    /// [`ReceiveError::Closed`] once the connection has ended and every frame was received.
    pub fn try_receive_frame(&mut self) -> Result<Option<Frame>, ReceiveError> {
        if let Some(end) = &self.end {
            return Err(ReceiveError::Closed(end.clone()));
        }
        match self.poll_take(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(frame)) => Ok(Some(frame)),
            Poll::Ready(Err(reason)) => {
                self.end = Some(reason.clone());
                Err(ReceiveError::Closed(reason))
            }
            Poll::Pending => Ok(None),
        }
    }

    /// Why the connection ended, once it has and every frame was received.
    pub fn end(&self) -> Option<&DisconnectReason> {
        self.end.as_ref()
    }

    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, DisconnectReason>> {
        if self.batch.is_empty() {
            ready!(self.receiver.poll_refill(&mut self.batch, cx))?;
        }
        match self.batch.pop_front() {
            Some(frame) => {
                self.receiver.handed_over(frame.payload_len());
                Poll::Ready(Ok(frame))
            }
            None => Poll::Pending,
        }
    }

    /// The queue itself, for the blocking API's receiver (before any frame was taken).
    pub(crate) fn into_receiver(self) -> Receiver {
        self.receiver
    }
}

/// `future`'s output, or `None` once `timeout` has passed, on any executor: the deadline is
/// kept by a thread of its own, started only if the future has to wait.
async fn within_on_any_executor<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    let deadline = std::time::Instant::now().checked_add(timeout);
    let mut future = std::pin::pin!(future);
    let mut timer: Option<Arc<std::sync::Mutex<Waker>>> = None;
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        // Beyond the clock's range: as good as never.
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Poll::Ready(None);
        }
        match &timer {
            // The task may have moved: the timer wakes whoever polled last.
            Some(waker) => waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone_from(cx.waker()),
            None => {
                let waker = Arc::new(std::sync::Mutex::new(cx.waker().clone()));
                timer = Some(waker.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(left);
                    waker
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .wake_by_ref();
                });
            }
        }
        Poll::Pending
    })
    .await
}

impl Stream for Frames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        match ready!(self.poll_take(cx)) {
            Ok(frame) => Poll::Ready(Some(frame)),
            Err(reason) => {
                self.end = Some(reason);
                Poll::Ready(None)
            }
        }
    }
}

/// The server's `101` response in few bytes: its status and headers, copied out of the
/// buffers they were parsed from.
struct Handshake {
    status: StatusCode,
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl Handshake {
    fn new(response: &Response) -> Self {
        Handshake {
            status: response.status,
            headers: response
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                        HeaderValue::from_bytes(value.as_bytes()).ok()?,
                    ))
                })
                .collect(),
        }
    }

    fn response(&self) -> Response {
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in self.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        Response {
            status: self.status,
            headers,
        }
    }
}

/// The handler behind the simple API: queues frames for [`Frames`], never reconnects.
struct Forwarder {
    /// Boxed: it is used up by the first attempt, and the client keeps the handler for life.
    request: Option<Box<ConnectRequest>>,
    opened: Option<oneshot::Sender<Result<Handshake, Error>>>,
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
        self.request
            .take()
            .map(|request| *request)
            .unwrap_or_default()
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        match self
            .opened
            .take()
            .map(|opened| opened.send(Ok(Handshake::new(response))))
        {
            // The caller of `connect` went away (its future was dropped, e.g. by a timeout):
            // nobody can reach this connection, so it must not stay open.
            Some(Err(_)) => Reply::stop("the caller of connect went away"),
            _ => Reply::Continue,
        }
    }

    /// Not called in practice: the client queues received frames itself, a driver pass at a
    /// time. Queuing here keeps the handler right on its own.
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
