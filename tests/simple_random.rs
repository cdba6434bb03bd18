//! Randomized test of the simple API (`minch::connect` → `Connection` + `Frames`) against a
//! scripted server on 127.0.0.1.
//!
//! ```sh
//! cargo test --test simple_random                              # 300 cases, ~10 s
//! MINCH_SIMPLE_CASES=3000 cargo test --test simple_random      # a long run, ~90 s
//! MINCH_SIMPLE_SEED=0x5eed cargo test --test simple_random     # one case (seed from a report)
//! ```
//!
//! `MINCH_SIMPLE_SHRINK` bounds the shrink steps per broken invariant (default 60; 0 turns
//! shrinking off). Add `-- --nocapture` for the coverage tally of a passing run. A seed fixes the
//! case, not the timing: a failure that depends on a race may need a few reruns.
//!
//! # A case
//!
//! * **options**: keepalive off, `close_timeout` 300 ms, `max_buffered_bytes` 1 B–64 KiB,
//!   `max_queue` 1–8 (or 1 024, or 100 000), `max_queue_bytes` 1 B–16 KiB (or the default
//!   16 MiB);
//! * **0–40 steps**, run in order by the test's task (each await bounded); about one step in
//!   twenty closes, so that about half the cases stay open through their steps:
//!   - sending: `feed` (1–30 frames: small, 1–20 KB, bigger than `max_buffered_bytes`, or
//!     100–300 KiB; text, binary, ping, or an invalid 126+ byte ping), a flood (frames of
//!     64–256 KiB fed until `poll_ready` would wait: loopback TCP takes about 3.5 MB before a
//!     server that stopped reading pushes back), `feed` of a close frame, `flush`,
//!     `send_frame`, `try_send_frame`, `send_frames` (0–6 frames, sometimes with a close frame
//!     among them), `send_frame`/`try_send_frame` of a close frame, `close()`,
//!     `SinkExt::close`, cloning a handle, dropping one (sometimes with frames fed and not
//!     flushed; dropping the last closes with 1000). `send_frame`, `try_send_frame`,
//!     `send_frames`, the close frame and `close()` run sometimes in a task of their own, on a
//!     clone of the handle, concurrently with the steps that follow;
//!   - receiving: `receive_frame` with a 0–30 ms timeout, `try_receive_frame`, the `Stream`'s
//!     `next` with a timeout, taking all that is queued, doing nothing for 1–60 ms, or
//!     dropping `Frames` (rarely);
//!   - the server (each command carried out before the next step): echo on/off, stop reading
//!     for 20–300 ms (its receive buffer is 8 KiB), resume, a burst of 1–20 numbered frames (or 300–1 200 small ones),
//!     a ping, a close with a random valid code, a TCP reset;
//! * **the end**: the server reads again; the test takes what is queued, then closes (`close()`,
//!   `SinkExt::close`, or dropping every handle; sometimes while receiving, sometimes not, so
//!   that a full receive queue makes the handshake time out), takes frames until `Frames`
//!   reports the end, and then tries everything once more on the ended connection.
//!
//! Every frame the client sends carries a unique number (`c<n>|`), given in the order frames are
//! handed to the library (a `feed` gets its number once `poll_ready` let it in); every frame the
//! server sends (burst, echo, the pong to a client ping) carries the server's next number
//! (`s<n>|`). The server logs every client frame in wire order.
//!
//! # Invariants (keys appear in reports)
//!
//! * **H** every send, flush, close, receive and background task resolves within 5 s; the case
//!   connects.
//! * **W0** client frames are masked, whole, and carry a number.
//! * **W1** the server gets the client's numbered frames in the order they were given
//!   (strictly increasing), each once, and only frames the test gave.
//! * **W2** a frame whose `send_frame`/`try_send_frame`/`send_frames`/`flush`/`SinkExt::close`
//!   returned `Ok` reached the server, unless the connection was reset: by the server, or by
//!   the client's kernel (a close handshake timed out while frames the program had not taken
//!   were unread in the socket, so closing it sent RST), which discards what was written and
//!   not read yet. `Ok` means "written to the socket", no more.
//! * **W3** a frame refused at feed/send time (`Closing`, `Stopped`, `BufferFull`,
//!   `InvalidFrame`, or any error but `ConnectionLost` from `send_frame`) never reaches the
//!   server.
//! * **W4** nothing follows the client's close frame on the wire (one close frame at most).
//! * **W5** no gaps: a frame the library accepted (`start_send` returned `Ok`, or its send
//!   returned `Ok`) reached the server if any later frame did.
//! * **W6** when the client's own close frame reached the server (the server had not closed
//!   first), every frame accepted before the first close request reached it before the close.
//! * **W7** a close frame whose send returned `Ok` reached the server (same exceptions as W2).
//! * **W8** the client's own close frame carries the code of the first close request (1000 for
//!   `close()`, `SinkExt::close` and dropping the last handle).
//! * **R1** `Frames` delivers the server's frames in order, each once, none skipped.
//! * **R2** when the connection ended by a close handshake (server's or client's) with no reset,
//!   `Frames` delivered every frame the server sent before its close frame.
//! * **R3** after the end, `receive_frame`, `try_receive_frame`, the `Stream` and `Frames::end`
//!   report the same end again, at once; no frame comes after the end.
//! * **R4** once `close()` (or `SinkExt::close`) has returned, `try_receive_frame` alone (no
//!   waiting) finds the end behind the frames still queued.
//! * **E** the end reason fits: `ServerClosed(code)` only with the server's own close and its
//!   code; `ClientClosed(code)` only after a close request, with the first request's code;
//!   `Timeout(Close)` only after a close request; `Io` only after a server reset. So a server
//!   close with no close request before the end is `ServerClosed` with the server's code.
//! * **S1** a send begun after a close request (any handle, any kind), or after any send failed
//!   with `Closing` (the close handshake has begun, for good), fails with `Closing` or
//!   `Stopped`; a frame given after either never reaches the server.
//! * **S2** a send begun after the end was reported, or after `close()`/`SinkExt::close`
//!   returned, fails with `Stopped` (a close frame: `Closing` or `Stopped`).
//! * **S3** other API contracts: an invalid frame fails with `InvalidFrame`; `send_frame`,
//!   `feed` and `send_frames` never fail with `BufferFull`; an empty `send_frames` is `Ok`.
//! * **C** `close()` and `SinkExt::close` return within `close_timeout` (plus 700 ms of slack
//!   for a loaded machine).
//! * **T** the client closes the TCP connection within 3 s of the end (or, with `Frames`
//!   dropped, of the close).
//!
//! Cases run 10 at a time on one actix thread; the servers share one tokio thread. All cases
//! run; then, for each broken invariant, the first case that broke it is shrunk (each candidate
//! run 3 times, failing if any run breaks it) and reported with its seed and a timeline.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::join;
use futures_util::{stream, Sink, SinkExt, StreamExt};
use minch::{
    ConnectOptions, Connection, DisconnectReason, Error, Frame, Frames, ReceiveError, SendError,
    Timeout,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use support::{close_frame, decode_frame, frame_bytes, opcode, sec_websocket_accept};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Cases run at the same time, on one actix thread.
const CONCURRENCY: usize = 10;
const DEFAULT_CASES: u64 = 300;
/// Longest any single await may take (invariant H).
const HANG: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_millis(300);
/// How much longer than `close_timeout` a close may take on a loaded machine (invariant C).
const CLOSE_SLACK: Duration = Duration::from_millis(700);
/// How soon after the end the client must have closed TCP (invariant T).
const TCP_CLOSED_WITHIN: Duration = Duration::from_secs(3);
/// The server's receive buffer: small, so that a pause pushes back on the client quickly.
const SERVER_RCVBUF: u32 = 8 * 1024;
const MAX_HANDLES: usize = 4;
/// Runs of each shrink candidate; it fails if any run breaks the invariant.
const SHRINK_COPIES: usize = 3;

// =============================================================================================
// The model
// =============================================================================================

#[derive(Debug, Clone)]
struct Case {
    max_buffered: usize,
    max_queue: usize,
    max_queue_bytes: usize,
    /// The server echoes client data frames from the start.
    echo: bool,
    ops: Vec<Op>,
    finish: Finish,
    /// Take frames while the final close runs (otherwise a full queue may make it time out).
    receive_while_closing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Close,
    SinkClose,
    DropAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
    Ping,
    /// A ping over 125 bytes: `InvalidFrame`.
    BadPing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Small(usize),
    Large(usize),
    /// `max_buffered_bytes` plus this.
    OverBuffer(usize),
    /// This many KiB: a few of them fill the kernel's socket buffers (about 3.5 MB on
    /// loopback) behind a server that stopped reading.
    Huge(usize),
}

#[derive(Debug, Clone, Copy)]
struct Data {
    kind: Kind,
    size: Size,
}

#[derive(Debug, Clone)]
enum Op {
    Feed {
        h: usize,
        count: usize,
        data: Data,
    },
    /// Feeds frames of this many KiB until `poll_ready` would wait (at most 8 MiB), leaving
    /// the write buffer full behind a server that stopped reading.
    Flood {
        h: usize,
        kib: usize,
    },
    FeedClose {
        h: usize,
        code: u16,
    },
    Flush {
        h: usize,
    },
    Send {
        h: usize,
        data: Data,
        bg: bool,
    },
    TrySend {
        h: usize,
        data: Data,
        bg: bool,
    },
    SendBatch {
        h: usize,
        frames: Vec<Data>,
        /// A close frame at this index (clamped to the end) with this code.
        close: Option<(usize, u16)>,
        bg: bool,
    },
    SendClose {
        h: usize,
        code: u16,
        /// Through `try_send_frame` (a close frame never waits for room).
        try_send: bool,
        bg: bool,
    },
    Close {
        h: usize,
        bg: bool,
    },
    SinkClose {
        h: usize,
    },
    Clone {
        h: usize,
    },
    Drop {
        h: usize,
    },
    Receive {
        ms: u64,
    },
    /// Waits in `receive_frame` (or the `Stream`) while the server sends a burst: the frames
    /// land on a waiting receiver, which the connection hands them to a part at a time.
    ReceiveDuringBurst {
        ms: u64,
        burst: Cmd,
        stream: bool,
    },
    Next {
        ms: u64,
    },
    TryReceive,
    ReceiveAll,
    /// Drops `Frames`: the rest of the case receives nothing.
    DropFrames,
    Idle {
        ms: u64,
    },
    Server(Cmd),
}

#[derive(Debug, Clone)]
enum Cmd {
    Echo(bool),
    /// Stop reading for this many ms.
    Pause(u64),
    Resume,
    Burst {
        n: usize,
        pad: usize,
        binary: bool,
    },
    Ping,
    Close(u16),
    Reset,
}

// ---- strategies: the first alternative of each `prop_oneof!` is the simplest

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![3 => 8192..=65536usize, 3 => 512..=8192usize, 2 => 1..=512usize],
        // Large queues let a burst spend the connection's read budget, so that a waiting
        // receiver is handed frames a part at a time (the hand-over pause).
        prop_oneof![4 => 1..=8usize, 1 => Just(1024usize), 1 => Just(100_000usize)],
        prop_oneof![1 => Just(16usize << 20), 2 => 256..=16384usize, 1 => 1..=256usize],
        any::<bool>(),
        prop::collection::vec(op(), 0..=40),
        prop_oneof![
            Just(Finish::Close),
            Just(Finish::SinkClose),
            Just(Finish::DropAll)
        ],
        any::<bool>(),
    )
        .prop_map(
            |(
                max_buffered,
                max_queue,
                max_queue_bytes,
                echo,
                ops,
                finish,
                receive_while_closing,
            )| {
                Case {
                    max_buffered,
                    max_queue,
                    max_queue_bytes,
                    echo,
                    ops,
                    finish,
                    receive_while_closing,
                }
            },
        )
}

