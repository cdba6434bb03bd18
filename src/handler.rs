//! The behaviour a user implements: [`MinchHandler`], and what its callbacks receive and return.

use std::{error::Error as StdError, fmt, future::Future, sync::Arc, time::Duration};

use actix::{Addr, AsyncContext};

use crate::{
    backoff::{reconnect_delay, BackoffOptions},
    client::{Client, HandlerTimers, TimerId},
    frame::{CloseCode, CloseFrame, Frame},
    options::ConnectRequest,
    transport::Response,
    Error,
};

/// A WebSocket client behaviour, run by [`Client`]: Minch's callbacks as a Rust trait.
///
/// Only [`connect`](Self::connect) and [`handle_frame`](Self::handle_frame) are required; every
/// other callback has Minch's default. The order of calls for one client is:
///
/// 1. [`init`](Self::init), once per client (not on reconnects);
/// 2. [`connect`](Self::connect), before **every** attempt (so credentials can be refreshed);
/// 3. [`handle_connect`](Self::handle_connect) after the server accepted the upgrade, or
///    [`handle_disconnect`](Self::handle_disconnect) if the attempt failed;
/// 4. [`handle_frame`](Self::handle_frame) for each text, binary or pong frame,
///    [`handle_info`](Self::handle_info) for each message sent to the client, connected or not,
///    and [`handle_error`](Self::handle_error) when a reply could not be sent or the server
///    broke the protocol;
/// 5. [`handle_disconnect`](Self::handle_disconnect), once per connection or failed attempt,
///    which decides whether to reconnect (back to 2, after the delay: the supervisor restarts
///    the client, dropping everything of the old connection) or stop;
/// 6. [`terminate`](Self::terminate), exactly once, at the final stop; the handler is dropped
///    right after it, and no callback runs any more.
///
/// The final stop is [`Reconnect::Stop`], [`Reply::Stop`] from any callback,
/// [`ClientContext::stop`], or the [`Close`](crate::Close) message. An open connection is
/// closed first (code 1000, bounded by the close timeout); nothing reconnects after it.
/// The handler's [`send_info_after`](ClientContext::send_info_after) timers and
/// [`spawn_info`](ClientContext::spawn_info) futures survive reconnects.
///
/// ```no_run
/// use minch::{Client, ClientContext, ConnectRequest, Frame, MinchHandler, Reply, Response};
///
/// struct Echo;
///
/// impl MinchHandler for Echo {
///     type Info = ();
///
///     fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
///         "ws://127.0.0.1:4000/echo".into()
///     }
///
///     fn handle_connect(&mut self, _response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
///         Reply::Send(Frame::text("hello"))
///     }
///
///     fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
///         println!("received {frame:?}");
///         Reply::Continue
///     }
/// }
///
/// #[actix_rt::main]
/// async fn main() {
///     let _client = Client::start(Echo);
///     actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
/// }
/// ```
pub trait MinchHandler: Sized + Unpin + 'static {
    /// The type of the messages [`handle_info`](Self::handle_info) receives: sent to the client's
    /// address as [`Info`](crate::Info), scheduled with [`ClientContext::send_info_after`], or
    /// the output of a future run with [`ClientContext::spawn_info`]. Use `()` if the handler
    /// needs none.
    type Info: 'static;

    /// Runs once when the client starts, before the first connection attempt. An error stops
    /// the client: [`terminate`](Self::terminate) gets [`StopReason::InitFailed`] with the
    /// error itself, which can be downcast to its type.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, Frame, MinchHandler, Reply};
    /// # use std::time::Duration;
    /// struct Feed { token: Option<String> }
    /// enum Tick { Refresh }
    ///
    /// impl MinchHandler for Feed {
    ///     type Info = Tick;
    ///
    ///     fn init(
    ///         &mut self,
    ///         ctx: &mut ClientContext<'_, Self>,
    ///     ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ///         self.token = Some(std::env::var("FEED_TOKEN").unwrap_or_default());
    ///         ctx.send_info_after(Duration::from_secs(3600), Tick::Refresh);
    ///         Ok(())
    ///     }
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    /// }
    /// ```
    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn StdError + Send + Sync>> {
        let _ = ctx;
        Ok(())
    }

    /// Says where to connect. Runs before every attempt, including reconnects, so a token
    /// can be refreshed each time.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectOptions, ConnectRequest, Frame, MinchHandler, Reply};
    /// # use std::time::Duration;
    /// struct Feed { token: String }
    ///
    /// impl MinchHandler for Feed {
    ///     type Info = ();
    ///
    ///     fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
    ///         let options = ConnectOptions::default().upgrade_timeout(Duration::from_secs(5));
    ///         let auth = format!("Bearer {}", self.token);
    ///         ("wss://feed.example.com/v1", vec![("authorization", auth)], options).into()
    ///     }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    /// }
    /// ```
    fn connect(&mut self, ctx: &mut ClientContext<'_, Self>) -> ConnectRequest;

    /// The server accepted the upgrade; `response` has its status (101) and headers. The place
    /// to subscribe: frames sent here go out before anything the server's first frames prompt.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, Frame, MinchHandler};
    /// use minch::{Reply, Response};
    /// # struct Feed;
    ///
    /// impl MinchHandler for Feed {
    /// #   type Info = ();
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    ///     fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         match response.subprotocol() {
    ///             Some("feed.v2") => Reply::Send(Frame::text(r#"{"subscribe":["BTC-USD"]}"#)),
    ///             _ => Reply::close(1002, "feed.v2 required"),
    ///         }
    ///     }
    /// }
    /// ```
    fn handle_connect(&mut self, response: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = (response, ctx);
        Reply::Continue
    }

    /// The connection ended, or an attempt failed. `attempt` counts the failures since the last
    /// successful upgrade, starting at 1.
    ///
    /// Default: stop if the request itself is invalid ([`Error::is_config`]), otherwise
    /// reconnect after [`backoff`](crate::backoff)`(attempt, BackoffOptions::default())`, or
    /// after the server's `Retry-After` if it refused the upgrade with 429 or 503 and asked
    /// for longer (capped at the backoff's 30 s maximum): [`reconnect_delay`](crate::reconnect_delay).
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, Frame, MinchHandler, Reply};
    /// use minch::{backoff_with_jitter, BackoffOptions, DisconnectReason, Error, Jitter, Reconnect};
    /// use std::time::Duration;
    /// # struct Feed;
    ///
    /// impl MinchHandler for Feed {
    /// #   type Info = ();
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    ///     fn handle_disconnect(
    ///         &mut self,
    ///         reason: &DisconnectReason,
    ///         attempt: u32,
    ///         _ctx: &mut ClientContext<'_, Self>,
    ///     ) -> Reconnect {
    ///         match reason.error() {
    ///             // Credentials were refused: retrying will not help.
    ///             Some(Error::Rejected { status, .. }) if status.as_u16() == 401 => Reconnect::Stop,
    ///             // Thousands of clients: spread the reconnects out.
    ///             _ => Reconnect::After(Duration::from_millis(backoff_with_jitter(
    ///                 attempt,
    ///                 BackoffOptions::default(),
    ///                 Jitter::Equal,
    ///             ))),
    ///         }
    ///     }
    /// }
    /// ```
    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = ctx;
        match reason {
            DisconnectReason::Error(error) if error.is_config() => Reconnect::Stop,
            _ => Reconnect::After(reconnect_delay(
                reason.error(),
                attempt,
                BackoffOptions::default(),
            )),
        }
    }

    /// A text, binary or pong frame arrived. Pings are answered and close frames are handled by
    /// the client; they never reach this callback (nor do the pongs to its keepalive pings).
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, MinchHandler};
    /// use minch::{Frame, Reply};
    /// # struct Echo;
    ///
    /// impl MinchHandler for Echo {
    /// #   type Info = ();
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    ///     fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         match frame {
    ///             Frame::Text(text) if text == "bye" => Reply::close(1000, "bye"),
    ///             Frame::Text(text) => Reply::Send(Frame::Text(text)),
    ///             Frame::Binary(data) => Reply::SendAll(vec![Frame::Binary(data.clone()), Frame::Binary(data)]),
    ///             _ => Reply::Continue,
    ///         }
    ///     }
    /// }
    /// ```
    fn handle_frame(&mut self, frame: Frame, ctx: &mut ClientContext<'_, Self>) -> Reply;

    /// A message sent to the client with [`Info`](crate::Info) or
    /// [`ClientContext::send_info_after`], or the output of a [`ClientContext::spawn_info`]
    /// future. Runs whether or not the client is connected.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, MinchHandler};
    /// use minch::{Frame, Reply};
    /// use std::time::Duration;
    /// # struct Producer;
    /// enum Tick { Produce }
    ///
    /// impl MinchHandler for Producer {
    ///     type Info = Tick;
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    ///     fn handle_info(&mut self, tick: Tick, ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         let Tick::Produce = tick;
    ///         ctx.send_info_after(Duration::from_secs(5), Tick::Produce);
    ///         if ctx.is_connected() {
    ///             Reply::Send(Frame::text("tick"))
    ///         } else {
    ///             Reply::Continue // a reply now would go to handle_error as NotConnected
    ///         }
    ///     }
    /// }
    /// ```
    fn handle_info(&mut self, info: Self::Info, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = (info, ctx);
        Reply::Continue
    }

    /// Something went wrong that the handler should know about: a reply that could not be sent,
    /// or a protocol violation by the server (followed by `handle_disconnect`).
    ///
    /// Default: log at error level and carry on.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, Frame, MinchHandler};
    /// use minch::{Error, Reply, SendError};
    /// # struct Feed { unsent: Vec<String> }
    ///
    /// impl MinchHandler for Feed {
    /// #   type Info = ();
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    ///     fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         match error {
    ///             // A reply found no connection: keep the order for the next one.
    ///             Error::Send(SendError::NotConnected) => {
    ///                 self.unsent.push("order".into());
    ///                 Reply::Continue
    ///             }
    ///             Error::Protocol(violation) => Reply::stop(format!("server broke the protocol: {violation}")),
    ///             _ => Reply::Continue,
    ///         }
    ///     }
    /// }
    /// ```
    fn handle_error(&mut self, error: Error, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = ctx;
        log::error!("minch client: {error}");
        Reply::Continue
    }

    /// The client is about to stop for good. Runs exactly once; no callback runs after it, and
    /// the handler is dropped right after it returns.
    ///
    /// ```
    /// # use minch::{ClientContext, ConnectRequest, Frame, MinchHandler, Reply};
    /// use minch::StopReason;
    /// # struct Feed { done: Option<std::sync::mpsc::Sender<String>> }
    ///
    /// impl MinchHandler for Feed {
    /// #   type Info = ();
    /// #   fn connect(&mut self, _: &mut ClientContext<'_, Self>) -> ConnectRequest { "ws://127.0.0.1:1".into() }
    /// #   fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply { Reply::Continue }
    ///     fn terminate(&mut self, reason: &StopReason, ctx: &mut ClientContext<'_, Self>) {
    ///         // How the last connection ended, when a stop closed it.
    ///         let ended = ctx.ended().map(|end| end.to_string()).unwrap_or_default();
    ///         if let Some(done) = self.done.take() {
    ///             let _ = done.send(format!("stopped: {reason} ({ended})"));
    ///         }
    ///     }
    /// }
    /// ```
    fn terminate(&mut self, reason: &StopReason, ctx: &mut ClientContext<'_, Self>) {
        let _ = (reason, ctx);
    }
}

