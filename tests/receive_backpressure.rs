//! The bounded receive queue of the simple and blocking APIs (`ConnectOptions::max_queue`,
//! `max_queue_bytes`): when the program does not take what it received, the client stops
//! reading the socket, so TCP makes the server wait and memory stays bounded; keepalive
//! during such a pause ends with `Timeout::ReceiveQueueFull`; the limits at their edges
//! (1 message, 1 byte, `usize::MAX`) still deliver everything in order; dropping `Frames`
//! lets a close handshake finish behind a flood.
//!
//! The peers are raw `std::net` servers on their own threads (127.0.0.1 only): they write
//! hand-made frames, count the bytes they wrote, and answer pings and closes from a reader
//! thread of their own. Every wait is bounded.
//!
//! The memory test of the simple API measures the process's VmRSS, which every test of this
//! binary shares: it holds [`EXCLUSIVE`] for writing, the other tests for reading, so nothing
//! else runs while it measures. The blocking API's memory test lives in its own binary
//! (`tests/receive_backpressure_blocking.rs`).

// Each `#[actix_rt::test]` runs on a thread and System of its own, and nothing on it takes
// `EXCLUSIVE`: holding the guard across awaits cannot deadlock.
#![allow(clippy::await_holding_lock)]

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    thread,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use minch::{blocking, ConnectOptions, DisconnectReason, Frame, ReceiveError, Timeout};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, frame_header, opcode,
    stream::*, text_frame, wait_until, ClientFrame,
};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

// ---- serializing the memory measurement ---------------------------------------------------------

/// The RSS test takes this for writing; every other test for reading.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Longest a peer's reader waits for the client before giving up.
const PEER_LIFETIME: Duration = Duration::from_secs(60);

/// The peer's write side, shared by its script and its reader (which answers pings and closes).
struct Out {
    stream: TcpStream,
    close_sent: bool,
}

/// What the peer saw and did, for the test to check.
#[derive(Default)]
struct Seen {
    /// Bytes of frames the script wrote, counted after each frame's `write_all`.
    written: AtomicU64,
    /// Pings the client sent.
    pings: AtomicUsize,
    /// The client's close frame, once it came.
    client_close: Mutex<Option<ClientFrame>>,
    closed_by_client: AtomicBool,
}

/// What a peer's script uses to write.
struct Script {
    out: Arc<Mutex<Out>>,
    seen: Arc<Seen>,
}

impl Script {
    /// Writes one frame (given in parts); false once the connection is closing or broken.
    fn send(&self, parts: &[&[u8]]) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.close_sent {
            return false;
        }
        let mut len = 0;
        for part in parts {
            if out.stream.write_all(part).is_err() {
                return false;
            }
            len += part.len() as u64;
        }
        self.seen.written.fetch_add(len, Ordering::SeqCst);
        true
    }

    /// Starts the close handshake from the server's side.
    fn send_close(&self, code: u16) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.close_sent {
            return false;
        }
        out.close_sent = true;
        out.stream.write_all(&close_frame(Some(code), "")).is_ok()
    }

    fn client_closed(&self) -> bool {
        self.seen.closed_by_client.load(Ordering::SeqCst)
    }
}

struct Peer {
    url: String,
    seen: Arc<Seen>,
}

impl Peer {
    fn written(&self) -> u64 {
        self.seen.written.load(Ordering::SeqCst)
    }

    fn pings(&self) -> usize {
        self.seen.pings.load(Ordering::SeqCst)
    }

    /// The close code of the client's close frame, once it came (`Some(None)`: no code).
    fn client_close_code(&self) -> Option<Option<u16>> {
        self.seen
            .client_close
            .lock()
            .unwrap()
            .as_ref()
            .map(|frame| frame.close_code)
    }
}

