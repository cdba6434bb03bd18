//! The deflate-capable echo server of the compressed scenarios (`bench server --deflate`): yawc's
//! server side on a current-thread tokio runtime, in its own process, with the same echo and
//! flush discipline as the tokio-tungstenite server (replies fed, flushed once no further
//! message is ready).
//!
//! - The handshake is answered here, on the TCP stream itself: permessage-deflate is accepted
//!   whenever offered, with the parameters of the client's first offer (`client_max_window_bits`
//!   with the client's value, `server_max_window_bits` and the `*_no_context_takeover`
//!   parameters as asked). On the path [`NO_CONTEXT_PATH`] it also answers
//!   `server_no_context_takeover; client_no_context_takeover`, which RFC 7692 lets a server add
//!   unasked: both sides then compress every message on its own, whatever the client offered.
//!   The server compresses at level 1 and sends messages under 64 bytes uncompressed.
//! - The socket is wrapped in a counter of the bytes read and written after the handshake (the
//!   WebSocket frames on the wire, compressed or not). A line `BYTES` on standard input is
//!   answered on standard output with `BYTES <read> <written>`, the totals over all connections
//!   so far, which the bench reads before and after a job.
//! - Like the other server: 127.0.0.1 only, backlog 4 096, `LISTENING <port>` once ready, and it
//!   exits when its standard input closes.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use yawc::{CompressionLevel, Frame, OpCode, Options, Role, WebSocket};

/// The path on which the server imposes no context takeover in both directions.
pub const NO_CONTEXT_PATH: &str = "/no-context-takeover";

static READ: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

pub fn run(port: u16) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(port))
}

async fn serve(port: u16) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(4096)?;
    println!("LISTENING {}", listener.local_addr()?.port());
    use std::io::Write;
    std::io::stdout().flush()?;

    // Answers `BYTES` on stdin; exits with the parent, which holds our stdin.
    tokio::spawn(async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "BYTES" {
                println!(
                    "BYTES {} {}",
                    READ.load(Ordering::Relaxed),
                    WRITTEN.load(Ordering::Relaxed)
                );
                let _ = std::io::stdout().flush();
            }
        }
        std::process::exit(0);
    });

    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream));
            }
            Err(error) => {
                eprintln!("bench deflate server: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TCP stream, counting the bytes that pass.
struct Counted(TcpStream);

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.0).poll_read(cx, buf);
        READ.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.0).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = poll {
            WRITTEN.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            WRITTEN.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The request's path, `Sec-WebSocket-Key` and `Sec-WebSocket-Extensions` (all lines joined).
struct Request {
    path: String,
    key: String,
    extensions: String,
}

/// Reads the upgrade request (the client sends nothing else before the answer).
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > 16 << 10 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = std::str::from_utf8(&head).ok()?;
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let mut key = None;
    let mut extensions = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.push(value.to_owned());
        }
    }
    Some(Request {
        path,
        key: key?,
        extensions: extensions.join(", "),
    })
}

/// The answer to the client's first permessage-deflate offer, if it made one.
fn agree(offers: &str, no_context: bool) -> Option<String> {
    let offer = offers.split(',').find(|offer| {
        offer
            .split(';')
            .next()
            .is_some_and(|name| name.trim() == "permessage-deflate")
    })?;
    let mut answer = String::from("permessage-deflate");
    let (mut server_nct, mut client_nct) = (no_context, no_context);
    for param in offer.split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        match (name, value) {
            ("client_max_window_bits", Some(bits)) => {
                answer += &format!("; client_max_window_bits={bits}")
            }
            ("server_max_window_bits", Some(bits)) => {
                answer += &format!("; server_max_window_bits={bits}")
            }
            ("server_no_context_takeover", None) => server_nct = true,
            ("client_no_context_takeover", None) => client_nct = true,
            _ => {}
        }
    }
    if server_nct {
        answer += "; server_no_context_takeover";
    }
    if client_nct {
        answer += "; client_no_context_takeover";
    }
    Some(answer)
}

fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

async fn connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let agreed = agree(
        &request.extensions,
        request.path.starts_with(NO_CONTEXT_PATH),
    );
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(&request.key)
    );
    if let Some(agreed) = &agreed {
        response += &format!("Sec-WebSocket-Extensions: {agreed}\r\n");
    }
    response += "\r\n";
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let options = Options::default()
        .with_compression_level(CompressionLevel::fast())
        .with_compression_threshold(64)
        .with_max_payload_read(64 << 20)
        .with_max_read_buffer(64 << 20);
    let Ok(mut ws) = WebSocket::from_stream_with_extensions(
        Counted(stream),
        Role::Server,
        agreed.as_deref(),
        options,
    ) else {
        return;
    };
    loop {
        let Some(frame) = ws.next().await else {
            return;
        };
        if on_frame(&mut ws, frame).await.is_err() {
            return;
        }
        // Echo whatever else is already readable before flushing.
        loop {
            match ws.next().now_or_never() {
                None => break,
                Some(Some(frame)) => {
                    if on_frame(&mut ws, frame).await.is_err() {
                        return;
                    }
                }
                Some(None) => return,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn on_frame(ws: &mut WebSocket<Counted>, frame: Frame) -> Result<(), ()> {
    match frame.opcode() {
        OpCode::Text => ws
            .feed(Frame::text(frame.into_payload()))
            .await
            .map_err(drop),
        OpCode::Binary => ws
            .feed(Frame::binary(frame.into_payload()))
            .await
            .map_err(drop),
        OpCode::Close => Err(()),
        // yawc answers pings itself.
        _ => Ok(()),
    }
}
