//! Raw TCP peers: a server that never answers, and a scripted WebSocket server that writes
//! hand-made bytes and decodes what the client sends. Plus frame builders and the handshake's
//! `Sec-WebSocket-Accept` (with the `sha1` and `base64` crates), so that the tests depend on no
//! WebSocket library.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

use super::bg::{bind_local, Background};
use super::{opcode, EventLog};

/// Longest request head the scripted server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// How long the scripted server waits for the request head.
const HEAD_WAIT: Duration = Duration::from_secs(10);
/// Largest frame payload the decoder accepts from a client.
const MAX_CLIENT_PAYLOAD: u64 = 64 * 1024 * 1024;
/// The GUID of RFC 6455 section 1.3.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// ---------------------------------------------------------------------------------------
// Sec-WebSocket-Accept
// ---------------------------------------------------------------------------------------

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn sec_websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;

    let digest = sha1::Sha1::digest(format!("{}{WS_GUID}", key.trim()).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// How the payload length is written in a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenForm {
    /// The shortest form, as RFC 6455 requires.
    Minimal,
    /// 7-bit length (truncated to 7 bits if it does not fit).
    Short,
    /// 126 + 16-bit length (truncated if it does not fit).
    U16,
    /// 127 + 64-bit length.
    U64,
}

/// Builder for arbitrary (also invalid) frames. Unmasked unless `mask` is set.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1..3 as the low three bits (0b100 = RSV1).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// Length written in the header; defaults to the payload's length.
    pub announced_len: Option<u64>,
    pub len_form: LenForm,
}

impl RawFrame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload: payload.into(),
            announced_len: None,
            len_form: LenForm::Minimal,
        }
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv & 0b111;
        self
    }

    pub fn mask(mut self, key: [u8; 4]) -> Self {
        self.mask = Some(key);
        self
    }

    /// Announce a different length than the payload actually has (e.g. 1 << 40).
    pub fn announce_len(mut self, len: u64) -> Self {
        self.announced_len = Some(len);
        self
    }

    pub fn len_form(mut self, form: LenForm) -> Self {
        self.len_form = form;
        self
    }

    /// Header only (including the masking key if any).
    pub fn header(&self) -> Vec<u8> {
        let len = self.announced_len.unwrap_or(self.payload.len() as u64);
        let mut out = Vec::with_capacity(14);
        out.push((u8::from(self.fin) << 7) | (self.rsv << 4) | (self.opcode & 0x0F));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let form = match self.len_form {
            LenForm::Minimal if len < 126 => LenForm::Short,
            LenForm::Minimal if len <= u64::from(u16::MAX) => LenForm::U16,
            LenForm::Minimal => LenForm::U64,
            other => other,
        };
        match form {
            LenForm::Short => out.push(mask_bit | (len as u8 & 0x7F)),
            LenForm::U16 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            LenForm::U64 | LenForm::Minimal => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        out
    }

    /// Header plus (masked, if a key is set) payload.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        match self.mask {
            Some(key) => out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4])),
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// An unmasked (server-to-client) frame with the shortest length encoding.
pub fn frame_bytes(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    RawFrame::new(opcode, payload).fin(fin).bytes()
}

/// A masked frame (as a client sends; a client must reject these from a server).
pub fn masked_frame_bytes(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    RawFrame::new(opcode, payload).fin(fin).mask(key).bytes()
}

/// Only the header of an unmasked frame announcing `len` payload bytes (e.g. `1 << 40`).
pub fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    RawFrame::new(opcode, Vec::new())
        .fin(fin)
        .announce_len(len)
        .header()
}

/// Unmasked text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    frame_bytes(true, opcode::TEXT, text.as_bytes())
}

/// Unmasked binary frame.
pub fn binary_frame(data: &[u8]) -> Vec<u8> {
    frame_bytes(true, opcode::BINARY, data)
}

/// Unmasked close frame; `code` None gives an empty payload.
pub fn close_frame(code: Option<u16>, reason: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
    }
    frame_bytes(true, opcode::CLOSE, &payload)
}

/// A frame as received from the client, payload already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// For close frames with a payload of at least 2 bytes.
    pub close_code: Option<u16>,
    /// For close frames: the reason text after the code (lossy UTF-8).
    pub close_reason: String,
}

impl ClientFrame {
    pub fn text(&self) -> Option<String> {
        String::from_utf8(self.payload.clone()).ok()
    }

