//! The simple API: [`connect`], then [`Connection::send_frame`] and
//! [`Frames::receive_frame`] — Minch's `connect/3`, `send_frame/2`, `receive_frame/2` and
//! `close/1`, for scripts, tests and tools that want no handler type.
//!
//! It runs the same actor client underneath (pings answered, close handshake completed,
//! messages reassembled and validated) but never reconnects: when the connection ends,
//! [`Frames`] reports why.

use std::{
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use actix::Addr;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::{
    client::{Client, Close, GetStats, SendFrame, Stats, TrySendFrame},
    error::SendError,
    frame::Frame,
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    options::{ConnectOptions, ConnectRequest},
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
    let (opened_tx, opened) = oneshot::channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let addr = Client::start(Forwarder {
        request: Some(request),
        opened: Some(opened_tx),
        events: events_tx,
        ended: false,
    });
    match opened.await {
        Ok(Ok(response)) => Ok((
            Connection {
                inner: Rc::new(Handle { addr }),
                response: Rc::new(response),
            },
            Frames { events, end: None },
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::io(std::io::Error::other(
            "the connection task stopped before the handshake finished",
        ))),
    }
}

/// The sending side of a connection opened by [`connect`]. Cheap to clone; dropping the last
/// clone closes the connection gracefully (code 1000), as Minch does when its caller exits.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Rc<Handle>,
    response: Rc<Response>,
}

#[derive(Debug)]
struct Handle {
    addr: Addr<Client<Forwarder>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.addr.do_send(Close);
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
        self.inner
            .addr
            .send(SendFrame(frame))
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Like [`send_frame`](Self::send_frame), but fails at once with
    /// [`SendError::BufferFull`] instead of waiting when the outgoing buffer is full.
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), plus [`SendError::BufferFull`].
    pub async fn try_send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.inner
            .addr
            .send(TrySendFrame(frame))
            .await
            .unwrap_or(Err(SendError::Stopped))
    }

    /// The connection's state and traffic.
    pub async fn stats(&self) -> Stats {
        self.inner.addr.send(GetStats).await.unwrap_or_default()
    }

    /// Closes the connection with code 1000 and waits for the close handshake (at most
    /// [`ConnectOptions::close_timeout`]). [`Frames`] then reports the end.
    pub async fn close(&self) {
        let _ = self.inner.addr.send(Close).await;
    }

    /// The server's `101` response.
    pub fn response(&self) -> &Response {
        &self.response
    }
}

/// The receiving side of a connection opened by [`connect`]: text, binary and pong frames in
/// the order they arrived, then the reason the connection ended.
///
/// Frames wait in memory until received. It is also a [`Stream`] of frames, which ends when
/// the connection does ([`Frames::end`] then tells why).
#[derive(Debug)]
pub struct Frames {
    events: mpsc::UnboundedReceiver<Event>,
    end: Option<DisconnectReason>,
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
        match actix_rt::time::timeout(timeout, self.events.recv()).await {
            Err(_) => Err(ReceiveError::Timeout),
            Ok(Some(Event::Frame(frame))) => Ok(frame),
            Ok(Some(Event::Ended(reason))) => {
                self.end = Some(reason.clone());
                Err(ReceiveError::Closed(reason))
            }
            Ok(None) => Err(ReceiveError::Closed(self.ended_without_reason())),
        }
    }

    /// Why the connection ended, once it has and every frame was received.
    pub fn end(&self) -> Option<&DisconnectReason> {
        self.end.as_ref()
    }

    fn ended_without_reason(&mut self) -> DisconnectReason {
        self.end
            .get_or_insert(DisconnectReason::Error(Error::Send(SendError::Stopped)))
            .clone()
    }
}

impl Stream for Frames {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(Event::Frame(frame))) => Poll::Ready(Some(frame)),
            Poll::Ready(Some(Event::Ended(reason))) => {
                self.end = Some(reason);
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended_without_reason();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug)]
enum Event {
    Frame(Frame),
    Ended(DisconnectReason),
}

/// The handler behind the simple API: forwards frames to [`Frames`], never reconnects.
struct Forwarder {
    request: Option<ConnectRequest>,
    opened: Option<oneshot::Sender<Result<Response, Error>>>,
    events: mpsc::UnboundedSender<Event>,
    ended: bool,
}

impl Forwarder {
    fn end(&mut self, reason: DisconnectReason) {
        if !self.ended {
            self.ended = true;
            let _ = self.events.send(Event::Ended(reason));
        }
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
        let _ = self.events.send(Event::Frame(frame));
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
            None => self.end(reason.clone()),
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
        self.end(reason);
    }
}
