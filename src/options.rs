//! What to connect to and how: [`ConnectRequest`], [`ConnectOptions`], [`TlsOptions`].

use std::{fmt, time::Duration};

use crate::{compression::Deflate, protocol::Limits, proxy::Proxy, Error};

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
///
/// The struct is `#[non_exhaustive]`: build it with [`new`](Self::new) and the builder methods,
/// or from one of the tuples above; its fields stay public for reading and changing.
#[derive(Clone, Default)]
#[non_exhaustive]
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
            .field("url", &redact_url(&self.url))
            .field("headers", &header_names)
            .field("options", &self.options)
            .finish()
    }
}

/// The URL as it may be shown in messages and logs: without `user:password@`, with every query
/// value replaced by `REDACTED` (names kept: `?token=REDACTED&v=REDACTED`) and any fragment
/// replaced by `#REDACTED`. Credentials travel in all three places (`wss://host/feed?token=…` is
/// common), and a log line is no place for them.
///
/// Works on any string, URL or not: what is not a URL is redacted by the same positional rules
/// (everything after the first `#`, every value after the first `?`, everything before the last
/// `@` of the authority), so a malformed URL in an error message leaks no more than a valid one.
/// A password with an unescaped `@`, `/`, `?` or `#` is hidden too. minch shows URLs this way
/// in its errors, logs and `Debug` output; use it for your own.
///
/// ```
/// assert_eq!(
///     minch::redact_url("wss://user:pw@feed.example.com/v1?token=abc&flag#x"),
///     "wss://feed.example.com/v1?token=REDACTED&REDACTED#REDACTED",
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    // The authority starts after `scheme://` (or a scheme-relative `//`); with neither, the
    // string is not a URL and its start is treated as the authority, so `user:pw@host` is
    // redacted as well.
    let authority_start = match url.find("://") {
        // A malformed scheme (`://u:pw@host`, `.ws://u:pw@host`) still ends where `://` starts.
        Some(at) if is_scheme(&url[..at]) || !url[..at].contains(['@', '/', '?', '#', ':']) => {
            at + 3
        }
        // Not a scheme (`u:pw@host://…`, or a `://` in a query): whatever precedes it may
        // itself hold a secret.
        Some(_) => 0,
        None if url.starts_with("//") => 2,
        None => 0,
    };
    let mut shown = String::with_capacity(url.len());
    shown.push_str(&url[..authority_start]);
    let rest = &url[authority_start..];
    let userinfo = userinfo_len(rest);
    if rest[..userinfo].contains(['?', '#']) {
        // The userinfo ran past a `?` or `#` (`user:pw?x@host`): what follows it may be a
        // query or a fragment as well as a host and path, so none of it is shown.
        shown.push_str(REDACTED);
        return shown;
    }
    let rest = &rest[userinfo..];

    // Split as a URL parser does: the first `#` starts the fragment, and the first `?` before
    // it starts the query. A `?` in an odd place (malformed input) can then only make more of
    // the string count as query or fragment, that is, redacted.
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (rest, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (before_fragment, None),
    };
    shown.push_str(before_query);

    if let Some(query) = query {
        shown.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                shown.push('&');
            }
            let Some((name, value)) = pair.split_once('=') else {
                // A bare item (`?sk_live_…`) is as likely a key as a flag: hidden, unless empty.
                if !pair.is_empty() {
                    shown.push_str(REDACTED);
                }
                continue;
            };
            let value = Some(value);
            // A name that is not plainly a name (`?b://user:pw@host`, from a `?` in the wrong
            // place) may carry anything, so only name-like names are shown.
            if is_plain_query_name(name) {
                shown.push_str(name);
            } else {
                shown.push_str(REDACTED);
            }
            match value {
                // An empty value hides nothing, and showing it tells the reader it was empty.
                Some("") => shown.push('='),
                Some(_) => {
                    shown.push('=');
                    shown.push_str(REDACTED);
                }
                None => {}
            }
        }
    }
    match fragment {
        Some("") => shown.push('#'),
        Some(_) => {
            shown.push('#');
            shown.push_str(REDACTED);
        }
        None => {}
    }
    shown
}

/// How many bytes of `rest` (what follows `scheme://`) are userinfo, `@` included.
fn userinfo_len(rest: &str) -> usize {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last `@` ends the userinfo: an unescaped `@` inside a password is a common mistake.
    if let Some(at) = authority.rfind('@') {
        return at + 1;
    }
    // So is an unescaped `/`, `?` or `#`, which ends the authority early: `user:pa/ss@host`.
    // A `:` followed by anything but a port's digits cannot be `host:port`, so the userinfo
    // then runs to the last `@` of all. (A password made of digits up to its first `/` still
    // reads as a port: nothing tells the two apart.)
    match rest.rfind('@') {
        Some(at) if !is_host_and_port(authority) => at + 1,
        _ => 0,
    }
}

/// Whether `authority` reads as `host`, `host:port` or `[v6]:port` (a port of digits only).
fn is_host_and_port(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => match v6.find(']') {
            Some(end)
                if v6[..end]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.%".contains(&b)) =>
            {
                &v6[end + 1..]
            }
            _ => return false,
        },
        None => authority.find(':').map_or("", |at| &authority[at..]),
    };
    after_host.is_empty()
        || after_host
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
}

/// What [`redact_url`] shows in place of a secret.
const REDACTED: &str = "REDACTED";