fn close_code() -> impl Strategy<Value = u16> {
    prop::sample::select(&[1000u16, 1001, 1003, 1008, 1011, 3000, 4000, 4999][..])
}

fn data() -> impl Strategy<Value = Data> {
    (
        prop_oneof![
            6 => Just(Kind::Text),
            6 => Just(Kind::Binary),
            1 => Just(Kind::Ping),
            1 => Just(Kind::BadPing),
        ],
        prop_oneof![
            6 => (0..64usize).prop_map(Size::Small),
            3 => (1000..20_000usize).prop_map(Size::Large),
            1 => (1..4096usize).prop_map(Size::OverBuffer),
            1 => (100..=300usize).prop_map(Size::Huge),
        ],
    )
        .prop_map(|(kind, size)| Data { kind, size })
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        8 => (
            1..=20usize,
            prop_oneof![4 => 0..64usize, 2 => 500..4000usize, 1 => 8000..30_000usize],
            any::<bool>(),
        )
            .prop_map(|(n, pad, binary)| Cmd::Burst { n, pad, binary }),
        // More small frames than the connection reads per wake-up (256).
        1 => (300..=1200usize, 0..32usize, any::<bool>())
            .prop_map(|(n, pad, binary)| Cmd::Burst { n, pad, binary }),
        6 => (20..=300u64).prop_map(Cmd::Pause),
        2 => Just(Cmd::Resume),
        2 => any::<bool>().prop_map(Cmd::Echo),
        2 => Just(Cmd::Ping),
        1 => close_code().prop_map(Cmd::Close),
        1 => Just(Cmd::Reset),
    ]
}

/// Steps that close (a close request, dropping a handle, the server's close or reset) are
/// about one in twenty, so that about half the cases stay open through their steps.
fn op() -> impl Strategy<Value = Op> {
    let h = 0..MAX_HANDLES;
    prop_oneof![
        16 => Just(Op::TryReceive),
        16 => (0..=30u64).prop_map(|ms| Op::Receive { ms }),
        4 => (
            5..=30u64,
            (1..=1200usize, 0..32usize, any::<bool>())
                .prop_map(|(n, pad, binary)| Cmd::Burst { n, pad, binary }),
            any::<bool>(),
        )
            .prop_map(|(ms, burst, stream)| Op::ReceiveDuringBurst { ms, burst, stream }),
        24 => (
            h.clone(),
            prop_oneof![4 => Just(1usize), 2 => 2..=8usize, 1 => 9..=30usize],
            data(),
        )
            .prop_map(|(h, count, data)| Op::Feed { h, count, data }),
        6 => (h.clone(), 64..=256usize).prop_map(|(h, kib)| Op::Flood { h, kib }),
        16 => h.clone().prop_map(|h| Op::Flush { h }),
        16 => (h.clone(), data(), prop::bool::weighted(0.3))
            .prop_map(|(h, data, bg)| Op::Send { h, data, bg }),
        8 => (h.clone(), data(), prop::bool::weighted(0.3))
            .prop_map(|(h, data, bg)| Op::TrySend { h, data, bg }),
        12 => (
            h.clone(),
            prop::collection::vec(data(), 0..=6),
            prop::option::weighted(0.1, (0..=6usize, close_code())),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(h, frames, close, bg)| Op::SendBatch { h, frames, close, bg }),
        1 => (h.clone(), close_code()).prop_map(|(h, code)| Op::FeedClose { h, code }),
        1 => (h.clone(), close_code(), any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(h, code, try_send, bg)| Op::SendClose { h, code, try_send, bg }),
        1 => (h.clone(), prop::bool::weighted(0.3)).prop_map(|(h, bg)| Op::Close { h, bg }),
        1 => h.clone().prop_map(|h| Op::SinkClose { h }),
        8 => h.clone().prop_map(|h| Op::Clone { h }),
        2 => h.prop_map(|h| Op::Drop { h }),
        8 => (0..=30u64).prop_map(|ms| Op::Next { ms }),
        4 => Just(Op::ReceiveAll),
        1 => Just(Op::DropFrames),
        12 => (1..=60u64).prop_map(|ms| Op::Idle { ms }),
        28 => cmd().prop_map(Op::Server),
    ]
}

/// The case of a seed, as a proptest value tree (so that it can be shrunk).
fn generate(seed: u64) -> impl ValueTree<Value = Case> {
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    case()
        .new_tree(&mut runner)
        .expect("the case strategy never rejects")
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The number after `prefix` up to `|`.
fn number(payload: &[u8], prefix: u8) -> Option<u64> {
    let rest = payload.strip_prefix(&[prefix])?;
    let end = rest.iter().position(|&b| b == b'|')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// =============================================================================================
// The scripted server
// =============================================================================================

/// A tokio runtime on its own thread that runs every case's server.
struct ServerThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn start() -> Self {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("simple-random-servers".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the servers");
                handle_tx.send(rt.handle().clone()).expect("handle");
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("server thread");
        let handle = handle_rx.recv().expect("the server thread starts");
        ServerThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let _ = self.thread.take().map(std::thread::JoinHandle::join);
    }
}

/// A client frame as the server read it.
#[derive(Debug, Clone)]
struct Got {
    opcode: u8,
    masked: bool,
    fin: bool,
    /// `c<n>|` of a text, binary or ping frame.
    seq: Option<u64>,
    close_code: Option<u16>,
}

/// What the server saw and did.
#[derive(Debug, Clone, Default)]
struct SrvLog {
    events: Vec<(Instant, String)>,
    /// Every client frame, in wire order.
    frames: Vec<Got>,
    /// Numbered frames queued for the client (all before the server's close frame).
    sent: u64,
    /// The server closed first, with this code.
    server_close: Option<u16>,
    /// The client's close frame arrived before the server had sent one.
    client_close_own: bool,
    reset: bool,
    /// A write failed: frames queued may not have reached the client.
    write_broken: bool,
    /// A read or write failed: the client reset the connection (it closed its socket with
    /// data unread, after a close timeout say), which may discard what it had written.
    peer_reset: bool,
    /// How the connection ended for the server.
    end: Option<(Instant, String)>,
}

type SrvRef = Arc<Mutex<SrvLog>>;

fn srv_event(log: &SrvRef, what: String) {
    lock(log).events.push((Instant::now(), what));
}

struct Server {
    port: u16,
    cmds: mpsc::UnboundedSender<(Cmd, Option<oneshot::Sender<()>>)>,
    log: SrvRef,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(rt: &tokio::runtime::Handle) -> Server {
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let log = SrvRef::default();
        let (port_tx, port_rx) = oneshot::channel();
        let task = rt.spawn(serve(cmd_rx, log.clone(), port_tx));
        let port = port_rx.await.expect("the server binds 127.0.0.1");
        Server {
            port,
            cmds,
            log,
            task,
        }
    }

    fn send(&self, cmd: Cmd) {
        let _ = self.cmds.send((cmd, None));
    }

    /// Sends a command and waits until the server carried it out, or ended (a command sent
    /// just as the connection ends may stay in the channel, unanswered).
    async fn command(&self, st: &St, cmd: Cmd) {
        let (done, mut carried_out) = oneshot::channel();
        if self.cmds.send((cmd, Some(done))).is_err() {
            return;
        }
        let deadline = Instant::now() + HANG;
        loop {
            let tick = Duration::from_millis(5);
            if actix_rt::time::timeout(tick, &mut carried_out)
                .await
                .is_ok()
                || self.ended()
            {
                return;
            }
            if Instant::now() >= deadline {
                st.borrow_mut().fail(
                    "H",
                    format!("a server command did not resolve within {HANG:?}"),
                );
                return;
            }
        }
    }

    fn ended(&self) -> bool {
        lock(&self.log).end.is_some()
    }

    fn stop(self) -> SrvLog {
        self.task.abort();
        lock(&self.log).clone()
    }
}

type CmdRx = mpsc::UnboundedReceiver<(Cmd, Option<oneshot::Sender<()>>)>;

async fn serve(cmds: CmdRx, log: SrvRef, port: oneshot::Sender<u16>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(SERVER_RCVBUF)
        .expect("SO_RCVBUF");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind 127.0.0.1");
    let listener = socket.listen(4).expect("listen");
    let _ = port.send(listener.local_addr().expect("local addr").port());
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    let _ = stream.set_nodelay(true);
    let end = match read_head(&mut stream).await {
        Err(end) => end,
        Ok((key, rest)) => {
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                sec_websocket_accept(&key)
            );
            match stream.write_all(response.as_bytes()).await {
                Err(error) => format!("writing the 101 failed: {error}"),
                Ok(()) => {
                    srv_event(&log, "101".into());
                    conn_loop(&mut stream, rest, cmds, &log).await
                }
            }
        }
    };
    if end == "server reset" {
        let _ = stream.set_zero_linger();
    }
    drop(stream);
    srv_event(&log, format!("end: {end}"));
    lock(&log).end = Some((Instant::now(), end));
}

async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8_lossy(&buf).into_owned();
            let key = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_default();
            return Ok((key, rest));
        }
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("eof before the upgrade".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(format!("read error before the upgrade: {error}")),
        }
    }
}