    pub fn is_close(&self) -> bool {
        self.opcode == opcode::CLOSE
    }
}

/// Decode one frame from the start of `buf`. `Ok(None)` means more bytes are needed;
/// on success also returns how many bytes it used. Masked and unmasked frames are both
/// accepted (`masked` tells which); absurd lengths are an error.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(ClientFrame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0b111;
    let op = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let mut pos = 2;
    let len = match buf[1] & 0x7F {
        126 => {
            if buf.len() < pos + 2 {
                return Ok(None);
            }
            let len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
            pos += 2;
            len
        }
        127 => {
            if buf.len() < pos + 8 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            pos += 8;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > MAX_CLIENT_PAYLOAD {
        return Err(format!("client frame announces {len} bytes"));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(key)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < pos + len {
        return Ok(None);
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    let (close_code, close_reason) = if op == opcode::CLOSE && payload.len() >= 2 {
        (
            Some(u16::from_be_bytes([payload[0], payload[1]])),
            String::from_utf8_lossy(&payload[2..]).into_owned(),
        )
    } else {
        (None, String::new())
    };
    let frame = ClientFrame {
        fin,
        rsv,
        opcode: op,
        masked,
        mask,
        payload,
        close_code,
        close_reason,
    };
    Ok(Some((frame, pos + len)))
}

// ---------------------------------------------------------------------------------------
// Silent server
// ---------------------------------------------------------------------------------------

/// Accepts TCP connections and never writes a byte. What clients send is kept (per
/// connection) for inspection. Sockets stay open until this is dropped.
pub struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: EventLog<(usize, Vec<u8>)>,
    bg: Background,
}

/// Start a [`SilentServer`] on 127.0.0.1, OS-chosen port.
pub fn silent_tcp_server() -> SilentServer {
    let listener = bind_local(0);
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let received = EventLog::new();
    let (acc, rec) = (Arc::clone(&accepted), received.clone());
    let bg = Background::start("minch-silent-server", move || async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = acc.fetch_add(1, Ordering::SeqCst);
            let rec = rec.clone();
            // Read (so the bytes can be inspected) but never answer; the task, and so the
            // socket, lives until the runtime is dropped.
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => rec.push((conn, buf[..n].to_vec())),
                    }
                }
                // Keep the socket open even after the client half-closed.
                std::future::pending::<()>().await;
            });
        }
    });
    SilentServer {
        addr,
        accepted,
        received,
        bg,
    }
}

impl SilentServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        ws_url(self.addr.port(), path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Everything connection `conn` (0-based) sent so far.
    pub fn received(&self, conn: usize) -> Vec<u8> {
        self.received
            .snapshot()
            .into_iter()
            .filter(|(c, _)| *c == conn)
            .flat_map(|(_, bytes)| bytes)
            .collect()
    }

    /// Stop and close every socket.
    pub fn stop(&mut self) {
        self.bg.stop();
    }
}

fn ws_url(port: u16, path: &str) -> String {
    let slash = if path.starts_with('/') { "" } else { "/" };
    format!("ws://127.0.0.1:{port}{slash}{path}")
}

// ---------------------------------------------------------------------------------------
// Scripted server
// ---------------------------------------------------------------------------------------

/// What the scripted server sends back to the upgrade request.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// Status line code and text (default 101 "Switching Protocols").
    pub status: u16,
    pub status_text: String,
    /// `None` = the correct Sec-WebSocket-Accept; `Some(v)` = send `v` instead.
    pub accept: Option<String>,
    /// Leave out Sec-WebSocket-Accept entirely.
    pub omit_accept: bool,
    /// Leave out `Upgrade: websocket` and `Connection: Upgrade`.
    pub omit_upgrade: bool,
    pub extra_headers: Vec<(String, String)>,
    /// Bytes written in the same write as the response (e.g. a first frame).
    pub trailing: Vec<u8>,
    /// Wait this long after reading the request before answering.
    pub delay: Duration,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            status: 101,
            status_text: "Switching Protocols".into(),
            accept: None,
            omit_accept: false,
            omit_upgrade: false,
            extra_headers: Vec::new(),
            trailing: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

impl Handshake {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn status(mut self, code: u16, text: &str) -> Self {
        self.status = code;
        self.status_text = text.into();
        self
    }