/// A peer on its own thread that accepts one connection, upgrades it, and runs `script`.
/// Meanwhile a reader thread decodes what the client sends: it answers pings with pongs, and a
/// close frame with a close of its own (unless the script closed first), then shuts the TCP
/// connection down. The connection stays open until the client closes, at most
/// [`PEER_LIFETIME`].
fn spawn_peer(script: impl FnOnce(&Script) + Send + 'static) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let peer_seen = seen.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(rest) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let reading = stream.try_clone().expect("clone the peer's socket");
        let out = Arc::new(Mutex::new(Out {
            stream,
            close_sent: false,
        }));
        let reader = {
            let (out, seen) = (out.clone(), peer_seen.clone());
            thread::spawn(move || read_client(reading, rest, &out, &seen))
        };
        script(&Script {
            out,
            seen: peer_seen,
        });
        let _ = reader.join();
    });
    Peer { url, seen }
}

/// The peer's reader: see [`spawn_peer`].
fn read_client(mut stream: TcpStream, mut buf: Vec<u8>, out: &Mutex<Out>, seen: &Seen) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            buf.drain(..used);
            match frame.opcode {
                opcode::PING => {
                    seen.pings.fetch_add(1, Ordering::SeqCst);
                    let mut out = out.lock().unwrap();
                    if !out.close_sent {
                        let pong = frame_bytes(true, opcode::PONG, &frame.payload);
                        let _ = out.stream.write_all(&pong);
                    }
                }
                opcode::CLOSE => {
                    *seen.client_close.lock().unwrap() = Some(frame);
                    // Before taking the lock: a flooding script stops at its next frame.
                    seen.closed_by_client.store(true, Ordering::SeqCst);
                    let mut out = out.lock().unwrap();
                    if !out.close_sent {
                        out.close_sent = true;
                        let _ = out.stream.write_all(&close_frame(Some(1000), ""));
                    }
                    let _ = out.stream.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

// ---- the 256 MiB stream --------------------------------------------------------------------------

/// Writes 4 096 binary frames of 64 KiB as fast as the client takes them, each starting with its
/// sequence number (big-endian u32) and ending with its low byte, then closes with 1000.
fn stream_peer() -> Peer {
    spawn_peer(|script| {
        let header = frame_header(true, opcode::BINARY, STREAM_FRAME_LEN as u64);
        assert_eq!(
            header.len() as u64,
            STREAM_FRAME_WIRE - STREAM_FRAME_LEN as u64
        );
        let mut payload = vec![0u8; STREAM_FRAME_LEN];
        for seq in 0..STREAM_FRAMES {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            payload[STREAM_FRAME_LEN - 1] = seq as u8;
            if !script.send(&[&header, &payload]) {
                return;
            }
        }
        script.send_close(1000);
    })
}

/// Simple API: a server streams 256 MiB in 64 KiB frames while the program receives nothing for
/// 3 s. The client stops reading once 16 frames wait, so the server stalls at a few MiB (what
/// the socket buffers hold) and the process does not grow by more than the queue's worth;
/// afterwards every frame arrives, in order and whole, then the server's close.
#[actix_rt::test]
async fn simple_a_256_mib_stream_waits_for_the_program_and_memory_stays_bounded() {
    let _exclusive = exclusive();
    let rss_before_connect = rss_bytes();
    let peer = stream_peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(STREAM_QUEUE)
        .max_queue_bytes(STREAM_QUEUE_BYTES);
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    let rss_connected = rss_bytes();

    // The program takes nothing for 3 s.
    let paused = Instant::now();
    actix_rt::time::sleep(Duration::from_secs(3)).await;
    let written_at_3s = peer.written();
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let written_at_4s = peer.written();
    let rss_paused = rss_bytes();
    let stats = connection.stats().await;
    eprintln!(
        "simple: RSS before connect {:.1} MiB, connected {:.1} MiB, after {:?} paused {:.1} MiB \
         (+{:.1} MiB over connected, +{:.1} MiB over before connect); server wrote {} bytes \
         ({:.1} MiB) at 3 s and {} at 4 s; client decoded {} frames, {} payload bytes",
        mib(rss_before_connect),
        mib(rss_connected),
        paused.elapsed(),
        mib(rss_paused),
        mib(rss_paused.saturating_sub(rss_connected)),
        mib(rss_paused.saturating_sub(rss_before_connect)),
        written_at_3s,
        mib(written_at_3s),
        written_at_4s,
        stats.frames_in,
        stats.bytes_in,
    );

    assert!(stats.connected, "the connection is still open while paused");
    assert_eq!(
        stats.frames_in, STREAM_QUEUE as u64,
        "the client decodes exactly max_queue frames, then stops reading"
    );
    assert_eq!(
        written_at_3s, written_at_4s,
        "the server kept writing while the program took nothing: the client still reads"
    );
    assert!(
        written_at_4s < WRITTEN_BOUND,
        "the server wrote {written_at_4s} bytes to a client whose program took nothing"
    );
    assert!(
        written_at_4s < STREAM_BYTES,
        "the whole stream went out while the program took nothing"
    );
    let growth = rss_paused.saturating_sub(rss_before_connect);
    assert!(
        growth <= RSS_GROWTH_BOUND,
        "the process grew by {:.1} MiB while holding back a stream (bound {:.1} MiB)",
        mib(growth),
        mib(RSS_GROWTH_BOUND)
    );

    // Now take everything.
    let draining = Instant::now();
    let deadline = draining + Duration::from_secs(50);
    for seq in 0..STREAM_FRAMES {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "draining took over 50 s; at frame {seq}");
        match frames
            .receive_frame(left.min(Duration::from_secs(10)))
            .await
        {
            Ok(frame) => check_stream_frame(seq, &frame),
            Err(error) => panic!("frame {seq} of {STREAM_FRAMES}: {error:?}"),
        }
    }
    match frames.receive_frame(Duration::from_secs(10)).await {
        Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close))))
            if close.code.0 == 1000 => {}
        other => panic!("after the last frame, the server's close 1000; got {other:?}"),
    }
    eprintln!(
        "simple: drained {STREAM_FRAMES} frames in {:?}; server wrote {} bytes",
        draining.elapsed(),
        peer.written()
    );
    assert_eq!(peer.written(), STREAM_FRAMES as u64 * STREAM_FRAME_WIRE);
}