#[derive(Default)]
struct ConnState {
    echo: bool,
    paused_until: Option<tokio::time::Instant>,
    /// The server sent a close frame (its own or the answer).
    closed: bool,
    client_closed: bool,
    fin_pending: bool,
    fin_sent: bool,
    write_broken: bool,
    cmds_open: bool,
}

enum Wrote {
    Bytes(std::io::Result<usize>),
    Fin(std::io::Result<()>),
}

/// One upgraded connection: reads (unless paused), writes what is queued, and carries out the
/// test's commands, until the client closes TCP, a read fails, or the server resets.
async fn conn_loop(
    stream: &mut TcpStream,
    mut inbuf: Vec<u8>,
    mut cmds: CmdRx,
    log: &SrvRef,
) -> String {
    let (mut rd, mut wr) = stream.split();
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut c = ConnState {
        cmds_open: true,
        ..ConnState::default()
    };
    if let Err(error) = on_bytes(&mut inbuf, &mut out, &mut c, log) {
        return format!("garbage: {error}");
    }
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let writing = !c.write_broken && (!out.is_empty() || (c.fin_pending && !c.fin_sent));
        tokio::select! {
            biased;
            cmd = cmds.recv(), if c.cmds_open => match cmd {
                None => c.cmds_open = false,
                Some((Cmd::Reset, _done)) => {
                    srv_event(log, "RST".into());
                    lock(log).reset = true;
                    return "server reset".into();
                }
                Some((cmd, done)) => {
                    on_cmd(cmd, &mut out, &mut c, log);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            },
            () = tokio::time::sleep_until(c.paused_until.unwrap_or(far)), if c.paused_until.is_some() => {
                c.paused_until = None;
                srv_event(log, "reads again (pause over)".into());
            }
            wrote = async {
                if out.is_empty() {
                    Wrote::Fin(wr.shutdown().await)
                } else {
                    Wrote::Bytes(wr.write(&out).await)
                }
            }, if writing => match wrote {
                Wrote::Bytes(Ok(n)) => {
                    out.drain(..n);
                }
                Wrote::Fin(Ok(())) => {
                    c.fin_sent = true;
                    srv_event(log, "FIN".into());
                }
                Wrote::Bytes(Err(error)) | Wrote::Fin(Err(error)) => {
                    c.write_broken = true;
                    out.clear();
                    {
                        let mut log = lock(log);
                        log.write_broken = true;
                        log.peer_reset = true;
                    }
                    srv_event(log, format!("write failed: {error}"));
                }
            },
            read = rd.read(&mut chunk), if c.paused_until.is_none() => match read {
                Ok(0) => return format!("eof ({} bytes of a frame left)", inbuf.len()),
                Ok(n) => {
                    inbuf.extend_from_slice(&chunk[..n]);
                    if let Err(error) = on_bytes(&mut inbuf, &mut out, &mut c, log) {
                        return format!("garbage: {error}");
                    }
                }
                Err(error) => {
                    lock(log).peer_reset = true;
                    return format!("read error: {error}");
                }
            },
        }
    }
}

fn next_number(log: &SrvRef) -> u64 {
    let mut log = lock(log);
    log.sent += 1;
    log.sent - 1
}

fn on_bytes(
    inbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    c: &mut ConnState,
    log: &SrvRef,
) -> Result<(), String> {
    loop {
        let Some((frame, used)) = decode_frame(inbuf)? else {
            return Ok(());
        };
        inbuf.drain(..used);
        let seq = match frame.opcode {
            opcode::TEXT | opcode::BINARY | opcode::PING => number(&frame.payload, b'c'),
            _ => None,
        };
        lock(log).frames.push(Got {
            opcode: frame.opcode,
            masked: frame.masked,
            fin: frame.fin,
            seq,
            close_code: frame.close_code,
        });
        match frame.opcode {
            opcode::TEXT | opcode::BINARY if c.echo && !c.closed => {
                let n = next_number(log);
                let text = format!("s{n}|echo of c{}", seq.map_or(-1, |s| s as i64));
                out.extend(frame_bytes(true, opcode::TEXT, text.as_bytes()));
            }
            opcode::PING if !c.closed => {
                let n = next_number(log);
                out.extend(frame_bytes(
                    true,
                    opcode::PONG,
                    format!("s{n}|pong").as_bytes(),
                ));
            }
            opcode::CLOSE if !c.client_closed => {
                c.client_closed = true;
                if !c.closed {
                    // RFC 6455 §5.5.1: answer with the same code; then the server closes TCP.
                    out.extend(close_frame(frame.close_code, ""));
                    c.closed = true;
                    lock(log).client_close_own = true;
                    srv_event(
                        log,
                        format!("client close {:?}: answered", frame.close_code),
                    );
                } else {
                    srv_event(log, format!("client close {:?}", frame.close_code));
                }
                c.fin_pending = true;
            }
            _ => {}
        }
    }
}

fn on_cmd(cmd: Cmd, out: &mut Vec<u8>, c: &mut ConnState, log: &SrvRef) {
    match cmd {
        Cmd::Echo(on) => c.echo = on,
        Cmd::Pause(ms) => {
            let until = tokio::time::Instant::now() + Duration::from_millis(ms);
            c.paused_until = Some(c.paused_until.map_or(until, |at| at.max(until)));
            srv_event(log, format!("stops reading for {ms} ms"));
        }
        Cmd::Resume if c.paused_until.is_some() => {
            c.paused_until = None;
            srv_event(log, "reads again".into());
        }
        Cmd::Burst { n, pad, binary } if !c.closed => {
            let first = lock(log).sent;
            for _ in 0..n {
                let k = next_number(log);
                let mut payload = format!("s{k}|").into_bytes();
                payload.resize(payload.len() + pad, b'x');
                let op = if binary { opcode::BINARY } else { opcode::TEXT };
                out.extend(frame_bytes(true, op, &payload));
            }
            srv_event(
                log,
                format!("sends s{first}..=s{} ({pad} B pad)", first + n as u64 - 1),
            );
        }
        Cmd::Ping if !c.closed => out.extend(frame_bytes(true, opcode::PING, b"srv-ping")),
        Cmd::Close(code) if !c.closed => {
            out.extend(close_frame(Some(code), "srv"));
            c.closed = true;
            // Reads again, to see the client's answer.
            c.paused_until = None;
            lock(log).server_close = Some(code);
            srv_event(log, format!("sends close {code}"));
        }
        _ => {}
    }
}

// =============================================================================================
// The client side
// =============================================================================================

#[derive(Debug, Clone)]
struct Violation {
    key: &'static str,
    detail: String,
}

/// What became of a frame the test gave to the library.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Fed, not flushed yet.
    Pending,
    Ok,
    /// Refused: it must never reach the server.
    Refused(SendError),
    /// May or may not have been written.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Sent {
    valid: bool,
    /// The library took it (`start_send` returned Ok, or its send returned Ok).
    accepted: bool,
    fate: Fate,
    /// The event at which it was given.
    event: usize,
    /// Given after a close request.
    after_close: bool,
}

/// What a send began after, for S1/S2.
#[derive(Debug, Clone, Copy)]
struct When {
    after_close: bool,
    after_close_done: bool,
    after_end: bool,
}

#[derive(Default)]
struct State {
    max_buffered: usize,
    events: Vec<(Instant, String)>,
    next_seq: u64,
    frames: BTreeMap<u64, Sent>,
    /// The first close request: event, code, what.
    first_close: Option<(usize, u16, String)>,
    close_requested: bool,
    /// Some send failed with `Closing`: the close handshake has begun (the test's or the
    /// server's), for good.
    closing_seen: bool,
    /// A `close()` or `SinkExt::close` resolved.
    closed_done: bool,
    /// The event at which `Frames` first reported the end.
    end_seen: Option<usize>,
    /// A close frame whose send (or flush) returned Ok.
    close_sent_ok: bool,
    /// Handles alive (the test's and the background tasks').
    live: usize,
    next_handle: usize,
    pending_bg: usize,
    violations: Vec<Violation>,
    tally: BTreeMap<String, usize>,
}

type St = Rc<RefCell<State>>;

impl State {
    fn event(&mut self, what: String) -> usize {
        self.events.push((Instant::now(), what));
        self.events.len() - 1
    }

    fn fail(&mut self, key: &'static str, detail: String) {
        self.event(format!("!! {key}: {detail}"));
        self.violations.push(Violation { key, detail });
    }

    fn count(&mut self, what: impl Into<String>) {
        *self.tally.entry(what.into()).or_default() += 1;
    }

    fn when(&self) -> When {
        When {
            after_close: self.close_requested || self.closing_seen,
            after_close_done: self.closed_done,
            after_end: self.end_seen.is_some(),
        }
    }

    fn close_request(&mut self, code: u16, what: &str) {
        let event = self.event(format!("close requested: {what} ({code})"));
        if self.first_close.is_none() {
            self.first_close = Some((event, code, what.to_owned()));
        }
        self.close_requested = true;
    }

