//! How minch reaches the server: the TCP connection, then TLS for `wss://`, handed to awc as
//! one ready stream for the HTTP upgrade.
//!
//! minch opens the stream itself, at the seam awc leaves for a TCP connector, for two reasons:
//! each step gets its own timeout and its own error (awc has one timeout, and one error for
//! the TCP and the TLS step alike), and minch sees the plaintext of the server's answer. awc
//! keeps only the status of a refused upgrade; the stream keeps what the server sent until the
//! upgrade is over, and hands the socket back when awc drops it, so that the rest of the body
//! can be read (see [`Handshake::rejection`]).

use std::{
    cell::{Cell, RefCell},
    fmt, io,
    pin::Pin,
    rc::Rc,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    StatusCode, Uri,
};
use bytes::{Bytes, BytesMut};
use futures_util::future::{poll_fn, LocalBoxFuture};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    error::{ProxyError, Rejection, Timeout},
    proxy::{open_tunnel, ProxyEndpoint, ProxyTls},
    Error,
};

/// The most of a refused upgrade's body that is kept.
pub const MAX_REJECTED_BODY: usize = 64 * 1024;

/// The most of the server's answer that is recorded while awc reads it: a generous head (awc's
/// own limit on a response head is lower) and the body minch keeps.
const MAX_RECORDED: usize = 128 * 1024 + MAX_REJECTED_BODY;

/// The longest chunk-size line (with extensions) a chunked body may have.
const MAX_CHUNK_LINE: usize = 1024;

/// The byte stream to the server: TCP (perhaps a tunnel through a proxy), a tunnel through an
/// `https://` proxy (TLS with the proxy), or a Unix socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    ProxyTls(Box<actix_tls::connect::rustls_0_23::reexports::AsyncTlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(actix_rt::net::UnixStream),
}

/// The stream under the WebSocket: the socket, or TLS over it.
enum Io {
    Plain(Socket),
    #[cfg(feature = "tls")]
    Tls(Box<actix_tls::connect::rustls_0_23::reexports::AsyncTlsStream<Socket>>),
}

/// Implements the tokio I/O traits of an enum by calling its variants' own.
macro_rules! delegate_io {
    ($type:ty, $($(#[$attr:meta])* $variant:pat => $stream:ident),+ $(,)?) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() { $($(#[$attr])* $variant => Pin::new($stream).poll_read(cx, buf)),+ }
            }
        }

        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($(#[$attr])* $variant => Pin::new($stream).poll_write(cx, buf)),+ }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($(#[$attr])* $variant => Pin::new($stream).poll_write_vectored(cx, bufs)),+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self { $($(#[$attr])* $variant => $stream.is_write_vectored()),+ }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($(#[$attr])* $variant => Pin::new($stream).poll_flush(cx)),+ }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($(#[$attr])* $variant => Pin::new($stream).poll_shutdown(cx)),+ }
            }
        }
    };
}

delegate_io!(
    Socket,
    Socket::Tcp(tcp) => tcp,
    #[cfg(feature = "tls")]
    Socket::ProxyTls(tls) => tls,
    #[cfg(unix)]
    Socket::Unix(unix) => unix,
);
delegate_io!(
    Io,
    Io::Plain(socket) => socket,
    #[cfg(feature = "tls")]
    Io::Tls(tls) => tls,
);