/// Whether `scheme` is one (RFC 3986 §3.1: a letter, then letters, digits, `+`, `-` or `.`).
fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// Whether a query parameter name looks like one (RFC 3986 unreserved characters, `%`-escapes
/// and the `[]` of array parameters), and so can be shown.
fn is_plain_query_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%[]".contains(&b))
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
/// # Errors
///
/// The options are checked before every connection attempt, before any I/O: a value outside the
/// range written next to its default fails the attempt with
/// [`Error::InvalidOptions`](crate::Error::InvalidOptions), whose message names the setting.
/// That is a configuration error ([`Error::is_config`](crate::Error::is_config)), so the default
/// [`handle_disconnect`](crate::MinchHandler::handle_disconnect) stops the client rather than
/// retrying an attempt that cannot succeed. In short: every duration is more than zero and at
/// most [`MAX_DURATION`](Self::MAX_DURATION) (24 h), sizes are at least 1 byte (frames at
/// least 125), subprotocols are distinct HTTP tokens, and a
/// [`pong_timeout`](Self::pong_timeout()) needs a [`ping_interval`](Self::ping_interval).
///
/// ```
/// use minch::ConnectOptions;
/// use std::time::Duration;
///
/// let options = ConnectOptions::default()
///     .connect_timeout(Duration::from_secs(3))
///     .subprotocol("v1.chat")
///     .max_message_size(1 << 20);
/// assert_eq!(options.subprotocols, ["v1.chat"]);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Time to resolve the host and open the TCP connection. Default: 10 s.
    /// Allowed: more than zero, at most [`MAX_DURATION`](Self::MAX_DURATION).
    pub connect_timeout: Duration,
    /// Time for the TLS handshake of a `wss://` connection. Default: 10 s.
    /// Allowed: more than zero, at most [`MAX_DURATION`](Self::MAX_DURATION).
    pub tls_timeout: Duration,
    /// Time for the server to answer the upgrade request, once connected. Default: 10 s.
    /// Allowed: more than zero, at most [`MAX_DURATION`](Self::MAX_DURATION).
    pub upgrade_timeout: Duration,
    /// Time for the server to complete a close handshake before the connection is dropped.
    /// Default: 5 s, as in Minch. Allowed: more than zero, at most
    /// [`MAX_DURATION`](Self::MAX_DURATION).
    pub close_timeout: Duration,
    /// Subprotocols to offer in `Sec-WebSocket-Protocol`, most preferred first. Default: none.
    /// Allowed: each a non-empty HTTP token (letters, digits and ``!#$%&'*+-.^_`|~``), no two
    /// the same (RFC 6455 §4.1).
    pub subprotocols: Vec<String>,
    /// The `Origin` header to send. Default: none.
    pub origin: Option<String>,
    /// The largest frame accepted from the server, in bytes; larger frames fail the connection
    /// with close code 1009 before their payload is read. Default: 16 MiB. Allowed: at least
    /// 125, the largest control frame, which must always be accepted (RFC 6455 §5.5).
    pub max_frame_size: usize,
    /// The largest message (all fragments together) accepted from the server, in bytes.
    /// Default: 64 MiB. Allowed: at least 1.
    pub max_message_size: usize,
    /// How often to ping the server to check that it is alive; `None` turns keepalive off.
    /// Default: every 20 s — often enough to keep NAT and load-balancer idle timers (commonly
    /// 60 s) from dropping a quiet connection. Allowed: `None`, or more than zero and at most
    /// [`MAX_DURATION`](Self::MAX_DURATION).
    pub ping_interval: Option<Duration>,
    /// How long to wait, after a keepalive ping, for a pong or any other frame before the
    /// connection is declared dead ([`Timeout::Pong`](crate::Timeout::Pong)). Default: 20 s, so a
    /// dead peer is noticed within 40 s. Allowed: more than zero, at most
    /// [`MAX_DURATION`](Self::MAX_DURATION); setting it with the
    /// [`pong_timeout`](Self::pong_timeout()) builder while `ping_interval` is `None` is an
    /// error, since no ping would ever start it.
    pub pong_timeout: Duration,
    /// The most bytes of outgoing frames waiting to be written. Beyond it frames are held back:
    /// [`SendFrame`](crate::SendFrame) resolves only once they are written (so awaiting senders
    /// slow down), and [`TrySendFrame`](crate::TrySendFrame) fails with
    /// [`SendError::BufferFull`](crate::SendError::BufferFull). Default: 16 MiB. Allowed: at
    /// least 1.
    pub max_buffered_bytes: usize,
    /// The simple and blocking APIs: the most received messages waiting to be taken with
    /// `receive_frame` (or the [`Frames`](crate::Frames) stream). When the queue holds this many
    /// (or [`max_queue_bytes`](Self::max_queue_bytes) of payload), the connection stops reading
    /// the socket, so the kernel's TCP window makes the server wait; it reads again once the
    /// program has taken the queue down to half. Default: 1 024. Allowed: at least 1.
    ///
    /// A program waiting for frames when a burst arrives is handed it a few hundred messages at
    /// a time: the client reads on once the program has taken what it was handed, or after
    /// the runtime's next turn if it has not (a receive that timed out), so that the program
    /// works while the rest of the burst is read instead of after.
    ///
    /// While reading is paused the client cannot see pongs either: a program that then takes no
    /// frame for a whole [`pong_timeout`](Self::pong_timeout) (after a keepalive ping) is
    /// disconnected with [`Timeout::ReceiveQueueFull`](crate::Timeout::ReceiveQueueFull), and a
    /// close handshake waits behind the frames not taken, for at most
    /// [`close_timeout`](Self::close_timeout). The actor client has no queue: it hands each
    /// message to [`handle_frame`](crate::MinchHandler::handle_frame) as it arrives.
    pub max_queue: usize,
    /// The simple and blocking APIs: the most payload bytes of received messages waiting to be
    /// taken; see [`max_queue`](Self::max_queue). A message is queued whole, so the queue may
    /// exceed this by one message (at most [`max_message_size`](Self::max_message_size)).
    /// Default: 16 MiB. Allowed: at least 1.
    pub max_queue_bytes: usize,
    /// Certificate verification and extra roots for `wss://`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub tls: TlsOptions,
    /// permessage-deflate compression (RFC 7692) to offer the server, or `None` for none.
    /// Default: offered, with [`Deflate::default`]'s settings. Allowed: see [`Deflate`].
    pub compression: Option<Deflate>,
    /// The proxy to connect through. Default: [`Proxy::FromEnvironment`], the one
    /// `https_proxy`/`http_proxy`/`all_proxy` name unless `no_proxy` lists the host. Allowed:
    /// see [`Proxy`].
    pub proxy: Proxy,
    /// Connect to the server on this Unix domain socket instead of the URL's host and port
    /// (Docker-style local daemons). The URL still gives the request path and the `Host`
    /// header, and `wss://` runs TLS over the socket, checked against the URL's host; no proxy
    /// is used. Default: `None`. Allowed: a non-empty path of at most
    /// [`MAX_UNIX_SOCKET_PATH`](Self::MAX_UNIX_SOCKET_PATH) bytes, on Unix only.
    pub unix_socket: Option<std::path::PathBuf>,
    /// Whether to send each write at once (`TCP_NODELAY`) rather than let the kernel hold small
    /// writes back while earlier data is unacknowledged (Nagle's algorithm). Default: `true`,
    /// as in Go, Node and most WebSocket clients: with Nagle on, a small frame sent while the
    /// previous one is unacknowledged waits for the server's delayed ACK, up to 40 ms on Linux.
    /// minch already gathers the frames it has ready into one write, so turning Nagle off costs
    /// no extra packets when sending in bursts. Allowed: `true` or `false`; no effect on a
    /// [`unix_socket`](Self::unix_socket). Through a proxy, it applies to the connection to the
    /// proxy.
    pub tcp_nodelay: bool,
    /// Whether `pong_timeout` was set through its builder: only then is it a mistake to leave
    /// keepalive off (the default `pong_timeout` is harmless without pings).
    pong_timeout_explicit: bool,
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
            max_queue: 1024,
            max_queue_bytes: 16 << 20,
            #[cfg(feature = "tls")]
            tls: TlsOptions::default(),
            compression: Some(Deflate::default()),
            proxy: Proxy::FromEnvironment,
            unix_socket: None,
            tcp_nodelay: true,
            pong_timeout_explicit: false,
        }
    }
}