    /// Numbers and builds a frame; the caller hands it to the library right away.
    fn give(&mut self, data: Data, what: &str) -> (u64, Frame, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pad = match data.size {
            Size::Small(pad) | Size::Large(pad) => pad,
            Size::OverBuffer(extra) => self.max_buffered + extra,
            Size::Huge(kib) => kib << 10,
        };
        let mut payload = format!("c{seq}|").into_bytes();
        let (frame, valid) = match data.kind {
            Kind::Text | Kind::Binary => {
                payload.resize(payload.len() + pad, b'x');
                let frame = if data.kind == Kind::Text {
                    Frame::text(String::from_utf8(payload).expect("ASCII"))
                } else {
                    Frame::binary(payload)
                };
                (frame, true)
            }
            Kind::Ping => {
                payload.resize(payload.len() + pad.min(100), b'p');
                (Frame::ping(payload), true)
            }
            Kind::BadPing => {
                payload.resize(126 + pad % 64, b'p');
                (Frame::ping(payload), false)
            }
        };
        let event = self.event(format!(
            "{what}: c{seq} {:?} {} B{}",
            data.kind,
            frame.payload_len(),
            if valid { "" } else { " (invalid)" }
        ));
        self.frames.insert(
            seq,
            Sent {
                valid,
                accepted: false,
                fate: Fate::Pending,
                event,
                after_close: self.close_requested || self.closing_seen,
            },
        );
        (seq, frame, valid)
    }

    fn settle(&mut self, seq: u64, fate: Fate) {
        if let Some(sent) = self.frames.get_mut(&seq) {
            if fate == Fate::Ok {
                sent.accepted = true;
            }
            sent.fate = fate;
        }
    }

    fn accept(&mut self, seq: u64) {
        if let Some(sent) = self.frames.get_mut(&seq) {
            sent.accepted = true;
        }
    }

    /// S1/S2 for a send of valid frames begun at `when`.
    fn check_after(&mut self, when: When, what: &str, result: &Result<(), SendError>, close: bool) {
        if (when.after_end || when.after_close_done) && !close {
            if result != &Err(SendError::Stopped) {
                let since = if when.after_end {
                    "the end was reported"
                } else {
                    "close() returned"
                };
                self.fail("S2", format!("{what} begun after {since}: {result:?}"));
            }
        } else if (when.after_close || when.after_end || when.after_close_done)
            && !matches!(result, Err(SendError::Closing | SendError::Stopped))
        {
            self.fail(
                "S1",
                format!("{what} begun after a close request (or a Closing): {result:?}"),
            );
        }
    }

    /// C: a close returns within `close_timeout` (and some slack for a loaded machine).
    fn closing_took(&mut self, what: &str, took: Duration) {
        self.event(format!("{what} returned after {took:?}"));
        let bucket = match took.as_millis() {
            0..=50 => "≤ 50 ms",
            51..=250 => "≤ 250 ms",
            251..=400 => "≤ 400 ms",
            401..=1000 => "≤ 1 s",
            _ => "> 1 s",
        };
        self.count(format!("{what} took {bucket}"));
        if took > CLOSE_TIMEOUT + CLOSE_SLACK {
            self.fail(
                "C",
                format!("{what} took {took:?} (close_timeout {CLOSE_TIMEOUT:?})"),
            );
        }
    }

    /// Tallies an outcome.
    fn outcome(&mut self, what: &str, result: &Result<(), SendError>) {
        if result == &Err(SendError::Closing) && !self.closing_seen {
            self.closing_seen = true;
            self.event(format!(
                "{what} failed with Closing: the connection is closing"
            ));
        }
        let kind = match result {
            Ok(()) => "Ok".to_owned(),
            Err(SendError::InvalidFrame(_)) => "InvalidFrame".to_owned(),
            Err(error) => format!("{error:?}"),
        };
        self.count(format!("{what} → {kind}"));
    }
}

fn fate_of(result: &Result<(), SendError>) -> Fate {
    match result {
        Ok(()) => Fate::Ok,
        Err(SendError::ConnectionLost) => Fate::Unknown("ConnectionLost".into()),
        Err(error) => Fate::Refused(error.clone()),
    }
}

/// Awaits `fut` for at most [`HANG`]; `None` (and a violation) if it did not resolve.
async fn bounded<T>(st: &St, what: &str, fut: impl Future<Output = T>) -> Option<T> {
    match actix_rt::time::timeout(HANG, fut).await {
        Ok(value) => Some(value),
        Err(_) => {
            st.borrow_mut()
                .fail("H", format!("{what} did not resolve within {HANG:?}"));
            None
        }
    }
}

/// A handle, counted: dropping the last one closes the connection with 1000.
struct Handle {
    conn: Connection,
    /// Frames fed through this handle and not flushed.
    fed: Vec<u64>,
    /// A close frame fed through this handle and not flushed.
    fed_close: bool,
    id: usize,
    _tracker: Tracker,
}

struct Tracker(St);

impl Drop for Tracker {
    fn drop(&mut self) {
        let mut st = self.0.borrow_mut();
        st.live -= 1;
        if st.live == 0 {
            st.close_request(1000, "the last handle was dropped");
        }
    }
}

fn new_handle(st: &St, conn: Connection) -> Handle {
    let mut s = st.borrow_mut();
    s.live += 1;
    let id = s.next_handle;
    s.next_handle += 1;
    Handle {
        conn,
        fed: Vec::new(),
        fed_close: false,
        id,
        _tracker: Tracker(st.clone()),
    }
}

fn drop_handle(st: &St, handle: Handle) {
    {
        let mut s = st.borrow_mut();
        s.event(format!(
            "drop handle {} ({} frames fed, not flushed{})",
            handle.id,
            handle.fed.len(),
            if handle.fed_close {
                ", and a close"
            } else {
                ""
            }
        ));
        for &seq in &handle.fed {
            s.settle(
                seq,
                Fate::Unknown("fed, then its handle was dropped".into()),
            );
        }
        if !handle.fed.is_empty() {
            s.count("drop a handle with frames fed");
        }
    }
    drop(handle);
}

// ---- sends that take `&Connection` (run in the foreground or in a task of their own)

async fn do_send(st: &St, conn: &Connection, data: Data, try_send: bool) -> bool {
    let what = if try_send {
        "try_send_frame"
    } else {
        "send_frame"
    };
    let when = st.borrow().when();
    let (seq, frame, valid) = st.borrow_mut().give(data, what);
    let result = if try_send {
        bounded(st, what, conn.try_send_frame(frame)).await
    } else {
        bounded(st, what, conn.send_frame(frame)).await
    };
    let mut s = st.borrow_mut();
    let Some(result) = result else {
        s.settle(seq, Fate::Unknown("hung".into()));
        return false;
    };
    s.event(format!("{what} c{seq} → {result:?}"));
    s.outcome(what, &result);
    if !valid {
        if !matches!(result, Err(SendError::InvalidFrame(_))) {
            s.fail(
                "S3",
                format!("{what} of an invalid frame c{seq}: {result:?}"),
            );
        }
    } else {
        s.check_after(when, &format!("{what} c{seq}"), &result, false);
        if !try_send && result == Err(SendError::BufferFull) {
            s.fail("S3", format!("send_frame c{seq} failed with BufferFull"));
        }
    }
    s.settle(seq, fate_of(&result));
    true
}

async fn do_batch(
    st: &St,
    conn: &Connection,
    frames: &[Data],
    close: Option<(usize, u16)>,
) -> bool {
    let when = st.borrow().when();
    let all_valid = frames.iter().all(|data| data.kind != Kind::BadPing);
    let close = close.map(|(at, code)| (at.min(frames.len()), code));
    let mut batch = Vec::new();
    let mut seqs = Vec::new();
    {
        let mut s = st.borrow_mut();
        s.event(format!(
            "send_frames: {} frames{}",
            frames.len(),
            close.map_or(String::new(), |(at, code)| format!(
                ", close {code} at {at}"
            ))
        ));
        for i in 0..=frames.len() {
            if let Some((at, code)) = close {
                if at == i {
                    if all_valid {
                        s.close_request(code, "send_frames");
                    }
                    batch.push(Frame::close(code, "batch"));
                }
            }
            if let Some(&data) = frames.get(i) {
                let (seq, frame, _) = s.give(data, "send_frames");
                batch.push(frame);
                seqs.push(seq);
            }
        }
    }
    let empty = batch.is_empty();
    let Some(result) = bounded(st, "send_frames", conn.send_frames(batch)).await else {
        let mut s = st.borrow_mut();
        for seq in seqs {
            s.settle(seq, Fate::Unknown("hung".into()));
        }
        return false;
    };
    let mut s = st.borrow_mut();
    s.event(format!("send_frames {seqs:?} → {result:?}"));
    s.outcome(
        if empty {
            "send_frames([])"
        } else {
            "send_frames"
        },
        &result,
    );
    if empty {
        if result.is_ok() {
            return true;
        }
        s.fail("S3", format!("an empty send_frames: {result:?}"));
        return true;
    }
    if !all_valid {
        if !matches!(result, Err(SendError::InvalidFrame(_))) {
            s.fail(
                "S3",
                format!("send_frames with an invalid frame: {result:?}"),
            );
        }
        for seq in seqs {
            s.settle(seq, fate_of(&result));
        }
        return true;
    }
    s.check_after(when, "send_frames", &result, seqs.is_empty());
    if result == Err(SendError::BufferFull) {
        s.fail("S3", "send_frames failed with BufferFull".into());
    }
    match &result {
        Ok(()) => {
            if close.is_some() {
                s.close_sent_ok = true;
            }
            for seq in seqs {
                s.settle(seq, Fate::Ok);
            }
        }
        Err(error) => {
            for seq in seqs {
                s.settle(seq, Fate::Unknown(format!("send_frames failed: {error:?}")));
            }
        }
    }
    true
}

async fn do_send_close(st: &St, conn: &Connection, code: u16, try_send: bool) -> bool {
    let what = if try_send {
        "try_send_frame(close)"
    } else {
        "send_frame(close)"
    };
    let when = st.borrow().when();
    st.borrow_mut().close_request(code, what);
    let frame = Frame::close(code, "test");
    let result = if try_send {
        bounded(st, what, conn.try_send_frame(frame)).await
    } else {
        bounded(st, what, conn.send_frame(frame)).await
    };
    let Some(result) = result else {
        return false;
    };
    let mut s = st.borrow_mut();
    s.event(format!("{what} {code} → {result:?}"));
    s.outcome(what, &result);
    s.check_after(when, what, &result, true);
    if result.is_ok() {
        s.close_sent_ok = true;
    }
    true
}