/// What a callback asks the client to do next — Minch's `{:ok, state}`, `{:reply, frames, state}`,
/// `{:close, code, reason, state}` and `{:stop, reason, state}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the client acts on the reply; return it from the callback"]
pub enum Reply {
    /// Carry on.
    Continue,
    /// Send one frame.
    Send(Frame),
    /// Send several frames, in order.
    SendAll(Vec<Frame>),
    /// Start the close handshake with this code and reason; then
    /// [`handle_disconnect`](MinchHandler::handle_disconnect) decides what follows.
    Close(CloseFrame),
    /// Close the connection (code 1000) and stop the client for good, whichever callback returns
    /// it; [`terminate`](MinchHandler::terminate) gets [`StopReason::Requested`] with this
    /// reason.
    Stop(String),
}

impl Reply {
    /// [`Reply::Close`] with a code and a reason.
    pub fn close(code: impl Into<CloseCode>, reason: impl Into<String>) -> Self {
        Reply::Close(CloseFrame::new(code, reason))
    }

    /// [`Reply::Stop`] with a reason.
    pub fn stop(reason: impl Into<String>) -> Self {
        Reply::Stop(reason.into())
    }
}

impl From<Frame> for Reply {
    fn from(frame: Frame) -> Self {
        Reply::Send(frame)
    }
}