impl actix_rt::net::ActixStream for Socket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<actix_rt::net::Ready>> {
        match self {
            Socket::Tcp(tcp) => actix_rt::net::ActixStream::poll_read_ready(tcp, cx),
            #[cfg(feature = "tls")]
            Socket::ProxyTls(tls) => {
                actix_rt::net::ActixStream::poll_read_ready(tls.get_ref().0, cx)
            }
            #[cfg(unix)]
            Socket::Unix(unix) => actix_rt::net::ActixStream::poll_read_ready(unix, cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<actix_rt::net::Ready>> {
        match self {
            Socket::Tcp(tcp) => actix_rt::net::ActixStream::poll_write_ready(tcp, cx),
            #[cfg(feature = "tls")]
            Socket::ProxyTls(tls) => {
                actix_rt::net::ActixStream::poll_write_ready(tls.get_ref().0, cx)
            }
            #[cfg(unix)]
            Socket::Unix(unix) => actix_rt::net::ActixStream::poll_write_ready(unix, cx),
        }
    }
}

/// What one connection attempt learns below awc: when the stream was ready, why it could not
/// be opened, and, until the upgrade is over, what the server sent.
#[derive(Default)]
pub(crate) struct Handshake {
    ready_at: Cell<Option<Instant>>,
    ready_tx: RefCell<Option<tokio::sync::oneshot::Sender<Instant>>>,
    failure: RefCell<Option<Error>>,
    over: Cell<bool>,
    recorded: RefCell<Vec<u8>>,
    returned: RefCell<Option<Io>>,
}

impl Handshake {
    /// A new attempt, and the moment its stream is ready (TCP up, and TLS for `wss://`).
    pub(crate) fn new() -> (Rc<Self>, tokio::sync::oneshot::Receiver<Instant>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handshake = Self::default();
        *handshake.ready_tx.borrow_mut() = Some(tx);
        (Rc::new(handshake), rx)
    }

    /// When the stream was ready, if it was.
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        self.ready_at.get()
    }

    /// Whether the stream was ready (so a timeout since is the upgrade's).
    pub(crate) fn was_ready(&self) -> bool {
        self.ready_at.get().is_some()
    }

    /// The error the connector met, more precise than what awc makes of it.
    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure.borrow_mut().take()
    }

    /// The upgrade succeeded: stop recording and let the recording go.
    pub(crate) fn finish(&self) {
        self.over.set(true);
        *self.recorded.borrow_mut() = Vec::new();
        self.returned.borrow_mut().take();
    }

    fn fail(&self, error: Error, kind: io::ErrorKind) -> ConnectError {
        let message = error.to_string();
        *self.failure.borrow_mut() = Some(error);
        ConnectError::Io(io::Error::new(kind, message))
    }

    /// An error reading the stream before the upgrade is over. With TLS 1.3 the
    /// client's side of the handshake is done before the server has checked the client's
    /// certificate: a server that refuses it says so with an alert that arrives while awc
    /// waits for the upgrade's answer. That is a TLS failure, not an I/O error.
    #[cfg(feature = "tls")]
    fn tls_error(&self, error: &io::Error) {
        if self.over.get() || self.failure.borrow().is_some() {
            return;
        }
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            *self.failure.borrow_mut() = Some(Error::Tls(crate::tls::describe(tls)));
        }
    }

    fn ready(&self) {
        let now = Instant::now();
        self.ready_at.set(Some(now));
        if let Some(tx) = self.ready_tx.borrow_mut().take() {
            let _ = tx.send(now);
        }
    }

    fn record(&self, bytes: &[u8]) {
        let mut recorded = self.recorded.borrow_mut();
        let room = MAX_RECORDED.saturating_sub(recorded.len());
        recorded.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// awc refused the upgrade with `status`: the headers and up to [`MAX_REJECTED_BODY`]
    /// bytes of the body, reading the rest of the body from the socket until `deadline`.
    pub(crate) async fn rejection(&self, status: StatusCode, deadline: Instant) -> Rejection {
        self.over.set(true);
        let arrived = Instant::now();
        let recorded = std::mem::take(&mut *self.recorded.borrow_mut());
        let io = self.returned.borrow_mut().take();
        let Some(head) = parse_head(&recorded) else {
            // awc parsed a head from these bytes; this cannot be, but a status is still news.
            return Rejection::received(HeaderMap::new(), Bytes::new(), false);
        };
        let mut body = BodyReader::new(status, &head.headers);
        let mut done = body.feed(&recorded[head.len..]);
        // Time spent waiting for the body, not counted in a Retry-After given in seconds.
        let mut waited = Duration::ZERO;
        if let (false, Some(mut io)) = (done, io) {
            let mut buf = vec![0; 16 * 1024];
            let reading = async {
                while !done {
                    let mut read_buf = ReadBuf::new(&mut buf);
                    match poll_fn(|cx| Pin::new(&mut io).poll_read(cx, &mut read_buf)).await {
                        Ok(()) if read_buf.filled().is_empty() => return body.end_of_stream(),
                        Ok(()) => done = body.feed(read_buf.filled()),
                        Err(_) => return,
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = actix_rt::time::timeout(left, reading).await;
            waited = arrived.elapsed();
        }
        let complete = body.is_complete();
        Rejection::received(head.headers, body.into_body(), complete).arrived_ago(waited)
    }
}

/// The rejection minch reports for a refused upgrade whose bytes arrive in reads of the given
/// sizes (cycled) and then end: the headers, the body kept and whether it is complete.
#[cfg(fuzzing)]
pub(crate) fn rejection_from_reads(
    status: StatusCode,
    bytes: &[u8],
    reads: &[usize],
) -> Option<(HeaderMap, Bytes, bool)> {
    let head = parse_head(bytes)?;
    let mut body = BodyReader::new(status, &head.headers);
    let mut rest = &bytes[head.len..];
    let mut sizes = reads.iter().map(|&size| size.max(1)).cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        if body.feed(&rest[..size]) {
            return Some((head.headers, body.body.clone().freeze(), body.is_complete()));
        }
        rest = &rest[size..];
    }
    body.end_of_stream();
    let complete = body.is_complete();
    Some((head.headers, body.into_body(), complete))
}

/// A parsed response head: its headers and its length in bytes.
struct Head {
    headers: HeaderMap,
    len: usize,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut slots);
    // As awc's parser (actix-http) is configured: a head awc accepted parses here too.
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let httparse::Status::Complete(len) = config.parse_response(&mut response, bytes).ok()? else {
        return None;
    };
    let mut headers = HeaderMap::new();
    for parsed in response.headers.iter() {
        let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(parsed.name.as_bytes()),
            HeaderValue::from_bytes(parsed.value),
        ) else {
            continue;
        };
        // A cookie or credential the server set stays out of any `Debug` output.
        if name == header::SET_COOKIE || name == header::WWW_AUTHENTICATE {
            value.set_sensitive(true);
        }
        headers.append(name, value);
    }
    Some(Head { headers, len })
}