    pub fn accept(mut self, value: &str) -> Self {
        self.accept = Some(value.into());
        self
    }

    pub fn omit_accept(mut self) -> Self {
        self.omit_accept = true;
        self
    }

    pub fn omit_upgrade(mut self) -> Self {
        self.omit_upgrade = true;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }

    pub fn trailing(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.trailing = bytes.into();
        self
    }

    /// Answer only after `delay` (e.g. to exceed a client's handshake timeout).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The response bytes for a request carrying `key` as Sec-WebSocket-Key.
    pub fn response(&self, key: Option<&str>) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.status_text);
        if !self.omit_upgrade {
            head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\n");
        }
        if !self.omit_accept {
            let accept = match (&self.accept, key) {
                (Some(v), _) => v.clone(),
                (None, Some(k)) => sec_websocket_accept(k),
                (None, None) => String::new(),
            };
            head.push_str(&format!("Sec-WebSocket-Accept: {accept}\r\n"));
        }
        for (name, value) in &self.extra_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.trailing);
        out
    }
}

/// One step of a scripted connection.
///
/// The server first reads the request head. If the first step is `Handshake`,
/// `SendWithResponse` or `RawResponse` it answers with that; otherwise it answers a correct
/// 101 by itself before running the first step. From then on a reader task decodes and logs
/// every frame the client sends, whatever step is running. When the script ends without
/// `Close`/`Reset`, the connection stays open (still logging) until the client closes it or
/// the server is dropped.
#[derive(Debug, Clone)]
pub enum Step {
    /// A custom handshake response (first step only).
    Handshake(Handshake),
    /// A correct 101 with these bytes appended in the same write (first step only).
    SendWithResponse(Vec<u8>),
    /// Write exactly these bytes instead of any handshake response (first step only).
    RawResponse(Vec<u8>),
    /// Write raw bytes.
    Send(Vec<u8>),
    /// Write raw bytes in `chunk`-sized writes with `delay` between them.
    SendChunked {
        bytes: Vec<u8>,
        chunk: usize,
        delay: Duration,
    },
    Sleep(Duration),
    /// Wait until the client has sent `n` more frames (counted from this step), or timeout.
    ReadFrames(usize, Duration),
    /// Wait until the client sends a close frame (or already has), or timeout.
    WaitClose(Duration),
    /// Wait until the client closes its side of the TCP connection, or timeout.
    WaitEof(Duration),
    /// Half-close: send FIN but keep reading.
    ShutdownWrite,
    /// Close the TCP connection (FIN) and end the script.
    Close,
    /// Abort the TCP connection with RST (SO_LINGER 0) and end the script.
    Reset,
}

/// What the scripted server saw, per connection (`conn` counts from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Accepted {
        conn: usize,
    },
    /// The request head, up to and including the blank line, as text.
    Request {
        conn: usize,
        head: String,
    },
    Frame {
        conn: usize,
        frame: ClientFrame,
    },
    /// The client closed its side (read returned 0).
    Eof {
        conn: usize,
    },
    /// A wait step timed out.
    StepTimeout {
        conn: usize,
        step: String,
    },
    Error {
        conn: usize,
        error: String,
    },
    /// The server closed (`Close`) or reset (`Reset`) the connection.
    Closed {
        conn: usize,
        reset: bool,
    },
    /// Every step ran.
    ScriptDone {
        conn: usize,
    },
}

/// A raw WebSocket server that follows a script; see [`Step`].
pub struct ScriptedServer {
    addr: SocketAddr,
    log: EventLog<RawEvent>,
    bg: Background,
}

/// Start a scripted server that runs `script` on every connection.
pub fn scripted_ws_server(script: Vec<Step>) -> ScriptedServer {
    scripted_ws_server_seq(vec![script])
}

/// Start a scripted server; connection `i` runs `scripts[i]`, later connections the last one.
pub fn scripted_ws_server_seq(scripts: Vec<Vec<Step>>) -> ScriptedServer {
    assert!(!scripts.is_empty(), "at least one script");
    let listener = bind_local(0);
    let addr = listener.local_addr().expect("local addr");
    let log = EventLog::new();
    let task_log = log.clone();
    let bg = Background::start("minch-scripted-server", move || async move {
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let mut conn = 0usize;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let script = scripts[conn.min(scripts.len() - 1)].clone();
            task_log.push(RawEvent::Accepted { conn });
            tokio::spawn(run_script(conn, stream, script, task_log.clone()));
            conn += 1;
        }
    });
    ScriptedServer { addr, log, bg }
}