async fn do_close(st: &St, conn: &Connection) -> bool {
    st.borrow_mut().close_request(1000, "close()");
    let started = Instant::now();
    if bounded(st, "close()", conn.close()).await.is_none() {
        return false;
    }
    let mut s = st.borrow_mut();
    s.closing_took("close()", started.elapsed());
    s.closed_done = true;
    true
}

// ---- the Sink, on the test's own handles

/// `SinkExt::feed`, by hand: the frame gets its number once `poll_ready` let it in.
async fn do_feed(st: &St, h: &mut Handle, data: Option<Data>, close: Option<u16>) -> bool {
    let what = if close.is_some() {
        "feed(close)"
    } else {
        "feed"
    };
    let when = st.borrow().when();
    let mut waited = false;
    let ready = poll_fn(|cx| {
        let poll = Pin::new(&mut h.conn).poll_ready(cx);
        waited |= poll.is_pending();
        poll
    });
    let Some(ready) = bounded(st, "feed: poll_ready", ready).await else {
        return false;
    };
    let mut s = st.borrow_mut();
    if waited {
        s.count("feed: poll_ready waited for room");
    }
    if let Err(error) = ready {
        s.event(format!("{what} on handle {}: poll_ready → {error:?}", h.id));
        let result = Err(error);
        s.outcome(&format!("{what}: poll_ready"), &result);
        s.check_after(when, what, &result, close.is_some());
        return true;
    }
    let when = s.when();
    if let Some(code) = close {
        s.close_request(code, "feed(close)");
        let result = Pin::new(&mut h.conn).start_send(Frame::close(code, "fed"));
        s.event(format!(
            "start_send(close {code}) on handle {} → {result:?}",
            h.id
        ));
        s.outcome("start_send(close)", &result);
        s.check_after(when, "start_send(close)", &result, true);
        if result.is_ok() {
            h.fed_close = true;
        }
        return true;
    }
    let data = data.expect("a frame to feed");
    let (seq, frame, valid) = s.give(data, &format!("feed on handle {}", h.id));
    let result = Pin::new(&mut h.conn).start_send(frame);
    s.outcome("start_send", &result);
    if result.is_err() {
        s.event(format!("start_send c{seq} → {result:?}"));
    }
    if !valid {
        if !matches!(result, Err(SendError::InvalidFrame(_))) {
            s.fail(
                "S3",
                format!("start_send of an invalid frame c{seq}: {result:?}"),
            );
        }
    } else {
        s.check_after(when, &format!("start_send c{seq}"), &result, false);
    }
    match result {
        Ok(()) => {
            s.accept(seq);
            h.fed.push(seq);
        }
        Err(error) => s.settle(seq, Fate::Refused(error)),
    }
    true
}

/// Feeds `kib` KiB frames while `poll_ready` is ready at once (8 MiB at most).
async fn do_flood(st: &St, h: &mut Handle, kib: usize) {
    let max = (8 << 10) / kib;
    let mut fed = 0;
    let mut stopped = "8 MiB fed".to_owned();
    for _ in 0..max {
        let ready = poll_fn(|cx| Poll::Ready(Pin::new(&mut h.conn).poll_ready(cx))).await;
        match ready {
            Poll::Pending => {
                stopped = "poll_ready would wait".into();
                st.borrow_mut().count("flood: filled the write buffer");
                break;
            }
            Poll::Ready(Err(error)) => {
                stopped = format!("poll_ready → {error:?}");
                st.borrow_mut().outcome("flood: poll_ready", &Err(error));
                break;
            }
            Poll::Ready(Ok(())) => {}
        }
        let accepted = {
            let mut s = st.borrow_mut();
            let when = s.when();
            let data = Data {
                kind: Kind::Binary,
                size: Size::Huge(kib),
            };
            let (seq, frame, _) = s.give(data, &format!("flood on handle {}", h.id));
            let result = Pin::new(&mut h.conn).start_send(frame);
            s.outcome("flood: start_send", &result);
            s.check_after(when, &format!("start_send c{seq}"), &result, false);
            match result {
                Ok(()) => {
                    s.accept(seq);
                    h.fed.push(seq);
                    true
                }
                Err(error) => {
                    s.event(format!("start_send c{seq} → {error:?}"));
                    s.settle(seq, Fate::Refused(error));
                    false
                }
            }
        };
        if !accepted {
            break;
        }
        fed += 1;
        actix_rt::task::yield_now().await;
    }
    st.borrow_mut().event(format!(
        "flood on handle {}: {fed} frames of {kib} KiB; stopped: {stopped}",
        h.id
    ));
}

/// The fate of a handle's fed frames once its flush (or close) resolved.
fn settle_fed(st: &St, h: &mut Handle, what: &str, result: &Result<(), SendError>) {
    let mut s = st.borrow_mut();
    s.event(format!(
        "{what} on handle {} ({} fed{}) → {result:?}",
        h.id,
        h.fed.len(),
        if h.fed_close { " and a close" } else { "" }
    ));
    s.outcome(what, result);
    if result == &Err(SendError::BufferFull) {
        s.fail("S3", format!("{what} failed with BufferFull"));
    }
    for seq in h.fed.drain(..) {
        let fate = match result {
            Ok(()) => Fate::Ok,
            Err(error) => Fate::Unknown(format!("{what} failed: {error:?}")),
        };
        s.settle(seq, fate);
    }
    if h.fed_close && result.is_ok() {
        s.close_sent_ok = true;
    }
    h.fed_close = false;
}

async fn do_flush(st: &St, h: &mut Handle) -> bool {
    let Some(result) = bounded(st, "flush", h.conn.flush()).await else {
        return false;
    };
    settle_fed(st, h, "flush", &result);
    true
}

async fn do_sink_close(st: &St, h: &mut Handle) -> bool {
    st.borrow_mut().close_request(1000, "SinkExt::close");
    let started = Instant::now();
    let Some(result) = bounded(st, "SinkExt::close", SinkExt::close(&mut h.conn)).await else {
        return false;
    };
    settle_fed(st, h, "SinkExt::close", &result);
    let mut s = st.borrow_mut();
    s.closing_took("SinkExt::close", started.elapsed());
    s.closed_done = true;
    true
}

// ---- receiving

struct Rx {
    /// `None` once the test dropped it.
    frames: Option<Frames>,
    /// Server frames received (their numbers are 0, 1, ...).
    got: u64,
    end: Option<DisconnectReason>,
    /// R1 broke (reported once).
    broken: bool,
}

fn on_frame(st: &St, rx: &mut Rx, how: &str, frame: Frame) {
    let mut s = st.borrow_mut();
    if rx.end.is_some() {
        s.fail("R3", format!("{how} gave a frame after the end: {frame:?}"));
        return;
    }
    let seq = frame.payload().and_then(|payload| number(payload, b's'));
    if seq != Some(rx.got) && !rx.broken {
        rx.broken = true;
        let shown: String = format!("{frame:?}").chars().take(60).collect();
        s.fail(
            "R1",
            format!("{how} gave {shown} where s{} was next", rx.got),
        );
    }
    rx.got += 1;
}

fn on_end(st: &St, rx: &mut Rx, how: &str, reason: DisconnectReason) {
    let mut s = st.borrow_mut();
    match &rx.end {
        None => {
            let event = s.event(format!("{how}: the end, {reason:?} (after s{})", rx.got));
            s.end_seen = Some(event);
            rx.end = Some(reason);
        }
        Some(first) => {
            if format!("{first:?}") != format!("{reason:?}") {
                s.fail("R3", format!("{how} reported {reason:?}, first {first:?}"));
            }
        }
    }
}

fn on_receive(st: &St, rx: &mut Rx, how: &str, result: Result<Frame, ReceiveError>) {
    match result {
        Ok(frame) => on_frame(st, rx, how, frame),
        Err(ReceiveError::Closed(reason)) => on_end(st, rx, how, reason),
        Err(ReceiveError::Timeout) => {
            if rx.end.is_some() {
                st.borrow_mut()
                    .fail("R3", format!("{how} timed out after the end"));
            }
        }
        Err(other) => st
            .borrow_mut()
            .fail("R3", format!("{how}: unexpected {other:?}")),
    }
}

async fn receive(st: &St, rx: &mut Rx, ms: u64) {
    let Some(frames) = rx.frames.as_mut() else {
        return;
    };
    let result = frames.receive_frame(Duration::from_millis(ms)).await;
    on_receive(st, rx, "receive_frame", result);
}

fn try_receive(st: &St, rx: &mut Rx) -> bool {
    let Some(frames) = rx.frames.as_mut() else {
        return false;
    };
    match frames.try_receive_frame() {
        Ok(Some(frame)) => {
            on_frame(st, rx, "try_receive_frame", frame);
            true
        }
        Ok(None) => {
            if rx.end.is_some() {
                st.borrow_mut()
                    .fail("R3", "try_receive_frame gave None after the end".into());
            }
            false
        }
        Err(error) => {
            on_receive(st, rx, "try_receive_frame", Err(error));
            false
        }
    }
}

async fn next(st: &St, rx: &mut Rx, ms: u64) {
    let Some(frames) = rx.frames.as_mut() else {
        return;
    };
    match actix_rt::time::timeout(Duration::from_millis(ms), frames.next()).await {
        Ok(Some(frame)) => on_frame(st, rx, "Stream::next", frame),
        Ok(None) => match frames.end().cloned() {
            Some(reason) => on_end(st, rx, "Stream::next", reason),
            None => st
                .borrow_mut()
                .fail("R3", "the Stream ended but Frames::end is None".into()),
        },
        Err(_) => {
            if rx.end.is_some() {
                st.borrow_mut()
                    .fail("R3", "Stream::next was pending after the end".into());
            }
        }
    }
}

/// Takes frames until the end (each wait at most `per_frame`); false if it never came.
async fn drain_until_end(st: &St, rx: &mut Rx, per_frame: Duration) -> bool {
    for _ in 0..200_000 {
        if rx.end.is_some() {
            return true;
        }
        let Some(frames) = rx.frames.as_mut() else {
            return false;
        };
        match frames.receive_frame(per_frame).await {
            Err(ReceiveError::Timeout) => {
                st.borrow_mut().fail(
                    "H",
                    format!("Frames gave no frame and no end within {per_frame:?}"),
                );
                return false;
            }
            result => on_receive(st, rx, "receive_frame (draining)", result),
        }
    }
    st.borrow_mut()
        .fail("H", "more than 200 000 frames while draining".into());
    false
}