/// The body of a refused upgrade, as its framing says (RFC 9112 §6.3), keeping the first
/// [`MAX_REJECTED_BODY`] bytes.
struct BodyReader {
    framing: Framing,
    body: BytesMut,
    /// Bytes of the body were left out (over the limit).
    cut: bool,
}

enum Framing {
    /// No body, or all of it read.
    Done,
    /// This many bytes still to come.
    Length(u64),
    /// Chunked: the undecoded rest, and the bytes left in the current chunk.
    Chunked { pending: Vec<u8>, in_chunk: u64 },
    /// Until the server closes.
    UntilClose,
}

impl BodyReader {
    fn new(status: StatusCode, headers: &HeaderMap) -> Self {
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.to_ascii_lowercase().contains("chunked"));
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if chunked {
            Framing::Chunked {
                pending: Vec::new(),
                in_chunk: 0,
            }
        } else {
            match length {
                Some(0) => Framing::Done,
                Some(length) => Framing::Length(length),
                None => Framing::UntilClose,
            }
        };
        Self {
            framing,
            body: BytesMut::new(),
            cut: false,
        }
    }

    fn keep(body: &mut BytesMut, cut: &mut bool, bytes: &[u8]) {
        let room = MAX_REJECTED_BODY - body.len();
        *cut |= bytes.len() > room;
        body.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Takes more bytes; true once nothing more is wanted: the body is complete, or as much
    /// of it as is kept has been read.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        match &mut self.framing {
            Framing::Done => {}
            Framing::Length(left) => {
                let take = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                Self::keep(&mut self.body, &mut self.cut, &bytes[..take]);
                *left -= take as u64;
                if *left == 0 {
                    self.framing = Framing::Done;
                }
            }
            Framing::UntilClose => Self::keep(&mut self.body, &mut self.cut, bytes),
            Framing::Chunked { pending, in_chunk } => {
                pending.extend_from_slice(bytes);
                let mut at = 0;
                loop {
                    if *in_chunk > 0 {
                        let take = (pending.len() - at)
                            .min(usize::try_from(*in_chunk).unwrap_or(usize::MAX));
                        Self::keep(&mut self.body, &mut self.cut, &pending[at..at + take]);
                        at += take;
                        *in_chunk -= take as u64;
                        if *in_chunk > 0 {
                            break;
                        }
                        continue;
                    }
                    // A chunk's size line, after the previous chunk's CRLF if any.
                    let rest = &pending[at..];
                    let rest_start = usize::from(rest.starts_with(b"\r\n")) * 2;
                    let line = &rest[rest_start..];
                    let line_end = line.windows(2).position(|w| w == b"\r\n");
                    // Too long for a chunk-size line, whether or not its end has come (a CRLF
                    // starting past the limit is all it could still be).
                    if line_end.map_or(line.len() > MAX_CHUNK_LINE + 1, |end| end > MAX_CHUNK_LINE)
                    {
                        self.cut = true;
                        self.framing = Framing::Done;
                        return true;
                    }
                    let Some(line_end) = line_end else {
                        break;
                    };
                    let line = &rest[rest_start..rest_start + line_end];
                    let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size_text)
                        .ok()
                        .and_then(|text| u64::from_str_radix(text.trim(), 16).ok());
                    match size {
                        Some(0) => {
                            self.framing = Framing::Done;
                            return true;
                        }
                        Some(size) => {
                            at += rest_start + line_end + 2;
                            *in_chunk = size;
                        }
                        // Not chunked after all: what was decoded is what there is.
                        None => {
                            self.cut = true;
                            self.framing = Framing::Done;
                            return true;
                        }
                    }
                }
                pending.drain(..at);
            }
        }
        matches!(self.framing, Framing::Done) || self.cut
    }

    /// The server closed: that ends a body that runs until the close.
    fn end_of_stream(&mut self) {
        if matches!(self.framing, Framing::UntilClose) && !self.cut {
            self.framing = Framing::Done;
        }
    }

    /// Whether all of the body arrived and was kept.
    fn is_complete(&self) -> bool {
        matches!(self.framing, Framing::Done) && !self.cut
    }

    fn into_body(self) -> Bytes {
        self.body.freeze()
    }
}