impl ScriptedServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        ws_url(self.addr.port(), path)
    }

    pub fn log(&self) -> &EventLog<RawEvent> {
        &self.log
    }

    pub fn events(&self) -> Vec<RawEvent> {
        self.log.snapshot()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.log.count(|e| matches!(e, RawEvent::Accepted { .. }))
    }

    /// Request heads, in connection order.
    pub fn requests(&self) -> Vec<String> {
        self.log
            .snapshot()
            .into_iter()
            .filter_map(|e| match e {
                RawEvent::Request { head, .. } => Some(head),
                _ => None,
            })
            .collect()
    }

    /// Every frame from every client, in arrival order.
    pub fn frames(&self) -> Vec<ClientFrame> {
        self.frames_where(|_| true)
    }

    /// Frames from connection `conn`.
    pub fn frames_of(&self, conn: usize) -> Vec<ClientFrame> {
        self.frames_where(|c| c == conn)
    }

    fn frames_where(&self, keep: impl Fn(usize) -> bool) -> Vec<ClientFrame> {
        self.log
            .snapshot()
            .into_iter()
            .filter_map(|e| match e {
                RawEvent::Frame { conn, frame } if keep(conn) => Some(frame),
                _ => None,
            })
            .collect()
    }

    /// Async: wait for a client frame matching `matcher`; None on timeout.
    pub async fn wait_frame(
        &self,
        matcher: impl Fn(&ClientFrame) -> bool,
        timeout: Duration,
    ) -> Option<ClientFrame> {
        match self
            .log
            .wait_event(
                |e| matches!(e, RawEvent::Frame { frame, .. } if matcher(frame)),
                timeout,
            )
            .await
        {
            Some(RawEvent::Frame { frame, .. }) => Some(frame),
            _ => None,
        }
    }

    /// Async: wait for an event matching `matcher`; None on timeout.
    pub async fn wait_event(
        &self,
        matcher: impl Fn(&RawEvent) -> bool,
        timeout: Duration,
    ) -> Option<RawEvent> {
        self.log.wait_event(matcher, timeout).await
    }

    /// Async: wait until `n` connections were accepted.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        self.log
            .wait_count(|e| matches!(e, RawEvent::Accepted { .. }), n, timeout)
            .await
    }

    /// Stop: closes every connection.
    pub fn stop(&mut self) {
        self.bg.stop();
    }
}

/// Read the request head (through the blank line). Returns it and any bytes after it.
async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
            }
            if buf.len() > MAX_HEAD {
                return Err("request head too long".to_string());
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return Err("connection closed before the request head ended".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading request head: {e}")),
            }
        }
    };
    tokio::time::timeout(HEAD_WAIT, read)
        .await
        .unwrap_or_else(|_| Err("timed out waiting for the request head".into()))
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Decode frames until EOF or error, logging each.
async fn read_frames(
    conn: usize,
    mut read: OwnedReadHalf,
    mut buf: Vec<u8>,
    log: EventLog<RawEvent>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            match decode_frame(&buf) {
                Ok(Some((frame, used))) => {
                    buf.drain(..used);
                    log.push(RawEvent::Frame { conn, frame });
                }
                Ok(None) => break,
                Err(error) => {
                    log.push(RawEvent::Error { conn, error });
                    return;
                }
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) => {
                if !buf.is_empty() {
                    log.push(RawEvent::Error {
                        conn,
                        error: format!("EOF inside a frame ({} bytes pending)", buf.len()),
                    });
                }
                log.push(RawEvent::Eof { conn });
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                log.push(RawEvent::Error {
                    conn,
                    error: format!("read: {e}"),
                });
                log.push(RawEvent::Eof { conn });
                return;
            }
        }
    }
}

async fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_script(
    conn: usize,
    mut stream: TcpStream,
    script: Vec<Step>,
    log: EventLog<RawEvent>,
) {
    let _ = stream.set_nodelay(true);
    let (head, rest) = match read_head(&mut stream).await {
        Ok(parts) => parts,
        Err(error) => {
            log.push(RawEvent::Error { conn, error });
            return;
        }
    };
    let key = header_value(&head, "sec-websocket-key");
    log.push(RawEvent::Request { conn, head });

    let mut steps = script.into_iter().peekable();
    let delay = match steps.peek() {
        Some(Step::Handshake(h)) => h.delay,
        _ => Duration::ZERO,
    };
    let response = match steps.peek() {
        Some(Step::Handshake(h)) => h.response(key.as_deref()),
        Some(Step::SendWithResponse(bytes)) => Handshake::new()
            .trailing(bytes.clone())
            .response(key.as_deref()),
        Some(Step::RawResponse(bytes)) => bytes.clone(),
        _ => Handshake::new().response(key.as_deref()),
    };
    if matches!(
        steps.peek(),
        Some(Step::Handshake(_) | Step::SendWithResponse(_) | Step::RawResponse(_))
    ) {
        steps.next();
    }
    tokio::time::sleep(delay).await;
    if let Err(e) = stream.write_all(&response).await {
        log.push(RawEvent::Error {
            conn,
            error: format!("writing response: {e}"),
        });
        return;
    }

    let (read, mut write) = stream.into_split();
    let reader = tokio::spawn(read_frames(conn, read, rest, log.clone()));
    let frames = |log: &EventLog<RawEvent>| {
        log.count(|e| matches!(e, RawEvent::Frame { conn: c, .. } if *c == conn))
    };
    let closed_by_client = |log: &EventLog<RawEvent>| {
        log.count(
            |e| matches!(e, RawEvent::Frame { conn: c, frame } if *c == conn && frame.is_close()),
        ) > 0
    };
    let eof = |log: &EventLog<RawEvent>| {
        log.count(|e| matches!(e, RawEvent::Eof { conn: c } if *c == conn)) > 0
    };

    for step in steps {
        let name = format!("{step:?}");
        let ok = match step {
            Step::Handshake(_) | Step::SendWithResponse(_) | Step::RawResponse(_) => {
                log.push(RawEvent::Error {
                    conn,
                    error: format!("{name} is only valid as the first step"),
                });
                true
            }
            Step::Send(bytes) => write.write_all(&bytes).await.is_ok(),
            Step::SendChunked {
                bytes,
                chunk,
                delay,
            } => {
                let mut ok = true;
                for part in bytes.chunks(chunk.max(1)) {
                    if write.write_all(part).await.is_err() {
                        ok = false;
                        break;
                    }
                    let _ = write.flush().await;
                    tokio::time::sleep(delay).await;
                }
                ok
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Step::ReadFrames(n, timeout) => {
                let start = frames(&log);
                if !poll_until(timeout, || frames(&log) >= start + n).await {
                    log.push(RawEvent::StepTimeout {
                        conn,
                        step: name.clone(),
                    });
                }
                true
            }
            Step::WaitClose(timeout) => {
                if !poll_until(timeout, || closed_by_client(&log)).await {
                    log.push(RawEvent::StepTimeout {
                        conn,
                        step: name.clone(),
                    });
                }
                true
            }
            Step::WaitEof(timeout) => {
                if !poll_until(timeout, || eof(&log)).await {
                    log.push(RawEvent::StepTimeout {
                        conn,
                        step: name.clone(),
                    });
                }
                true
            }
            Step::ShutdownWrite => write.shutdown().await.is_ok(),
            Step::Close | Step::Reset => {
                let reset = matches!(step, Step::Reset);
                if reset {
                    let _ = write.as_ref().set_zero_linger();
                }
                reader.abort();
                let _ = reader.await;
                drop(write);
                log.push(RawEvent::Closed { conn, reset });
                return;
            }
        };
        if !ok {
            log.push(RawEvent::Error {
                conn,
                error: format!("write failed during {name}"),
            });
            break;
        }
    }
    log.push(RawEvent::ScriptDone { conn });
    // Keep the connection (and the logging) going until the client goes away.
    let _ = reader.await;
    drop(write);
}

// ---------------------------------------------------------------------------------------
// Blocking upgrade, for raw peers on a plain thread
// ---------------------------------------------------------------------------------------

/// Blocking: reads a WebSocket upgrade request from `stream` and answers a correct 101, for
/// peers written with `std::net` on a thread of their own (e.g. one that never reads again).
/// Returns the bytes that came after the request head, or `None` if the client went away.
pub fn accept_upgrade_blocking(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = header_value(&head, "sec-websocket-key");
    stream
        .write_all(&Handshake::new().response(key.as_deref()))
        .ok()?;
    Some(buf.split_off(end))
}
