//! What to connect to and how: [`ConnectRequest`], [`ConnectOptions`], [`TlsOptions`].

use std::{fmt, time::Duration};

use crate::protocol::Limits;

/// What [`MinchHandler::connect`](crate::MinchHandler::connect) returns before every attempt:
/// a URL, optionally with request headers and options — Minch's `url`, `{url, headers}` and
/// `{url, headers, options}`.
///
/// ```
/// use minch::{ConnectOptions, ConnectRequest};
/// use std::time::Duration;
///
/// let plain: ConnectRequest = "ws://127.0.0.1:4000/socket".into();
/// let with_headers: ConnectRequest =
///     ("wss://example.com/feed", vec![("authorization", "Bearer secret")]).into();
/// let with_options: ConnectRequest = (
///     "wss://example.com/feed",
///     Vec::<(String, String)>::new(),
///     ConnectOptions::default().upgrade_timeout(Duration::from_secs(5)),
/// )
///     .into();
/// # let _ = (plain, with_headers, with_options);
/// ```
///
/// Its `Debug` output shows header names only: values such as `authorization` are secrets.
#[derive(Clone, Default)]
pub struct ConnectRequest {
    /// A `ws://` or `wss://` URL.
    pub url: String,
    /// Extra request headers, sent in this order.
    pub headers: Vec<(String, String)>,
    /// Timeouts, TLS, subprotocols and limits.
    pub options: ConnectOptions,
}

impl ConnectRequest {
    /// A request for `url` with no extra headers and default options.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectRequest {
            url: url.into(),
            ..ConnectRequest::default()
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: ConnectOptions) -> Self {
        self.options = options;
        self
    }
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ConnectRequest")
            .field("url", &redact_userinfo(&self.url))
            .field("headers", &header_names)
            .field("options", &self.options)
            .finish()
    }
}

/// The URL without `user:password@`, for messages and logs.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl From<&str> for ConnectRequest {
    fn from(url: &str) -> Self {
        ConnectRequest::new(url)
    }
}

impl From<String> for ConnectRequest {
    fn from(url: String) -> Self {
        ConnectRequest::new(url)
    }
}

impl From<&String> for ConnectRequest {
    fn from(url: &String) -> Self {
        ConnectRequest::new(url.clone())
    }
}

impl<U, K, V> From<(U, Vec<(K, V)>)> for ConnectRequest
where
    U: Into<String>,
    K: Into<String>,
    V: Into<String>,
{
    fn from((url, headers): (U, Vec<(K, V)>)) -> Self {
        (url, headers, ConnectOptions::default()).into()
    }
}

impl<U, K, V> From<(U, Vec<(K, V)>, ConnectOptions)> for ConnectRequest
where
    U: Into<String>,
    K: Into<String>,
    V: Into<String>,
{
    fn from((url, headers, options): (U, Vec<(K, V)>, ConnectOptions)) -> Self {
        ConnectRequest {
            url: url.into(),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
            options,
        }
    }
}