/// The stream awc gets: the connection, and until the upgrade is over, a record of what the
/// server sent, handed back with the connection if awc drops it.
pub(crate) struct Stream {
    io: Option<Io>,
    handshake: Option<Rc<Handshake>>,
    /// Until the final answer to the upgrade begins: interim answers are taken out.
    interim: Option<InterimAnswers>,
}

/// What the server sent before its final answer to the upgrade, with interim (1xx) answers
/// taken out: RFC 9110 §15.2 has clients skip any number of them (`103 Early Hints`, say), and
/// awc would take the first for the answer.
#[derive(Default)]
struct InterimAnswers {
    /// Bytes read and not handed on yet.
    pending: Vec<u8>,
    /// The final answer begins at the start of `pending`: hand it all on.
    final_answer: bool,
}

/// The longest interim answer looked for; anything longer is handed on as it is.
const MAX_INTERIM_ANSWER: usize = 16 * 1024;

impl InterimAnswers {
    /// Takes out the interim answers at the start of `pending`; sets `final_answer` once what
    /// starts it is something else (a final answer, or bytes that are no answer at all).
    fn skip_interim(&mut self) {
        while !self.final_answer {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut answer = httparse::Response::new(&mut headers);
            let parsed = answer.parse(&self.pending);
            let interim = answer
                .code
                .is_some_and(|code| (100..200).contains(&code) && code != 101);
            match parsed {
                Ok(httparse::Status::Complete(len)) if interim => {
                    log::debug!("skipped an interim answer {:?}", answer.code);
                    self.pending.drain(..len);
                }
                // Not all here yet: wait for more, unless it is not an interim answer.
                Ok(httparse::Status::Partial)
                    if (interim || answer.code.is_none())
                        && self.pending.len() < MAX_INTERIM_ANSWER =>
                {
                    return
                }
                _ => self.final_answer = true,
            }
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("minch::Stream")
    }
}

impl Stream {
    /// Reads until the final answer to the upgrade begins, taking interim answers out, then
    /// hands on what was read; from then on, reads as they come.
    fn poll_read_past_interim_answers(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let interim = self
                .interim
                .as_mut()
                .expect("called while looking for interim answers");
            if interim.final_answer {
                let handed = interim.pending.len().min(buf.remaining());
                buf.put_slice(&interim.pending[..handed]);
                interim.pending.drain(..handed);
                if interim.pending.is_empty() {
                    self.interim = None;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(self.io().poll_read(cx, &mut read))?;
            let interim = self
                .interim
                .as_mut()
                .expect("called while looking for interim answers");
            if read.filled().is_empty() {
                // The end: whatever came is handed on, then the end itself.
                interim.final_answer = true;
                if interim.pending.is_empty() {
                    self.interim = None;
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            interim.pending.extend_from_slice(read.filled());
            interim.skip_interim();
        }
    }

    fn io(&mut self) -> Pin<&mut Io> {
        Pin::new(
            self.io
                .as_mut()
                .expect("the stream is only taken when dropped"),
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(handshake) = self.handshake.take() {
            if !handshake.over.get() {
                // Read and not handed to awc: the rest of the answer starts with these.
                if let Some(interim) = &self.interim {
                    handshake.record(&interim.pending);
                }
                *handshake.returned.borrow_mut() = self.io.take();
            }
        }
    }
}

// awc asks its connector for an `ActixStream`; readiness is the socket's.
impl actix_rt::net::ActixStream for Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<actix_rt::net::Ready>> {
        match &self.io {
            Some(Io::Plain(socket)) => socket.poll_read_ready(cx),
            #[cfg(feature = "tls")]
            Some(Io::Tls(tls)) => tls.get_ref().0.poll_read_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<actix_rt::net::Ready>> {
        match &self.io {
            Some(Io::Plain(socket)) => socket.poll_write_ready(cx),
            #[cfg(feature = "tls")]
            Some(Io::Tls(tls)) => tls.get_ref().0.poll_write_ready(cx),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match this.interim {
            Some(_) => this.poll_read_past_interim_answers(cx, buf),
            None => this.io().poll_read(cx, buf),
        };
        if let Some(handshake) = &this.handshake {
            if handshake.over.get() {
                this.handshake = None;
            } else {
                handshake.record(&buf.filled()[before..]);
                #[cfg(feature = "tls")]
                if let Poll::Ready(Err(error)) = &poll {
                    handshake.tls_error(error);
                }
            }
        }
        poll
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(Io::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

/// The connector awc calls for every connection: TCP within `connect_timeout`, then TLS within
/// `tls_timeout` when `tls` is set.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: ConnectorService,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls_timeout: Duration,
    route: Route,
    proxy_tls: ProxyTls,
    handshake: Rc<Handshake>,
    nodelay: bool,
}

/// Where the connection goes: to the URL's host, through a proxy, or to a Unix socket.
#[derive(Clone)]
enum Route {
    Direct,
    Proxy(Rc<ProxyEndpoint>),
    #[cfg(unix)]
    Unix(Rc<std::path::Path>),
}

/// Why the connection could not be opened: as awc's connector says it (direct connections, where
/// awc's own classification applies), or as minch says it (through a proxy).
enum Failed {
    Tcp(ConnectError),
    Minch(Error),
}

impl Connector {
    pub(crate) fn new(
        handshake: Rc<Handshake>,
        connect_timeout: Duration,
        tls_timeout: Duration,
    ) -> Self {
        Self {
            tcp: ConnectorService::default(),
            #[cfg(feature = "tls")]
            tls: None,
            connect_timeout,
            tls_timeout,
            route: Route::Direct,
            proxy_tls: None,
            handshake,
            nodelay: true,
        }
    }

    /// Whether TCP connections (to the server or to the proxy) get `TCP_NODELAY`.
    pub(crate) fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Sets `TCP_NODELAY` as asked. A socket that refuses is still usable, only slower for
    /// small frames, so that is logged rather than failing the connection.
    fn configure(&self, tcp: &TcpStream) {
        if let Err(error) = tcp.set_nodelay(self.nodelay) {
            log::warn!("could not set TCP_NODELAY to {}: {error}", self.nodelay);
        }
    }

    /// Through this proxy: TCP to the proxy, then a tunnel to the URL's host, both within
    /// `connect_timeout`.
    pub(crate) fn proxy(mut self, proxy: ProxyEndpoint) -> Self {
        self.route = Route::Proxy(Rc::new(proxy));
        self
    }

    /// TLS with an `https://` proxy.
    #[cfg(feature = "tls")]
    pub(crate) fn proxy_tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.proxy_tls = Some(config);
        self
    }

    /// To the Unix socket at `path` instead of the URL's host, within `connect_timeout`.
    #[cfg(unix)]
    pub(crate) fn unix_socket(mut self, path: &std::path::Path) -> Self {
        self.route = Route::Unix(Rc::from(path));
        self
    }

    /// TLS over the TCP connection, checked against the URL's host.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

impl Service<ConnectInfo<Uri>> for Connector {
    type Response = Connection<Uri, Stream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let handshake = &this.handshake;
            let connecting = async {
                let tcp = |connection: Connection<Uri, TcpStream>| {
                    let (tcp, connection) = connection.replace_io(());
                    this.configure(&tcp);
                    connection.replace_io(Socket::Tcp(tcp)).1
                };
                match &this.route {
                    Route::Direct => this.tcp.call(request).await.map(tcp).map_err(Failed::Tcp),
                    Route::Proxy(proxy) => this.tunnel(proxy, request).await.map_err(Failed::Minch),
                    #[cfg(unix)]
                    Route::Unix(path) => match connect_unix(path).await {
                        Ok(unix) => Ok(Connection::new(
                            request.request().clone(),
                            Socket::Unix(unix),
                        )),
                        Err(error) => Err(Failed::Minch(Error::unix_connect(path, &error))),
                    },
                }
            };
            let tcp = match actix_rt::time::timeout(this.connect_timeout, connecting).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(Failed::Tcp(error))) => return Err(error),
                Ok(Err(Failed::Minch(error))) => {
                    return Err(handshake.fail(error, io::ErrorKind::ConnectionRefused))
                }
                Err(_) => {
                    let error = Error::Timeout(Timeout::Connect);
                    return Err(handshake.fail(error, io::ErrorKind::TimedOut));
                }
            };
            #[cfg(feature = "tls")]
            let connection = match &this.tls {
                Some(config) => {
                    let tls =
                        actix_tls::connect::rustls_0_23::TlsConnector::service(config.clone());
                    // The name TLS checks is the URL's host without the brackets of an IPv6
                    // literal: rustls takes `::1` as an address, and `[::1]` as no name at all.
                    let (socket, origin) = tcp.into_parts();
                    let server_name =
                        TlsServerName(bare_host(origin.host().unwrap_or_default()).to_owned());
                    let tcp = Connection::new(server_name, socket);
                    match actix_rt::time::timeout(this.tls_timeout, tls.call(tcp)).await {
                        Ok(Ok(connection)) => {
                            let (io, _) = connection.into_parts();
                            Connection::new(origin, Io::Tls(Box::new(io)))
                        }
                        Ok(Err(error)) => {
                            let kind = error.kind();
                            let error = crate::tls::handshake_failure(&error);
                            return Err(handshake.fail(error, kind));
                        }
                        Err(_) => {
                            let error = Error::Timeout(Timeout::Tls);
                            return Err(handshake.fail(error, io::ErrorKind::TimedOut));
                        }
                    }
                }
                None => {
                    let (io, connection) = tcp.replace_io(());
                    connection.replace_io(Io::Plain(io)).1
                }
            };
            #[cfg(not(feature = "tls"))]
            let connection = {
                let (io, connection) = tcp.replace_io(());
                connection.replace_io(Io::Plain(io)).1
            };
            handshake.ready();
            let (io, connection) = connection.replace_io(());
            let stream = Stream {
                io: Some(io),
                handshake: Some(handshake.clone()),
                interim: Some(InterimAnswers::default()),
            };
            Ok(connection.replace_io(stream).1)
        })
    }
}

/// Connects to the Unix socket at `path`. A listener whose backlog is full answers at once
/// (`EAGAIN`, where TCP would wait for room): that is retried, a little later each time, for as
/// long as the caller's `connect_timeout` lets it.
#[cfg(unix)]
async fn connect_unix(path: &std::path::Path) -> io::Result<actix_rt::net::UnixStream> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match actix_rt::net::UnixStream::connect(path).await {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                actix_rt::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// A host as a URL spells it, without the brackets around an IPv6 literal.
pub(crate) fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

/// The name a TLS connection is checked against (a DNS name or an IP address, bare).
#[cfg(feature = "tls")]
struct TlsServerName(String);

#[cfg(feature = "tls")]
impl actix_tls::connect::Host for TlsServerName {
    fn hostname(&self) -> &str {
        &self.0
    }
}

impl Connector {
    /// TCP to the proxy and a tunnel through it to the host `request` names; the connection
    /// comes back as if made to that host, so TLS checks the host's name.
    async fn tunnel(
        &self,
        proxy: &ProxyEndpoint,
        request: ConnectInfo<Uri>,
    ) -> Result<Connection<Uri, Socket>, Error> {
        let unreachable = |reason: String| Error::Proxy {
            proxy: proxy.shown(),
            error: ProxyError::Unreachable(reason),
        };
        let to_proxy = self
            .tcp
            .call(ConnectInfo::new(proxy.clone()))
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let (tcp, _) = to_proxy.into_parts();
        self.configure(&tcp);
        let host = bare_host(request.hostname());
        log::debug!(
            "opening a tunnel through {} to port {}",
            proxy.shown(),
            request.port()
        );
        let tunnel = open_tunnel(proxy, tcp, &self.proxy_tls, host, request.port()).await?;
        Ok(Connection::new(request.request().clone(), tunnel))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reader(headers: &[(&str, &str)]) -> BodyReader {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        BodyReader::new(StatusCode::SERVICE_UNAVAILABLE, &map)
    }

    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            wire.extend_from_slice(format!("{size:x};x=y\r\n").as_bytes());
            wire.extend_from_slice(&rest[..size]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    /// What a server's bytes become once interim answers are taken out, fed in pieces of the
    /// given sizes (cycled), as the stream reads them.
    fn past_interim_answers(wire: &[u8], pieces: &[usize]) -> Vec<u8> {
        let mut interim = InterimAnswers::default();
        let mut rest = wire;
        let mut sizes = pieces.iter().cycle();
        while !interim.final_answer && !rest.is_empty() {
            let size = (*sizes.next().unwrap()).clamp(1, rest.len());
            interim.pending.extend_from_slice(&rest[..size]);
            rest = &rest[size..];
            interim.skip_interim();
        }
        let mut out = interim.pending;
        out.extend_from_slice(rest);
        out
    }

    #[test]
    fn only_interim_answers_are_taken_out() {
        let hints = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
        let upgrade = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x01\x02hi";
        let wire = format!("{hints}HTTP/1.1 100 Continue\r\n\r\n{hints}{upgrade}");
        assert_eq!(
            past_interim_answers(wire.as_bytes(), &[7]),
            upgrade.as_bytes()
        );
        // A final answer, or what is no answer at all, is handed on as it is.
        let refused = "HTTP/1.1 503 Busy\r\nRetry-After: 2\r\n\r\nbody";
        assert_eq!(
            past_interim_answers(refused.as_bytes(), &[3]),
            refused.as_bytes()
        );
        assert_eq!(
            past_interim_answers(b"SSH-2.0-x\r\n", &[2]),
            b"SSH-2.0-x\r\n"
        );
        // An interim answer too long to be one is handed on too (awc then refuses it).
        let endless = format!("HTTP/1.1 103 Early Hints\r\nX: {}\r\n", "y".repeat(20_000));
        assert_eq!(
            past_interim_answers(endless.as_bytes(), &[4096]),
            endless.as_bytes()
        );
    }

    proptest! {
        /// Any number of interim answers, then the final one and what follows it, arriving in
        /// any pieces: exactly the final answer and what follows are handed on.
        #[test]
        fn interim_answers_are_skipped_across_any_reads(
            interim in proptest::collection::vec((100u16..200, 0usize..3), 0..4),
            status in prop_oneof![Just(101u16), 200u16..600],
            after in proptest::collection::vec(any::<u8>(), 0..50),
            pieces in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let mut wire = Vec::new();
            for (code, headers) in &interim {
                let code = if *code == 101 { 102 } else { *code };
                wire.extend_from_slice(format!("HTTP/1.1 {code} Interim\r\n").as_bytes());
                for n in 0..*headers {
                    wire.extend_from_slice(format!("X-{n}: v\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
            }
            let mut expected = format!("HTTP/1.1 {status} Final\r\nA: b\r\n\r\n").into_bytes();
            expected.extend_from_slice(&after);
            wire.extend_from_slice(&expected);
            prop_assert_eq!(past_interim_answers(&wire, &pieces), expected);
        }

        /// Whatever the chunk sizes and wherever the reads end, a chunked body decodes to
        /// itself, complete, and reading stops at its last chunk.
        #[test]
        fn chunked_bodies_decode_across_any_reads(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            sizes in proptest::collection::vec(1usize..700, 1..6),
            reads in proptest::collection::vec(1usize..200, 1..8),
        ) {
            let wire = chunked(&body, &sizes);
            let mut reader = reader(&[("transfer-encoding", "chunked")]);
            let mut at = 0;
            let mut done = false;
            for read in reads.iter().cycle() {
                let end = (at + read).min(wire.len());
                done = reader.feed(&wire[at..end]);
                at = end;
                if done || at == wire.len() {
                    break;
                }
            }
            prop_assert!(done);
            // The last chunk's line ends it; the empty trailer's CRLF need not have come.
            prop_assert!(at >= wire.len() - 2, "stopped at {} of {}", at, wire.len());
            prop_assert!(reader.is_complete());
            prop_assert_eq!(&reader.into_body()[..], &body[..]);
        }

        /// A Content-Length body: complete at exactly its length; the bytes after it are not
        /// part of it; over the limit, cut at the limit and not complete.
        #[test]
        fn length_bodies_stop_at_their_length_and_at_the_limit(
            length in 0usize..(MAX_REJECTED_BODY + 100),
            extra in 0usize..50,
        ) {
            let mut reader = reader(&[("content-length", &length.to_string())]);
            let done = reader.feed(&vec![b'a'; length + extra]);
            prop_assert!(done);
            prop_assert_eq!(reader.is_complete(), length <= MAX_REJECTED_BODY);
            prop_assert_eq!(reader.into_body().len(), length.min(MAX_REJECTED_BODY));
        }
    }

    #[test]
    fn a_chunk_size_line_that_never_ends_is_given_up() {
        let mut reader = reader(&[("transfer-encoding", "chunked")]);
        assert!(!reader.feed(b"5\r\nhello\r\n"));
        assert!(reader.feed(&[b'f'; MAX_CHUNK_LINE + 10]));
        assert!(!reader.is_complete());
        assert_eq!(&reader.into_body()[..], b"hello");
    }

    #[test]
    fn a_body_until_close_is_complete_at_the_close_unless_cut() {
        let mut reader = reader(&[]);
        assert!(!reader.feed(b"partial"));
        assert!(!reader.is_complete());
        reader.end_of_stream();
        assert!(reader.is_complete());

        let mut reader = reader_until_close_with(MAX_REJECTED_BODY);
        reader.end_of_stream();
        assert!(reader.is_complete(), "exactly the limit is all of it");
        let mut reader = reader_until_close_with(MAX_REJECTED_BODY + 1);
        reader.end_of_stream();
        assert!(!reader.is_complete());
    }

    fn reader_until_close_with(len: usize) -> BodyReader {
        let mut reader = reader(&[]);
        reader.feed(&vec![b'b'; len]);
        reader
    }

    #[test]
    fn retry_after_seconds_dates_and_nonsense() {
        use crate::error::parse_retry_after;
        let now = std::time::SystemTime::now();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 1 ", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(&"9".repeat(30), now),
            Some(Duration::from_secs(u64::MAX))
        );
        let in_a_minute = httpdate::fmt_http_date(now + Duration::from_secs(61));
        let wait = parse_retry_after(&in_a_minute, now).unwrap();
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(61));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(600));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for nonsense in ["", "-1", "1.5", "soon", "+3", "0x10"] {
            assert_eq!(parse_retry_after(nonsense, now), None, "{nonsense:?}");
        }
    }
}