impl ConnectOptions {
    /// The longest allowed duration setting: 24 hours. Longer ones are surely mistakes, and
    /// durations near `Duration::MAX` would overflow when added to the current time.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

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

    /// Sets [`pong_timeout`](Self::pong_timeout). Keepalive must be on
    /// ([`ping_interval`](Self::ping_interval) not `None`), or connecting fails with
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self.pong_timeout_explicit = true;
        self
    }

    /// Sets [`max_buffered_bytes`](Self::max_buffered_bytes).
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// Sets [`max_queue`](Self::max_queue), the simple and blocking APIs' limit on received
    /// messages not taken yet.
    pub fn max_queue(mut self, messages: usize) -> Self {
        self.max_queue = messages;
        self
    }

    /// Sets [`max_queue_bytes`](Self::max_queue_bytes).
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_queue_bytes = bytes;
        self
    }

    /// Sets the TLS options.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`compression`](Self::compression): a [`Deflate`] to offer permessage-deflate with
    /// those settings, or `None` not to offer it.
    ///
    /// ```
    /// use minch::{ConnectOptions, Deflate};
    ///
    /// let off = ConnectOptions::default().compression(None);
    /// assert!(off.compression.is_none());
    /// let small = ConnectOptions::default().compression(Deflate::default().client_max_window_bits(10));
    /// assert_eq!(small.compression.unwrap().client_max_window_bits, 10);
    /// ```
    pub fn compression(mut self, deflate: impl Into<Option<Deflate>>) -> Self {
        self.compression = deflate.into();
        self
    }

    /// Sets [`proxy`](Self::proxy): [`Proxy::url`] to go through that proxy, [`Proxy::None`]
    /// to connect directly, [`Proxy::FromEnvironment`] (the default) to follow the proxy
    /// environment variables.
    ///
    /// ```
    /// use minch::{ConnectOptions, Proxy};
    ///
    /// let options = ConnectOptions::default().proxy(Proxy::url("socks5h://127.0.0.1:1080"));
    /// assert_eq!(options.proxy, Proxy::url("socks5h://127.0.0.1:1080"));
    /// ```
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// The longest [`unix_socket`](Self::unix_socket) path, in bytes: what the operating
    /// system's socket address holds (107 on Linux, 103 on other Unixes).
    pub const MAX_UNIX_SOCKET_PATH: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

    /// Sets [`unix_socket`](Self::unix_socket): connect over the Unix domain socket at `path`,
    /// sending the URL's path and host in the request.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), minch::Error> {
    /// use minch::ConnectOptions;
    ///
    /// // The daemon listening on /run/app.sock serves WebSockets on /v1/events.
    /// let options = ConnectOptions::default().unix_socket("/run/app.sock");
    /// let (connection, frames) = minch::connect("ws://localhost/v1/events", Vec::<(String, String)>::new(), options).await?;
    /// # let _ = (connection, frames);
    /// # Ok(())
    /// # }
    /// ```
    pub fn unix_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.unix_socket = Some(path.into());
        self
    }

    /// Sets [`tcp_nodelay`](Self::tcp_nodelay): `false` lets the kernel coalesce small writes
    /// (Nagle's algorithm), trading latency for fewer packets.
    ///
    /// ```
    /// use minch::ConnectOptions;
    ///
    /// assert!(ConnectOptions::default().tcp_nodelay);
    /// let options = ConnectOptions::default().tcp_nodelay(false);
    /// assert!(!options.tcp_nodelay);
    /// ```
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Checks every setting against the range in its documentation, so that a bad value is a
    /// configuration error up front rather than a hang or a panic later (a zero
    /// `max_buffered_bytes` never lets the flush loop finish, a zero `ping_interval` fires its
    /// timer in a hot loop, a huge timeout overflows `Instant + Duration`).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        check_duration(
            "connect_timeout",
            self.connect_timeout,
            "the default is 10 s",
        )?;
        check_duration("tls_timeout", self.tls_timeout, "the default is 10 s")?;
        check_duration(
            "upgrade_timeout",
            self.upgrade_timeout,
            "the default is 10 s",
        )?;
        check_duration("close_timeout", self.close_timeout, "the default is 5 s")?;
        check_duration("pong_timeout", self.pong_timeout, "the default is 20 s")?;
        match self.ping_interval {
            Some(interval) => check_duration(
                "ping_interval",
                interval,
                "use None to turn keepalive off; the default is 20 s",
            )?,
            None if self.pong_timeout_explicit => return Err(Error::InvalidOptions(
                "pong_timeout has no effect without ping_interval; set ping_interval(Some(..)) \
                     to turn keepalive on, or do not set pong_timeout"
                    .into(),
            )),
            None => {}
        }
        if self.max_frame_size < MAX_CONTROL_PAYLOAD {
            return Err(Error::InvalidOptions(format!(
                "max_frame_size must be at least {MAX_CONTROL_PAYLOAD} bytes (got {}), so that \
                 control frames (up to {MAX_CONTROL_PAYLOAD} bytes, RFC 6455 §5.5) are always \
                 accepted; the default is 16 MiB",
                self.max_frame_size
            )));
        }
        if self.max_message_size == 0 {
            return Err(Error::InvalidOptions(
                "max_message_size must be at least 1 byte (got 0); the default is 64 MiB".into(),
            ));
        }
        if self.max_buffered_bytes == 0 {
            return Err(Error::InvalidOptions(
                "max_buffered_bytes must be at least 1 (got 0); the default is 16 MiB".into(),
            ));
        }
        if self.max_queue == 0 {
            return Err(Error::InvalidOptions(
                "max_queue must be at least 1 message (got 0); the default is 1024".into(),
            ));
        }
        if self.max_queue_bytes == 0 {
            return Err(Error::InvalidOptions(
                "max_queue_bytes must be at least 1 (got 0); the default is 16 MiB".into(),
            ));
        }
        if let Some(deflate) = &self.compression {
            deflate.validate()?;
        }
        #[cfg(feature = "tls")]
        self.tls.validate()?;
        if let Some(path) = &self.unix_socket {
            check_unix_socket(path)?;
        }
        self.validate_subprotocols()
    }

    /// Subprotocols must be distinct non-empty tokens (RFC 6455 §4.1). The messages name them
    /// by position only: some services carry a credential in a subprotocol.
    fn validate_subprotocols(&self) -> Result<(), Error> {
        for (i, protocol) in self.subprotocols.iter().enumerate() {
            if protocol.is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "subprotocols[{i}] is empty; a subprotocol must be a non-empty HTTP token"
                )));
            }
            if let Some(at) = protocol.find(|c: char| !is_tchar(c)) {
                return Err(Error::InvalidOptions(format!(
                    "subprotocols[{i}] has a character at byte {at} that is not allowed in an \
                     HTTP token; use only letters, digits and !#$%&'*+-.^_`|~"
                )));
            }
            if let Some(first) = self.subprotocols[..i].iter().position(|p| p == protocol) {
                return Err(Error::InvalidOptions(format!(
                    "subprotocols[{i}] is the same as subprotocols[{first}]; offer each \
                     subprotocol once"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
        }
    }
}

/// The largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// `duration` is in the range every duration setting shares: (0, [`ConnectOptions::MAX_DURATION`]].
fn check_duration(name: &str, duration: Duration, hint: &str) -> Result<(), Error> {
    if duration.is_zero() || duration > ConnectOptions::MAX_DURATION {
        return Err(Error::InvalidOptions(format!(
            "{name} must be more than zero and at most 24 h (got {duration:?}); {hint}"
        )));
    }
    Ok(())
}

/// RFC 7230 §3.2.6 `tchar`: the characters of an HTTP token.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_unix_socket(path: &std::path::Path) -> Result<(), Error> {
    if !cfg!(unix) {
        return Err(Error::InvalidOptions(
            "unix_socket is available on Unix only; connect over TCP on this system".into(),
        ));
    }
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(Error::InvalidOptions(
            "unix_socket must be a path, not empty; leave it None to connect over TCP".into(),
        ));
    }
    if len > ConnectOptions::MAX_UNIX_SOCKET_PATH {
        return Err(Error::InvalidOptions(format!(
            "unix_socket paths hold at most {} bytes on this system (got {len}); use a shorter \
             path, e.g. a symbolic link to the socket's directory",
            ConnectOptions::MAX_UNIX_SOCKET_PATH
        )));
    }
    Ok(())
}