// =============================================================================================
// Running a case
// =============================================================================================

struct CaseRun {
    violations: Vec<Violation>,
    timeline: String,
    tally: BTreeMap<String, usize>,
}

fn options(case: &Case) -> ConnectOptions {
    ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(CLOSE_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .upgrade_timeout(Duration::from_secs(2))
        .max_buffered_bytes(case.max_buffered)
        .max_queue(case.max_queue)
        .max_queue_bytes(case.max_queue_bytes)
}

fn spawn_bg(st: &St, conn: &Connection, op: Op) {
    let handle = new_handle(st, conn.clone());
    {
        let mut s = st.borrow_mut();
        s.pending_bg += 1;
        s.event(format!("spawn on handle {}: {op:?}", handle.id));
        s.count("background op");
    }
    let st = st.clone();
    actix_rt::spawn(async move {
        match op {
            Op::Send { data, .. } => do_send(&st, &handle.conn, data, false).await,
            Op::TrySend { data, .. } => do_send(&st, &handle.conn, data, true).await,
            Op::SendBatch { frames, close, .. } => {
                do_batch(&st, &handle.conn, &frames, close).await
            }
            Op::SendClose { code, try_send, .. } => {
                do_send_close(&st, &handle.conn, code, try_send).await
            }
            Op::Close { .. } => do_close(&st, &handle.conn).await,
            _ => unreachable!("only sends run in the background"),
        };
        drop(handle);
        st.borrow_mut().pending_bg -= 1;
    });
}

/// Runs the steps; false if one of them hung (the rest are skipped).
async fn run_ops(
    case: &Case,
    st: &St,
    server: &Server,
    handles: &mut Vec<Handle>,
    rx: &mut Rx,
) -> bool {
    for op in &case.ops {
        let slot =
            |h: &usize, handles: &Vec<Handle>| (!handles.is_empty()).then(|| *h % handles.len());
        let alive = match op {
            Op::Feed { h, count, data } => {
                let Some(i) = slot(h, handles) else { continue };
                let mut alive = true;
                for _ in 0..*count {
                    alive = do_feed(st, &mut handles[i], Some(*data), None).await;
                    if !alive {
                        break;
                    }
                }
                alive
            }
            Op::Flood { h, kib } => {
                let Some(i) = slot(h, handles) else { continue };
                do_flood(st, &mut handles[i], *kib).await;
                true
            }
            Op::FeedClose { h, code } => {
                let Some(i) = slot(h, handles) else { continue };
                do_feed(st, &mut handles[i], None, Some(*code)).await
            }
            Op::Flush { h } => {
                let Some(i) = slot(h, handles) else { continue };
                do_flush(st, &mut handles[i]).await
            }
            Op::Send { h, bg, .. }
            | Op::TrySend { h, bg, .. }
            | Op::SendBatch { h, bg, .. }
            | Op::SendClose { h, bg, .. }
            | Op::Close { h, bg } => {
                let Some(i) = slot(h, handles) else { continue };
                if *bg {
                    spawn_bg(st, &handles[i].conn, op.clone());
                    // Let it start before the next step.
                    actix_rt::task::yield_now().await;
                    true
                } else {
                    let conn = &handles[i].conn;
                    match op {
                        Op::Send { data, .. } => do_send(st, conn, *data, false).await,
                        Op::TrySend { data, .. } => do_send(st, conn, *data, true).await,
                        Op::SendBatch { frames, close, .. } => {
                            do_batch(st, conn, frames, *close).await
                        }
                        Op::SendClose { code, try_send, .. } => {
                            do_send_close(st, conn, *code, *try_send).await
                        }
                        _ => do_close(st, conn).await,
                    }
                }
            }
            Op::SinkClose { h } => {
                let Some(i) = slot(h, handles) else { continue };
                do_sink_close(st, &mut handles[i]).await
            }
            Op::Clone { h } => {
                let Some(i) = slot(h, handles) else { continue };
                if handles.len() < MAX_HANDLES {
                    let handle = new_handle(st, handles[i].conn.clone());
                    st.borrow_mut().event(format!(
                        "clone handle {} → handle {}",
                        handles[i].id, handle.id
                    ));
                    handles.push(handle);
                }
                true
            }
            Op::Drop { h } => {
                let Some(i) = slot(h, handles) else { continue };
                drop_handle(st, handles.remove(i));
                true
            }
            Op::Receive { ms } => {
                receive(st, rx, *ms).await;
                true
            }
            Op::ReceiveDuringBurst { ms, burst, stream } => {
                st.borrow_mut()
                    .event(format!("server ← {burst:?}, while receiving"));
                // Not waited for: the receive below is what waits for it.
                let _ = server.cmds.send((burst.clone(), None));
                if *stream {
                    next(st, rx, *ms).await;
                } else {
                    receive(st, rx, *ms).await;
                }
                true
            }
            Op::Next { ms } => {
                next(st, rx, *ms).await;
                true
            }
            Op::TryReceive => {
                try_receive(st, rx);
                true
            }
            Op::ReceiveAll => {
                let mut n = 0;
                while n < 100_000 && try_receive(st, rx) {
                    n += 1;
                }
                true
            }
            Op::DropFrames => {
                if rx.frames.take().is_some() {
                    let mut s = st.borrow_mut();
                    s.event("drop Frames".into());
                    s.count("Frames dropped");
                }
                true
            }
            Op::Idle { ms } => {
                actix_rt::time::sleep(Duration::from_millis(*ms)).await;
                true
            }
            Op::Server(cmd) => {
                st.borrow_mut().event(format!("server ← {cmd:?}"));
                server.command(st, cmd.clone()).await;
                true
            }
        };
        if !alive {
            return false;
        }
    }
    true
}

/// Closes as the case says, takes frames until the end, then tries everything on the ended
/// connection.
async fn finish(case: &Case, st: &St, server: &Server, handles: &mut Vec<Handle>, rx: &mut Rx) {
    server.command(st, Cmd::Resume).await;
    st.borrow_mut()
        .event("finish: the server reads again".into());
    // What is queued already (and the end, if the server ended it).
    for _ in 0..100_000 {
        let Some(frames) = rx.frames.as_mut().filter(|_| rx.end.is_none()) else {
            break;
        };
        match frames.receive_frame(Duration::from_millis(20)).await {
            Err(ReceiveError::Timeout) => break,
            result => on_receive(st, rx, "receive_frame (finish)", result),
        }
    }
    let closing = async {
        match case.finish {
            Finish::Close => {
                if let Some(h) = handles.first() {
                    do_close(st, &h.conn).await;
                }
            }
            Finish::SinkClose => {
                if let Some(h) = handles.first_mut() {
                    do_sink_close(st, h).await;
                }
            }
            Finish::DropAll => {
                for h in handles.drain(..) {
                    drop_handle(st, h);
                }
            }
        }
    };
    if case.receive_while_closing && rx.frames.is_some() {
        join(closing, drain_until_end(st, rx, Duration::from_secs(2))).await;
    } else {
        closing.await;
    }
    if st.borrow().closed_done && rx.frames.is_some() {
        // close() returned: the end is there behind the queued frames, without waiting.
        while try_receive(st, rx) {}
        if rx.end.is_none() {
            st.borrow_mut().fail(
                "R4",
                "close() returned, but try_receive_frame found no end behind the queued frames"
                    .into(),
            );
        }
    }
    if rx.frames.is_none() {
        // Nothing reports the end: wait for the client to close TCP.
        let deadline = Instant::now() + TCP_CLOSED_WITHIN + CLOSE_TIMEOUT;
        while !server.ended() && Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(2)).await;
        }
        if !server.ended() && (st.borrow().closed_done || handles.is_empty()) {
            st.borrow_mut().fail(
                "T",
                "the receiver was dropped and the connection closed, but it kept its TCP connection"
                    .into(),
            );
        }
        return;
    }
    if !drain_until_end(st, rx, Duration::from_secs(2)).await {
        return;
    }
    // The end again, every way.
    let end = rx.end.clone();
    receive(st, rx, 1).await;
    try_receive(st, rx);
    next(st, rx, 100).await;
    let again = rx.frames.as_ref().and_then(|frames| frames.end().cloned());
    if format!("{again:?}") != format!("{end:?}") {
        st.borrow_mut().fail(
            "R3",
            format!("Frames::end is {again:?}, the end was {end:?}"),
        );
    }
    // Every kind of send on the ended connection.
    if let Some(h) = handles.first_mut() {
        let small = Data {
            kind: Kind::Text,
            size: Size::Small(3),
        };
        do_feed(st, h, Some(small), None).await;
        do_flush(st, h).await;
        do_send(st, &h.conn, small, false).await;
        do_send(st, &h.conn, small, true).await;
        do_batch(st, &h.conn, &[small, small], None).await;
        do_batch(st, &h.conn, &[], None).await;
        do_send_close(st, &h.conn, 1000, false).await;
        do_send_close(st, &h.conn, 1000, true).await;
        do_close(st, &h.conn).await;
    }
}

