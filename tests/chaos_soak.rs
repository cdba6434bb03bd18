//! Chaos soak (issue 15): a few hundred clients of every API against servers that misbehave.
//!
//! ```sh
//! cargo test --test chaos_soak -- --nocapture                      # 60 s, 300 clients (debug)
//! MINCH_SOAK_SECS=1800 nice -n 10 cargo test --release --test chaos_soak -- --nocapture
//! ```
//!
//! `MINCH_SOAK_SECS` (default 60) is how long the clients send; `MINCH_SOAK_CLIENTS` (default
//! 300) how many there are; `MINCH_SOAK_SEED` fixes the servers' and clients' random choices
//! (the schedule still depends on timing).
//!
//! # The servers
//!
//! [`SERVERS`] raw WebSocket servers on 127.0.0.1 (tokio, each on a thread of its own, written
//! here so that every misbehaviour is in our hands). Every few seconds (2–5 s) a server closes
//! its listener, drops every connection it holds, waits 0.2–1 s and listens on the same port
//! again. Each connection gets a [`Mode`], drawn at random: a well-behaved peer; one that closes
//! after a while with a random valid close code; one that writes half a frame and resets the
//! connection (`SO_LINGER` 0); a black hole that reads (and records) everything but never
//! writes, after the handshake or without one; one that stops reading after a while, so that the
//! client's writes back up; and a `503` (with `Retry-After: 1` half the time). Each server keeps
//! a ledger: for every numbered message it read, the client, the sequence number and the
//! connection it came on; and which connections it read the client's close frame on.
//!
//! # The clients
//!
//! [`MINCH_SOAK_CLIENTS`](clients) clients, mixed: actor clients awaiting each
//! [`SendFrame`] (half of them on two extra arbiters), actor clients that fire and forget
//! (`do_send`), simple-API clients ([`minch::connect`]) and blocking-API clients
//! ([`minch::blocking::connect`], a thread each). Each sends messages `"<client> <connection>
//! <seq> <padding>"` at a random pace, now and then a large one (8–48 KiB). Actor clients
//! reconnect by themselves after [`minch::reconnect_delay`] (the backoff, 100 ms to 3 s, factor 1.5,
//! or a 503's `Retry-After` when longer); simple and blocking
//! clients open a new connection when theirs ends, and close it themselves now and then. The
//! connection number is in the request path, so the server knows it.
//!
//! # The checks
//!
//! 1. **No panic** anywhere (a panic in a client task, a server or a blocking thread is
//!    counted and fails the test), and the whole run ends within its watchdog.
//! 2. **Every send resolved exactly once**: every awaited send (actor `SendFrame`, simple and
//!    blocking `send_frame`) got exactly one result, none hung for [`HANG`]. A `do_send` has no
//!    result to wait for; its refusals reach `handle_error`, so for those clients the check is
//!    that refusals plus messages the server read never exceed the messages fired.
//! 3. **No message delivered twice**: no (client, seq) appears twice in the servers' ledgers.
//! 4. **No message delivered that was refused**: a send that resolved with an error was never
//!    read by a server (the library says such a frame was not written).
//! 5. **Every `Ok` not followed by a reset reached the server**, precisely: if a send resolved
//!    `Ok` while connection *c* of its client was current, and the server then read the
//!    client's close frame on *c*, the server read the message, and on *c*. A client writes
//!    nothing after its close frame and TCP keeps order, so everything written before it was
//!    read. A connection that the server dropped, reset, or stopped reading, or that the client
//!    failed without its close frame reaching the server, is "followed by a reset": its `Ok`s
//!    may be lost in socket buffers and are not checked. (For an awaited actor send, "while
//!    connection *c* was current" means the client's connection number was *c* both before the
//!    send and after its answer; when a reconnect came in between, the `Ok` is only counted.)
//! 6. **Reconnect delays follow the backoff**: for every actor reconnect, the time from
//!    `handle_disconnect` returning `reconnect_delay(.., attempt, ..)` to the next `connect` is never earlier
//!    than that delay (minus [`EARLY_TOLERANCE`]) and late by less than [`LATE_BOUND`]. The
//!    lateness distribution is printed. The bound is loose on purpose: a debug build on a
//!    2-core machine shared with other tests can starve an arbiter for a second or more; what
//!    the check is for is a delay that is ignored (early) or lost (never fires, caught by the
//!    watchdog and by `attempt` numbering). Also, `attempt` counts the failures since the last
//!    upgrade, from 1.
//! 7. **Resources**: open file descriptors (`/proc/self/fd`) and threads (`/proc/self/task`)
//!    back to the baseline once clients, arbiters and servers have stopped; live heap (a
//!    counting global allocator) back within [`HEAP_LEAK_BOUND`] of the baseline; during the
//!    run, the average live heap and RSS of the last quarter within [`GROWTH_BOUND`] of the
//!    first quarter's in a run of [`LONG_RUN`] seconds or more (a warm-up of [`WARM_UP`] is
//!    left out of the first quarter); in a shorter run, mostly warm-up, the live heap within
//!    [`SHORT_RUN_HEAP_GROWTH_BOUND`] and RSS within [`SHORT_RUN_RSS_GROWTH_BOUND`] of the
//!    second quarter's (RSS is read after glibc's `malloc_trim(0)`, so that memory free in
//!    malloc's arenas does not count). The test's
//!    own bookkeeping (the ledger and the book, which grow with every message) is allocated
//!    under [`keeping`] and counted apart: it is left out of the live heap and subtracted from
//!    RSS.
//! 8. **Nothing left behind**: every actor client ran `terminate` once and dropped its handler
//!    once all clients were told to close; after the System has stopped, the live heap is back
//!    near the baseline (a task or timer left behind would hold its memory).
//!
//! What is not checked: the order of delivery (no message is retried, so order is implied by
//! TCP), frames from the server to the client (the servers send only control frames), TLS.

use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use minch::{
    reconnect_delay, BackoffOptions, Client, ClientContext, ConnectOptions, ConnectRequest,
    DisconnectReason, Error, Frame, MinchHandler, Reconnect, Reply, Response, SendError, SendFrame,
    StopReason,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// ---------------------------------------------------------------------------------------
// A counting allocator: live bytes of the whole test binary.
// ---------------------------------------------------------------------------------------

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
/// Live bytes of the test's own bookkeeping (ledger and book), kept apart from [`LIVE`].
static BOOKKEEPING: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// Set while the test updates its bookkeeping: those bytes count in [`BOOKKEEPING`].
    static KEEPING: Cell<bool> = const { Cell::new(false) };
}