/// What [`handle_disconnect`](MinchHandler::handle_disconnect) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Connect again after this delay.
    After(Duration),
    /// Stop the client.
    Stop,
}

/// Why a connection ended or an attempt failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server started the close handshake; `None` if its close frame had no status code.
    ServerClosed(Option<CloseFrame>),
    /// A callback closed the connection with [`Reply::Close`].
    ClientClosed(CloseFrame),
    /// The attempt or the connection failed: DNS or TCP failure, TLS, a rejected upgrade, a
    /// timeout, a protocol violation, or a transport error. See [`Error`].
    Error(Error),
}

impl DisconnectReason {
    /// The close code, when the connection ended with a close handshake.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            DisconnectReason::ServerClosed(frame) => Some(
                frame
                    .as_ref()
                    .map_or(CloseCode::NO_STATUS, |frame| frame.code),
            ),
            DisconnectReason::ClientClosed(frame) => Some(frame.code),
            DisconnectReason::Error(_) => None,
        }
    }

    /// The error, when the connection or the attempt failed.
    pub fn error(&self) -> Option<&Error> {
        match self {
            DisconnectReason::Error(error) => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ServerClosed(Some(frame)) => write!(f, "the server closed: {frame}"),
            DisconnectReason::ServerClosed(None) => write!(f, "the server closed (no status)"),
            DisconnectReason::ClientClosed(frame) => write!(f, "the client closed: {frame}"),
            DisconnectReason::Error(error) => error.fmt(f),
        }
    }
}