/// Subprotocols are shown by number only: some services carry a credential in one (a bearer
/// token in Kubernetes' `base64url.bearer.authorization.k8s.io.*`), and the client logs its
/// options at debug level.
impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = f.debug_struct("ConnectOptions");
        shown
            .field("connect_timeout", &self.connect_timeout)
            .field("tls_timeout", &self.tls_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("subprotocols", &self.subprotocols.len())
            // An origin is a URL; like the request's, shown without credentials or query values.
            .field("origin", &self.origin.as_deref().map(redact_url))
            .field("max_frame_size", &self.max_frame_size)
            .field("max_message_size", &self.max_message_size)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("max_queue", &self.max_queue)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("compression", &self.compression)
            .field("proxy", &self.proxy)
            .field("unix_socket", &self.unix_socket)
            .field("tcp_nodelay", &self.tcp_nodelay);
        #[cfg(feature = "tls")]
        shown.field("tls", &self.tls);
        shown.finish()
    }
}

/// TLS settings for `wss://` URLs.
///
/// By default the server's certificate is verified against the bundled Mozilla root store
/// (`webpki-roots`). Add roots for a private CA with [`add_root_certificate`](Self::add_root_certificate)
/// or [`add_root_pem`](Self::add_root_pem), trust the operating system's roots as well with
/// [`native_roots`](Self::native_roots()), and present a client certificate to servers that ask
/// for one with [`client_certificate_pem`](Self::client_certificate_pem). For anything else
/// (a custom verifier, a certificate resolver, session resumption settings, another crypto
/// provider) build the `rustls::ClientConfig` yourself and give it with
/// [`client_config`](Self::client_config). Only for tests, turn verification off with
/// [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs).
///
/// Whatever the settings, minch offers ALPN `http/1.1` only: the WebSocket upgrade is an
/// HTTP/1.1 request.
///
/// Settings that cannot be used (a root or a client certificate that does not parse, a key
/// that does not match its certificate, a [`client_config`](Self::client_config) combined with
/// the settings it replaces) make connecting fail with
/// [`Error::InvalidOptions`](crate::Error::InvalidOptions), before any I/O.
///
/// Only with the `tls` feature (on by default), like [`ConnectOptions::tls`]: without it minch
/// speaks `ws://` only, so there is nothing to configure, and a `wss://` URL fails with
/// [`Error::TlsNotEnabled`](crate::Error::TlsNotEnabled).
///
/// ```
/// use minch::{ConnectOptions, TlsOptions};
///
/// let pem = std::fs::read_to_string("private-ca.pem").unwrap_or_default();
/// let options = ConnectOptions::default().tls(TlsOptions::default().add_root_pem(pem));
/// # let _ = options;
/// ```
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Extra trusted root certificates, DER-encoded, on top of the bundled roots.
    pub root_certificates: Vec<Vec<u8>>,
    /// Extra trusted roots given as PEM text (parsed when connecting).
    pub root_pems: Vec<String>,
    /// Accept any server certificate. Default: `false`.
    pub accept_invalid_certs: bool,
    /// Trust the operating system's root certificates too. Default: `false`. See
    /// [`native_roots`](Self::native_roots()).
    pub native_roots: bool,
    /// The client certificate and its key, parsed and checked when given. Never shown.
    pub(crate) client_certificate: Option<crate::tls::ClientCertificate>,
    /// A configuration of the user's, used as given (with ALPN `http/1.1`).
    pub(crate) client_config: Option<std::sync::Arc<rustls::ClientConfig>>,
}