fn counter() -> &'static AtomicI64 {
    if KEEPING.with(Cell::get) {
        &BOOKKEEPING
    } else {
        &LIVE
    }
}

/// Runs `f` with its allocations counted as bookkeeping, not as live heap. Everything that
/// grows or frees the ledger and the book goes through here.
fn keeping<R>(f: impl FnOnce() -> R) -> R {
    KEEPING.with(|k| k.set(true));
    let result = f();
    KEEPING.with(|k| k.set(false));
    result
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { SystemAlloc.alloc(layout) };
        if !ptr.is_null() {
            counter().fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { SystemAlloc.alloc_zeroed(layout) };
        if !ptr.is_null() {
            counter().fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { SystemAlloc.dealloc(ptr, layout) };
        counter().fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { SystemAlloc.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            counter().fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

/// Servers, each with its own port and thread.
const SERVERS: usize = 4;
/// The actor clients' reconnect schedule.
fn backoff_options() -> BackoffOptions {
    BackoffOptions::new(100, 3_000, 1.5)
}
/// A send or connect that has not resolved after this long counts as hung (a failure).
const HANG: Duration = Duration::from_secs(60);
/// A reconnect may come this much before its delay (timer and clock granularity) ...
const EARLY_TOLERANCE: Duration = Duration::from_millis(2);
/// ... and at most this much after it (a loaded debug build; see check 6).
const LATE_BOUND: Duration = Duration::from_secs(10);
/// Allowed growth of the live heap and of RSS (trimmed, bookkeeping subtracted) from the
/// first quarter to the last in a long run (check 7): the issue's "a few percent". Measured
/// (30 min, release): live heap 18.11 / 17.97 / 18.03 / 18.15 MiB, RSS 37.2 / 35.5 / 28.0 /
/// 36.2 MiB.
const GROWTH_BOUND: f64 = 0.05;
/// Runs at least this long are held to [`GROWTH_BOUND`].
const LONG_RUN: u64 = 600;
/// The same in a short run (the 60 s one in `cargo test`). Looser, because a minute is mostly
/// warm-up and noise, not because anything may leak: the connection states and the high-water
/// marks of buffers and runtime slabs settle over the first 30–45 s (live heap 16.7 / 17.2 /
/// 18.0 / 18.0 MiB in a loaded debug run, where the 30 min run is flat), and 4 servers
/// restarting every few seconds move a quarter's average by ±4 %. Leaks are caught in every
/// run by the return to the baseline once everything stopped ([`HEAP_LEAK_BOUND`]).
const SHORT_RUN_HEAP_GROWTH_BOUND: f64 = 0.15;
/// RSS in a short run, from the second quarter to the last: RSS also moves with malloc's
/// fragmentation, which in a 60 s debug run is still settling in the second quarter (live
/// heap flat, RSS 32 → 36 → 39 → 40 MiB).
const SHORT_RUN_RSS_GROWTH_BOUND: f64 = 0.25;
/// Left out of the first quarter: clients connecting for the first time.
const WARM_UP: Duration = Duration::from_secs(5);
/// Live heap allowed above the baseline once everything stopped (check 7).
const HEAP_LEAK_BOUND: i64 = 512 << 10;
/// How long resources get to return to the baseline after the stop.
const SETTLE: Duration = Duration::from_secs(20);

fn soak_secs() -> u64 {
    env_number("MINCH_SOAK_SECS", 60)
}

fn clients() -> usize {
    env_number("MINCH_SOAK_CLIENTS", 300) as usize
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
        Err(_) => default,
    }
}

fn client_options() -> ConnectOptions {
    ConnectOptions::default()
        .connect_timeout(Duration::from_secs(2))
        .upgrade_timeout(Duration::from_secs(2))
        .close_timeout(Duration::from_secs(1))
        .ping_interval(Some(Duration::from_millis(1_000)))
        .pong_timeout(Duration::from_millis(1_500))
        .max_buffered_bytes(256 << 10)
}

// ---------------------------------------------------------------------------------------
// Randomness: a small xorshift per thread, seeded from MINCH_SOAK_SEED or the clock.
// ---------------------------------------------------------------------------------------

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("MINCH_SOAK_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    })
}

static RNG_STREAMS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static RNG: Cell<u64> = Cell::new(
        (seed() ^ RNG_STREAMS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
    );
}

fn rand_u64() -> u64 {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        x
    })
}

/// Uniform in `low..high` (`high > low`).
fn rand_range(low: u64, high: u64) -> u64 {
    low + rand_u64() % (high - low)
}

fn chance(percent: u64) -> bool {
    rand_u64() % 100 < percent
}

fn rand_ms(low: u64, high: u64) -> Duration {
    Duration::from_millis(rand_range(low, high))
}

// ---------------------------------------------------------------------------------------
// The servers' ledger
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Ledger {
    /// (client, seq) → how many times read, and on which connection (the first time).
    seen: HashMap<(u32, u64), (u32, u32)>,
    /// (client, connection) on which the server read the client's close frame.
    clean: HashSet<(u32, u32)>,
    /// Messages whose payload named another client than the request path.
    foreign: u64,
    /// Frames the server could not make sense of.
    garbled: u64,
}

#[derive(Default)]
struct ServerCounters {
    accepted: AtomicU64,
    restarts: AtomicU64,
    bind_retries: AtomicU64,
    modes: [AtomicU64; MODES.len()],
    panics: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reads, answers pings and closes, until the client closes or the server restarts.
    Normal,
    /// Like `Normal`, then after 0.3–3 s closes with a random valid code.
    CloseRandom,
    /// Like `Normal`, then after 0.3–3 s writes half a frame and resets the connection.
    ResetMidFrame,
    /// Answers the upgrade, then reads (and records) everything and writes nothing.
    BlackHole,
    /// Reads the request and never answers it.
    BlackHoleNoHandshake,
    /// Like `Normal`, then after 0.3–3 s stops reading altogether.
    StallReads,
    /// Answers the upgrade with 503 (with `Retry-After: 1` half the time).
    Reject503,
}

const MODES: [(Mode, u64); 7] = [
    (Mode::Normal, 30),
    (Mode::CloseRandom, 20),
    (Mode::ResetMidFrame, 14),
    (Mode::BlackHole, 7),
    (Mode::BlackHoleNoHandshake, 4),
    (Mode::StallReads, 10),
    (Mode::Reject503, 15),
];

fn pick_mode() -> (usize, Mode) {
    let total: u64 = MODES.iter().map(|(_, w)| w).sum();
    let mut roll = rand_range(0, total);
    for (i, (mode, weight)) in MODES.iter().enumerate() {
        if roll < *weight {
            return (i, *mode);
        }
        roll -= weight;
    }
    unreachable!()
}

/// Valid close codes a server may send (RFC 6455 §7.4.1 and the registry; 3000–4999 free).
fn random_close_code() -> u16 {
    const CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013];
    if chance(30) {
        rand_range(3000, 5000) as u16
    } else {
        CODES[rand_range(0, CODES.len() as u64) as usize]
    }
}