/// How to connect, and the limits of a connection.
///
/// Every setting has a default, written next to it; the builder methods change one each.
///
/// ```
/// use minch::{ConnectOptions, TlsOptions};
/// use std::time::Duration;
///
/// let options = ConnectOptions::default()
///     .connect_timeout(Duration::from_secs(3))
///     .subprotocol("v1.chat")
///     .max_message_size(1 << 20)
///     .tls(TlsOptions::default());
/// assert_eq!(options.subprotocols, ["v1.chat"]);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Time to resolve the host and open the TCP connection. Default: 10 s.
    pub connect_timeout: Duration,
    /// Time for the TLS handshake of a `wss://` connection. Default: 10 s.
    pub tls_timeout: Duration,
    /// Time for the server to answer the upgrade request, once connected. Default: 10 s.
    pub upgrade_timeout: Duration,
    /// Time for the server to complete a close handshake before the connection is dropped.
    /// Default: 5 s, as in Minch.
    pub close_timeout: Duration,
    /// Subprotocols to offer in `Sec-WebSocket-Protocol`, most preferred first. Default: none.
    pub subprotocols: Vec<String>,
    /// The `Origin` header to send. Default: none.
    pub origin: Option<String>,
    /// The largest frame accepted from the server, in bytes; larger frames fail the connection
    /// with close code 1009 before their payload is read. Default: 16 MiB.
    pub max_frame_size: usize,
    /// The largest message (all fragments together) accepted from the server, in bytes.
    /// Default: 64 MiB.
    pub max_message_size: usize,
    /// How often to ping the server to check that it is alive; `None` turns keepalive off.
    /// Default: every 20 s — often enough to keep NAT and load-balancer idle timers (commonly
    /// 60 s) from dropping a quiet connection.
    pub ping_interval: Option<Duration>,
    /// How long to wait, after a keepalive ping, for a pong or any other frame before the
    /// connection is declared dead ([`Timeout::Pong`](crate::Timeout::Pong)). Default: 20 s, so a
    /// dead peer is noticed within 40 s.
    pub pong_timeout: Duration,
    /// The most bytes of outgoing frames waiting to be written. Beyond it frames are held back:
    /// [`SendFrame`](crate::SendFrame) resolves only once they are written (so awaiting senders
    /// slow down), and [`TrySendFrame`](crate::TrySendFrame) fails with
    /// [`SendError::BufferFull`](crate::SendError::BufferFull). Default: 16 MiB.
    pub max_buffered_bytes: usize,
    /// Certificate verification and extra roots for `wss://`.
    pub tls: TlsOptions,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let limits = Limits::default();
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            upgrade_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            subprotocols: Vec::new(),
            origin: None,
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(20),
            max_buffered_bytes: 16 << 20,
            tls: TlsOptions::default(),
        }
    }
}

impl ConnectOptions {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`tls_timeout`](Self::tls_timeout).
    pub fn tls_timeout(mut self, timeout: Duration) -> Self {
        self.tls_timeout = timeout;
        self
    }

    /// Sets [`upgrade_timeout`](Self::upgrade_timeout).
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// Sets [`close_timeout`](Self::close_timeout).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Offers one more subprotocol.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Sets the `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`ping_interval`](Self::ping_interval); `None` turns keepalive off.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`pong_timeout`](Self::pong_timeout).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Sets [`max_buffered_bytes`](Self::max_buffered_bytes).
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Sets the TLS options.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
        }
    }
}

/// TLS settings for `wss://` URLs.
///
/// By default the server's certificate is verified against the bundled Mozilla root store
/// (`webpki-roots`). Add roots for a private CA with [`add_root_certificate`](Self::add_root_certificate)
/// or [`add_root_pem`](Self::add_root_pem); only for tests, turn verification off with
/// [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Extra trusted root certificates, DER-encoded, on top of the bundled roots.
    pub root_certificates: Vec<Vec<u8>>,
    /// Extra trusted roots given as PEM text (parsed when connecting).
    pub root_pems: Vec<String>,
    /// Accept any server certificate. Default: `false`.
    pub accept_invalid_certs: bool,
}

impl TlsOptions {
    /// Trusts one more root certificate (DER bytes).
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(der.into());
        self
    }

    /// Trusts the certificates in a PEM document.
    pub fn add_root_pem(mut self, pem: impl Into<String>) -> Self {
        self.root_pems.push(pem.into());
        self
    }

    /// **Dangerous**: accept any certificate, so that anyone on the path can read and change
    /// the traffic. Only for tests against servers with throwaway certificates.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.accept_invalid_certs = accept;
        self
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field(
                "extra_roots",
                &(self.root_certificates.len() + self.root_pems.len()),
            )
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_header_values_and_credentials() {
        let request: ConnectRequest = (
            "wss://user:pass@example.com/feed?x=1",
            vec![("authorization", "Bearer s3cret")],
        )
            .into();
        let shown = format!("{request:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("s3cret"));
        assert!(!shown.contains("pass"));
        assert!(shown.contains("wss://example.com/feed?x=1"));
    }
}