// ---- keepalive while paused ----------------------------------------------------------------------

/// Sends three text frames "0", "1", "2", then keeps the connection open, answering pings.
fn three_frames_then_quiet() -> Peer {
    spawn_peer(|script| {
        for n in 0..3 {
            if !script.send(&[&text_frame(&n.to_string())]) {
                return;
            }
        }
    })
}

fn keepalive_options() -> ConnectOptions {
    ConnectOptions::default()
        .max_queue(1)
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(200))
}

fn assert_receive_queue_full(result: Result<Frame, ReceiveError>) {
    match result {
        Err(ReceiveError::Closed(DisconnectReason::Error(error)))
            if error.timeout() == Some(Timeout::ReceiveQueueFull) => {}
        other => panic!(
            "after the queued frame, the end Timeout::ReceiveQueueFull (no pong could be read \
             while the queue was full); got {other:?}"
        ),
    }
}

/// Simple API: with one message queued and reading paused, the keepalive pong cannot be read;
/// once the pong timeout passes, the connection ends with `Timeout::ReceiveQueueFull`. The
/// program then gets the queued frame, and only it (max_queue 1), then that end.
#[actix_rt::test]
async fn simple_keepalive_while_paused_ends_with_receive_queue_full() {
    let _shared = shared();
    let peer = three_frames_then_quiet();
    let (_connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), keepalive_options()),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    assert!(peer.pings() >= 1, "the client pinged while paused");
    match frames.receive_frame(Duration::from_secs(5)).await {
        Ok(frame) => assert_eq!(frame.as_text(), Some("0"), "the queued frame"),
        Err(error) => panic!("the queued frame \"0\" first; got {error:?}"),
    }
    assert_receive_queue_full(frames.receive_frame(Duration::from_secs(5)).await);
    // The end stays.
    assert_receive_queue_full(frames.receive_frame(Duration::ZERO).await);
}