async fn run_case(case: &Case, servers: &tokio::runtime::Handle) -> CaseRun {
    let server = Server::start(servers).await;
    let t0 = Instant::now();
    let st: St = Rc::new(RefCell::new(State {
        max_buffered: case.max_buffered,
        ..State::default()
    }));
    server.send(Cmd::Echo(case.echo));
    let url = format!("ws://127.0.0.1:{}/", server.port);
    let connected = actix_rt::time::timeout(
        HANG,
        minch::connect(url, Vec::<(String, String)>::new(), options(case)),
    )
    .await;
    let mut rx_end = None;
    let mut rx_got = 0;
    match connected {
        Ok(Ok((conn, frames))) => {
            st.borrow_mut().event("connected".into());
            let mut handles = vec![new_handle(&st, conn)];
            let mut rx = Rx {
                frames: Some(frames),
                got: 0,
                end: None,
                broken: false,
            };
            if !run_ops(case, &st, &server, &mut handles, &mut rx).await {
                st.borrow_mut()
                    .event("a step hung: the rest are skipped".into());
            }
            finish(case, &st, &server, &mut handles, &mut rx).await;
            for h in handles.drain(..) {
                drop_handle(&st, h);
            }
            // Background sends finish, and the client closes TCP.
            let deadline = Instant::now() + HANG;
            while st.borrow().pending_bg > 0 && Instant::now() < deadline {
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
            if st.borrow().pending_bg > 0 {
                st.borrow_mut().fail(
                    "H",
                    format!("{} background sends unresolved", st.borrow().pending_bg),
                );
            }
            if rx.end.is_some() {
                let deadline = Instant::now() + TCP_CLOSED_WITHIN;
                while !server.ended() && Instant::now() < deadline {
                    actix_rt::time::sleep(Duration::from_millis(2)).await;
                }
                if !server.ended() {
                    st.borrow_mut().fail(
                        "T",
                        format!(
                            "the client did not close TCP within {TCP_CLOSED_WITHIN:?} of the end"
                        ),
                    );
                }
            }
            rx_end = rx.end.take();
            rx_got = rx.got;
            drop(rx);
        }
        Ok(Err(error)) => st
            .borrow_mut()
            .fail("H", format!("connect failed: {error}")),
        Err(_) => st
            .borrow_mut()
            .fail("H", format!("connect did not resolve within {HANG:?}")),
    }
    let srv = server.stop();
    let mut s = st.borrow_mut();
    check(&mut s, &srv, rx_end.as_ref(), rx_got);
    tally(&mut s, &srv, rx_end.as_ref());
    CaseRun {
        violations: std::mem::take(&mut s.violations),
        timeline: timeline(t0, &s.events, &srv),
        tally: std::mem::take(&mut s.tally),
    }
}

// =============================================================================================
// The checks
// =============================================================================================

fn check(s: &mut State, srv: &SrvLog, end: Option<&DisconnectReason>, got: u64) {
    let mut fail = Vec::new();
    // ---- the wire
    let mut arrived = BTreeSet::new();
    let mut last: Option<u64> = None;
    let mut close_at: Option<usize> = None;
    for (i, frame) in srv.frames.iter().enumerate() {
        if !frame.masked || !frame.fin {
            fail.push((
                "W0",
                format!("client frame {i} masked {} fin {}", frame.masked, frame.fin),
            ));
        }
        if let Some(at) = close_at {
            fail.push((
                "W4",
                format!(
                    "client frame {i} (opcode {}) after its close frame (frame {at})",
                    frame.opcode
                ),
            ));
        }
        match frame.opcode {
            opcode::CLOSE => {
                close_at.get_or_insert(i);
            }
            opcode::TEXT | opcode::BINARY | opcode::PING => {
                let Some(seq) = frame.seq else {
                    fail.push(("W0", format!("client frame {i} has no number")));
                    continue;
                };
                if !arrived.insert(seq) {
                    fail.push(("W1", format!("c{seq} arrived twice")));
                }
                if let Some(last) = last.filter(|&last| seq <= last) {
                    fail.push(("W1", format!("c{seq} arrived after c{last}")));
                }
                last = Some(last.map_or(seq, |last| last.max(seq)));
                match s.frames.get(&seq) {
                    None => fail.push(("W1", format!("c{seq} was never given"))),
                    Some(sent) => {
                        if !sent.valid {
                            fail.push(("W3", format!("invalid c{seq} reached the server")));
                        }
                        if let Fate::Refused(error) = &sent.fate {
                            fail.push((
                                "W3",
                                format!("c{seq}, refused with {error:?}, reached the server"),
                            ));
                        }
                        if sent.after_close {
                            fail.push((
                                "S1",
                                format!("c{seq}, given after a close request, reached the server"),
                            ));
                        }
                    }
                }
            }
            opcode::PONG => {}
            other => fail.push(("W0", format!("client frame {i} has opcode {other}"))),
        }
    }
    // A reset (either way) may discard what was written and not read yet.
    let exempt = srv.reset || srv.peer_reset;
    if !exempt {
        s.count("W2/W7 checked (no reset)");
    }
    for (seq, sent) in &s.frames {
        if sent.fate == Fate::Ok && !arrived.contains(seq) && !exempt {
            fail.push((
                "W2",
                format!("c{seq} was sent Ok but never reached the server"),
            ));
        }
    }
    if let Some(last) = last {
        for (seq, sent) in s.frames.range(..last) {
            if sent.accepted && !arrived.contains(seq) {
                fail.push((
                    "W5",
                    format!("c{seq} was accepted and is missing, but c{last} arrived"),
                ));
            }
        }
    }
    if let Some(at) = close_at.filter(|_| srv.client_close_own) {
        match &s.first_close {
            None => fail.push(("W8", "the client closed, but nobody asked it to".into())),
            Some((event, code, what)) => {
                let wire = srv.frames[at].close_code;
                if wire != Some(*code) {
                    fail.push(("W8", format!("the client's close frame has code {wire:?}; the first close request was {what} ({code})")));
                }
                for (seq, sent) in &s.frames {
                    if sent.accepted && sent.event < *event && !arrived.contains(seq) {
                        fail.push(("W6", format!("c{seq} was accepted before the first close request ({what}) and did not go before the close frame")));
                    }
                }
            }
        }
    }
    if s.close_sent_ok && close_at.is_none() && !exempt {
        fail.push((
            "W7",
            "a close frame was sent Ok but never reached the server".into(),
        ));
    }
    // ---- the end
    if let Some(end) = end {
        let end_seen = s.end_seen.unwrap_or(usize::MAX);
        let request = s
            .first_close
            .as_ref()
            .filter(|(event, ..)| *event < end_seen);
        let fits = match end {
            DisconnectReason::ServerClosed(Some(close)) => srv.server_close == Some(close.code.0),
            DisconnectReason::ClientClosed(close) => {
                request.is_some_and(|(_, code, _)| *code == close.code.0)
            }
            DisconnectReason::Error(Error::Timeout(Timeout::Close)) => request.is_some(),
            DisconnectReason::Error(Error::Io(_)) => srv.reset,
            _ => false,
        };
        if !fits {
            fail.push((
                "E",
                format!(
                    "the end {end:?} does not fit: server close {:?}, server reset {}, first close request before the end {:?}",
                    srv.server_close, srv.reset, request.map(|(_, code, what)| (what, code))
                ),
            ));
        }
        let handshake = matches!(
            end,
            DisconnectReason::ServerClosed(_) | DisconnectReason::ClientClosed(_)
        );
        let complete = handshake && !srv.reset && !srv.write_broken;
        if complete {
            s.count("R2 checked");
        }
        if complete && got != srv.sent {
            fail.push((
                "R2",
                format!(
                    "Frames delivered {got} frames before {end:?}; the server sent {}",
                    srv.sent
                ),
            ));
        }
    }
    if got > srv.sent {
        fail.push((
            "R1",
            format!(
                "Frames delivered {got} frames; the server sent {}",
                srv.sent
            ),
        ));
    }
    for (key, detail) in fail {
        s.fail(key, detail);
    }
}

fn tally(s: &mut State, srv: &SrvLog, end: Option<&DisconnectReason>) {
    let end = match end {
        None => "end: never".to_owned(),
        Some(DisconnectReason::ServerClosed(_)) => "end: ServerClosed".to_owned(),
        Some(DisconnectReason::ClientClosed(_)) => "end: ClientClosed".to_owned(),
        Some(DisconnectReason::Error(error)) => {
            let text = format!("{error:?}");
            format!("end: Error {}", text.split(['(', ' ']).next().unwrap_or(""))
                + &error
                    .timeout()
                    .map_or(String::new(), |t| format!("({t:?})"))
        }
        Some(other) => format!("end: {other:?}"),
    };
    s.count(end);
    if srv.reset {
        s.count("server reset");
    }
    if srv.server_close.is_some() {
        s.count("server closed first");
    }
    if srv.client_close_own {
        s.count("client closed first (W6/W8 checked)");
    }
    if srv.write_broken {
        s.count("server write broke");
    }
    if srv.peer_reset {
        s.count("client reset the connection");
    }
    let given = s.frames.len();
    let ok = s.frames.values().filter(|f| f.fate == Fate::Ok).count();
    let refused = s
        .frames
        .values()
        .filter(|f| matches!(f.fate, Fate::Refused(_)))
        .count();
    *s.tally.entry("frames given".into()).or_default() += given;
    *s.tally.entry("frames sent Ok".into()).or_default() += ok;
    *s.tally.entry("frames refused".into()).or_default() += refused;
    *s.tally.entry("server frames".into()).or_default() += srv.sent as usize;
}

fn timeline(t0: Instant, events: &[(Instant, String)], srv: &SrvLog) -> String {
    let mut all: Vec<(Instant, String)> = events
        .iter()
        .map(|(at, what)| (*at, format!("test   {what}")))
        .chain(
            srv.events
                .iter()
                .map(|(at, what)| (*at, format!("server {what}"))),
        )
        .collect();
    all.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    let n = all.len();
    for (i, (at, what)) in all.iter().enumerate() {
        if n > 400 && (150..n - 250).contains(&i) {
            if i == 150 {
                let _ = writeln!(out, "  ... {} lines ...", n - 400);
            }
            continue;
        }
        let ms = at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        let _ = writeln!(out, "  {ms:8.1} ms  {what}");
    }
    let wire: Vec<String> = srv
        .frames
        .iter()
        .map(|f| match (f.opcode, f.seq) {
            (_, Some(seq)) => format!("c{seq}"),
            (opcode::CLOSE, _) => format!("close({:?})", f.close_code),
            (opcode::PONG, _) => "pong".into(),
            (op, _) => format!("op{op}"),
        })
        .collect();
    let _ = writeln!(out, "  wire (client → server): {}", wire.join(" "));
    out
}

// =============================================================================================
// The driver
// =============================================================================================

struct Failure {
    seed: u64,
    count: usize,
    violations: Vec<Violation>,
    timeline: String,
}

fn describe(key: &str) -> &'static str {
    match key {
        "H" => "every await resolves in time",
        "W0" => "client frames are masked, whole and numbered",
        "W1" => "the server gets the client's frames in order, once",
        "W2" => "a frame sent Ok reached the server",
        "W3" => "a refused frame never reaches the server",
        "W4" => "nothing follows the client's close frame",
        "W5" => "no gaps among accepted frames",
        "W6" => "frames accepted before the close request go before the close frame",
        "W7" => "a close frame sent Ok reached the server",
        "W8" => "the client's close frame has the first request's code",
        "R1" => "Frames delivers the server's frames in order, none skipped",
        "R2" => "after a close handshake, Frames delivered every frame the server sent",
        "R3" => "the end is reported again, at once",
        "E" => "the end reason fits what happened",
        "S1" => "sends after a close request fail with Closing or Stopped",
        "S2" => "sends after the end (or close() returning) fail with Stopped",
        "S3" => "API contracts: InvalidFrame, no BufferFull from waiting sends, empty batch Ok",
        "T" => "the client closes TCP after the end",
        "R4" => "after close() returned, try_receive_frame reaches the end",
        "C" => "close() and SinkExt::close return within close_timeout (and slack)",
        _ => "?",
    }
}

