//! The one error type of the crate, and the reasons a frame could not be sent.

use std::{
    fmt, io,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use crate::{
    http::{header, HeaderMap, StatusCode},
    protocol::ProtocolError,
};

/// Everything that can go wrong while connecting or while connected.
///
/// Every message says what happened and what to do about it. The enum is `#[non_exhaustive]`:
/// match the variants you handle and keep a catch-all arm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be used: it does not parse, is not `ws://` or `wss://`, or has no host.
    InvalidUrl {
        /// The URL, with user name, password and query values removed (and any fragment):
        /// they often carry credentials.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request header name or value is not valid HTTP (e.g. it contains CR or LF).
    /// The value itself is never included: it may be a secret.
    InvalidHeader {
        /// The header name, as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The [`ConnectOptions`](crate::ConnectOptions) cannot be used: a setting outside its
    /// range (a zero timeout or buffer, see each option's docs), a root or client certificate
    /// that does not parse, a client key that does not match its certificate, or TLS settings
    /// that exclude each other. The message names the option, never a key or a certificate.
    InvalidOptions(String),
    /// The host name could not be resolved or the TCP connection could not be made, or (with
    /// [`ConnectOptions::unix_socket`](crate::ConnectOptions::unix_socket)) the Unix socket
    /// could not be connected to. The reason says what failed (for a Unix socket, which one:
    /// its path, escaped), then what to check: the host, the port and the server for TCP; the
    /// path and the server listening on it for a Unix socket. It holds nothing of the URL.
    Connect(String),
    /// The TLS handshake failed: the server's certificate is not trusted, or the server refused
    /// the client's (a server that requires a client certificate and got none, or one it does
    /// not trust: with TLS 1.3 its refusal arrives just after the handshake, and is reported
    /// here too). The message says which, with a hint.
    Tls(String),
    /// The connection through a proxy could not be made (see [`Proxy`](crate::Proxy)). Like
    /// [`Connect`](Self::Connect), a reason to retry with backoff.
    Proxy {
        /// The proxy, as `scheme://host:port`: never with its credentials.
        proxy: String,
        /// What went wrong.
        error: ProxyError,
    },
    /// The URL is `wss://`, but minch was built without its `tls` feature, so it speaks
    /// `ws://` only. Enable the feature (it is on by default; `default-features = false` turns
    /// it off) or use a `ws://` URL. A configuration error: [`is_config`](Self::is_config).
    TlsNotEnabled {
        /// The URL, redacted as in [`InvalidUrl`](Self::InvalidUrl).
        url: String,
    },
    /// A step did not finish in time.
    Timeout(Timeout),
    /// The server answered the upgrade request with a status other than `101 Switching Protocols`.
    ///
    /// A server that asks for patience says so: 429 and 503 often come with `Retry-After`
    /// ([`Rejection::retry_after`]), which the default
    /// [`handle_disconnect`](crate::MinchHandler::handle_disconnect) honours.
    Rejected {
        /// The HTTP status the server sent.
        status: StatusCode,
        /// The rest of the server's answer: its headers and the start of its body.
        response: Box<Rejection>,
    },
    /// The server's `101` response is not a valid WebSocket handshake (RFC 6455 §4.1).
    Handshake(String),
    /// The server's `Sec-WebSocket-Extensions` answer cannot be accepted: an extension that was
    /// not offered, or a permessage-deflate parameter that is unknown, repeated, out of range or
    /// not offered (RFC 6455 §9.1, RFC 7692 §7.1). The connection is not used.
    Extension {
        /// The parameter (or extension) at fault, as the server named it.
        parameter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server broke the WebSocket protocol; the client failed the connection.
    Protocol(ProtocolError),
    /// The connection failed while open (reset, broken pipe, or closed without a close frame).
    Io(Arc<io::Error>),
    /// A frame could not be sent.
    Send(SendError),
}

/// Why a connection through a proxy failed ([`Error::Proxy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy's name could not be resolved or the TCP connection to it failed.
    Unreachable(String),
    /// The HTTP proxy answered `407 Proxy Authentication Required`: no credentials were given,
    /// or not the right ones.
    AuthenticationRequired,
    /// The HTTP proxy refused to open the tunnel with this status: often 403 (the destination is
    /// not allowed) or 502 (the proxy could not reach the server).
    Refused(StatusCode),
    /// The SOCKS5 proxy could not or would not connect to the server, with this reply code
    /// (RFC 1928 §6): 1 general failure, 2 not allowed by its rules, 3 network unreachable,
    /// 4 host unreachable, 5 connection refused, 6 TTL expired, 7 command not supported,
    /// 8 address type not supported.
    SocksReply(u8),
    /// The SOCKS5 proxy did not accept the credentials, or asks for credentials and none were
    /// given (or the other way round).
    SocksAuthentication,
    /// The TLS handshake with an `https://` proxy failed (its certificate is not trusted, for
    /// one: a proxy with a private CA needs it in [`TlsOptions`](crate::TlsOptions)).
    Tls(String),
    /// The proxy's answer is not valid HTTP or SOCKS5, or the proxy closed the connection
    /// before answering.
    Protocol(String),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Unreachable(reason) => write!(f, "it could not be reached: {reason}"),
            ProxyError::AuthenticationRequired => f.write_str(
                "it asks for credentials (407 Proxy Authentication Required); give them in the \
                 proxy URL, http://user:password@host:port, or check the ones given",
            ),
            ProxyError::Refused(status) => write!(
                f,
                "it refused to open a tunnel to the server with HTTP {status}; check that it \
                 allows connections to this host and port"
            ),
            ProxyError::SocksReply(code) => {
                let meaning = match code {
                    1 => "general failure",
                    2 => "connection not allowed by its rules",
                    3 => "network unreachable",
                    4 => "host unreachable",
                    5 => "connection refused by the server",
                    6 => "TTL expired",
                    7 => "command not supported",
                    8 => "address type not supported",
                    _ => "unknown reply",
                };
                write!(
                    f,
                    "it could not connect to the server: {meaning} (SOCKS5 reply {code})"
                )
            }
            ProxyError::SocksAuthentication => f.write_str(
                "it did not accept the credentials, or wants some and none were given; check \
                 the user name and password in the proxy URL",
            ),
            ProxyError::Tls(reason) => write!(f, "the TLS handshake with it failed: {reason}"),
            ProxyError::Protocol(reason) => write!(f, "its answer is not valid: {reason}"),
        }
    }
}