/// The control: the same server and options, but the program receives promptly. Pongs are read,
/// so the connection stays open for as long as the other test waited (and well beyond the
/// pong timeout, with a dozen pings answered).
#[actix_rt::test]
async fn simple_keepalive_with_a_prompt_program_stays_connected() {
    let _shared = shared();
    let peer = three_frames_then_quiet();
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), keepalive_options()),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    let started = Instant::now();
    let mut received = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        match frames.receive_frame(Duration::from_millis(100)).await {
            Ok(frame) => received.push(frame.as_text().map(str::to_owned)),
            Err(ReceiveError::Timeout) => {}
            Err(ReceiveError::Closed(reason)) => panic!(
                "disconnected after {:?} although the program received promptly: {reason}",
                started.elapsed()
            ),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(
        received,
        [
            Some("0".to_owned()),
            Some("1".to_owned()),
            Some("2".to_owned())
        ]
    );
    let stats = connection.stats().await;
    assert!(stats.connected, "still connected after 1.5 s");
    assert!(stats.last_ping_rtt.is_some(), "a pong was read");
    assert!(
        peer.pings() >= 5,
        "keepalive ran (100 ms interval for 1.5 s): {} pings",
        peer.pings()
    );
    connection.close().await;
    assert!(matches!(
        frames.receive_frame(Duration::from_secs(5)).await,
        Err(ReceiveError::Closed(_))
    ));
}

/// Blocking API: the same as the simple one, from a plain thread.
#[test]
fn blocking_keepalive_while_paused_ends_with_receive_queue_full() {
    let _shared = shared();
    let peer = three_frames_then_quiet();
    let (_connection, frames) =
        blocking::connect(peer.url.clone(), no_headers(), keepalive_options()).expect("connects");

    thread::sleep(Duration::from_millis(1500));
    assert!(peer.pings() >= 1, "the client pinged while paused");
    match frames.receive_frame(Duration::from_secs(5)) {
        Ok(frame) => assert_eq!(frame.as_text(), Some("0"), "the queued frame"),
        Err(error) => panic!("the queued frame \"0\" first; got {error:?}"),
    }
    assert_receive_queue_full(frames.receive_frame(Duration::from_secs(5)));
    assert_receive_queue_full(frames.receive_frame(Duration::ZERO));
}

// ---- the limits at their edges -------------------------------------------------------------------

const NUMBERED: usize = 200;

/// Sends 200 text messages "0" .. "199" in one go, then closes with 1000.
fn numbered_peer() -> Peer {
    spawn_peer(|script| {
        for n in 0..NUMBERED {
            if !script.send(&[&text_frame(&n.to_string())]) {
                return;
            }
        }
        script.send_close(1000);
    })
}

fn assert_server_closed_normally(result: Result<Frame, ReceiveError>) {
    match result {
        Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close))))
            if close.code.0 == 1000 => {}
        other => panic!("after the last message, the server's close 1000; got {other:?}"),
    }
}

fn assert_numbered(n: usize, frame: &Frame) {
    assert_eq!(
        frame.as_text(),
        Some(n.to_string().as_str()),
        "message {n} out of order or altered"
    );
}

/// Simple API, one limit at 1 (the other at its default): the client reads one message, pauses,
/// and resumes each time the program takes it — 200 times. Every message arrives, in order,
/// then the close. Before the program takes anything, the client has read exactly one frame.
async fn simple_receives_200_messages_one_at_a_time(options: ConnectOptions) {
    let peer = numbered_peer();
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options.ping_interval(None)),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connection.stats().await.frames_in,
        1,
        "with room for one message, the client reads one and pauses"
    );
    for n in 0..NUMBERED {
        match frames.receive_frame(Duration::from_secs(5)).await {
            Ok(frame) => assert_numbered(n, &frame),
            Err(error) => panic!("message {n}: {error:?}"),
        }
    }
    assert_server_closed_normally(frames.receive_frame(Duration::from_secs(5)).await);
}