async fn reproduce(
    case: &Case,
    key: &str,
    copies: usize,
    servers: &tokio::runtime::Handle,
) -> Option<(Vec<Violation>, String)> {
    let runs = futures_util::future::join_all((0..copies).map(|_| run_case(case, servers))).await;
    runs.into_iter().find_map(|run| {
        run.violations
            .iter()
            .any(|v| v.key == key)
            .then_some((run.violations, run.timeline))
    })
}

async fn shrink(
    failure: &Failure,
    key: &str,
    max_steps: usize,
    servers: &tokio::runtime::Handle,
) -> (Case, Vec<Violation>, String, usize) {
    let mut tree = generate(failure.seed);
    let mut best = (
        tree.current(),
        failure.violations.clone(),
        failure.timeline.clone(),
    );
    let mut steps = 0;
    let mut accepted = 0;
    let mut more = tree.simplify();
    while more && steps < max_steps {
        steps += 1;
        let candidate = tree.current();
        match reproduce(&candidate, key, SHRINK_COPIES, servers).await {
            Some((violations, timeline)) => {
                accepted += 1;
                best = (candidate, violations, timeline);
                more = tree.simplify();
            }
            None => more = tree.complicate(),
        }
    }
    (best.0, best.1, best.2, accepted)
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Kills the test if no case finishes for a minute: a client stuck inside a poll would stop
/// the actix thread, and with it every bound the cases enforce themselves.
fn watchdog(progress: Arc<Mutex<(Instant, bool)>>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let state = lock(&progress);
        if state.1 {
            return;
        }
        if state.0.elapsed() > Duration::from_secs(60) {
            eprintln!("simple_random: no case finished for 60 s (the actix thread hangs)");
            std::process::exit(101);
        }
    });
}

/// Runs `seeds`; returns the report of broken invariants (empty if none) and the tally.
fn run_seeds(seeds: &[u64], max_shrink: usize) -> (String, BTreeMap<String, usize>) {
    let servers = ServerThread::start();
    let progress = Arc::new(Mutex::new((Instant::now(), false)));
    watchdog(progress.clone());
    let started = Instant::now();
    let result = actix_rt::System::new().block_on(async {
        let servers = &servers.handle;
        let progress = &progress;
        let init = (BTreeMap::new(), BTreeMap::<&'static str, Failure>::new());
        let (counts, failures) = stream::iter(seeds.iter().copied())
            .map(|seed| async move {
                let case = generate(seed).current();
                let run = run_case(&case, servers).await;
                lock(progress).0 = Instant::now();
                if std::env::var_os("MINCH_SIMPLE_SHOW").is_some() {
                    eprintln!("==== seed {seed:#x}\n{case:#?}\n{}", run.timeline);
                }
                (seed, run)
            })
            .buffer_unordered(CONCURRENCY)
            .fold(init, |(mut counts, mut failures), (seed, run)| {
                for (what, n) in run.tally {
                    *counts.entry(what).or_insert(0) += n;
                }
                let keys: BTreeSet<&'static str> = run.violations.iter().map(|v| v.key).collect();
                for key in keys {
                    failures
                        .entry(key)
                        .and_modify(|failure| failure.count += 1)
                        .or_insert_with(|| Failure {
                            seed,
                            count: 1,
                            violations: run.violations.clone(),
                            timeline: run.timeline.clone(),
                        });
                }
                std::future::ready((counts, failures))
            })
            .await;
        let elapsed = started.elapsed();
        eprintln!(
            "simple_random: {} cases in {elapsed:.1?} ({CONCURRENCY} at a time)",
            seeds.len()
        );
        let mut report = String::new();
        if !failures.is_empty() {
            let _ = writeln!(
                report,
                "simple_random: {} cases in {elapsed:.1?}; invariants broken:",
                seeds.len()
            );
            for (key, failure) in &failures {
                let _ = writeln!(
                    report,
                    "  {key:<3} {:>6} cases  {}",
                    failure.count,
                    describe(key)
                );
            }
        }
        for (key, failure) in &failures {
            let (case, violations, timeline, steps) =
                shrink(failure, key, max_shrink, servers).await;
            lock(progress).0 = Instant::now();
            let first = failure.violations.iter().find(|v| v.key == *key).unwrap();
            let _ = writeln!(
                report,
                "\n==== {key}: {} ====\nseed {:#x} (rerun: MINCH_SIMPLE_SEED={:#x} cargo test \
                 --test simple_random)\nfirst violation: {}\nshrunk ({steps} simplifications) \
                 to:\n{case:#?}\nits violations:",
                describe(key),
                failure.seed,
                failure.seed,
                first.detail,
            );
            for v in &violations {
                let _ = writeln!(report, "  {}: {}", v.key, v.detail);
            }
            let _ = writeln!(report, "timeline of a failing run:\n{timeline}");
        }
        (report, counts)
    });
    lock(&progress).1 = true;
    result
}

#[test]
fn simple_random() {
    let seeds: Vec<u64> = match env_number("MINCH_SIMPLE_SEED") {
        Some(seed) => vec![seed],
        None => {
            let cases = env_number("MINCH_SIMPLE_CASES").unwrap_or(DEFAULT_CASES);
            let master = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            (0..cases).map(|i| splitmix(master ^ i)).collect()
        }
    };
    let max_shrink = env_number("MINCH_SIMPLE_SHRINK").unwrap_or(60) as usize;
    let (report, counts) = run_seeds(&seeds, max_shrink);
    for (what, count) in &counts {
        eprintln!("  {count:>8}  {what}");
    }
    assert!(report.is_empty(), "{report}");
}

// =============================================================================================
// Found by the random test
// =============================================================================================

/// Found by `simple_random` (S1, release runs; seeds 0xc9ed309ca7de9aa8 and 0xbc3c50d614380dd7,
/// timing-dependent): once the server's close frame has been read (the client's echo is
/// queued, and `send_frame` fails with `Closing`), a full write buffer makes `try_send_frame`
/// fail with `BufferFull` ("retry later"; it never will succeed) instead of `Closing`:
/// `Shared::hand_over` looks at `is_full()` before the connection's closing state, which only
/// `Connection::send` checks. (`poll_ready` had the same order, and waited for room until the
/// close timeout; 7ab2544 fixed that half: `poll_room` now checks `is_closing()` first.)
#[actix_rt::test]
async fn a_closing_connection_with_a_full_buffer_says_closing_not_buffer_full() {
    use std::io::Write as _;

    // A peer that upgrades, never reads, sends a close frame when told, and holds the socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("ws://{}/", listener.local_addr().expect("local addr"));
    let (go, told) = std::sync::mpsc::channel::<&'static str>();
    let peer = std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        if support::accept_upgrade_blocking(&mut stream).is_none() {
            return;
        }
        if told.recv_timeout(Duration::from_secs(30)) == Ok("close") {
            let _ = stream.write_all(&close_frame(Some(1000), "bye"));
        }
        let _ = told.recv_timeout(Duration::from_secs(30));
    });
    let options = ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_secs(3))
        .max_buffered_bytes(64 << 10);
    let (mut conn, _frames) = actix_rt::time::timeout(
        Duration::from_secs(5),
        minch::connect(url, Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    // Fill the write buffer: the peer reads nothing, so once the kernel's buffers are full (a
    // few MB on loopback) poll_ready stops being ready.
    let chunk = vec![b'x'; 256 << 10];
    let mut fed = 0;
    loop {
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut conn).poll_ready(cx))).await {
            Poll::Pending => break,
            Poll::Ready(ready) => ready.expect("poll_ready"),
        }
        Pin::new(&mut conn)
            .start_send(Frame::binary(chunk.clone()))
            .expect("start_send");
        fed += 1;
        assert!(fed < 400, "100 MB fed to a peer that reads nothing");
        actix_rt::task::yield_now().await;
    }
    assert_eq!(
        conn.try_send_frame(Frame::text("full")).await,
        Err(SendError::BufferFull),
        "the write buffer is full after {fed} frames of 256 KiB"
    );

    // The server closes. Once the client has read its close (and queued the echo), the held-back
    // frame is refused: send_frame says Closing.
    go.send("close").expect("the peer waits");
    let probe = actix_rt::time::timeout(
        Duration::from_secs(5),
        conn.send_frame(Frame::text("probe")),
    )
    .await
    .expect("send_frame resolves once the server's close is read");
    assert_eq!(
        probe,
        Err(SendError::Closing),
        "the server's close was read"
    );

    // The connection is closing, for good: every send must say so, at once.
    let try_send = conn.try_send_frame(Frame::text("after")).await;
    let ready = poll_fn(|cx| Poll::Ready(Pin::new(&mut conn).poll_ready(cx))).await;
    let _ = go.send("done");
    drop(conn);
    let _ = peer.join();
    assert!(
        try_send == Err(SendError::Closing)
            && matches!(ready, Poll::Ready(Err(SendError::Closing))),
        "after send_frame failed with Closing (the server's close was read), with the write \
         buffer full: try_send_frame → {try_send:?} (expected Err(Closing)), poll_ready → \
         {ready:?} (expected Ready(Err(Closing)))"
    );
}