/// Which step of a connection's life took too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// Resolving the host and opening the TCP connection; through a proxy, reaching the proxy
    /// and opening the tunnel.
    Connect,
    /// The TLS handshake.
    Tls,
    /// Waiting for the server's answer to the upgrade request.
    Upgrade,
    /// Waiting for the server to complete the close handshake.
    Close,
    /// Waiting for a pong (or any frame) after a keepalive ping.
    Pong,
    /// Waiting for a pong while the receive queue of the simple or blocking API was full: the
    /// program took no frame for longer than the pong timeout, so the client could not read
    /// the pong (see [`ConnectOptions::max_queue`](crate::ConnectOptions::max_queue)).
    ReceiveQueueFull,
}

impl Error {
    /// Whether retrying the same request cannot help: the URL, a header or the options are
    /// invalid. The default [`handle_disconnect`](crate::MinchHandler::handle_disconnect) stops
    /// the client on these instead of retrying forever.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::InvalidUrl { .. }
                | Error::InvalidHeader { .. }
                | Error::InvalidOptions(_)
                | Error::TlsNotEnabled { .. }
        )
    }

    /// Whether this is a timeout, and of which step.
    pub fn timeout(&self) -> Option<Timeout> {
        match self {
            Error::Timeout(kind) => Some(*kind),
            _ => None,
        }
    }

    /// The HTTP status of a rejected upgrade.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long a server that rejected the upgrade asked the client to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Rejected { response, .. } => response.retry_after(),
            _ => None,
        }
    }

    pub(crate) fn io(error: io::Error) -> Self {
        Error::Io(Arc::new(error))
    }

    /// [`Error::Connect`] for a failure to resolve the host or open the TCP connection:
    /// `reason` (which must not hold the URL), with the advice for TCP.
    pub(crate) fn tcp_connect(reason: impl fmt::Display) -> Self {
        Error::Connect(format!(
            "{reason}; check the host, the port and that the server is running"
        ))
    }

    /// [`Error::Connect`] for a failure to connect to the Unix socket at `path`: which socket
    /// (its path escaped), why, and the advice for a Unix socket.
    #[cfg(unix)]
    pub(crate) fn unix_connect(path: &std::path::Path, error: &io::Error) -> Self {
        Error::Connect(format!(
            "the Unix socket {} could not be connected to: {error}; check the path and that the \
             server is listening on it",
            path.display().to_string().escape_debug()
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl { url, reason } => write!(
                f,
                "invalid WebSocket URL {url:?}: {reason}; use ws://host[:port]/path or wss://…"
            ),
            Error::InvalidHeader { name, reason } => write!(
                f,
                "invalid request header {name:?}: {reason}; header values must not contain CR, LF or NUL"
            ),
            Error::InvalidOptions(reason) => write!(f, "invalid connect options: {reason}"),
            // The reason carries the advice that fits the route (TCP or a Unix socket).
            Error::Connect(reason) => write!(f, "could not connect: {reason}"),
            // The reason carries the hint that fits it (a private CA, a client certificate).
            Error::Tls(reason) => write!(f, "TLS handshake failed: {reason}"),
            Error::Proxy { proxy, error } => {
                write!(f, "could not connect through the proxy {proxy}: {error}")
            }
            Error::TlsNotEnabled { url } => write!(
                f,
                "cannot connect to {url:?}: wss:// needs TLS, but minch was built without its \"tls\" feature; enable it (it is a default feature: add features = [\"tls\"] to the minch dependency, or drop default-features = false) or use a ws:// URL"
            ),
            Error::Timeout(Timeout::Connect) => write!(
                f,
                "timed out resolving the host or opening the TCP connection (or the tunnel through the proxy); raise ConnectOptions::connect_timeout or check the network"
            ),
            Error::Timeout(Timeout::Tls) => write!(
                f,
                "timed out in the TLS handshake; raise ConnectOptions::tls_timeout or check that the port speaks TLS"
            ),
            Error::Timeout(Timeout::Upgrade) => write!(
                f,
                "the server did not answer the WebSocket upgrade in time; raise ConnectOptions::upgrade_timeout or check the URL's path"
            ),
            Error::Timeout(Timeout::Close) => write!(
                f,
                "the server did not complete the close handshake in time; the connection was dropped"
            ),
            Error::Timeout(Timeout::Pong) => write!(
                f,
                "no pong (nor any frame) arrived within the pong timeout; the peer or the network is gone"
            ),
            Error::Timeout(Timeout::ReceiveQueueFull) => write!(
                f,
                "the receive queue stayed full past the pong timeout, so the keepalive pong could not be read; take frames sooner, raise ConnectOptions::max_queue or pong_timeout, or turn keepalive off"
            ),
            Error::Rejected { status, response } => {
                write!(f, "the server rejected the WebSocket upgrade with HTTP {status}")?;
                match response.retry_after() {
                    Some(wait) => write!(
                        f,
                        "; it asks to retry after {} s (Retry-After)",
                        wait.as_secs_f64().ceil()
                    ),
                    None => write!(
                        f,
                        "; check the URL, credentials and headers (the error's `response` holds \
                         the server's headers and body)"
                    ),
                }
            }
            Error::Handshake(reason) => {
                write!(f, "the server's upgrade response is not valid: {reason}")
            }
            Error::Extension { parameter, reason } => write!(
                f,
                "the server's Sec-WebSocket-Extensions answer is not valid: {parameter:?}: \
                 {reason}; if this server's compression support is broken, connect with \
                 ConnectOptions::compression(None)"
            ),
            Error::Protocol(error) => write!(f, "protocol error: {error}"),
            Error::Io(error) => write!(f, "connection failed: {error}"),
            Error::Send(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Protocol(error) => Some(error),
            Error::Io(error) => Some(error.as_ref()),
            Error::Send(error) => Some(error),
            _ => None,
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(error: ProtocolError) -> Self {
        Error::Protocol(error)
    }
}

impl From<SendError> for Error {
    fn from(error: SendError) -> Self {
        Error::Send(error)
    }
}

/// Why a frame was not sent. A frame is either written to the connection or its sender gets
/// one of these: nothing is dropped silently, nothing is buffered for a later connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The client is connecting or waiting to reconnect. Send again after `handle_connect`.
    NotConnected,
    /// The close handshake has begun; no more frames may be sent on this connection.
    Closing,
    /// The connection was lost before the frame could be written to it.
    ConnectionLost,
    /// The client has stopped and will not connect again.
    Stopped,
    /// The outgoing buffer is over [`ConnectOptions::max_buffered_bytes`](crate::ConnectOptions::max_buffered_bytes):
    /// the server is not reading fast enough. Only [`TrySendFrame`](crate::TrySendFrame) returns
    /// this; [`SendFrame`](crate::SendFrame) waits instead.
    BufferFull,
    /// The frame is not valid to send (e.g. a ping payload over 125 bytes, or a reserved
    /// close code).
    InvalidFrame(ProtocolError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotConnected => write!(
                f,
                "not connected: the client is connecting or waiting to reconnect; send after handle_connect"
            ),
            SendError::Closing => write!(f, "the connection is closing; no more frames can be sent"),
            SendError::ConnectionLost => write!(
                f,
                "the connection was lost before the frame was written; it was not sent"
            ),
            SendError::Stopped => write!(f, "the client has stopped"),
            SendError::BufferFull => write!(
                f,
                "the outgoing buffer is full: the server is not keeping up; retry later or use SendFrame to wait"
            ),
            SendError::InvalidFrame(error) => write!(f, "invalid frame: {error}"),
        }
    }
}

impl std::error::Error for SendError {}

/// The headers and the start of the body of a refused upgrade (any status but 101), as the
/// server sent them. Part of [`Error::Rejected`].
///
/// The body is kept up to [`MAX_BODY`](Self::MAX_BODY) bytes. `Debug` shows the header names
/// and the body's length only: a server's answer may carry cookies or tokens.
#[derive(Clone)]
pub struct Rejection {
    headers: HeaderMap,
    body: Bytes,
    complete: bool,
    retry_after: Option<Duration>,
}

impl Rejection {
    /// The most of the body that is kept: 64 KiB.
    pub const MAX_BODY: usize = crate::connector::MAX_REJECTED_BODY;

    /// A rejection with these headers and this (whole) body, as minch builds it from the
    /// server's answer; for tests of a handler's `handle_disconnect`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use minch::{http::{header::RETRY_AFTER, HeaderMap, StatusCode}, Error, Rejection};
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert(RETRY_AFTER, "2".parse().unwrap());
    /// let error = Error::Rejected {
    ///     status: StatusCode::TOO_MANY_REQUESTS,
    ///     response: Box::new(Rejection::new(headers, "slow down")),
    /// };
    /// assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
    /// ```
    pub fn new(headers: HeaderMap, body: impl Into<Bytes>) -> Self {
        Self::received(headers, body.into(), true)
    }

    pub(crate) fn received(headers: HeaderMap, body: Bytes, complete: bool) -> Self {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        Self {
            headers,
            body,
            complete,
            retry_after,
        }
    }

    /// The answer's head came `elapsed` ago (its body took that long): a wait in seconds
    /// counts from then. (One given as a date was counted from now.)
    pub(crate) fn arrived_ago(mut self, elapsed: Duration) -> Self {
        let in_seconds = self
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                !value.trim().is_empty() && value.trim().bytes().all(|b| b.is_ascii_digit())
            });
        if in_seconds {
            self.retry_after = self.retry_after.map(|wait| wait.saturating_sub(elapsed));
        }
        self
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body, or its first [`MAX_BODY`](Self::MAX_BODY) bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether [`body`](Self::body) is the whole body: false when it was longer than
    /// [`MAX_BODY`](Self::MAX_BODY), or did not arrive within the upgrade timeout.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The wait the server asked for in `Retry-After` (seconds, or an HTTP date, counted from
    /// when the response arrived), if it sent one that parses.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.keys().map(|name| name.as_str()).collect();
        f.debug_struct("Rejection")
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .field("complete", &self.complete)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP date (a date in the past is no
/// wait).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly many digits: as long as a wait can be.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