#[actix_rt::test]
async fn simple_max_queue_1_delivers_200_messages_in_order() {
    let _shared = shared();
    simple_receives_200_messages_one_at_a_time(ConnectOptions::default().max_queue(1)).await;
}

#[actix_rt::test]
async fn simple_max_queue_bytes_1_delivers_200_messages_in_order() {
    let _shared = shared();
    simple_receives_200_messages_one_at_a_time(ConnectOptions::default().max_queue_bytes(1)).await;
}

/// Blocking API, one limit at 1: as the simple API.
fn blocking_receives_200_messages_one_at_a_time(options: ConnectOptions) {
    let peer = numbered_peer();
    let (connection, frames) =
        blocking::connect(peer.url.clone(), no_headers(), options.ping_interval(None))
            .expect("connects");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connection.stats().frames_in,
        1,
        "with room for one message, the client reads one and pauses"
    );
    for n in 0..NUMBERED {
        match frames.receive_frame(Duration::from_secs(5)) {
            Ok(frame) => assert_numbered(n, &frame),
            Err(error) => panic!("message {n}: {error:?}"),
        }
    }
    assert_server_closed_normally(frames.receive_frame(Duration::from_secs(5)));
}

#[test]
fn blocking_max_queue_1_delivers_200_messages_in_order() {
    let _shared = shared();
    blocking_receives_200_messages_one_at_a_time(ConnectOptions::default().max_queue(1));
}

#[test]
fn blocking_max_queue_bytes_1_delivers_200_messages_in_order() {
    let _shared = shared();
    blocking_receives_200_messages_one_at_a_time(ConnectOptions::default().max_queue_bytes(1));
}

/// Both limits at `usize::MAX` (no limit): the connection opens, reads everything without
/// pausing (the whole burst and the close are read before the program takes anything), and the
/// `Frames` stream yields every message in order, then ends with the server's close.
#[actix_rt::test]
async fn simple_limits_at_usize_max_deliver_everything_through_the_stream() {
    let _shared = shared();
    let peer = numbered_peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(usize::MAX)
        .max_queue_bytes(usize::MAX);
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    // Nothing taken yet, and still the client reads on: the server gets the close echoed.
    assert!(
        wait_until(Duration::from_secs(5), || peer
            .client_close_code()
            .is_some())
        .await,
        "with no limit, the client reads the whole burst and the close without the program"
    );
    assert_eq!(peer.client_close_code(), Some(Some(1000)));
    for n in 0..NUMBERED {
        match actix_rt::time::timeout(Duration::from_secs(5), frames.next()).await {
            Ok(Some(frame)) => assert_numbered(n, &frame),
            Ok(None) => panic!("the stream ended before message {n}: {:?}", frames.end()),
            Err(_) => panic!("message {n} did not come within 5 s"),
        }
    }
    match actix_rt::time::timeout(Duration::from_secs(5), frames.next()).await {
        Ok(None) => {}
        other => panic!("the stream ends after the last message; got {other:?}"),
    }
    assert!(
        matches!(
            frames.end(),
            Some(DisconnectReason::ServerClosed(Some(close))) if close.code.0 == 1000
        ),
        "{:?}",
        frames.end()
    );
    drop(connection);
}

// ---- dropping Frames ----------------------------------------------------------------------------

const FLOOD_FRAME_LEN: usize = 64 << 10;

/// Writes 64 KiB binary frames until the client closes (at most 30 s), then answers its close.
fn flood_peer() -> Peer {
    spawn_peer(|script| {
        let frame = frame_bytes(true, opcode::BINARY, &vec![0x5a; FLOOD_FRAME_LEN]);
        let until = Instant::now() + Duration::from_secs(30);
        while !script.client_closed() && Instant::now() < until {
            if !script.send(&[&frame]) {
                return;
            }
        }
    })
}