#[cfg(feature = "tls")]
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

    /// Trusts the operating system's root certificates as well as the bundled Mozilla ones
    /// (and any added with [`add_root_certificate`](Self::add_root_certificate)): a company CA
    /// installed on the machine, for instance. Default: `false`.
    ///
    /// The store is read with the `rustls-native-certs` crate, once per process, on the first
    /// `wss://` connection that asks for it: on Linux and other Unixes the files OpenSSL would
    /// use (`SSL_CERT_FILE` and `SSL_CERT_DIR` override them), on macOS the keychain, on
    /// Windows the system store. Certificates that load are used even if part of the store
    /// cannot be read (logged at debug level); if none loads, minch logs a warning and trusts
    /// the bundled roots only.
    ///
    /// ```
    /// use minch::{ConnectOptions, TlsOptions};
    ///
    /// let options = ConnectOptions::default().tls(TlsOptions::default().native_roots(true));
    /// assert!(options.tls.native_roots);
    /// ```
    pub fn native_roots(mut self, trust: bool) -> Self {
        self.native_roots = trust;
        self
    }

    /// Presents a client certificate to servers that ask for one (mutual TLS).
    ///
    /// `chain_pem` holds the certificate, first, then any intermediates (`CERTIFICATE` blocks;
    /// other blocks are skipped). `key_pem` holds its private key: PKCS#8 (`PRIVATE KEY`),
    /// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), unencrypted; the first one found
    /// is used. One file holding both can be given for both.
    ///
    /// Both are parsed here and the key is checked against the certificate; what is wrong
    /// (no certificate, no key, a key that does not match, PEM that does not parse) is
    /// reported as [`Error::InvalidOptions`](crate::Error::InvalidOptions) when connecting,
    /// naming the part at fault and never quoting it. The key stays out of `Debug`, which
    /// shows only `client_certificate: true`.
    ///
    /// A server that wants a certificate and gets none, or one it does not trust, makes
    /// connecting fail with [`Error::Tls`](crate::Error::Tls).
    ///
    /// ```no_run
    /// use minch::{ConnectOptions, TlsOptions};
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let tls = TlsOptions::default().client_certificate_pem(
    ///     std::fs::read("client.pem")?,
    ///     std::fs::read("client.key")?,
    /// );
    /// let options = ConnectOptions::default().tls(tls);
    /// # let _ = options;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_certificate_pem(
        mut self,
        chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.client_certificate = Some(crate::tls::ClientCertificate::from_pem(
            chain_pem.as_ref(),
            key_pem.as_ref(),
        ));
        self
    }

    /// Uses a `rustls::ClientConfig` you built: a custom certificate verifier, a client
    /// certificate resolver, session resumption settings, another crypto provider.
    ///
    /// It is used as given, with one change: **its ALPN list is replaced by `http/1.1` alone**
    /// (on a copy; yours is not changed). The WebSocket upgrade is an HTTP/1.1 request, so a
    /// server that picked `h2` could not accept it; whether the list was empty, named `h2`
    /// only, or `h2` and `http/1.1`, minch offers `http/1.1`. A configuration shared with an
    /// HTTP/2 client therefore works as is. The copy shares the verifier, the client
    /// certificate resolver and the session store with yours.
    ///
    /// It replaces the other settings, so it cannot be combined with
    /// [`add_root_certificate`](Self::add_root_certificate),
    /// [`add_root_pem`](Self::add_root_pem), [`native_roots`](Self::native_roots()),
    /// [`client_certificate_pem`](Self::client_certificate_pem) or
    /// [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs): connecting with
    /// both fails with [`Error::InvalidOptions`](crate::Error::InvalidOptions), naming them. Put
    /// the roots and the client certificate in the configuration instead. Nothing is added to
    /// it: with no roots in it, no server is trusted.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use minch::{ConnectOptions, TlsOptions};
    /// use rustls::{ClientConfig, RootCertStore};
    ///
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    /// let mut config = ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()]; // minch offers http/1.1 only
    /// let options = ConnectOptions::default().tls(TlsOptions::default().client_config(Arc::new(config)));
    /// # let _ = options;
    /// ```
    pub fn client_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.client_config = Some(crate::tls::with_http11_alpn(config));
        self
    }

    /// Settings that cannot be used: a client certificate that did not load, or a
    /// `client_config` with the settings it replaces.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(problem) = self
            .client_certificate
            .as_ref()
            .and_then(|certificate| certificate.problem())
        {
            return Err(Error::InvalidOptions(problem.to_owned()));
        }
        if self.client_config.is_some() {
            let conflicts: Vec<&str> = [
                (!self.root_certificates.is_empty(), "add_root_certificate"),
                (!self.root_pems.is_empty(), "add_root_pem"),
                (self.native_roots, "native_roots"),
                (self.client_certificate.is_some(), "client_certificate_pem"),
                (self.accept_invalid_certs, "danger_accept_invalid_certs"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !conflicts.is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "TlsOptions::client_config is used as given, so it cannot be combined with {}; \
                     put the roots or the client certificate in the rustls ClientConfig instead",
                    conflicts.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Shows what is set, never a certificate or a key.
#[cfg(feature = "tls")]
impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field(
                "extra_roots",
                &(self.root_certificates.len() + self.root_pems.len()),
            )
            .field("native_roots", &self.native_roots)
            .field("client_certificate", &self.client_certificate.is_some())
            .field("client_config", &self.client_config.is_some())
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
            "wss://user:pass@example.com/feed?x=1&token=t0ken#frag",
            vec![("authorization", "Bearer s3cret")],
        )
            .into();
        let shown = format!("{request:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("s3cret"));
        assert!(!shown.contains("pass"));
        assert!(!shown.contains("t0ken"));
        assert!(!shown.contains("frag"));
        assert!(
            shown.contains("wss://example.com/feed?x=REDACTED&token=REDACTED#REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn debug_output_hides_subprotocols() {
        let options = ConnectOptions::default().subprotocol("bearer.s3cret");
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("subprotocols: 1"), "{shown}");
    }

    // ---- redact_url ----------------------------------------------------------------------

    #[test]
    fn redact_url_removes_userinfo_query_values_and_the_fragment() {
        for (url, shown) in [
            ("ws://example.com/feed", "ws://example.com/feed"),
            (
                "wss://user:pw@example.com:8443/a",
                "wss://example.com:8443/a",
            ),
            ("ws://@host/", "ws://host/"),
            ("ws://u:p@ss@host/x", "ws://host/x"),
            ("ws://host/users/@me", "ws://host/users/@me"),
            (
                "wss://host/feed?token=abc&v=2",
                "wss://host/feed?token=REDACTED&v=REDACTED",
            ),
            ("ws://host/?flag", "ws://host/?REDACTED"),
            ("ws://host/?flag&k=v", "ws://host/?REDACTED&k=REDACTED"),
            ("ws://host/?&k=v", "ws://host/?&k=REDACTED"),
            // A password with an unescaped delimiter.
            ("ws://admin:hun/ter2@host:1/p", "ws://host:1/p"),
            ("ws://admin:hunter2?x@host/p?k=v", "ws://REDACTED"),
            ("ws://admin:hun#ter2@host/p", "ws://REDACTED"),
            ("ws://host:8080/users/@me", "ws://host:8080/users/@me"),
            ("ws://[::1]:8080/users/@me", "ws://[::1]:8080/users/@me"),
            ("ws://host/?k=", "ws://host/?k="),
            ("ws://host/?k=a=b", "ws://host/?k=REDACTED"),
            ("ws://host/?ids[]=1", "ws://host/?ids[]=REDACTED"),
            ("ws://host/?", "ws://host/?"),
            ("ws://host/#", "ws://host/#"),
            ("ws://host/p#section", "ws://host/p#REDACTED"),
            ("ws://host/p?k=v#f?x=y", "ws://host/p?k=REDACTED#REDACTED"),
            ("ws://u:pw@host?k=v", "ws://host?k=REDACTED"),
            // Malformed: a `?` before `://` makes the rest query, where it is redacted.
            ("ws?x=1://user:pw@host/p", "ws?x=REDACTED"),
            ("ws?x://user:pw@host/p", "ws?REDACTED"),
            // Not a scheme before `://`: the userinfo is still found.
            ("u:pw@host://x", "host://x"),
            ("user:pw@host/path", "host/path"),
            ("//user:pw@host/path", "//host/path"),
            // Found by fuzz/validation: an empty or malformed scheme once showed the password.
            ("://user:pw@host/path", "://host/path"),
            (".wss://user:pw@host/path", ".wss://host/path"),
            ("w s://user:pw@host/path", "w s://host/path"),
            // …but a password may hold `://` too.
            ("u:pw://x@host/path", "host/path"),
            ("not a url", "not a url"),
            ("", ""),
            ("@", ""),
            ("://", "://"),
            (
                "ws://ü:pw@hôst/ä?ö=ü#ß",
                "ws://hôst/ä?REDACTED=REDACTED#REDACTED",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "redact_url({url:?})");
        }
    }

    mod redact_url_properties {
        use super::super::redact_url;
        use proptest::prelude::*;

        const SECRET: &str = "S3CR3T";

        /// Characters that matter to the redaction (delimiters of every URL part), some that do
        /// not, and non-ASCII ones, so that generated strings hit the byte-slicing edge cases.
        const TRICKY: &str = "[a-zA-Z0-9:/?#@&=%.~\\[\\] éü漢😀-]{0,12}";

        /// Like [`TRICKY`], without the delimiters that would end the part it is generated for.
        fn part(excluded: &str) -> impl Strategy<Value = String> {
            TRICKY.prop_map({
                let excluded = excluded.to_owned();
                move |s: String| s.chars().filter(|c| !excluded.contains(*c)).collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2000,
                // A failure is reported with its shrunk input; no regression files in src/.
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn never_panics(url in any::<String>(), tricky in TRICKY) {
                let _ = redact_url(&url);
                let _ = redact_url(&tricky);
            }

            /// A secret in the userinfo, in any query value or in the fragment never shows,
            /// whatever surrounds it. The secret is never part of a scheme, host, path or
            /// parameter name: those are shown on purpose.
            #[test]
            fn secrets_never_show(
                scheme in "[a-z][a-z0-9+.-]{0,5}",
                with_scheme in any::<bool>(),
                user in part("/?#:@"),
                // An unescaped `/`, `?`, `#` or `@` in the password is a common mistake.
                password_rest in part(""),
                host in part("/?#@"),
                path in part("?#"),
                names in proptest::collection::vec(part("=&#"), 0..4),
                values in proptest::collection::vec(part("&#"), 0..4),
                fragment in part(""),
                with_fragment in any::<bool>(),
            ) {
                let mut url = String::new();
                if with_scheme {
                    url.push_str(&scheme);
                    url.push_str("://");
                }
                url.push_str(&format!("{user}:{SECRET}{password_rest}@{host}/{path}"));
                for (i, (name, value)) in names.iter().zip(&values).enumerate() {
                    url.push(if i == 0 { '?' } else { '&' });
                    url.push_str(&format!("{name}={value}{SECRET}{value}"));
                }
                if with_fragment {
                    url.push_str(&format!("#{fragment}{SECRET}"));
                }
                let shown = redact_url(&url);
                prop_assert!(!shown.contains(SECRET), "{url:?} was shown as {shown:?}");
            }
        }
    }

    // ---- validate ------------------------------------------------------------------------

    const MAX: Duration = ConnectOptions::MAX_DURATION;

    /// The validation error's message, or None if the options are valid.
    fn problem(options: &ConnectOptions) -> Option<String> {
        match options.validate() {
            Ok(()) => None,
            Err(Error::InvalidOptions(message)) => Some(message),
            Err(other) => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_valid(options: ConnectOptions) {
        assert_eq!(problem(&options), None, "{options:?}");
    }

    #[track_caller]
    fn assert_invalid(options: ConnectOptions, mentions: &str) {
        let message = problem(&options).unwrap_or_else(|| panic!("accepted {options:?}"));
        assert!(message.contains(mentions), "{message:?} names {mentions:?}");
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_valid(ConnectOptions::default());
        assert_eq!(MAX, Duration::from_secs(86_400));
    }

    #[test]
    fn every_timeout_is_more_than_zero_and_at_most_a_day() {
        type Set = fn(ConnectOptions, Duration) -> ConnectOptions;
        let timeouts: [(&str, Set); 5] = [
            ("connect_timeout", ConnectOptions::connect_timeout),
            ("tls_timeout", ConnectOptions::tls_timeout),
            ("upgrade_timeout", ConnectOptions::upgrade_timeout),
            ("close_timeout", ConnectOptions::close_timeout),
            ("pong_timeout", ConnectOptions::pong_timeout),
        ];
        for (name, set) in timeouts {
            let with = |d: Duration| set(ConnectOptions::default(), d);
            assert_invalid(with(Duration::ZERO), name);
            assert_invalid(
                with(Duration::ZERO),
                "more than zero and at most 24 h (got 0ns)",
            );
            assert_valid(with(Duration::from_nanos(1)));
            assert_valid(with(Duration::from_millis(1)));
            assert_valid(with(MAX));
            assert_invalid(with(MAX + Duration::from_nanos(1)), name);
            assert_invalid(with(Duration::MAX), name);
        }
    }

    #[test]
    fn timeouts_set_through_the_fields_are_checked_too() {
        // As a caller outside the crate would: a builder, then a field (the struct is
        // non-exhaustive, so no struct literal).
        let mut options = ConnectOptions::default().origin("https://example.com");
        options.close_timeout = Duration::ZERO;
        assert_invalid(options, "close_timeout");
    }

    #[test]
    fn ping_interval_is_none_or_more_than_zero_and_at_most_a_day() {
        let with = |d: Option<Duration>| ConnectOptions::default().ping_interval(d);
        assert_valid(with(None));
        assert_invalid(with(Some(Duration::ZERO)), "ping_interval");
        assert_invalid(with(Some(Duration::ZERO)), "use None to turn keepalive off");
        assert_valid(with(Some(Duration::from_nanos(1))));
        assert_valid(with(Some(Duration::from_millis(1))));
        assert_valid(with(Some(MAX)));
        assert_invalid(with(Some(MAX + Duration::from_nanos(1))), "ping_interval");
        assert_invalid(with(Some(Duration::MAX)), "ping_interval");
    }

    #[test]
    fn an_explicit_pong_timeout_needs_a_ping_interval() {
        let pong = Duration::from_secs(3);
        let expected = "pong_timeout has no effect without ping_interval";
        // In either order of the builder calls.
        assert_invalid(
            ConnectOptions::default()
                .ping_interval(None)
                .pong_timeout(pong),
            expected,
        );
        assert_invalid(
            ConnectOptions::default()
                .pong_timeout(pong)
                .ping_interval(None),
            expected,
        );
        // The default pong_timeout is no mistake, nor is an explicit one with pings on.
        assert_valid(ConnectOptions::default().ping_interval(None));
        assert_valid(ConnectOptions::default().pong_timeout(pong));
        assert_valid(
            ConnectOptions::default()
                .pong_timeout(pong)
                .ping_interval(Some(Duration::from_secs(1))),
        );
        // Explicitness survives a clone.
        let options = ConnectOptions::default()
            .ping_interval(None)
            .pong_timeout(pong);
        assert_invalid(options.clone(), expected);
    }

    #[test]
    fn max_frame_size_is_at_least_a_control_frame() {
        let with = |n: usize| ConnectOptions::default().max_frame_size(n);
        assert_invalid(with(0), "max_frame_size must be at least 125 bytes (got 0)");
        assert_invalid(
            with(124),
            "max_frame_size must be at least 125 bytes (got 124)",
        );
        assert_valid(with(125));
        assert_valid(with(usize::MAX));
    }

    #[test]
    fn max_message_size_is_at_least_one_byte() {
        let with = |n: usize| ConnectOptions::default().max_message_size(n);
        assert_invalid(with(0), "max_message_size must be at least 1 byte (got 0)");
        assert_valid(with(1));
        assert_valid(with(usize::MAX));
    }

    #[test]
    fn max_buffered_bytes_is_at_least_one() {
        let with = |n: usize| ConnectOptions::default().max_buffered_bytes(n);
        assert_invalid(with(0), "max_buffered_bytes must be at least 1 (got 0)");
        assert_valid(with(1));
        assert_valid(with(usize::MAX));
    }

    #[test]
    fn the_receive_queue_holds_at_least_one_message_and_one_byte() {
        let messages = |n: usize| ConnectOptions::default().max_queue(n);
        assert_invalid(messages(0), "max_queue must be at least 1 message (got 0)");
        assert_valid(messages(1));
        assert_valid(messages(usize::MAX));
        let bytes = |n: usize| ConnectOptions::default().max_queue_bytes(n);
        assert_invalid(bytes(0), "max_queue_bytes must be at least 1 (got 0)");
        assert_valid(bytes(1));
        assert_valid(bytes(usize::MAX));
    }

    #[test]
    fn subprotocols_are_distinct_tokens() {
        let with = |protocols: &[&str]| {
            protocols
                .iter()
                .fold(ConnectOptions::default(), |o, p| o.subprotocol(*p))
        };
        assert_valid(with(&[]));
        assert_valid(with(&["chat"]));
        assert_valid(with(&["v1.chat", "v2.chat"]));
        assert_valid(with(&["!#$%&'*+-.^_`|~09AZaz"]));
        // Tokens are compared exactly (RFC 6455 §4.1 asks for unique strings).
        assert_valid(with(&["chat", "Chat"]));
        assert_invalid(with(&[""]), "subprotocols[0] is empty");
        assert_invalid(with(&["chat", ""]), "subprotocols[1] is empty");
        for bad in [
            "a b", "a,b", "a/b", "\"a\"", "a;b", "é", "a\r\nb", "(a)", "a\u{7f}",
        ] {
            let message = problem(&with(&[bad])).unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(message.contains("subprotocols[0]"), "{message}");
            assert!(message.contains("HTTP token"), "{message}");
        }
        assert_invalid(
            with(&["chat", "v2", "chat"]),
            "subprotocols[2] is the same as subprotocols[0]",
        );
    }

    #[test]
    fn subprotocol_errors_do_not_echo_the_value() {
        // Some services put a credential in a subprotocol.
        let secret = "bearer.s3cret token";
        let message = problem(&ConnectOptions::default().subprotocol(secret)).unwrap();
        assert!(!message.contains("s3cret"), "{message}");
        let twice = ConnectOptions::default()
            .subprotocol("s3cret")
            .subprotocol("s3cret");
        let message = problem(&twice).unwrap();
        assert!(!message.contains("s3cret"), "{message}");
    }
}