/// Why the client stopped: what [`terminate`](MinchHandler::terminate) receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StopReason {
    /// A [`Close`](crate::Close) message asked the client to close and stop.
    Closed,
    /// A callback returned [`Reply::Stop`] with this reason.
    Requested(String),
    /// [`init`](MinchHandler::init) failed with this error (shared, so that the reason stays
    /// `Clone`; [`downcast_ref`](trait.Error.html#method.downcast_ref) finds its type).
    ///
    /// ```
    /// use minch::StopReason;
    /// use std::{io, sync::Arc};
    ///
    /// let reason = StopReason::InitFailed(Arc::new(io::Error::other("no credentials")));
    /// if let StopReason::InitFailed(error) = &reason {
    ///     assert!(error.downcast_ref::<io::Error>().is_some());
    /// }
    /// assert_eq!(reason.to_string(), "init failed: no credentials");
    /// ```
    InitFailed(Arc<dyn StdError + Send + Sync>),
    /// [`handle_disconnect`](MinchHandler::handle_disconnect) returned [`Reconnect::Stop`].
    Disconnected(DisconnectReason),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Closed => write!(f, "closed"),
            StopReason::Requested(reason) => write!(f, "stopped: {reason}"),
            StopReason::InitFailed(error) => write!(f, "init failed: {error}"),
            StopReason::Disconnected(reason) => write!(f, "not reconnecting after: {reason}"),
        }
    }
}

/// What callbacks can do besides replying: reach the client's address, schedule messages to
/// themselves, run async work whose result comes back as a message
/// ([`spawn_info`](Self::spawn_info)), stop the client, ask about the connection.
pub struct ClientContext<'a, H: MinchHandler> {
    pub(crate) actor: &'a mut actix::Context<Client<H>>,
    pub(crate) connected: bool,
    pub(crate) attempt: u32,
    pub(crate) timers: &'a mut HandlerTimers<H::Info>,
    pub(crate) stop: &'a mut Option<String>,
    pub(crate) ended: Option<&'a DisconnectReason>,
}