fn flood_options() -> ConnectOptions {
    ConnectOptions::default()
        .ping_interval(None)
        .max_queue(16)
        .close_timeout(Duration::from_secs(10))
}

/// Waits until the flood stalls (the client stopped reading): no byte written for 300 ms.
fn flood_stalled(peer: &Peer) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = peer.written();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(300));
        let now = peer.written();
        if now == last && now > 0 {
            return true;
        }
        last = now;
    }
    false
}

/// Simple API: the queue is full and the server floods; the program drops `Frames` and keeps the
/// `Connection`. Dropping abandons the queue, so the client reads (and discards) again and the
/// close handshake completes at once instead of waiting the 10 s `close_timeout` for a close
/// it could not read; the server gets the client's close with code 1000.
#[actix_rt::test]
async fn simple_dropping_frames_lets_close_finish_behind_a_flood() {
    let _shared = shared();
    let peer = flood_peer();
    let (connection, frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), flood_options()),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    // Until the flood stalls: the queue is full and the client is not reading.
    let stalled = {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = peer.written();
        loop {
            actix_rt::time::sleep(Duration::from_millis(300)).await;
            let now = peer.written();
            if now == last && now > 0 {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            last = now;
        }
    };
    assert!(stalled, "setup: the flood never stalled");

    drop(frames);
    let closing = Instant::now();
    actix_rt::time::timeout(Duration::from_secs(15), connection.close())
        .await
        .expect("close resolves within close_timeout and then some");
    let took = closing.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "close took {took:?} (close_timeout 10 s): it waited behind the frames nobody can take"
    );
    assert!(
        wait_until(Duration::from_secs(5), || peer
            .client_close_code()
            .is_some())
        .await,
        "the server never got the client's close frame"
    );
    assert_eq!(peer.client_close_code(), Some(Some(1000)));
}

/// Blocking API: the same, with a blocking `close()` from a plain thread.
#[test]
fn blocking_dropping_frames_lets_close_finish_behind_a_flood() {
    let _shared = shared();
    let peer = flood_peer();
    let (connection, frames) =
        blocking::connect(peer.url.clone(), no_headers(), flood_options()).expect("connects");
    assert!(flood_stalled(&peer), "setup: the flood never stalled");

    drop(frames);
    let closing = Instant::now();
    connection.close();
    let took = closing.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "close took {took:?} (close_timeout 10 s): it waited behind the frames nobody can take"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer.client_close_code().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(peer.client_close_code(), Some(Some(1000)));
}

// ---- handing a burst to a waiting program ---------------------------------------------------------

const BURST: usize = 8_000;

/// Waits for `go`, then writes `BURST` text messages "0" .. in one write; stays open until the
/// client closes.
fn burst_peer(go: std::sync::mpsc::Receiver<()>) -> Peer {
    spawn_peer(move |script| {
        if go.recv_timeout(Duration::from_secs(20)).is_err() {
            return;
        }
        let burst: Vec<u8> = (0..BURST)
            .flat_map(|n| text_frame(&n.to_string()))
            .collect();
        script.send(&[&burst]);
    })
}

/// Tells the peer to send its burst once the program has had time to start waiting.
fn go_soon(go: std::sync::mpsc::Sender<()>) {
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let _ = go.send(());
    });
}

/// Lets a receive register its waker and be woken by the burst, then drops it untaken: the
/// program has stopped receiving for now.
async fn wait_then_stop_receiving(frames: &mut minch::Frames, go: std::sync::mpsc::Sender<()>) {
    let mut next = frames.next();
    let waiting = std::future::poll_fn(|cx| {
        use std::future::Future as _;
        std::task::Poll::Ready(std::pin::Pin::new(&mut next).poll(cx).is_pending())
    })
    .await;
    assert!(waiting, "nothing before the burst");
    let _ = go.send(());
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    drop(next);
}