struct ServerSide {
    ledger: Mutex<Ledger>,
    counters: ServerCounters,
    stop: AtomicBool,
}

/// A port below the ephemeral range (so no client socket can take it while its server is
/// down, nor connect to itself there), free now.
fn pick_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32768);
    for _ in 0..1000 {
        let port = rand_range(10_000, u64::from(low.max(10_100))) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

fn start_server(side: Arc<ServerSide>, port: u16, index: usize) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("soak-server-{index}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(serve(side.clone(), port));
            }));
            if outcome.is_err() {
                side.counters.panics.fetch_add(1, Ordering::Relaxed);
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        })
        .expect("spawn server thread")
}

async fn bind(side: &ServerSide, port: u16) -> Option<tokio::net::TcpListener> {
    // The port may be held for a moment by a socket of the previous listener's run.
    for _ in 0..200 {
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listener.set_nonblocking(true).expect("non-blocking");
            return Some(tokio::net::TcpListener::from_std(listener).expect("tokio listener"));
        }
        side.counters.bind_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn serve(side: Arc<ServerSide>, port: u16) {
    while !side.stop.load(Ordering::Relaxed) {
        let Some(listener) = bind(&side, port).await else {
            panic!("could not listen on 127.0.0.1:{port} again");
        };
        let up_until = tokio::time::Instant::now() + rand_ms(2_000, 5_000);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        side.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let side = side.clone();
                        conns.spawn(async move { connection(stream, &side).await });
                    }
                }
                _ = tokio::time::sleep_until(up_until) => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if side.stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            while let Some(done) = conns.try_join_next() {
                if done.is_err_and(|e| e.is_panic()) {
                    side.counters.panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The restart: no listener, every connection dropped.
        drop(listener);
        conns.abort_all();
        while let Some(done) = conns.join_next().await {
            if done.is_err_and(|e| e.is_panic()) {
                side.counters.panics.fetch_add(1, Ordering::Relaxed);
            }
        }
        side.counters.restarts.fetch_add(1, Ordering::Relaxed);
        if !side.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(rand_ms(200, 1_000)).await;
        }
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let digest = sha1::Sha1::digest(format!(
        "{}258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
        key.trim()
    ));
    base64::engine::general_purpose::STANDARD.encode(digest)
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// One client frame from the front of `buf`: (opcode, unmasked payload, bytes used).
fn client_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x80 == 0 || buf[1] & 0x80 == 0 {
        return Err(()); // the client never fragments and always masks
    }
    let (len, mut pos) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > 1 << 20 {
        return Err(());
    }
    if buf.len() < pos + 4 + len as usize {
        return Ok(None);
    }
    let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let payload = buf[pos..pos + len as usize]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    Ok(Some((buf[0] & 0x0F, payload, pos + len as usize)))
}

/// `/c/<client>/<connection>` → (client, connection).
fn parse_path(head: &str) -> Option<(u32, u32)> {
    let path = head.lines().next()?.split_whitespace().nth(1)?;
    let mut parts = path.strip_prefix("/c/")?.split('/');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// `"<client> <connection> <seq> ..."` → (client, connection, seq).
fn parse_message(payload: &[u8]) -> Option<(u32, u32, u64)> {
    let text = std::str::from_utf8(payload.get(..payload.len().min(64))?).ok()?;
    let mut parts = text.split(' ');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

async fn connection(mut stream: tokio::net::TcpStream, side: &ServerSide) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = vec![0u8; 16 << 10];
    // The request head, bounded in size and time.
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 << 10 {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let (Some((client, conn)), Some(key)) = (parse_path(&head), header(&head, "sec-websocket-key"))
    else {
        side.ledger.lock().unwrap().garbled += 1;
        return;
    };
    let (index, mode) = pick_mode();
    side.counters.modes[index].fetch_add(1, Ordering::Relaxed);
    match mode {
        Mode::Reject503 => {
            let retry = if chance(50) { "retry-after: 1\r\n" } else { "" };
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\n{retry}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        Mode::BlackHoleNoHandshake => {
            while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
            return;
        }
        _ => {}
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        accept_key(key)
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let act_at = tokio::time::Instant::now() + rand_ms(300, 3_000);
    let mut acted = !matches!(
        mode,
        Mode::CloseRandom | Mode::ResetMidFrame | Mode::StallReads
    );
    let mut close_sent = false;
    let quiet = mode == Mode::BlackHole;
    loop {
        // Frames already read.
        loop {
            match client_frame(&buf) {
                Ok(None) => break,
                Err(()) => {
                    side.ledger.lock().unwrap().garbled += 1;
                    return;
                }
                Ok(Some((opcode, payload, used))) => {
                    buf.drain(..used);
                    match opcode {
                        0x1 | 0x2 => {
                            let mut ledger = side.ledger.lock().unwrap();
                            match parse_message(&payload) {
                                Some((from, _, seq)) if from == client => keeping(|| {
                                    ledger.seen.entry((client, seq)).or_insert((0, conn)).0 += 1;
                                }),
                                Some(_) => ledger.foreign += 1,
                                None => ledger.garbled += 1,
                            }
                        }
                        0x9 if !quiet && !close_sent => {
                            let pong = stream.write_all(&server_frame(0xA, &payload)).await;
                            if pong.is_err() {
                                return;
                            }
                        }
                        0x8 => {
                            keeping(|| side.ledger.lock().unwrap().clean.insert((client, conn)));
                            if !quiet && !close_sent {
                                let code = payload.get(..2).unwrap_or_default();
                                let _ = stream.write_all(&server_frame(0x8, code)).await;
                            }
                            let _ = stream.shutdown().await;
                            return;
                        }
                        _ => {}
                    }
                }
            }
        }
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            },
            _ = tokio::time::sleep_until(act_at), if !acted => {
                acted = true;
                match mode {
                    Mode::CloseRandom => {
                        let mut payload = random_close_code().to_be_bytes().to_vec();
                        payload.extend_from_slice(b"chaos");
                        close_sent = true;
                        if stream.write_all(&server_frame(0x8, &payload)).await.is_err() {
                            return;
                        }
                    }
                    Mode::ResetMidFrame => {
                        // A text frame announcing 100 bytes, 40 of them written; then RST.
                        let frame = server_frame(0x1, &[b'x'; 100]);
                        let _ = stream.write_all(&frame[..42]).await;
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    Mode::StallReads => {
                        // Hold the connection, read nothing, until the restart drops it.
                        std::future::pending::<()>().await;
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The clients' book
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Api {
    ActorAwait,
    ActorDoSend,
    Simple,
    Blocking,
}

const APIS: [Api; 4] = [
    Api::ActorAwait,
    Api::ActorDoSend,
    Api::Simple,
    Api::Blocking,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    /// Resolved Ok; the connection it was written on, when known for sure.
    Ok(Option<u32>),
    Err(ErrKind),
    /// Fired with `do_send`: no answer to wait for.
    Fired,
    Hung,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ErrKind {
    NotConnected,
    Closing,
    ConnectionLost,
    Stopped,
    BufferFull,
    Invalid,
    Mailbox,
}

fn kind(error: &SendError) -> ErrKind {
    match error {
        SendError::NotConnected => ErrKind::NotConnected,
        SendError::Closing => ErrKind::Closing,
        SendError::ConnectionLost => ErrKind::ConnectionLost,
        SendError::Stopped => ErrKind::Stopped,
        SendError::BufferFull => ErrKind::BufferFull,
        _ => ErrKind::Invalid,
    }
}

struct ClientLog {
    api: Api,
    /// Indexed by seq - 1.
    outcomes: Vec<Outcome>,
    /// A result for a send that had one already.
    resolved_twice: u64,
    connections: u64,
    connect_failures: u64,
}

struct Book {
    clients: Vec<Mutex<ClientLog>>,
    panics: AtomicU64,
}

impl Book {
    fn start(&self, id: u32) -> u64 {
        let mut log = self.clients[id as usize].lock().unwrap();
        keeping(|| log.outcomes.push(Outcome::Pending));
        log.outcomes.len() as u64
    }

    fn resolve(&self, id: u32, seq: u64, outcome: Outcome) {
        let mut log = self.clients[id as usize].lock().unwrap();
        let slot = &mut log.outcomes[seq as usize - 1];
        if *slot == Outcome::Pending {
            *slot = outcome;
        } else {
            log.resolved_twice += 1;
        }
    }

    fn connected(&self, id: u32, ok: bool) {
        let mut log = self.clients[id as usize].lock().unwrap();
        if ok {
            log.connections += 1;
        } else {
            log.connect_failures += 1;
        }
    }
}

fn message(id: u32, conn: u32, seq: u64) -> Frame {
    let mut text = format!("{id} {conn} {seq} ");
    let pad = if chance(6) {
        rand_range(8 << 10, 48 << 10)
    } else {
        rand_range(0, 64)
    };
    text.extend(std::iter::repeat_n('x', pad as usize));
    if chance(50) {
        Frame::text(text)
    } else {
        Frame::binary(text.into_bytes())
    }
}

fn url(port: u16, id: u32, conn: u32) -> String {
    format!("ws://127.0.0.1:{port}/c/{id}/{conn}")
}

/// The pause between two messages of a client.
fn pace() -> Duration {
    rand_ms(20, 200)
}

// ---------------------------------------------------------------------------------------
// Actor clients
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct ActorShared {
    /// The connection attempt under way (or last), numbered from 1.
    conn: AtomicU32,
    terminated: AtomicU32,
    send_refusals: AtomicU64,
    other_errors: AtomicU64,
    disconnects: AtomicU64,
    /// `attempt` was not the number of failures since the last upgrade.
    attempt_mismatches: AtomicU64,
}

#[derive(Default)]
struct Reconnects {
    /// Actual delay minus the backoff delay, in microseconds.
    lateness_us: Mutex<Vec<i64>>,
}

static ALIVE_HANDLERS: AtomicUsize = AtomicUsize::new(0);

struct SoakHandler {
    id: u32,
    ports: Arc<Vec<u16>>,
    shared: Arc<ActorShared>,
    reconnects: Arc<Reconnects>,
    book: Arc<Book>,
    /// Failures since the last upgrade, as the handler counts them.
    failures: u32,
    /// The current attempt got its upgrade.
    upgraded: bool,
    /// Since when, and for how long, the client waits to reconnect.
    waiting: Option<(Instant, Duration)>,
}

impl SoakHandler {
    fn new(
        id: u32,
        ports: Arc<Vec<u16>>,
        shared: Arc<ActorShared>,
        reconnects: Arc<Reconnects>,
        book: Arc<Book>,
    ) -> Self {
        ALIVE_HANDLERS.fetch_add(1, Ordering::SeqCst);
        SoakHandler {
            id,
            ports,
            shared,
            reconnects,
            book,
            failures: 0,
            upgraded: false,
            waiting: None,
        }
    }
}

impl Drop for SoakHandler {
    fn drop(&mut self) {
        ALIVE_HANDLERS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MinchHandler for SoakHandler {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        if let Some((since, delay)) = self.waiting.take() {
            let late = since.elapsed().as_micros() as i64 - delay.as_micros() as i64;
            keeping(|| self.reconnects.lateness_us.lock().unwrap().push(late));
        }
        self.upgraded = false;
        let conn = self.shared.conn.fetch_add(1, Ordering::SeqCst) + 1;
        let port = self.ports[rand_range(0, self.ports.len() as u64) as usize];
        ConnectRequest::new(url(port, self.id, conn)).options(client_options())
    }

    fn handle_connect(&mut self, _: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.failures = 0;
        self.upgraded = true;
        self.book.connected(self.id, true);
        Reply::Continue
    }

    fn handle_frame(&mut self, _frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        match error {
            Error::Send(_) => self.shared.send_refusals.fetch_add(1, Ordering::SeqCst),
            _ => self.shared.other_errors.fetch_add(1, Ordering::SeqCst),
        };
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.shared.disconnects.fetch_add(1, Ordering::SeqCst);
        if !self.upgraded {
            self.book.connected(self.id, false);
        }
        self.failures += 1;
        if attempt != self.failures {
            self.shared
                .attempt_mismatches
                .fetch_add(1, Ordering::SeqCst);
            self.failures = attempt;
        }
        // What the default handle_disconnect does, with the soak's faster schedule: the
        // backoff, or the 503's `Retry-After` when it asks for longer.
        let delay = reconnect_delay(reason.error(), attempt, backoff_options());
        self.waiting = Some((Instant::now(), delay));
        Reconnect::After(delay)
    }

    fn terminate(&mut self, _reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        self.shared.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

async fn actor_driver(
    id: u32,
    api: Api,
    addr: actix::Addr<Client<SoakHandler>>,
    shared: Arc<ActorShared>,
    book: Arc<Book>,
    deadline: Instant,
) {
    while Instant::now() < deadline {
        actix_rt::time::sleep(pace()).await;
        let burst = if api == Api::ActorDoSend {
            rand_range(1, 4)
        } else {
            1
        };
        for _ in 0..burst {
            let seq = book.start(id);
            let before = shared.conn.load(Ordering::SeqCst);
            let frame = message(id, before, seq);
            if api == Api::ActorDoSend {
                addr.do_send(SendFrame(frame));
                book.resolve(id, seq, Outcome::Fired);
                continue;
            }
            let answer = actix_rt::time::timeout(HANG, addr.send(SendFrame(frame))).await;
            let after = shared.conn.load(Ordering::SeqCst);
            let outcome = match answer {
                Err(_) => Outcome::Hung,
                Ok(Err(_mailbox)) => Outcome::Err(ErrKind::Mailbox),
                Ok(Ok(Ok(()))) => Outcome::Ok((before == after).then_some(before)),
                Ok(Ok(Err(error))) => Outcome::Err(kind(&error)),
            };
            book.resolve(id, seq, outcome);
        }
    }
    let _ = actix_rt::time::timeout(HANG, addr.send(minch::Close)).await;
}

// ---------------------------------------------------------------------------------------
// Simple and blocking clients
// ---------------------------------------------------------------------------------------

async fn simple_client(id: u32, ports: Arc<Vec<u16>>, book: Arc<Book>, deadline: Instant) {
    let mut conn = 0;
    while Instant::now() < deadline {
        conn += 1;
        let port = ports[rand_range(0, ports.len() as u64) as usize];
        let opened = actix_rt::time::timeout(
            HANG,
            minch::connect(
                url(port, id, conn),
                Vec::<(String, String)>::new(),
                client_options(),
            ),
        )
        .await;
        let Ok(Ok((connection, frames))) = opened else {
            book.connected(id, false);
            actix_rt::time::sleep(rand_ms(50, 400)).await;
            continue;
        };
        book.connected(id, true);
        let planned = rand_range(5, 200);
        for sent in 1.. {
            if Instant::now() >= deadline {
                break;
            }
            actix_rt::time::sleep(pace()).await;
            let seq = book.start(id);
            let sending = connection.send_frame(message(id, conn, seq));
            let outcome = match actix_rt::time::timeout(HANG, sending).await {
                Err(_) => Outcome::Hung,
                Ok(Ok(())) => Outcome::Ok(Some(conn)),
                Ok(Err(error)) => Outcome::Err(kind(&error)),
            };
            book.resolve(id, seq, outcome);
            if !matches!(outcome, Outcome::Ok(_)) {
                break;
            }
            if sent >= planned {
                break;
            }
        }
        let _ = actix_rt::time::timeout(HANG, connection.close()).await;
        drop(frames);
    }
}

fn blocking_client(id: u32, ports: Arc<Vec<u16>>, book: Arc<Book>, deadline: Instant) {
    let mut conn = 0;
    while Instant::now() < deadline {
        conn += 1;
        let port = ports[rand_range(0, ports.len() as u64) as usize];
        let opened = minch::blocking::connect(
            url(port, id, conn),
            Vec::<(String, String)>::new(),
            client_options(),
        );
        let Ok((connection, frames)) = opened else {
            book.connected(id, false);
            std::thread::sleep(rand_ms(50, 400));
            continue;
        };
        book.connected(id, true);
        let planned = rand_range(5, 200);
        for sent in 1.. {
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(pace());
            let seq = book.start(id);
            let outcome = match connection.send_frame(message(id, conn, seq)) {
                Ok(()) => Outcome::Ok(Some(conn)),
                Err(error) => Outcome::Err(kind(&error)),
            };
            book.resolve(id, seq, outcome);
            if !matches!(outcome, Outcome::Ok(_)) || sent >= planned {
                break;
            }
        }
        connection.close();
        drop(frames);
    }
}

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count())
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// glibc: gives free memory at the top of the heap and free whole pages inside every
    /// arena back to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// RSS once the allocator has given back what it holds free, so that it shows what is used.
fn trimmed_rss() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free; it takes malloc's locks.
    unsafe {
        malloc_trim(0);
    }
    rss()
}

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1 << 20)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Sample {
    at: Duration,
    rss: u64,
    live: i64,
    bookkeeping: i64,
}

/// Waits (bounded) until `cond` holds; says whether it did.
fn settle(mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

// ---------------------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------------------

#[test]
fn chaos_soak() {
    let secs = soak_secs();
    let n = clients();
    assert!(
        n >= APIS.len(),
        "MINCH_SOAK_CLIENTS must be at least {}",
        APIS.len()
    );

    // The watchdog: the test ends, one way or the other.
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog_limit = Duration::from_secs(secs + 240);
    {
        let finished = finished.clone();
        std::thread::Builder::new()
            .name("soak-watchdog".into())
            .spawn(move || {
                let until = Instant::now() + watchdog_limit;
                while Instant::now() < until {
                    if finished.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprintln!(
                    "chaos soak: WATCHDOG: not finished after {watchdog_limit:?} (seed {}); aborting",
                    seed()
                );
                std::process::exit(3);
            })
            .expect("watchdog thread");
    }

    // Warm-up, so that the baseline includes what stays for the process's lifetime: the
    // blocking API's runtime thread and the first use of the thread-local state.
    let _ = minch::blocking::connect(
        "ws://127.0.0.1:1/warm-up",
        Vec::<(String, String)>::new(),
        client_options(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = open_fds();
    let threads_before = threads();
    let live_before = live_heap();
    let rss_before = rss();

    // The servers.
    let side = Arc::new(ServerSide {
        ledger: Mutex::new(Ledger::default()),
        counters: ServerCounters::default(),
        stop: AtomicBool::new(false),
    });
    let mut ports = Vec::new();
    let mut server_threads = Vec::new();
    for index in 0..SERVERS {
        let port = loop {
            let port = pick_port();
            if !ports.contains(&port) {
                break port;
            }
        };
        ports.push(port);
        server_threads.push(start_server(side.clone(), port, index));
    }
    let ports = Arc::new(ports);

    // The clients' book: clients are assigned APIs in turn.
    let api_of = |id: usize| match id % 20 {
        0..=7 => Api::ActorAwait,
        8..=10 => Api::ActorDoSend,
        11..=15 => Api::Simple,
        _ => Api::Blocking,
    };
    let book = Arc::new(Book {
        clients: (0..n)
            .map(|id| {
                Mutex::new(ClientLog {
                    api: api_of(id),
                    outcomes: Vec::new(),
                    resolved_twice: 0,
                    connections: 0,
                    connect_failures: 0,
                })
            })
            .collect(),
        panics: AtomicU64::new(0),
    });
    let reconnects = Arc::new(Reconnects::default());
    let actor_shared: Vec<Arc<ActorShared>> =
        (0..n).map(|_| Arc::new(ActorShared::default())).collect();

    // Samples of RSS and live heap, every 250 ms while the clients send.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let samples = samples.clone();
        std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                while Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(250));
                    let sample = Sample {
                        at: start.elapsed(),
                        rss: trimmed_rss(),
                        live: live_heap(),
                        bookkeeping: BOOKKEEPING.load(Ordering::Relaxed),
                    };
                    keeping(|| samples.lock().unwrap().push(sample));
                }
            })
            .expect("sampler thread")
    };

    // Blocking clients: a thread each.
    let blocking_threads: Vec<JoinHandle<()>> = (0..n)
        .filter(|&id| api_of(id) == Api::Blocking)
        .map(|id| {
            let (ports, book) = (ports.clone(), book.clone());
            std::thread::Builder::new()
                .name(format!("soak-blocking-{id}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        blocking_client(id as u32, ports, book.clone(), deadline);
                    }));
                    if run.is_err() {
                        book.panics.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .expect("blocking client thread")
        })
        .collect();

    // Actor and simple clients: on this thread's System, half of the actor clients on two
    // arbiters of their own.
    let system = actix_rt::System::new();
    let handlers_after_close = system.block_on({
        let (ports, book, reconnects, actor_shared) = (
            ports.clone(),
            book.clone(),
            reconnects.clone(),
            actor_shared.clone(),
        );
        async move {
            let arbiters = [actix_rt::Arbiter::new(), actix_rt::Arbiter::new()];
            let mut tasks = Vec::new();
            for id in 0..n {
                let (ports, book) = (ports.clone(), book.clone());
                let api = api_of(id);
                let id32 = id as u32;
                let task = match api {
                    Api::ActorAwait | Api::ActorDoSend => {
                        let shared = actor_shared[id].clone();
                        let make = {
                            let (shared, reconnects, book) =
                                (shared.clone(), reconnects.clone(), book.clone());
                            move || SoakHandler::new(id32, ports, shared, reconnects, book)
                        };
                        let addr = if id % 2 == 0 {
                            Client::start(make())
                        } else {
                            Client::start_in_arbiter(&arbiters[id / 2 % 2].handle(), make)
                        };
                        actix_rt::spawn(actor_driver(id32, api, addr, shared, book, deadline))
                    }
                    Api::Simple => actix_rt::spawn(simple_client(id32, ports, book, deadline)),
                    Api::Blocking => continue,
                };
                tasks.push(task);
            }
            for task in tasks {
                if task.await.is_err() {
                    book.panics.fetch_add(1, Ordering::SeqCst);
                }
            }
            // Every actor client was told to close: its handler is gone.
            let gone = Instant::now() + SETTLE;
            while ALIVE_HANDLERS.load(Ordering::SeqCst) > 0 && Instant::now() < gone {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            let alive = ALIVE_HANDLERS.load(Ordering::SeqCst);
            for arbiter in arbiters {
                arbiter.stop();
                let _ = arbiter.join();
            }
            alive
        }
    });
    drop(system);
    for thread in blocking_threads {
        if thread.join().is_err() {
            book.panics.fetch_add(1, Ordering::SeqCst);
        }
    }
    let clients_done = start.elapsed();
    let _ = sampler.join();
    let live_clients_stopped = live_heap();

    // The servers stop.
    side.stop.store(true, Ordering::SeqCst);
    for thread in server_threads {
        if thread.join().is_err() {
            side.counters.panics.fetch_add(1, Ordering::SeqCst);
        }
    }

    let fds_back = settle(|| open_fds() <= fds_before);
    let threads_back = settle(|| threads() <= threads_before);
    let heap_back = settle(|| live_heap() - live_before <= HEAP_LEAK_BOUND);
    let (fds_after, threads_after, live_after, rss_after) =
        (open_fds(), threads(), live_heap(), rss());

    // ---- The checks ------------------------------------------------------------------
    let ledger = side.ledger.lock().unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |what: String| {
        if failures.len() < 40 {
            failures.push(what);
        }
    };

    #[derive(Default, Clone)]
    struct PerApi {
        clients: u64,
        connections: u64,
        connect_failures: u64,
        sent: u64,
        ok: u64,
        ok_unattributed: u64,
        failed: u64,
        fired: u64,
        delivered: u64,
        checked_ok: u64,
    }
    let mut per_api: HashMap<Api, PerApi> = HashMap::new();
    let mut errors_by_kind: HashMap<ErrKind, u64> = HashMap::new();
    let mut duplicates = 0u64;
    let mut delivered_total = 0u64;
    for (&(client, seq), &(count, conn)) in &ledger.seen {
        delivered_total += 1;
        if count > 1 {
            duplicates += 1;
            fail(format!(
                "client {client} seq {seq} read {count} times (first on connection {conn})"
            ));
        }
        let outcomes_len = book
            .clients
            .get(client as usize)
            .map_or(0, |log| log.lock().unwrap().outcomes.len());
        if seq == 0 || seq as usize > outcomes_len {
            fail(format!("client {client} seq {seq} read but never sent"));
        }
    }
    for (id, log) in book.clients.iter().enumerate() {
        let log = log.lock().unwrap();
        let stats = per_api.entry(log.api).or_default();
        stats.clients += 1;
        stats.connections += log.connections;
        stats.connect_failures += log.connect_failures;
        stats.sent += log.outcomes.len() as u64;
        if log.resolved_twice > 0 {
            fail(format!(
                "client {id} ({:?}): {} sends resolved twice",
                log.api, log.resolved_twice
            ));
        }
        for (index, outcome) in log.outcomes.iter().enumerate() {
            let seq = index as u64 + 1;
            let read = ledger.seen.get(&(id as u32, seq));
            if read.is_some() {
                stats.delivered += 1;
            }
            match *outcome {
                Outcome::Pending => fail(format!(
                    "client {id} ({:?}) seq {seq} never resolved",
                    log.api
                )),
                Outcome::Hung => fail(format!(
                    "client {id} ({:?}) seq {seq} hung for {HANG:?}",
                    log.api
                )),
                Outcome::Fired => stats.fired += 1,
                Outcome::Err(kind) => {
                    stats.failed += 1;
                    *errors_by_kind.entry(kind).or_default() += 1;
                    if kind == ErrKind::Mailbox {
                        fail(format!("client {id} seq {seq}: actix mailbox error"));
                    }
                    if read.is_some() {
                        fail(format!("client {id} ({:?}) seq {seq} failed with {kind:?} but the server read it", log.api));
                    }
                }
                Outcome::Ok(conn) => {
                    stats.ok += 1;
                    let Some(conn) = conn else {
                        stats.ok_unattributed += 1;
                        continue;
                    };
                    if ledger.clean.contains(&(id as u32, conn)) {
                        stats.checked_ok += 1;
                        match read {
                            None => fail(format!(
                                "client {id} ({:?}) seq {seq}: Ok on connection {conn}, which the server saw close cleanly, but never read",
                                log.api
                            )),
                            Some(&(_, on)) if on != conn => fail(format!(
                                "client {id} ({:?}) seq {seq}: Ok on connection {conn} but read on connection {on}",
                                log.api
                            )),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }
    // Fire-and-forget clients: refusals plus what the server read never exceed what was fired.
    let mut refusals = 0u64;
    let mut other_errors = 0u64;
    let mut disconnects = 0u64;
    for (id, shared) in actor_shared.iter().enumerate() {
        let log = book.clients[id].lock().unwrap();
        if !matches!(log.api, Api::ActorAwait | Api::ActorDoSend) {
            continue;
        }
        let delivered = (1..=log.outcomes.len() as u64)
            .filter(|&seq| ledger.seen.contains_key(&(id as u32, seq)))
            .count() as u64;
        let refused = shared.send_refusals.load(Ordering::SeqCst);
        refusals += refused;
        other_errors += shared.other_errors.load(Ordering::SeqCst);
        disconnects += shared.disconnects.load(Ordering::SeqCst);
        if log.api == Api::ActorDoSend && refused + delivered > log.outcomes.len() as u64 {
            fail(format!(
                "client {id}: {refused} refusals + {delivered} read > {} fired",
                log.outcomes.len()
            ));
        }
        if log.api == Api::ActorAwait && refused > 0 {
            fail(format!(
                "client {id}: {refused} awaited sends also reached handle_error"
            ));
        }
        let terminated = shared.terminated.load(Ordering::SeqCst);
        if terminated != 1 {
            fail(format!("client {id}: terminate ran {terminated} times"));
        }
        let mismatches = shared.attempt_mismatches.load(Ordering::SeqCst);
        if mismatches > 0 {
            fail(format!("client {id}: `attempt` was off {mismatches} times"));
        }
    }
    if handlers_after_close != 0 {
        fail(format!(
            "{handlers_after_close} actor handlers still alive after every client closed"
        ));
    }
    if ledger.foreign > 0 || ledger.garbled > 0 {
        fail(format!(
            "servers read {} foreign and {} garbled messages",
            ledger.foreign, ledger.garbled
        ));
    }
    let panics = book.panics.load(Ordering::SeqCst) + side.counters.panics.load(Ordering::SeqCst);
    if panics > 0 {
        fail(format!("{panics} panics in clients or servers"));
    }

    // Reconnect delays.
    let mut lateness = reconnects.lateness_us.lock().unwrap().clone();
    lateness.sort_unstable();
    let early = lateness
        .iter()
        .filter(|&&late| late < -(EARLY_TOLERANCE.as_micros() as i64))
        .count();
    let too_late = lateness
        .iter()
        .filter(|&&late| late > LATE_BOUND.as_micros() as i64)
        .count();
    if early > 0 {
        fail(format!(
            "{early} reconnects came earlier than the backoff (earliest {} µs)",
            lateness[0]
        ));
    }
    if too_late > 0 {
        fail(format!(
            "{too_late} reconnects came over {LATE_BOUND:?} late"
        ));
    }
    if lateness.is_empty() {
        fail("no reconnect was measured".into());
    }

    // Resources.
    if !fds_back {
        fail(format!("open fds: {fds_before} before, {fds_after} after"));
    }
    if !threads_back {
        fail(format!(
            "threads: {threads_before} before, {threads_after} after"
        ));
    }
    if !heap_back {
        fail(format!(
            "live heap: {:.2} MiB before, {:.2} MiB after (bound +{} KiB)",
            mib(live_before as f64),
            mib(live_after as f64),
            HEAP_LEAK_BOUND >> 10
        ));
    }
    let samples = samples.lock().unwrap();
    let quarter = Duration::from_secs(secs) / 4;
    let quarters: Vec<(f64, f64, usize)> = (0..4)
        .map(|q| {
            let from = (quarter * q).max(if q == 0 { WARM_UP } else { Duration::ZERO });
            let to = quarter * (q + 1);
            let chosen: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .collect();
            let count = chosen.len().max(1) as f64;
            (
                chosen
                    .iter()
                    .map(|s| s.rss as f64 - s.bookkeeping as f64)
                    .sum::<f64>()
                    / count,
                chosen.iter().map(|s| s.live as f64).sum::<f64>() / count,
                chosen.len(),
            )
        })
        .collect();
    let long = secs >= LONG_RUN;
    let (rss_from, rss_bound, heap_bound) = if long {
        (0, GROWTH_BOUND, GROWTH_BOUND)
    } else {
        (1, SHORT_RUN_RSS_GROWTH_BOUND, SHORT_RUN_HEAP_GROWTH_BOUND)
    };
    let rss_growth = quarters[3].0 / quarters[rss_from].0 - 1.0;
    let heap_growth = quarters[3].1 / quarters[0].1 - 1.0;
    if quarters.iter().any(|q| q.2 == 0) {
        fail("a quarter without samples".into());
    } else {
        if rss_growth > rss_bound {
            fail(format!(
                "RSS grew {:.1} % from quarter {} to the last (bound {:.0} %)",
                rss_growth * 100.0,
                rss_from + 1,
                rss_bound * 100.0
            ));
        }
        if heap_growth > heap_bound {
            fail(format!(
                "live heap grew {:.1} % from the first quarter to the last (bound {:.0} %)",
                heap_growth * 100.0,
                heap_bound * 100.0
            ));
        }
    }

    // ---- The summary -----------------------------------------------------------------
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chaos soak: {secs} s, {n} clients, {SERVERS} servers, seed {}",
        seed()
    );
    let _ = writeln!(
        out,
        "  clients done after {:.1} s",
        clients_done.as_secs_f64()
    );
    let c = &side.counters;
    let modes: Vec<String> = MODES
        .iter()
        .enumerate()
        .map(|(i, (mode, _))| format!("{mode:?} {}", c.modes[i].load(Ordering::Relaxed)))
        .collect();
    let _ = writeln!(
        out,
        "  servers: {} connections accepted, {} restarts, {} bind retries; modes: {}",
        c.accepted.load(Ordering::Relaxed),
        c.restarts.load(Ordering::Relaxed),
        c.bind_retries.load(Ordering::Relaxed),
        modes.join(", ")
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>8} {:>9} {:>10}",
        "api",
        "clients",
        "upgrades",
        "conn.fail",
        "sent",
        "ok",
        "failed",
        "fired",
        "read",
        "Ok chckd",
        "Ok unattr"
    );
    let mut totals = PerApi::default();
    for api in APIS {
        let s = per_api.get(&api).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<12} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>8} {:>9} {:>10}",
            format!("{api:?}"),
            s.clients,
            s.connections,
            s.connect_failures,
            s.sent,
            s.ok,
            s.failed,
            s.fired,
            s.delivered,
            s.checked_ok,
            s.ok_unattributed
        );
        totals.sent += s.sent;
        totals.ok += s.ok;
        totals.failed += s.failed;
        totals.connections += s.connections;
    }
    let mut kinds: Vec<_> = errors_by_kind.into_iter().collect();
    kinds.sort();
    let _ = writeln!(
        out,
        "  total: {} upgrades, {} sent, {} ok, {} failed ({kinds:?}); {} read by servers, {} duplicates, {} clean closes seen by servers",
        totals.connections, totals.sent, totals.ok, totals.failed, delivered_total, duplicates, ledger.clean.len()
    );
    let _ = writeln!(
        out,
        "  actor: {disconnects} disconnects (handle_disconnect), {} reconnects measured, {refusals} do_send refusals in handle_error, {other_errors} other errors",
        lateness.len()
    );
    let _ = writeln!(
        out,
        "  reconnect lateness (actual - backoff): min {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lateness, 0.0) as f64 / 1e3,
        percentile(&lateness, 0.5) as f64 / 1e3,
        percentile(&lateness, 0.9) as f64 / 1e3,
        percentile(&lateness, 0.99) as f64 / 1e3,
        percentile(&lateness, 1.0) as f64 / 1e3,
    );
    let buckets: [(i64, &str); 7] = [
        (1_000, "<1ms"),
        (5_000, "<5ms"),
        (20_000, "<20ms"),
        (100_000, "<100ms"),
        (500_000, "<500ms"),
        (2_000_000, "<2s"),
        (i64::MAX, ">=2s"),
    ];
    let mut histogram = Vec::new();
    let mut below = 0;
    for (bound, label) in buckets {
        let count = lateness.iter().filter(|&&l| l < bound).count();
        histogram.push(format!("{label} {}", count - below));
        below = count;
    }
    let _ = writeln!(out, "  lateness histogram: {}", histogram.join(", "));
    let _ = writeln!(out, "  fds: {fds_before} before, {fds_after} after; threads: {threads_before} before, {threads_after} after");
    let _ = writeln!(
        out,
        "  RSS less bookkeeping per quarter (MiB): {:.1} / {:.1} / {:.1} / {:.1} (Q{} to Q4 {:+.1} %); before {:.1}, after {:.1}",
        mib(quarters[0].0), mib(quarters[1].0), mib(quarters[2].0), mib(quarters[3].0),
        rss_from + 1, rss_growth * 100.0, mib(rss_before as f64), mib(rss_after as f64)
    );
    let _ = writeln!(
        out,
        "  live heap per quarter (MiB): {:.2} / {:.2} / {:.2} / {:.2} (growth {:+.1} %)",
        mib(quarters[0].1),
        mib(quarters[1].1),
        mib(quarters[2].1),
        mib(quarters[3].1),
        heap_growth * 100.0
    );
    let _ = writeln!(
        out,
        "  live heap (bookkeeping apart, {:.1} MiB of it at the end): {:.2} MiB before, {:.2} MiB with clients stopped, {:.2} MiB after ({:+} KiB)",
        mib(BOOKKEEPING.load(Ordering::Relaxed) as f64),
        mib(live_before as f64),
        mib(live_clients_stopped as f64),
        mib(live_after as f64),
        (live_after - live_before) >> 10
    );
    finished.store(true, Ordering::SeqCst);
    println!("{out}");
    assert!(
        failures.is_empty(),
        "chaos soak failed (seed {}):\n  {}\n{out}",
        seed(),
        failures.join("\n  ")
    );
}