impl<H: MinchHandler> ClientContext<'_, H> {
    /// The client's address. It stays valid across reconnects.
    pub fn address(&self) -> Addr<Client<H>> {
        self.actor.address()
    }

    /// Delivers `info` to [`handle_info`](MinchHandler::handle_info) after `delay` — Elixir's
    /// `Process.send_after(self(), info, delay)`. Returns an id for [`cancel`](Self::cancel).
    ///
    /// The timer belongs to the handler, not to the connection: it survives reconnects, and
    /// is dropped with the handler at the final stop.
    pub fn send_info_after(&mut self, delay: Duration, info: H::Info) -> TimerId {
        Client::schedule_info(self.actor, self.timers, delay, info)
    }

    /// Delivers `info` to [`handle_info`](MinchHandler::handle_info) as soon as the current
    /// callback returns (and the client's other pending work is done).
    pub fn send_info(&mut self, info: H::Info) {
        self.send_info_after(Duration::ZERO, info);
    }

    /// Runs `future` on the client's arbiter and delivers its output to
    /// [`handle_info`](MinchHandler::handle_info) — async work (fetching a token, a database
    /// lookup) started from a callback, which cannot await. Callbacks keep running meanwhile;
    /// the output arrives as a message, in the client's mailbox order, like an
    /// [`Info`](crate::Info) sent to its [`address`](Self::address) (but `H::Info` need not be
    /// `Send`).
    ///
    /// The future belongs to the handler, like a [`send_info_after`](Self::send_info_after)
    /// timer, not to the connection: it keeps running across reconnects (its output reaches
    /// `handle_info` on whichever connection is current, or between two), and it is aborted
    /// (dropped) at the final stop, after [`terminate`](MinchHandler::terminate); an output
    /// ready after the stop is dropped too. It does not keep a client alive that nothing else
    /// does. The future need not be `Send`: it runs on the client's own thread.
    ///
    /// ```no_run
    /// use minch::{ClientContext, ConnectRequest, Frame, MinchHandler, Reply};
    ///
    /// # async fn look_up_price(_symbol: &str) -> Result<f64, std::io::Error> { Ok(1.0) }
    /// struct Quotes;
    ///
    /// enum Msg {
    ///     Price { symbol: String, price: Result<f64, std::io::Error> },
    /// }
    ///
    /// impl MinchHandler for Quotes {
    ///     type Info = Msg;
    ///
    ///     fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
    ///         "wss://quotes.example.com/ws".into()
    ///     }
    ///
    ///     // The server asks for a price: look it up without blocking the client.
    ///     fn handle_frame(&mut self, frame: Frame, ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         if let Some(symbol) = frame.as_text() {
    ///             let symbol = symbol.to_owned();
    ///             ctx.spawn_info(async move {
    ///                 let price = look_up_price(&symbol).await;
    ///                 Msg::Price { symbol, price }
    ///             });
    ///         }
    ///         Reply::Continue
    ///     }
    ///
    ///     fn handle_info(&mut self, msg: Msg, ctx: &mut ClientContext<'_, Self>) -> Reply {
    ///         let Msg::Price { symbol, price } = msg;
    ///         match price {
    ///             // The connection may have been replaced meanwhile: reply only if one is open.
    ///             Ok(price) if ctx.is_connected() => Reply::Send(Frame::text(format!("{symbol} {price}"))),
    ///             Ok(_) => Reply::Continue,
    ///             Err(error) => Reply::stop(format!("price lookup failed: {error}")),
    ///         }
    ///     }
    /// }
    /// ```
    pub fn spawn_info<F>(&mut self, future: F)
    where
        F: Future<Output = H::Info> + 'static,
    {
        Client::spawn_info(self.actor, self.timers, future);
    }

    /// Cancels a message scheduled with [`send_info_after`](Self::send_info_after). Returns
    /// whether it was still pending.
    pub fn cancel(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer)
    }

    /// Closes the connection (code 1000) and stops the client once the current callback has
    /// returned and its reply is carried out — the same as returning [`Reply::Stop`], for code
    /// that has no reply to return (e.g. a helper called from several callbacks). The first
    /// reason given is the one [`terminate`](MinchHandler::terminate) hears.
    pub fn stop(&mut self, reason: impl Into<String>) {
        self.stop.get_or_insert_with(|| reason.into());
    }

    /// In [`terminate`](MinchHandler::terminate): how the connection that the stop closed ended
    /// — the server's close frame, the client's own, or an error such as
    /// [`Timeout::Close`](crate::Timeout::Close) when the server never answered. `None` in
    /// other callbacks, and when no connection was open at the stop.
    pub fn ended(&self) -> Option<&DisconnectReason> {
        self.ended
    }

    /// Whether the WebSocket is open (upgraded and not closing).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Failures since the last successful upgrade (0 while connected).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<H: MinchHandler> fmt::Debug for ClientContext<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientContext")
            .field("connected", &self.connected)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