async fn receive_the_burst(frames: &mut minch::Frames) {
    for n in 0..BURST {
        match frames.receive_frame(Duration::from_secs(10)).await {
            Ok(frame) => assert_numbered(n, &frame),
            Err(error) => panic!("message {n} of the burst; got {error:?}"),
        }
    }
}

/// A program waiting in `receive_frame` when a burst of 8 000 messages lands is handed the
/// first part as soon as the client has read it, not after the client read the whole burst
/// (which, with a queue this large, is what it would otherwise do before the program's task
/// runs). Then every message arrives, in order.
#[actix_rt::test]
async fn simple_a_waiting_program_gets_a_burst_a_part_at_a_time() {
    let _shared = shared();
    let (go, go_rx) = std::sync::mpsc::channel();
    let peer = burst_peer(go_rx);
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(1_000_000);
    let (connection, mut frames) = minch::connect(peer.url.clone(), no_headers(), options)
        .await
        .expect("connects");
    go_soon(go);
    let first = frames
        .receive_frame(Duration::from_secs(10))
        .await
        .expect("the burst's first message");
    assert_numbered(0, &first);
    let mut ready = 1;
    while let Ok(Some(frame)) = frames.try_receive_frame() {
        assert_numbered(ready, &frame);
        ready += 1;
    }
    assert!(
        ready <= BURST / 8,
        "the waiting program was handed {ready} of {BURST} messages at once: it waited for the \
         client to read most of the burst"
    );
    for n in ready..BURST {
        match frames.receive_frame(Duration::from_secs(10)).await {
            Ok(frame) => assert_numbered(n, &frame),
            Err(error) => panic!("message {n} of the burst; got {error:?}"),
        }
    }
    connection.close().await;
}

/// A program woken for a burst that stops receiving without taking it: the client waits for
/// it only while the traffic flows. `close()` then reads on to the server's close (no close
/// timeout), and every message of the burst is still delivered before the end.
#[actix_rt::test]
async fn simple_a_close_is_not_held_up_by_a_hand_over_never_taken() {
    let _shared = shared();
    let (go, go_rx) = std::sync::mpsc::channel();
    let peer = burst_peer(go_rx);
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(1_000_000)
        .close_timeout(Duration::from_secs(5));
    let (connection, mut frames) = minch::connect(peer.url.clone(), no_headers(), options)
        .await
        .expect("connects");
    wait_then_stop_receiving(&mut frames, go).await;

    let started = Instant::now();
    connection.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close() took {:?}: the close handshake waited for the program",
        started.elapsed()
    );
    assert_eq!(peer.client_close_code(), Some(Some(1000)));
    receive_the_burst(&mut frames).await;
    match frames.receive_frame(Duration::from_secs(5)).await {
        Err(ReceiveError::Closed(DisconnectReason::ClientClosed(close))) => {
            assert_eq!(close.code.0, 1000)
        }
        other => panic!("after the burst, the client's own close 1000; got {other:?}"),
    }
}

/// The same program with keepalive on (ping every 100 ms, pong timeout 200 ms): not taking a
/// hand-over for a second is no reason to disconnect while the queue has room. The client reads
/// on at the next keepalive tick, sees its pongs, and the program later gets every message of
/// the burst on a connection still open.
#[actix_rt::test]
async fn simple_keepalive_is_not_held_up_by_a_hand_over_never_taken() {
    let _shared = shared();
    let (go, go_rx) = std::sync::mpsc::channel();
    let peer = burst_peer(go_rx);
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(200))
        .max_queue(1_000_000);
    let (connection, mut frames) = minch::connect(peer.url.clone(), no_headers(), options)
        .await
        .expect("connects");
    wait_then_stop_receiving(&mut frames, go).await;
    actix_rt::time::sleep(Duration::from_millis(1000)).await;
    assert!(peer.pings() >= 3, "the client kept pinging");

    receive_the_burst(&mut frames).await;
    connection
        .send_frame(Frame::text("still open"))
        .await
        .expect("the connection is still open");
    connection.close().await;
    assert_eq!(peer.client_close_code(), Some(Some(1000)));
}
