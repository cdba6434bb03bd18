//! Randomized lifecycle test of the actor client, `minch::Client<H>`, over real loopback
//! connections.
//!
//! ```sh
//! cargo test --test lifecycle_random                        # 1000 scenarios, ~15 s on 2 cores
//! MINCH_LIFECYCLE_CASES=100000 cargo test --release --test lifecycle_random   # the long run
//! MINCH_LIFECYCLE_SEED=0x5eed cargo test --test lifecycle_random   # one scenario (seed from a report)
//! ```
//!
//! `MINCH_LIFECYCLE_SHRINK` bounds the shrink steps per failure (default 100; 0 turns shrinking
//! off). Add `-- --nocapture` to see the coverage tally of a passing run. A seed fixes the
//! scenario, not the timing: a failure that depends on a race may need a few reruns.
//!
//! # The scenario model
//!
//! Each scenario (a proptest value, generated from its own 64-bit seed) has four parts, the
//! last of them (the test's ops, in one list) in two bullets:
//!
//! * **client options**: short timeouts so that a scenario takes tens of milliseconds
//!   (connect and upgrade 100 ms, close 50 ms), keepalive pings every 20–50 ms (pong timeout
//!   50–100 ms) or none, and sometimes a small `max_buffered_bytes` (64–4096) so that frames
//!   are held back;
//! * **what the server does on each connection** (in accept order): reset the TCP connection
//!   at once, answer 401, never answer the upgrade, or accept and run a script of
//!   {message (text/binary), fragmented message, ping, sleep, stop reading, close, reset in the
//!   middle of a frame, protocol violation}. An accepting server is either polite (answers the
//!   client's close and then closes TCP) or rude ("hang": never answers the client's close and
//!   never closes TCP after its own close). Connections beyond the plan get a quiet polite
//!   server. The server logs every frame the client sent, in wire order, and how its reading
//!   ended (EOF, reset, or the server reset it itself);
//! * **the handler's replies**: per callback kind a list of actions, used in call order
//!   (`Continue` once a list runs out): any `Reply`, sometimes `ctx.stop(..)`, sometimes
//!   `ctx.send_info_after(..)`, cancelled at once, at the next callback, or never.
//!   `handle_disconnect` returns `Reconnect::After(0..30 ms)` or `Reconnect::Stop`; `init`
//!   fails rarely. Every callback is logged with a timestamp, and so is the handler's `Drop`;
//! * **the test's messages**: `SendFrame`, `TrySendFrame` (single or in bursts, so that the
//!   mailbox holds several), `SendFrame(Frame::Close)`, `Info` and `Close` at random times in
//!   the first 200 ms; each result is logged with the time it resolved;
//! * **the test's `FrameSender` calls**, at random times in the same 200 ms: `GetFrameSender`
//!   (often at 0 ms, before the first connection; a sender op with no sender yet asks for one
//!   first), `send` of one frame or a burst, `send_all`, `send(Frame::Close)` (code 4000 + the
//!   op's index, so that the wire tells whose close it is), an invalid frame (a 126-byte ping
//!   by `send`, or with a valid frame by `send_all`), each on the test's thread (the actix
//!   thread, the client's) or on a thread of its own that runs while the client does (a burst
//!   there may be spaced 1 ms apart), and streams: a thread that sends every 100 µs or so for
//!   5–60 ms, so that frames are in the queue when connections end. Each call is logged with
//!   its thread and the moments before and after it (a sender decides at once).
//!
//! Every frame carries a tag: `s<conn>.<seq>` from the server, `h<conn>.<n>` from a handler
//! reply (`h-.<n>` when the handler was not connected), `t<op>` (or `t<op>.<k>` in a burst)
//! from the test, through the `Addr` or a `FrameSender`. The server puts the connection's
//! accept index in a response header, so the handler knows which connection it is on. A
//! scenario runs until the client terminates by itself, its horizon (40–250 ms) passes or the
//! server has accepted 16 connections; then the test sends `Close` (after a terminate too: it
//! must resolve at once) and waits, every wait bounded. Once the client has terminated, the
//! test's sender sends `tz.0` and `send_all`s `tz.1`, and a sender asked for then sends
//! `tz.2`; at the end `GetStats` reads `frames_unsent`. 12 scenarios run at a time on one
//! actix thread; the servers share one tokio thread.
//!
//! # Invariants (checked on every run; the keys appear in failure reports)
//!
//! 1. Callbacks and shutdown
//!    * **1a** `init` runs once, first.
//!    * **1b** `terminate` runs exactly once, and no callback follows it.
//!    * **1c** The handler is dropped within 1 s of `terminate`, while the test still holds an
//!      `Addr`.
//!    * **1d** The client closes every TCP connection within 1 s of `terminate` (the server
//!      reads each to EOF or a reset).
//! 2. Connection attempts
//!    * **2a** No `connect` after the final stop: after `terminate`, or after the handler asked
//!      to stop (`Reply::Stop`, `ctx.stop`, `Reconnect::Stop`); the server accepts no TCP
//!      connection the client did not ask for (accepts ≤ `connect` calls).
//!    * **2b** A `connect` comes no sooner than the delay the preceding `handle_disconnect`
//!      returned (2 ms of timer granularity allowed).
//!    * **2c** `attempt` in `handle_disconnect` is the number of failures since the last
//!      `handle_connect`, counting this one (1, 2, ...).
//!    * **2d** Callbacks follow the attempt cycle: `connect`, then `handle_connect` or
//!      `handle_disconnect`; after `handle_connect`, one `handle_disconnect` (or `terminate`).
//! 3. Sends
//!    * **3a** Every `SendFrame`/`TrySendFrame`/`Close`/`GetFrameSender` resolves, within the
//!      bound, with the client's answer (never an actix `MailboxError`); so does the final
//!      `GetStats`.
//!    * **3b** A frame whose send returned `Ok` is on the wire exactly once, unless a
//!      connection it may have gone to was cut by a reset before the server read it all; a
//!      `SendFrame(Frame::Close)` that returned `Ok` put a close frame on the wire.
//!    * **3c** No data frame follows the client's close frame on any connection (whoever sent
//!      it, `FrameSender` frames included, and whoever began the close: a sender's close too).
//!    * **3d** A frame whose send returned an error never reaches the wire.
//!    * **3e** Sends while the client waits to (re)connect get `SendError::NotConnected` (or
//!      `Stopped`, once a final stop was asked for); sends after `terminate` get
//!      `SendError::Stopped`.
//! 4. Connections do not leak into each other
//!    * **4a** A server message of connection `i` reaches `handle_frame` only between
//!      connection `i`'s `handle_connect` and its end, intact, in order, at most once.
//!    * **4b** A frame sent while connection `i` was open goes out on connection `i` only.
//!    * **4c** After a stop request (`Reply::Stop`, `ctx.stop`) or `terminate`, no new frame
//!      reaches the server: neither replies of later callbacks nor the test's later sends,
//!      through the `Addr` or a `FrameSender`.
//! 5. **5** The client never hangs or spins: every scenario finishes within 5 s. (A client
//!    stuck inside one poll would stop the actix thread and every bound with it: a watchdog
//!    thread then ends the test binary after 60 s without progress, naming the seeds in flight.)
//! 6. Extras
//!    * **6a** A client close that the server never answers (nor closes TCP) ends with
//!      `DisconnectReason::Error(Error::Timeout(Timeout::Close))`.
//!    * **6b** An info that `ctx.cancel` cancelled (it returned true: still pending) never
//!      reaches `handle_info`.
//! 7. `FrameSender` (an accepted frame is one whose `send`/`send_all` returned `Ok`)
//!    * **7a** A refusal at once puts none of the call's frames on the wire, and is the right
//!      one: `InvalidFrame` exactly for the invalid frames (`send` of one always; `send_all`
//!      with one unless it is not connected or stopped); `Stopped` only once a final stop was
//!      asked for (a stop request, `Reconnect::Stop`, a `Close`, a failed `init`);
//!      `NotConnected` never while a connection was surely open, and no other error. "Surely
//!      open": from connection `i`'s `handle_connect` (for the test's thread, which cannot run
//!      inside the client's turn that opens the queue; for other threads, from the first moment
//!      the queue was seen open on `i`: a call on the test's thread, or an accepted call) until
//!      the first thing that may have begun its end: the server's close, violation, reset or
//!      FIN on `i`, the end of its TCP connection, the test's `SendFrame(Close)`/`Close`, a
//!      sender's accepted close, the handler's `Reply::Close`/`Reply::Stop`/`ctx.stop`, its
//!      `handle_disconnect`/`terminate`, and (with keepalive, unless it ended otherwise)
//!      one ping interval after `handle_connect`. (Whether frames may be accepted once the
//!      client's close handshake began is 7f's matter.)
//!    * **7b** An accepted frame was accepted while a connection was open, goes out at most
//!      once, and only on a connection open while it was accepted (never on the next one); the
//!      frames of one thread go out on a connection in the order they were sent. (For senders a
//!      connection is open from the server's accept: the queue opens just before
//!      `handle_connect` runs, so that it can hand a sender to a thread.)
//!    * **7c** Nothing is dropped silently: the accepted frames missing from the wire, apart
//!      from those whose connection was cut by a reset (as 3b allows), are at most the
//!      `Error::Send` reports to `handle_error` plus `Stats::frames_unsent` (which count the
//!      handler's and the `Addr`'s refusals and losses too: the check is an upper bound); and
//!      no more sender frames reach the wire than were accepted.
//!    * **7d** An accepted frame goes before whatever an `Addr` message sent after its `send`
//!      returned does: before the test's later `SendFrame`/`TrySendFrame`, and before the
//!      handler's reply to a later test `Info`, when both are on the same connection.
//!    * **7e** After `terminate`, `send` and `send_all` return `Stopped` (an invalid frame
//!      excepted: both check the frames first), also from a sender asked for after it.
//!    * **7f** Once the client's close handshake has begun on a connection (the client is no
//!      longer connected: `Stats::connected` is false, `SendFrame` answers `Closing`), senders
//!      are refused at once, until the connection's end (`handle_disconnect`/`terminate`):
//!      no call made after that moment returns `Ok`. Surely begun: once the test's
//!      `SendFrame(Close)` resolved `Ok`; for the test's thread (which cannot run inside a turn
//!      of the client) also once the server read the client's close frame or a callback
//!      returned `Reply::Close`. (Frames queued before the client took a close may be accepted:
//!      they are refused later, to `handle_error`.)
//!      **Fails on the current `src`**: see `tests/sender_regressions.rs`.
//!
//! Timestamps come from `Instant::now()`; the handler and the test's tasks run on the same
//! thread, so their order is exact. A send's processing lies between its issue and its
//! resolution, which is how sends are related to connection windows (3b, 3e, 4b). Sender
//! threads take their timestamps on their own threads, from the same monotonic clock (7a, 7b,
//! 7d).
//!
//! All scenarios run; then, for every violated invariant, the first scenario that broke it is
//! shrunk (each candidate is run 4 times; it counts as failing if one run breaks the same
//! invariant) and reported with its seed, the shrunk scenario and a timeline of a failing run.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::Addr;
use futures_util::future::join_all;
use futures_util::{stream, StreamExt};
use minch::{
    Client, ClientContext, Close, ConnectOptions, ConnectRequest, DisconnectReason, Error, Frame,
    FrameSender, GetFrameSender, GetStats, Info, MinchHandler, Reconnect, Reply, Response,
    SendError, SendFrame, StopReason, Timeout, TrySendFrame,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use support::{close_frame, decode_frame, frame_bytes, opcode, sec_websocket_accept, RawFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Scenarios run at the same time, on one actix thread.
const CONCURRENCY: usize = 12;
/// A scenario that takes longer than this is a failure (invariant 5).
const SCENARIO_BOUND: Duration = Duration::from_secs(5);
/// How soon after `terminate` the handler must be dropped and every socket closed (1c, 1d).
const AFTER_TERMINATE: Duration = Duration::from_secs(1);
/// Timer granularity allowed below a reconnect delay (2b).
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// After this many accepted connections the test sends `Close`.
const MAX_CONNS: usize = 16;
/// The scripted server's receive buffer: small, so that "stop reading" pushes back on the
/// client after a few kilobytes.
const SERVER_RCVBUF: u32 = 8 * 1024;
/// The response header that tells the handler which connection (accept index) it is on.
const CONN_HEADER: &str = "x-minch-conn";
/// Runs of each shrink candidate; it fails if any run breaks the invariant.
const SHRINK_COPIES: usize = 4;
/// A handler-scheduled info's id starts here; test `Info` ids are the op index.
const SCHEDULED_INFO_IDS: u32 = 1000;
/// A `FrameSender` close of op `i` carries code `SENDER_CLOSE_CODES + i`: no other close the
/// client sends has a code in that range, so the wire tells which op's close went out.
const SENDER_CLOSE_CODES: u16 = 4000;

// =============================================================================================
// The scenario model
// =============================================================================================

/// One randomized run; see the module docs.
#[derive(Debug, Clone)]
struct Scenario {
    client: ClientPlan,
    /// Connection `i`, in the server's accept order, follows `conns[i]`; later ones get a quiet,
    /// polite server.
    conns: Vec<ConnPlan>,
    handler: HandlerPlan,
    /// The test's messages, in time order.
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct ClientPlan {
    ping_interval_ms: Option<u64>,
    pong_timeout_ms: u64,
    max_buffered_bytes: Option<usize>,
    /// When the test sends `Close` if the client is still running (the test's messages go out
    /// in the first 200 ms, some of them after it).
    horizon_ms: u64,
}

#[derive(Debug, Clone)]
enum ConnPlan {
    /// Answer the upgrade, then run the steps. `hang`: never answer the client's close frame,
    /// and never close TCP after a close handshake (the client's close timer must end it).
    Accept { steps: Vec<ServerStep>, hang: bool },
    /// Accept the TCP connection and reset it at once.
    Refuse,
    /// Answer the upgrade request with 401.
    Reject401,
    /// Read the upgrade request and never answer it.
    NoUpgradeAnswer,
}

#[derive(Debug, Clone)]
enum ServerStep {
    Sleep(u64),
    Message {
        binary: bool,
        pad: usize,
    },
    /// A text message in `parts` frames.
    Fragmented {
        parts: usize,
        pad: usize,
    },
    Ping,
    /// Stop reading from the socket until the scenario is over.
    StopReading,
    /// Send a close frame with this code; the script ends.
    Close(u16),
    /// Send two bytes of a frame header, then RST; the script ends.
    ResetMidFrame,
    /// Send a frame the client must fail the connection for; the script ends.
    Violation(BadFrame),
}

#[derive(Debug, Clone, Copy)]
enum BadFrame {
    ReservedOpcode,
    Rsv1,
    Masked,
}

#[derive(Debug, Clone)]
struct HandlerPlan {
    init_fails: bool,
    on_connect: Vec<Act>,
    on_frame: Vec<Act>,
    on_info: Vec<Act>,
    on_error: Vec<Act>,
    on_disconnect: Vec<DisconnectAct>,
}

/// What a callback that returns a `Reply` does.
#[derive(Clone)]
struct Act {
    reply: ReplyPlan,
    ctx_stop: bool,
    schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
enum ReplyPlan {
    Continue,
    Send { binary: bool, pad: usize },
    SendAll(Vec<usize>),
    Close(u16),
    Stop,
}

#[derive(Clone)]
struct DisconnectAct {
    /// `None`: `Reconnect::Stop`.
    reconnect_after_ms: Option<u64>,
    ctx_stop: bool,
    schedule: Option<Schedule>,
}

/// `ctx.send_info_after(delay, id)`, and when to cancel it.
#[derive(Clone)]
struct Schedule {
    delay_ms: u64,
    cancel: Cancel,
}

#[derive(Debug, Clone, Copy)]
enum Cancel {
    Never,
    /// In the same callback.
    Now,
    /// At the start of the next callback (which may be on another connection).
    NextCallback,
}

#[derive(Clone)]
struct Op {
    at_ms: u64,
    kind: OpKind,
}

#[derive(Debug, Clone)]
enum OpKind {
    Send {
        try_send: bool,
        binary: bool,
        pad: usize,
    },
    /// `n` sends issued at once, so that they wait in the mailbox together.
    Burst {
        n: usize,
        try_send: bool,
        pad: usize,
    },
    Info,
    /// `SendFrame(Frame::Close(code))`: starts the close handshake.
    SendClose(u16),
    Close,
    /// `addr.send(GetFrameSender)`: the sender ops after it use this sender. A sender op with no
    /// sender yet asks for one first.
    GetSender,
    /// `n` calls of `FrameSender::send`, one data frame each.
    SenderSend {
        n: usize,
        pad: usize,
        on: On,
    },
    /// One `FrameSender::send_all` of `n` data frames.
    SenderSendAll {
        n: usize,
        pad: usize,
        on: On,
    },
    /// A thread of its own calls `FrameSender::send` every 100 µs or so for `ms` (or until
    /// `Stopped`), whatever the other answers: frames are in the queue at almost every moment,
    /// also when a connection ends.
    SenderStream {
        ms: u64,
        pad: usize,
    },
    /// `FrameSender::send(Frame::close(SENDER_CLOSE_CODES + op, ..))`.
    SenderClose {
        on: On,
    },
    /// A frame the sender must refuse: `send` of a 126-byte ping or, with `all`, `send_all` of
    /// a tagged data frame and that ping.
    SenderInvalid {
        all: bool,
    },
}

/// Where a sender op makes its calls.
#[derive(Debug, Clone, Copy)]
enum On {
    /// On the test's thread (the actix thread, which the client runs on too), in one go.
    Here,
    /// On a thread of its own, while the client runs; `spaced`: 1 ms between sends.
    Thread { spaced: bool },
}

// ---- one line per part in failure reports

impl Scenario {
    fn report(&self) -> String {
        let (c, h) = (&self.client, &self.handler);
        let mut out = format!(
            "  client: ping every {:?} ms (pong timeout {} ms), max_buffered_bytes {:?}, \
             horizon {} ms\n",
            c.ping_interval_ms, c.pong_timeout_ms, c.max_buffered_bytes, c.horizon_ms
        );
        for (i, conn) in self.conns.iter().enumerate() {
            let _ = writeln!(out, "  conn {i}: {conn:?}");
        }
        let _ = writeln!(out, "  init fails: {}", h.init_fails);
        let _ = writeln!(out, "  on_connect: {:?}", h.on_connect);
        let _ = writeln!(out, "  on_frame: {:?}", h.on_frame);
        let _ = writeln!(out, "  on_info: {:?}", h.on_info);
        let _ = writeln!(out, "  on_error: {:?}", h.on_error);
        let _ = writeln!(out, "  on_disconnect: {:?}", h.on_disconnect);
        let _ = writeln!(out, "  ops: {:?}", self.ops);
        out
    }
}

impl fmt::Debug for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.reply)?;
        if self.ctx_stop {
            f.write_str(" +ctx.stop")?;
        }
        match &self.schedule {
            Some(schedule) => write!(f, " +{schedule:?}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for DisconnectAct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reconnect_after_ms {
            Some(ms) => write!(f, "After({ms} ms)")?,
            None => f.write_str("Stop")?,
        }
        if self.ctx_stop {
            f.write_str(" +ctx.stop")?;
        }
        match &self.schedule {
            Some(schedule) => write!(f, " +{schedule:?}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "info in {} ms (cancel: {:?})",
            self.delay_ms, self.cancel
        )
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms {:?}", self.at_ms, self.kind)
    }
}

// ---- strategies: the first alternative of each `prop_oneof!` is the simplest (shrinking
// ---- moves towards it)

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        client_plan(),
        prop::collection::vec(conn_plan(), 1..=4),
        handler_plan(),
        prop::collection::vec(op(), 0..=14),
    )
        .prop_map(|(client, conns, handler, mut ops)| {
            ops.sort_by_key(|op| op.at_ms);
            Scenario {
                client,
                conns,
                handler,
                ops,
            }
        })
}

fn client_plan() -> impl Strategy<Value = ClientPlan> {
    (
        prop::option::of(20..=50u64),
        50..=100u64,
        prop::option::of(64..=4096usize),
        40..=250u64,
    )
        .prop_map(
            |(ping_interval_ms, pong_timeout_ms, max_buffered_bytes, horizon_ms)| ClientPlan {
                ping_interval_ms,
                pong_timeout_ms,
                max_buffered_bytes,
                horizon_ms,
            },
        )
}

/// Padding after a frame's tag: mostly small, sometimes a few KiB, rarely enough to fill the
/// server's receive buffer on its own.
fn pad() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..40usize, 3 => 100..3_000usize, 1 => 20_000..60_000usize]
}

fn close_code() -> impl Strategy<Value = u16> {
    prop::sample::select(&[1000u16, 1001, 1008, 1011, 3000, 4999][..])
}

fn conn_plan() -> impl Strategy<Value = ConnPlan> {
    prop_oneof![
        6 => (prop::collection::vec(server_step(), 0..=8), any::<bool>())
            .prop_map(|(steps, hang)| ConnPlan::Accept { steps, hang }),
        1 => Just(ConnPlan::Refuse),
        1 => Just(ConnPlan::Reject401),
        1 => Just(ConnPlan::NoUpgradeAnswer),
    ]
}

fn server_step() -> impl Strategy<Value = ServerStep> {
    prop_oneof![
        3 => (1..=8u64).prop_map(ServerStep::Sleep),
        5 => (any::<bool>(), pad()).prop_map(|(binary, pad)| ServerStep::Message { binary, pad }),
        2 => (2..=4usize, pad()).prop_map(|(parts, pad)| ServerStep::Fragmented { parts, pad }),
        2 => Just(ServerStep::Ping),
        1 => Just(ServerStep::StopReading),
        1 => close_code().prop_map(ServerStep::Close),
        1 => Just(ServerStep::ResetMidFrame),
        1 => prop_oneof![
            Just(BadFrame::ReservedOpcode),
            Just(BadFrame::Rsv1),
            Just(BadFrame::Masked)
        ]
        .prop_map(ServerStep::Violation),
    ]
}

fn handler_plan() -> impl Strategy<Value = HandlerPlan> {
    use prop::collection::vec;
    (
        prop::bool::weighted(0.03),
        vec(act(), 0..=3),
        vec(act(), 0..=8),
        vec(act(), 0..=6),
        vec(act(), 0..=4),
        vec(disconnect_act(), 0..=6),
    )
        .prop_map(
            |(init_fails, on_connect, on_frame, on_info, on_error, on_disconnect)| HandlerPlan {
                init_fails,
                on_connect,
                on_frame,
                on_info,
                on_error,
                on_disconnect,
            },
        )
}

fn act() -> impl Strategy<Value = Act> {
    let reply = prop_oneof![
        8 => Just(ReplyPlan::Continue),
        4 => (any::<bool>(), pad()).prop_map(|(binary, pad)| ReplyPlan::Send { binary, pad }),
        2 => prop::collection::vec(pad(), 1..=4).prop_map(ReplyPlan::SendAll),
        1 => close_code().prop_map(ReplyPlan::Close),
        1 => Just(ReplyPlan::Stop),
    ];
    (
        reply,
        prop::bool::weighted(0.04),
        prop::option::weighted(0.2, schedule()),
    )
        .prop_map(|(reply, ctx_stop, schedule)| Act {
            reply,
            ctx_stop,
            schedule,
        })
}

fn disconnect_act() -> impl Strategy<Value = DisconnectAct> {
    (
        prop_oneof![9 => (0..30u64).prop_map(Some), 1 => Just(None)],
        prop::bool::weighted(0.04),
        prop::option::weighted(0.2, schedule()),
    )
        .prop_map(|(reconnect_after_ms, ctx_stop, schedule)| DisconnectAct {
            reconnect_after_ms,
            ctx_stop,
            schedule,
        })
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        1..=30u64,
        prop_oneof![
            Just(Cancel::Never),
            Just(Cancel::Now),
            Just(Cancel::NextCallback)
        ],
    )
        .prop_map(|(delay_ms, cancel)| Schedule { delay_ms, cancel })
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        4 => (any::<bool>(), any::<bool>(), pad())
            .prop_map(|(try_send, binary, pad)| OpKind::Send { try_send, binary, pad }),
        2 => (2..=12usize, any::<bool>(), pad())
            .prop_map(|(n, try_send, pad)| OpKind::Burst { n, try_send, pad }),
        2 => Just(OpKind::Info),
        1 => close_code().prop_map(OpKind::SendClose),
        1 => Just(OpKind::Close),
        3 => (prop_oneof![Just(1usize), 2..=12usize], pad(), on())
            .prop_map(|(n, pad, on)| OpKind::SenderSend { n, pad, on }),
        1 => (1..=8usize, pad(), on()).prop_map(|(n, pad, on)| OpKind::SenderSendAll { n, pad, on }),
        1 => prop_oneof![
            2 => on().prop_map(|on| OpKind::SenderClose { on }),
            1 => any::<bool>().prop_map(|all| OpKind::SenderInvalid { all }),
        ],
        1 => (5..=60u64, prop_oneof![4 => 0..40usize, 1 => 100..2_000usize])
            .prop_map(|(ms, pad)| OpKind::SenderStream { ms, pad }),
    ];
    // A sender is asked for at a random time, often before the first connection.
    let get_sender_at = prop_oneof![Just(0u64), 0..=200u64];
    prop_oneof![
        15 => (0..=200u64, kind).prop_map(|(at_ms, kind)| Op { at_ms, kind }),
        1 => get_sender_at.prop_map(|at_ms| Op { at_ms, kind: OpKind::GetSender }),
    ]
}

fn on() -> impl Strategy<Value = On> {
    prop_oneof![
        2 => Just(On::Here),
        1 => any::<bool>().prop_map(|spaced| On::Thread { spaced }),
    ]
}

/// The scenario of a seed, as a proptest value tree (so that it can be shrunk).
fn generate(seed: u64) -> impl ValueTree<Value = Scenario> {
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix(seed.wrapping_add(i as u64)).to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    scenario()
        .new_tree(&mut runner)
        .expect("the scenario strategy never rejects")
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A frame payload: its tag, `|`, then `pad` bytes.
fn payload(tag: &str, pad: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}|").into_bytes();
    bytes.resize(bytes.len() + pad, b'x');
    bytes
}

fn tag_of(payload: &[u8]) -> Option<String> {
    let end = payload.iter().position(|&b| b == b'|')?;
    String::from_utf8(payload[..end].to_vec()).ok()
}

fn data_frame(tag: &str, binary: bool, pad: usize) -> Frame {
    let bytes = payload(tag, pad);
    if binary {
        Frame::binary(bytes)
    } else {
        Frame::text(String::from_utf8(bytes).expect("tags and padding are ASCII"))
    }
}

// =============================================================================================
// The handler
// =============================================================================================

/// Everything the handler saw and did, in order.
type Log = Arc<Mutex<Vec<Entry>>>;

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    /// The callback this happened in (entries of one callback share it).
    cb: usize,
    ev: Ev,
}

// Some fields are only read through `Debug`, in timelines.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Ev {
    Init {
        ok: bool,
    },
    Connect,
    /// `handle_connect` on the server's connection `conn`.
    Connected {
        conn: usize,
    },
    /// `handle_frame`; `tag` of a text or binary message.
    Frame {
        tag: Option<String>,
        len: usize,
    },
    Info {
        id: u32,
    },
    Error(String),
    Disconnect {
        reason: String,
        close_timeout: bool,
        attempt: u32,
        /// `None`: `Reconnect::Stop`.
        after: Option<Duration>,
    },
    Terminate(String),
    /// The frames this callback's reply sends; `conn` is the connection the handler was on.
    Sends {
        tags: Vec<String>,
        conn: Option<usize>,
    },
    ReplyClose(u16),
    ReplyStop,
    CtxStop,
    Scheduled {
        id: u32,
    },
    /// `ctx.cancel` of info `id`; `pending`: what it returned.
    Cancelled {
        id: u32,
        pending: bool,
    },
    Dropped,
}

/// A `ctx.cancel` to run later; it returns what `cancel` returned.
type DueCancel = Box<dyn FnOnce(&mut ClientContext<'_, Fuzz>) -> bool>;

/// The callbacks that have a plan, to count their calls.
#[derive(Clone, Copy)]
enum Kind {
    Connect,
    Frame,
    Info,
    Error,
    Disconnect,
}

/// A handler that plays a [`HandlerPlan`] and logs everything.
struct Fuzz {
    plan: HandlerPlan,
    request: ConnectRequest,
    log: Log,
    /// Callbacks so far.
    cb: usize,
    /// Calls so far, per `Kind`.
    calls: [usize; 5],
    /// The connection between `handle_connect` and `handle_disconnect`.
    conn: Option<usize>,
    replies: usize,
    next_info: u32,
    /// Cancels to run at the start of the next callback.
    due_cancels: Vec<(u32, DueCancel)>,
}

impl Fuzz {
    fn new(plan: HandlerPlan, request: ConnectRequest, log: Log) -> Self {
        Fuzz {
            plan,
            request,
            log,
            cb: 0,
            calls: [0; 5],
            conn: None,
            replies: 0,
            next_info: SCHEDULED_INFO_IDS,
            due_cancels: Vec::new(),
        }
    }

    fn record(&self, ev: Ev) {
        lock(&self.log).push(Entry {
            at: Instant::now(),
            cb: self.cb,
            ev,
        });
    }

    /// Starts a callback: logs it, then runs the cancels due.
    fn begin(&mut self, ctx: &mut ClientContext<'_, Self>, ev: Ev) {
        self.cb += 1;
        self.record(ev);
        for (id, cancel) in std::mem::take(&mut self.due_cancels) {
            let pending = cancel(ctx);
            self.record(Ev::Cancelled { id, pending });
        }
    }

    /// The index of this call among the calls of its kind.
    fn next_call(&mut self, kind: Kind) -> usize {
        self.calls[kind as usize] += 1;
        self.calls[kind as usize] - 1
    }

    fn side_effects(
        &mut self,
        ctx_stop: bool,
        schedule: Option<Schedule>,
        ctx: &mut ClientContext<'_, Self>,
    ) {
        if let Some(Schedule { delay_ms, cancel }) = schedule {
            let id = self.next_info;
            self.next_info += 1;
            // The handle's type is about to change: keep it type-inferred.
            let handle = ctx.send_info_after(Duration::from_millis(delay_ms), id);
            self.record(Ev::Scheduled { id });
            match cancel {
                Cancel::Never => {}
                Cancel::Now => {
                    let pending = ctx.cancel(handle);
                    self.record(Ev::Cancelled { id, pending });
                }
                Cancel::NextCallback => self.due_cancels.push((
                    id,
                    Box::new(move |ctx: &mut ClientContext<'_, Fuzz>| ctx.cancel(handle)),
                )),
            }
        }
        if ctx_stop {
            ctx.stop("planned ctx.stop");
            self.record(Ev::CtxStop);
        }
    }

    /// Plays the next action for a callback that returns a `Reply`.
    fn act(&mut self, kind: Kind, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let n = self.next_call(kind);
        let list = match kind {
            Kind::Connect => &self.plan.on_connect,
            Kind::Frame => &self.plan.on_frame,
            Kind::Info => &self.plan.on_info,
            Kind::Error => &self.plan.on_error,
            Kind::Disconnect => unreachable!("handle_disconnect has a plan of its own"),
        };
        let Some(act) = list.get(n).cloned() else {
            return Reply::Continue;
        };
        self.side_effects(act.ctx_stop, act.schedule, ctx);
        match act.reply {
            ReplyPlan::Continue => Reply::Continue,
            ReplyPlan::Send { binary, pad } => {
                let frames = self.reply_frames([(binary, pad)]);
                Reply::Send(frames.into_iter().next().expect("one frame"))
            }
            ReplyPlan::SendAll(pads) => {
                let specs = pads.iter().enumerate().map(|(i, &pad)| (i % 2 == 1, pad));
                Reply::SendAll(self.reply_frames(specs))
            }
            ReplyPlan::Close(code) => {
                self.record(Ev::ReplyClose(code));
                Reply::close(code, "planned Reply::Close")
            }
            ReplyPlan::Stop => {
                self.record(Ev::ReplyStop);
                Reply::stop("planned Reply::Stop")
            }
        }
    }

    /// Tagged frames for a reply, logged before they are returned.
    fn reply_frames(&mut self, specs: impl IntoIterator<Item = (bool, usize)>) -> Vec<Frame> {
        let conn = self.conn.map_or("-".to_owned(), |c| c.to_string());
        let mut tags = Vec::new();
        let mut frames = Vec::new();
        for (binary, pad) in specs {
            self.replies += 1;
            let tag = format!("h{conn}.{}", self.replies);
            frames.push(data_frame(&tag, binary, pad));
            tags.push(tag);
        }
        self.record(Ev::Sends {
            tags,
            conn: self.conn,
        });
        frames
    }
}

impl MinchHandler for Fuzz {
    type Info = u32;

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let ok = !self.plan.init_fails;
        self.begin(ctx, Ev::Init { ok });
        if ok {
            Ok(())
        } else {
            Err("planned init failure".into())
        }
    }

    fn connect(&mut self, ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.begin(ctx, Ev::Connect);
        self.request.clone()
    }

    fn handle_connect(&mut self, response: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let conn = response
            .headers
            .get(CONN_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("the scripted server names the connection");
        self.conn = Some(conn);
        self.begin(ctx, Ev::Connected { conn });
        self.act(Kind::Connect, ctx)
    }

    fn handle_frame(&mut self, frame: Frame, ctx: &mut ClientContext<'_, Self>) -> Reply {
        let (tag, len) = match &frame {
            Frame::Text(_) | Frame::Binary(_) => {
                let bytes = frame.payload().unwrap_or_default();
                (tag_of(bytes), bytes.len())
            }
            other => (None, other.payload_len()),
        };
        self.begin(ctx, Ev::Frame { tag, len });
        self.act(Kind::Frame, ctx)
    }

    fn handle_info(&mut self, id: u32, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.begin(ctx, Ev::Info { id });
        self.act(Kind::Info, ctx)
    }

    fn handle_error(&mut self, error: Error, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.begin(ctx, Ev::Error(format!("{error:?}")));
        self.act(Kind::Error, ctx)
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let n = self.next_call(Kind::Disconnect);
        let act = self
            .plan
            .on_disconnect
            .get(n)
            .cloned()
            .unwrap_or(DisconnectAct {
                reconnect_after_ms: Some(5),
                ctx_stop: false,
                schedule: None,
            });
        let after = act.reconnect_after_ms.map(Duration::from_millis);
        self.begin(
            ctx,
            Ev::Disconnect {
                reason: reason.to_string(),
                close_timeout: reason.error().and_then(Error::timeout) == Some(Timeout::Close),
                attempt,
                after,
            },
        );
        self.conn = None;
        self.side_effects(act.ctx_stop, act.schedule, ctx);
        after.map_or(Reconnect::Stop, Reconnect::After)
    }

    fn terminate(&mut self, reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        self.cb += 1;
        self.record(Ev::Terminate(reason.to_string()));
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        self.cb += 1;
        self.record(Ev::Dropped);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// =============================================================================================
// The scripted server
// =============================================================================================

/// A tokio runtime on its own thread that runs every scenario's server.
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
            .name("lifecycle-servers".into())
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

/// What the server saw on one connection.
#[derive(Debug, Clone)]
struct ConnLog {
    plan: &'static str,
    hang: bool,
    accepted_at: Instant,
    /// Every frame the client sent, in wire order.
    frames: Vec<Seen>,
    /// The server's actions, for the timeline.
    actions: Vec<(Instant, String)>,
    /// Tagged messages the server sent: tag and payload length.
    sent: Vec<(String, usize)>,
    server_closed: bool,
    client_closed: bool,
    violated: bool,
    reset: bool,
    paused: bool,
    /// FIN sent.
    shut: bool,
    /// The client sent a close frame that this server, being rude, never answered, and the
    /// server had not sent a close, a violation or a reset, nor stopped reading, before it.
    close_unanswered: bool,
    /// How reading ended; `None` while the connection is open.
    end: Option<(Instant, End)>,
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    opcode: u8,
    tag: Option<String>,
    len: usize,
    close_code: Option<u16>,
    /// Read after the scenario ended (a connection that had stopped reading).
    drained: bool,
}

impl Seen {
    fn is_data(&self) -> bool {
        matches!(
            self.opcode,
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The client closed TCP and the server read everything before it; `trailing` bytes of an
    /// incomplete frame came last.
    Eof { trailing: usize },
    /// Reading failed (the client reset the connection).
    Reset(String),
    /// The server reset the connection itself.
    ServerReset,
    /// The client sent bytes that are not a frame.
    Garbage(String),
}

type ConnRef = Arc<Mutex<ConnLog>>;

/// One scenario's server: a listener on 127.0.0.1 that plays `ConnPlan`s.
struct Server {
    port: u16,
    conns: Arc<Mutex<Vec<ConnRef>>>,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(rt: &tokio::runtime::Handle, plans: Vec<ConnPlan>) -> Server {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (drain, drain_rx) = watch::channel(false);
        let (port_tx, port_rx) = oneshot::channel();
        let task = rt.spawn(accept_loop(plans, conns.clone(), drain_rx, port_tx));
        let port = port_rx.await.expect("the scripted server binds 127.0.0.1");
        Server {
            port,
            conns,
            drain,
            task,
        }
    }

    fn accepted(&self) -> usize {
        lock(&self.conns).len()
    }

    /// The scenario is over: connections that stopped reading read again (to EOF).
    fn drain(&self) {
        let _ = self.drain.send(true);
    }

    fn all_ended(&self) -> bool {
        lock(&self.conns)
            .iter()
            .all(|conn| lock(conn).end.is_some())
    }

    /// Stops the server (closing what is still open) and returns what it saw.
    fn stop(self) -> Vec<ConnLog> {
        self.task.abort();
        let conns = lock(&self.conns);
        conns.iter().map(|conn| lock(conn).clone()).collect()
    }
}

async fn accept_loop(
    plans: Vec<ConnPlan>,
    conns: Arc<Mutex<Vec<ConnRef>>>,
    drain: watch::Receiver<bool>,
    port: oneshot::Sender<u16>,
) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(SERVER_RCVBUF)
        .expect("SO_RCVBUF");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind 127.0.0.1");
    let listener = socket.listen(64).expect("listen");
    let _ = port.send(listener.local_addr().expect("local addr").port());
    // Dropped (and with it every connection) when the scenario aborts this task.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: try again soon rather than spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let index = lock(&conns).len();
        let plan = plans.get(index).cloned().unwrap_or(ConnPlan::Accept {
            steps: Vec::new(),
            hang: false,
        });
        let (name, hang) = match &plan {
            ConnPlan::Accept { hang, .. } => ("accept", *hang),
            ConnPlan::Refuse => ("refuse", false),
            ConnPlan::Reject401 => ("401", false),
            ConnPlan::NoUpgradeAnswer => ("no upgrade answer", false),
        };
        let conn = Arc::new(Mutex::new(ConnLog {
            plan: name,
            hang,
            accepted_at: Instant::now(),
            frames: Vec::new(),
            actions: Vec::new(),
            sent: Vec::new(),
            server_closed: false,
            client_closed: false,
            violated: false,
            reset: false,
            paused: false,
            shut: false,
            close_unanswered: false,
            end: None,
        }));
        lock(&conns).push(conn.clone());
        tasks.spawn(serve(index, stream, plan, conn, drain.clone()));
    }
}

async fn serve(
    index: usize,
    mut stream: TcpStream,
    plan: ConnPlan,
    conn: ConnRef,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let end = match plan {
        ConnPlan::Refuse => {
            let _ = stream.set_zero_linger();
            End::ServerReset
        }
        ConnPlan::Reject401 => match read_head(&mut stream).await {
            Ok(_) => {
                let response = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
                match stream.write_all(response).await {
                    Ok(()) => read_to_end(&mut stream).await,
                    Err(error) => End::Reset(error.to_string()),
                }
            }
            Err(end) => end,
        },
        ConnPlan::NoUpgradeAnswer => match read_head(&mut stream).await {
            Ok(_) => read_to_end(&mut stream).await,
            Err(end) => end,
        },
        ConnPlan::Accept { steps, hang } => {
            accept_upgrade(index, stream, steps, hang, &conn, drain).await
        }
    };
    lock(&conn).end = Some((Instant::now(), end));
}

/// Reads the request head; returns the `Sec-WebSocket-Key` and any bytes after the head.
async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), End> {
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
            Ok(0) => return Err(End::Eof { trailing: 0 }),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(End::Reset(error.to_string())),
        }
    }
}

async fn read_to_end(stream: &mut TcpStream) -> End {
    let mut chunk = [0u8; 2048];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return End::Eof { trailing: 0 },
            Ok(_) => {}
            Err(error) => return End::Reset(error.to_string()),
        }
    }
}

/// What the connection's writer does next.
enum Out {
    Bytes(Vec<u8>),
    /// FIN.
    Shutdown,
    /// RST: ends the connection.
    Reset,
}

/// One upgraded connection: the reader, the script and the writer run together until the client
/// closes TCP or the server resets the connection.
async fn accept_upgrade(
    index: usize,
    mut stream: TcpStream,
    steps: Vec<ServerStep>,
    hang: bool,
    conn: &ConnRef,
    drain: watch::Receiver<bool>,
) -> End {
    let (key, rest) = match read_head(&mut stream).await {
        Ok(parts) => parts,
        Err(end) => return end,
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{CONN_HEADER}: {index}\r\n\r\n",
        sec_websocket_accept(&key)
    );
    if let Err(error) = stream.write_all(response.as_bytes()).await {
        return End::Reset(error.to_string());
    }
    lock(conn).actions.push((Instant::now(), "101".into()));
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let peer = Peer {
        index,
        hang,
        conn: conn.clone(),
        tx,
    };
    tokio::select! {
        end = peer.read_frames(read, rest, drain) => end,
        () = write_loop(write, rx) => End::ServerReset,
        () = peer.run_script(steps) => unreachable!("a finished script waits forever"),
    }
}

async fn write_loop(mut write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut broken = false;
    while let Some(out) = rx.recv().await {
        match out {
            Out::Bytes(bytes) if !broken => broken = write.write_all(&bytes).await.is_err(),
            Out::Bytes(_) => {}
            Out::Shutdown => {
                let _ = write.shutdown().await;
            }
            Out::Reset => {
                let _ = write.as_ref().set_zero_linger();
                return;
            }
        }
    }
    std::future::pending().await
}

/// The server's side of one upgraded connection. Decisions are made under the connection's
/// lock and queued to the writer in the same critical section, so the log and the wire agree
/// on the order of close frames, answers and resets.
struct Peer {
    index: usize,
    hang: bool,
    conn: ConnRef,
    tx: mpsc::UnboundedSender<Out>,
}

impl Peer {
    fn out(&self, log: &mut ConnLog, what: String, out: Out) {
        log.actions.push((Instant::now(), what));
        let _ = self.tx.send(out);
    }

    async fn read_frames(
        &self,
        mut read: OwnedReadHalf,
        mut buf: Vec<u8>,
        mut drain: watch::Receiver<bool>,
    ) -> End {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            loop {
                match decode_frame(&buf) {
                    Ok(Some((frame, used))) => {
                        buf.drain(..used);
                        self.on_client_frame(frame, *drain.borrow());
                    }
                    Ok(None) => break,
                    Err(error) => return End::Garbage(error),
                }
            }
            if lock(&self.conn).paused && !*drain.borrow() {
                // Stopped reading: the client's writes back up in TCP until the scenario ends.
                let _ = drain.wait_for(|drain| *drain).await;
            }
            match read.read(&mut chunk).await {
                Ok(0) => {
                    return End::Eof {
                        trailing: buf.len(),
                    }
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(error) => return End::Reset(error.to_string()),
            }
        }
    }

    /// Logs a client frame and answers it. `scenario_over`: the client has terminated.
    fn on_client_frame(&self, frame: support::ClientFrame, scenario_over: bool) {
        let mut log = lock(&self.conn);
        // A connection that stopped reading reads again once the scenario is over; what it
        // reads then was written by a client that is gone.
        let draining = log.paused && scenario_over;
        let data = matches!(frame.opcode, opcode::TEXT | opcode::BINARY);
        log.frames.push(Seen {
            at: Instant::now(),
            opcode: frame.opcode,
            tag: if data { tag_of(&frame.payload) } else { None },
            len: frame.payload.len(),
            close_code: frame.close_code,
            drained: draining,
        });
        if draining {
            // The client is gone; nothing to answer.
            return;
        }
        match frame.opcode {
            opcode::PING if !log.shut => {
                let pong = frame_bytes(true, opcode::PONG, &frame.payload);
                self.out(&mut log, "pong".into(), Out::Bytes(pong));
            }
            opcode::CLOSE if !log.client_closed => {
                log.client_closed = true;
                if self.hang {
                    log.close_unanswered =
                        !(log.server_closed || log.violated || log.reset || log.paused);
                } else {
                    // RFC 6455 §5.5.1 and §7.1.1: answer the close (unless this was the answer
                    // to ours), then the server closes TCP first.
                    if !log.server_closed {
                        let code = frame.close_code.unwrap_or(1000);
                        let close = close_frame(Some(code), "");
                        self.out(
                            &mut log,
                            format!("close {code} (answer)"),
                            Out::Bytes(close),
                        );
                        log.server_closed = true;
                    }
                    self.out(&mut log, "FIN".into(), Out::Shutdown);
                    log.shut = true;
                }
            }
            _ => {}
        }
    }

    async fn run_script(&self, steps: Vec<ServerStep>) {
        for (seq, step) in steps.into_iter().enumerate() {
            if let ServerStep::Sleep(ms) = step {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            } else if !self.step(seq, step) {
                break;
            }
        }
        std::future::pending().await
    }

    /// Queues one step; false once the script is over.
    fn step(&self, seq: usize, step: ServerStep) -> bool {
        let mut log = lock(&self.conn);
        // After a close frame either way, a violation or a reset, a correct server sends no
        // more data.
        if log.client_closed || log.server_closed || log.violated || log.reset {
            return false;
        }
        let tag = format!("s{}.{seq}", self.index);
        match step {
            ServerStep::Sleep(_) => {}
            ServerStep::Message { binary, pad } => {
                let bytes = payload(&tag, pad);
                log.sent.push((tag.clone(), bytes.len()));
                let op = if binary { opcode::BINARY } else { opcode::TEXT };
                let frame = frame_bytes(true, op, &bytes);
                self.out(&mut log, format!("message {tag}"), Out::Bytes(frame));
            }
            ServerStep::Fragmented { parts, pad } => {
                let bytes = payload(&tag, pad);
                log.sent.push((tag.clone(), bytes.len()));
                let chunks: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(parts)).collect();
                let mut wire = Vec::new();
                for (i, chunk) in chunks.iter().enumerate() {
                    let op = if i == 0 {
                        opcode::TEXT
                    } else {
                        opcode::CONTINUATION
                    };
                    wire.extend(frame_bytes(i + 1 == chunks.len(), op, chunk));
                }
                let what = format!("message {tag} in {} fragments", chunks.len());
                self.out(&mut log, what, Out::Bytes(wire));
            }
            ServerStep::Ping => {
                let ping = frame_bytes(true, opcode::PING, b"server ping");
                self.out(&mut log, "ping".into(), Out::Bytes(ping));
            }
            ServerStep::StopReading => {
                log.paused = true;
                log.actions.push((Instant::now(), "stop reading".into()));
            }
            ServerStep::Close(code) => {
                let close = close_frame(Some(code), "server");
                self.out(&mut log, format!("close {code}"), Out::Bytes(close));
                log.server_closed = true;
            }
            ServerStep::ResetMidFrame => {
                // A binary frame header announcing a 16-bit length, cut after its first byte.
                let partial = vec![0x82, 0x7E, 0x01];
                self.out(&mut log, "partial header".into(), Out::Bytes(partial));
                self.out(&mut log, "RST".into(), Out::Reset);
                log.reset = true;
            }
            ServerStep::Violation(bad) => {
                let bytes = match bad {
                    BadFrame::ReservedOpcode => frame_bytes(true, 0x3, b"reserved opcode"),
                    BadFrame::Rsv1 => RawFrame::new(opcode::TEXT, "rsv1").rsv(0b100).bytes(),
                    BadFrame::Masked => RawFrame::new(opcode::TEXT, "masked")
                        .mask([1, 2, 3, 4])
                        .bytes(),
                };
                self.out(&mut log, format!("violation {bad:?}"), Out::Bytes(bytes));
                log.violated = true;
            }
        }
        true
    }
}

// =============================================================================================
// Running a scenario
// =============================================================================================

/// Everything one run produced.
#[derive(Clone)]
struct Run {
    t0: Instant,
    log: Vec<Entry>,
    ops: Ops,
    conns: Vec<ConnLog>,
    /// What the run was still waiting for when the scenario bound passed.
    stuck: Vec<&'static str>,
    /// The scenario's keepalive interval.
    ping_interval: Option<Duration>,
    /// `Stats::frames_unsent` after the end; `None` if `GetStats` got no answer.
    unsent: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Ops {
    sends: Vec<SendRec>,
    closes: Vec<CloseRec>,
    infos: Vec<(Instant, u32)>,
    /// `FrameSender` calls, in call order per thread.
    sender: Vec<SenderRec>,
    /// `GetFrameSender` requests: issued, and when and how they resolved.
    getters: Vec<GetRec>,
    /// Requests not resolved yet; the op runner counts as one until it has issued every op, and
    /// so does each sender thread until its calls are done.
    pending: usize,
}

/// A `GetFrameSender` request: issued, and when and how it resolved (`Err`: the actix mailbox
/// error).
#[derive(Debug, Clone)]
struct GetRec {
    issued: Instant,
    resolved: Option<(Instant, Result<(), String>)>,
}

/// One `FrameSender::send` or `send_all` call; it returns at once, so `issued` and
/// `resolved` bracket the moment the sender decided.
#[derive(Debug, Clone)]
struct SenderRec {
    call: SenderCall,
    /// The tags of its data frames, in order.
    tags: Vec<String>,
    /// The code of its close frame.
    close_code: Option<u16>,
    /// Which thread called: 0 for the test's thread, `op + 1` for a sender thread.
    seq: usize,
    issued: Instant,
    resolved: Instant,
    result: Result<(), SendError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderCall {
    Send,
    SendAll,
    Close,
    /// `send` of an invalid frame.
    Invalid,
    /// `send_all` with an invalid frame among them.
    InvalidAll,
}

impl SenderCall {
    fn name(self) -> &'static str {
        match self {
            SenderCall::Send => "send",
            SenderCall::SendAll => "send_all",
            SenderCall::Close => "send(Close)",
            SenderCall::Invalid => "send(invalid)",
            SenderCall::InvalidAll => "send_all(invalid)",
        }
    }
}

/// The sender the test's sender ops use.
type SharedSender = Arc<Mutex<Option<FrameSender>>>;

#[derive(Debug, Clone)]
struct SendRec {
    /// The frame's tag; `None` for `SendFrame(Frame::Close(..))`.
    tag: Option<String>,
    what: &'static str,
    issued: Instant,
    resolved: Option<(Instant, Outcome)>,
}

#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    Err(SendError),
    Mailbox(String),
}

#[derive(Debug, Clone)]
struct CloseRec {
    issued: Instant,
    /// `Err`: the actix mailbox error.
    resolved: Option<(Instant, Result<(), String>)>,
}

type SharedOps = Arc<Mutex<Ops>>;

/// Polls `done` every millisecond until it holds or `deadline` passes.
async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(1)).await;
    }
}

fn options(plan: &ClientPlan) -> ConnectOptions {
    let mut options = ConnectOptions::default()
        .connect_timeout(Duration::from_millis(100))
        .upgrade_timeout(Duration::from_millis(100))
        .close_timeout(Duration::from_millis(50))
        .ping_interval(plan.ping_interval_ms.map(Duration::from_millis));
    // A pong timeout without pings is a configuration error.
    if plan.ping_interval_ms.is_some() {
        options = options.pong_timeout(Duration::from_millis(plan.pong_timeout_ms));
    }
    if let Some(bytes) = plan.max_buffered_bytes {
        options = options.max_buffered_bytes(bytes);
    }
    options
}

/// Runs one scenario. `await_drop`: wait up to 1 s after `terminate` for the handler's drop
/// (1c); shrinking other invariants skips that wait, which a client that never drops its
/// handler would make cost a second per run.
async fn run_scenario(
    scenario: &Scenario,
    servers: &tokio::runtime::Handle,
    await_drop: bool,
) -> Run {
    let server = Server::start(servers, scenario.conns.clone()).await;
    let log = Log::default();
    let request = ConnectRequest::new(format!("ws://127.0.0.1:{}/", server.port))
        .options(options(&scenario.client));
    let handler = Fuzz::new(scenario.handler.clone(), request, log.clone());

    let t0 = Instant::now();
    let deadline = t0 + SCENARIO_BOUND;
    let addr = Client::start(handler);
    let ops = SharedOps::default();
    let sender = SharedSender::default();
    lock(&ops).pending += 1;
    actix_rt::spawn(run_ops(
        scenario.ops.clone(),
        addr.clone(),
        ops.clone(),
        sender.clone(),
        t0,
        deadline,
    ));

    let terminated_at = || {
        lock(&log)
            .iter()
            .find(|e| matches!(e.ev, Ev::Terminate(_)))
            .map(|e| e.at)
    };
    let mut stuck = Vec::new();
    let horizon = t0 + Duration::from_millis(scenario.client.horizon_ms);
    wait_until(horizon.min(deadline), || {
        terminated_at().is_some() || server.accepted() >= MAX_CONNS
    })
    .await;
    // Also after a terminate: Close must resolve at once then, and a client whose stop was
    // not final gets stopped before its follow-on failures pile up.
    issue_close(&addr, &ops, deadline);
    if !wait_until(deadline, || terminated_at().is_some()).await {
        stuck.push("terminate");
    } else {
        // 7e: after terminate, a sender refuses with Stopped, and so does one asked for now.
        let existing = lock(&sender).clone();
        if let Some(existing) = existing {
            let frame = data_frame("tz.0", false, 0);
            sender_call(&ops, 0, SenderCall::Send, vec!["tz.0".into()], None, || {
                existing.send(frame)
            });
            let frame = data_frame("tz.1", true, 0);
            sender_call(
                &ops,
                0,
                SenderCall::SendAll,
                vec!["tz.1".into()],
                None,
                || existing.send_all([frame]),
            );
        }
        if let Some(late) = get_sender(&addr, &ops, deadline).await {
            let frame = data_frame("tz.2", false, 0);
            sender_call(&ops, 0, SenderCall::Send, vec!["tz.2".into()], None, || {
                late.send(frame)
            });
        }
    }
    // Connections that stopped reading read again, so the wire checks see all the client wrote.
    server.drain();
    if !wait_until(deadline, || lock(&ops).pending == 0).await {
        stuck.push("every send and Close to resolve");
    }
    // 7c: what was accepted and lost with its connection is counted here.
    let unsent = tokio::time::timeout_at(deadline.into(), addr.send(GetStats))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|stats| stats.frames_unsent);
    // 1c and 1d: the Addr is still held here.
    let after_terminate = terminated_at().map_or(deadline, |t| t + AFTER_TERMINATE);
    wait_until(after_terminate.max(Instant::now()), || {
        server.all_ended()
            && (!await_drop || lock(&log).iter().any(|e| matches!(e.ev, Ev::Dropped)))
    })
    .await;
    let conns = server.stop();
    drop(addr);
    let log = lock(&log).clone();
    let ops = lock(&ops).clone();
    Run {
        t0,
        log,
        ops,
        conns,
        stuck,
        ping_interval: scenario.client.ping_interval_ms.map(Duration::from_millis),
        unsent,
    }
}

/// Issues the test's messages at their times.
async fn run_ops(
    plan: Vec<Op>,
    addr: Addr<Client<Fuzz>>,
    ops: SharedOps,
    sender: SharedSender,
    t0: Instant,
    deadline: Instant,
) {
    for (i, op) in plan.into_iter().enumerate() {
        let at = t0 + Duration::from_millis(op.at_ms);
        actix_rt::time::sleep_until(at.into()).await;
        match op.kind {
            OpKind::Send {
                try_send,
                binary,
                pad,
            } => issue_send(
                &addr,
                &ops,
                format!("t{i}"),
                try_send,
                binary,
                pad,
                deadline,
            ),
            OpKind::Burst { n, try_send, pad } => {
                for k in 0..n {
                    let binary = k % 2 == 1;
                    let tag = format!("t{i}.{k}");
                    issue_send(&addr, &ops, tag, try_send, binary, pad, deadline);
                }
            }
            OpKind::Info => {
                let id = i as u32;
                lock(&ops).infos.push((Instant::now(), id));
                addr.do_send(Info(id));
            }
            OpKind::SendClose(code) => {
                let frame = Frame::close(code, "test");
                let request = addr.send(SendFrame(frame));
                track_send(&ops, None, "SendFrame(Close)", request, deadline);
            }
            OpKind::Close => issue_close(&addr, &ops, deadline),
            OpKind::GetSender => {
                if let Some(new) = get_sender(&addr, &ops, deadline).await {
                    *lock(&sender) = Some(new);
                }
            }
            OpKind::SenderSend { .. }
            | OpKind::SenderSendAll { .. }
            | OpKind::SenderStream { .. }
            | OpKind::SenderClose { .. }
            | OpKind::SenderInvalid { .. } => {
                let current = lock(&sender).clone();
                let current = match current {
                    Some(current) => Some(current),
                    None => {
                        let new = get_sender(&addr, &ops, deadline).await;
                        lock(&sender).clone_from(&new);
                        new
                    }
                };
                if let Some(current) = current {
                    sender_op(i, op.kind.clone(), current, &ops);
                }
            }
        }
    }
    lock(&ops).pending -= 1;
}

/// `addr.send(GetFrameSender)`, logged; `None` if it got no answer in time.
async fn get_sender(
    addr: &Addr<Client<Fuzz>>,
    ops: &SharedOps,
    deadline: Instant,
) -> Option<FrameSender> {
    let request = addr.send(GetFrameSender);
    let index = {
        let mut ops = lock(ops);
        ops.getters.push(GetRec {
            issued: Instant::now(),
            resolved: None,
        });
        ops.getters.len() - 1
    };
    let result = match tokio::time::timeout_at(deadline.into(), request).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => return None,
    };
    let sender = result.as_ref().ok().cloned();
    lock(ops).getters[index].resolved = Some((Instant::now(), result.map(drop)));
    sender
}

/// Plays a sender op: on this thread, or on a thread of its own that the client does not wait
/// for.
fn sender_op(i: usize, kind: OpKind, sender: FrameSender, ops: &SharedOps) {
    let on = match kind {
        OpKind::SenderSend { on, .. }
        | OpKind::SenderSendAll { on, .. }
        | OpKind::SenderClose { on } => on,
        OpKind::SenderStream { .. } => On::Thread { spaced: true },
        _ => On::Here,
    };
    match on {
        On::Here => play_sender(i, &kind, &sender, ops, 0, false),
        On::Thread { spaced } => {
            lock(ops).pending += 1;
            let ops = ops.clone();
            std::thread::spawn(move || {
                play_sender(i, &kind, &sender, &ops, i + 1, spaced);
                lock(&ops).pending -= 1;
            });
        }
    }
}

fn play_sender(
    i: usize,
    kind: &OpKind,
    sender: &FrameSender,
    ops: &SharedOps,
    seq: usize,
    spaced: bool,
) {
    match *kind {
        OpKind::SenderSend { n, pad, .. } => {
            for k in 0..n {
                if spaced && k > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let tag = if n == 1 {
                    format!("t{i}")
                } else {
                    format!("t{i}.{k}")
                };
                let frame = data_frame(&tag, k % 2 == 1, pad);
                sender_call(ops, seq, SenderCall::Send, vec![tag], None, || {
                    sender.send(frame)
                });
            }
        }
        OpKind::SenderStream { ms, pad } => {
            let until = Instant::now() + Duration::from_millis(ms);
            let mut k = 0;
            while Instant::now() < until {
                let tag = format!("t{i}.{k}");
                let frame = data_frame(&tag, k % 2 == 1, pad);
                let stopped = sender_call(ops, seq, SenderCall::Send, vec![tag], None, || {
                    sender.send(frame)
                });
                if stopped {
                    break;
                }
                k += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        OpKind::SenderSendAll { n, pad, .. } => {
            let tags: Vec<String> = (0..n).map(|k| format!("t{i}.{k}")).collect();
            let frames: Vec<Frame> = tags
                .iter()
                .enumerate()
                .map(|(k, tag)| data_frame(tag, k % 2 == 1, pad))
                .collect();
            sender_call(ops, seq, SenderCall::SendAll, tags, None, || {
                sender.send_all(frames)
            });
        }
        OpKind::SenderClose { .. } => {
            let code = SENDER_CLOSE_CODES + u16::try_from(i).expect("few ops");
            let frame = Frame::close(code, "sender");
            sender_call(ops, seq, SenderCall::Close, Vec::new(), Some(code), || {
                sender.send(frame)
            });
        }
        OpKind::SenderInvalid { all } => {
            let ping = Frame::ping(vec![0; 126]);
            if all {
                let tag = format!("t{i}.0");
                let frames = [data_frame(&tag, false, 0), ping];
                sender_call(ops, seq, SenderCall::InvalidAll, vec![tag], None, || {
                    sender.send_all(frames)
                });
            } else {
                sender_call(ops, seq, SenderCall::Invalid, Vec::new(), None, || {
                    sender.send(ping)
                });
            }
        }
        _ => unreachable!("not a sender op"),
    }
}

/// Makes one sender call and logs it; whether the sender said `Stopped`.
fn sender_call(
    ops: &SharedOps,
    seq: usize,
    call: SenderCall,
    tags: Vec<String>,
    close_code: Option<u16>,
    send: impl FnOnce() -> Result<(), SendError>,
) -> bool {
    let issued = Instant::now();
    let result = send();
    let resolved = Instant::now();
    lock(ops).sender.push(SenderRec {
        call,
        tags,
        close_code,
        seq,
        issued,
        resolved,
        result: result.clone(),
    });
    result == Err(SendError::Stopped)
}

fn issue_send(
    addr: &Addr<Client<Fuzz>>,
    ops: &SharedOps,
    tag: String,
    try_send: bool,
    binary: bool,
    pad: usize,
    deadline: Instant,
) {
    let frame = data_frame(&tag, binary, pad);
    if try_send {
        let request = addr.send(TrySendFrame(frame));
        track_send(ops, Some(tag), "TrySendFrame", request, deadline);
    } else {
        let request = addr.send(SendFrame(frame));
        track_send(ops, Some(tag), "SendFrame", request, deadline);
    }
}

/// Logs a send issued just now (the message is queued when `send` is called) and records its
/// result when it resolves.
fn track_send(
    ops: &SharedOps,
    tag: Option<String>,
    what: &'static str,
    request: impl Future<Output = Result<Result<(), SendError>, actix::MailboxError>> + 'static,
    deadline: Instant,
) {
    let index = {
        let mut ops = lock(ops);
        ops.pending += 1;
        ops.sends.push(SendRec {
            tag,
            what,
            issued: Instant::now(),
            resolved: None,
        });
        ops.sends.len() - 1
    };
    let ops = ops.clone();
    actix_rt::spawn(async move {
        let result = tokio::time::timeout_at(deadline.into(), request).await;
        let mut ops = lock(&ops);
        ops.pending -= 1;
        if let Ok(result) = result {
            let outcome = match result {
                Ok(Ok(())) => Outcome::Ok,
                Ok(Err(error)) => Outcome::Err(error),
                Err(error) => Outcome::Mailbox(error.to_string()),
            };
            ops.sends[index].resolved = Some((Instant::now(), outcome));
        }
    });
}

fn issue_close(addr: &Addr<Client<Fuzz>>, ops: &SharedOps, deadline: Instant) {
    let request = addr.send(Close);
    let index = {
        let mut ops = lock(ops);
        ops.pending += 1;
        ops.closes.push(CloseRec {
            issued: Instant::now(),
            resolved: None,
        });
        ops.closes.len() - 1
    };
    let ops = ops.clone();
    actix_rt::spawn(async move {
        let result = tokio::time::timeout_at(deadline.into(), request).await;
        let mut ops = lock(&ops);
        ops.pending -= 1;
        if let Ok(result) = result {
            let result = result.map_err(|error| error.to_string());
            ops.closes[index].resolved = Some((Instant::now(), result));
        }
    });
}

// =============================================================================================
// The checks
// =============================================================================================

#[derive(Debug, Clone)]
struct Violation {
    key: &'static str,
    detail: String,
}

const INVARIANTS: &[(&str, &str)] = &[
    ("1a", "init runs once, first"),
    (
        "1b",
        "terminate runs exactly once and no callback follows it",
    ),
    (
        "1c",
        "the handler is dropped within 1 s of terminate while an Addr is held",
    ),
    (
        "1d",
        "the client closes every TCP connection within 1 s of terminate",
    ),
    (
        "2a",
        "no connection attempt after the final stop or a stop request",
    ),
    (
        "2b",
        "a reconnect waits the delay handle_disconnect returned",
    ),
    (
        "2c",
        "attempt = failures since the last handle_connect, counting from 1",
    ),
    ("2d", "callbacks follow the attempt cycle"),
    (
        "3a",
        "every send and Close resolves within the bound with the client's answer",
    ),
    (
        "3b",
        "an Ok frame is on the wire exactly once (unless its connection was reset)",
    ),
    ("3c", "no data frame follows the client's close frame"),
    ("3d", "a frame whose send failed never reaches the wire"),
    (
        "3e",
        "NotConnected while waiting to (re)connect; Stopped after terminate",
    ),
    (
        "4a",
        "server messages reach handle_frame only on their own connection, intact, in order, once",
    ),
    (
        "4b",
        "a frame sent while connection i was open goes out on connection i only",
    ),
    (
        "4c",
        "no new frame reaches the server after a stop request or terminate",
    ),
    ("5", "every scenario finishes within 5 s"),
    (
        "6a",
        "an unanswered client close ends with Error::Timeout(Timeout::Close)",
    ),
    (
        "6b",
        "an info cancelled while pending never reaches handle_info",
    ),
    (
        "7a",
        "a FrameSender refusal at once is the right one and its frames never reach the wire",
    ),
    (
        "7b",
        "an accepted sender frame goes out at most once, on the connection open then, in send order",
    ),
    (
        "7c",
        "accepted sender frames are on the wire or reported (handle_error, frames_unsent)",
    ),
    (
        "7d",
        "an accepted sender frame goes before what a later Addr message does",
    ),
    ("7e", "after terminate, a FrameSender refuses with Stopped"),
    (
        "7f",
        "no sender frame is accepted once the client's close handshake has begun",
    ),
];

fn describe(key: &str) -> &'static str {
    INVARIANTS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("?", |(_, description)| description)
}

/// Derived facts the checks share.
struct Facts<'a> {
    run: &'a Run,
    terminate: Option<Instant>,
    /// The handler's first stop request: callback number, time, what.
    stop_request: Option<(usize, Instant, &'static str)>,
    /// Per connection: when `handle_connect` ran, and when the connection's end was reported
    /// (`handle_disconnect` or `terminate`; `None` if never).
    windows: HashMap<usize, (Instant, Option<Instant>)>,
    /// Spans in which the client was not connected: from `init` or a `handle_disconnect` until
    /// the next `handle_connect` (`None`: never).
    idle: Vec<(Instant, Option<Instant>)>,
    /// Where each tag went out: (connection, position among that connection's frames).
    wire: HashMap<String, Vec<(usize, usize)>>,
}

impl<'a> Facts<'a> {
    fn new(run: &'a Run) -> Self {
        let mut facts = Facts {
            run,
            terminate: None,
            stop_request: None,
            windows: HashMap::new(),
            idle: Vec::new(),
            wire: HashMap::new(),
        };
        let mut open: Option<usize> = None;
        for e in &run.log {
            let stop = match &e.ev {
                Ev::ReplyStop => Some("Reply::Stop"),
                Ev::CtxStop => Some("ctx.stop"),
                Ev::Disconnect { after: None, .. } => Some("Reconnect::Stop"),
                _ => None,
            };
            if let (Some(what), None) = (stop, facts.stop_request) {
                facts.stop_request = Some((e.cb, e.at, what));
            }
            match &e.ev {
                Ev::Init { ok: true } => facts.idle.push((e.at, None)),
                Ev::Connected { conn } => {
                    facts.windows.insert(*conn, (e.at, None));
                    open = Some(*conn);
                    if let Some(idle) = facts.idle.last_mut() {
                        idle.1.get_or_insert(e.at);
                    }
                }
                Ev::Disconnect { .. } | Ev::Terminate(_) => {
                    if let Some(conn) = open.take() {
                        facts.windows.get_mut(&conn).unwrap().1 = Some(e.at);
                    }
                    if let Ev::Terminate(_) = e.ev {
                        facts.terminate.get_or_insert(e.at);
                    } else if facts.idle.last().is_none_or(|idle| idle.1.is_some()) {
                        // A failed attempt continues the span it began in.
                        facts.idle.push((e.at, None));
                    }
                }
                _ => {}
            }
        }
        for (conn, log) in run.conns.iter().enumerate() {
            for (position, seen) in log.frames.iter().enumerate() {
                if let Some(tag) = &seen.tag {
                    facts
                        .wire
                        .entry(tag.clone())
                        .or_default()
                        .push((conn, position));
                }
            }
        }
        facts
    }

    /// Whether connection `conn` was open at some moment in `[from, to]`.
    fn open_during(&self, conn: usize, from: Instant, to: Instant) -> bool {
        self.windows
            .get(&conn)
            .is_some_and(|&(start, end)| start <= to && end.is_none_or(|end| end >= from))
    }

    /// As `open_during`, for a `FrameSender`: its queue opens as the connection does, just
    /// before `handle_connect` (which logs the window's start) runs, so the window starts, for
    /// it, when the server accepted the connection.
    fn sender_open_during(&self, conn: usize, from: Instant, to: Instant) -> bool {
        self.windows.get(&conn).is_some_and(|&(start, end)| {
            let start = self
                .run
                .conns
                .get(conn)
                .map_or(start, |log| start.min(log.accepted_at));
            start <= to && end.is_none_or(|end| end >= from)
        })
    }

    fn ms(&self, at: Instant) -> String {
        ms_since(self.run.t0, at)
    }
}

fn ms_since(t0: Instant, at: Instant) -> String {
    if at >= t0 {
        format!("{:.1} ms", (at - t0).as_secs_f64() * 1e3)
    } else {
        format!("-{:.1} ms", (t0 - at).as_secs_f64() * 1e3)
    }
}

fn check(run: &Run) -> Vec<Violation> {
    let facts = Facts::new(run);
    let mut violations = Vec::new();
    let mut fail = |key: &'static str, detail: String| violations.push(Violation { key, detail });
    check_callbacks(&facts, &mut fail);
    check_sends(&facts, &mut fail);
    check_wire(&facts, &mut fail);
    check_senders(&facts, &mut fail);
    check_extras(&facts, &mut fail);
    if !run.stuck.is_empty() {
        fail(
            "5",
            format!("after {SCENARIO_BOUND:?} still waiting for {:?}", run.stuck),
        );
    }
    violations
}

/// The callback order as a state machine: 1a, 1b, 1c, 2a–2d, 4a, 1d.
fn check_callbacks(facts: &Facts<'_>, fail: &mut impl FnMut(&'static str, String)) {
    enum Phase {
        Fresh,
        /// Not connected; the next `connect` is due `delay` after `since`.
        Idle {
            since: Instant,
            delay: Duration,
        },
        Attempt,
        Open(usize),
        /// `Reconnect::Stop` or a failed init: only `terminate` may follow.
        Stopping,
        Terminated(Instant),
    }
    let run = facts.run;
    let mut phase = Phase::Fresh;
    let mut failures = 0u32;
    let mut terminates = 0;
    let mut dropped = None;
    let mut connects = 0;
    let mut last_seq: HashMap<usize, usize> = HashMap::new();
    let mut delivered: HashSet<String> = HashSet::new();
    for (i, e) in run.log.iter().enumerate() {
        let at = facts.ms(e.at);
        if let (Phase::Terminated(_), false) = (&phase, matches!(e.ev, Ev::Dropped)) {
            fail("1b", format!("{:?} at {at}, after terminate", e.ev));
        }
        if let Ev::Connect = e.ev {
            connects += 1;
            if let Some((cb, stop_at, what)) = facts.stop_request {
                if e.cb > cb {
                    let since = facts.ms(stop_at);
                    fail("2a", format!("connect at {at}, after {what} at {since}"));
                }
            }
            if let Some(t) = facts.terminate.filter(|t| e.at > *t) {
                let since = facts.ms(t);
                fail("2a", format!("connect at {at}, after terminate at {since}"));
            }
        }
        match &e.ev {
            Ev::Init { ok } => {
                if i != 0 {
                    fail(
                        "1a",
                        format!("init at {at} is callback {} (not the first)", e.cb),
                    );
                }
                phase = if *ok {
                    Phase::Idle {
                        since: e.at,
                        delay: Duration::ZERO,
                    }
                } else {
                    Phase::Stopping
                };
            }
            Ev::Connect => {
                match phase {
                    Phase::Idle { since, delay } if e.at + TIMER_SLACK < since + delay => fail(
                        "2b",
                        format!(
                            "connect at {at}, {:?} after a handle_disconnect that asked for {delay:?}",
                            e.at - since
                        ),
                    ),
                    Phase::Idle { .. } | Phase::Stopping | Phase::Terminated(_) => {}
                    Phase::Fresh => fail("1a", format!("connect at {at} before init")),
                    Phase::Attempt | Phase::Open(_) => fail(
                        "2d",
                        format!("connect at {at} while an attempt or connection is under way"),
                    ),
                }
                phase = Phase::Attempt;
            }
            Ev::Connected { conn } => {
                if !matches!(phase, Phase::Attempt) {
                    fail("2d", format!("handle_connect at {at} without a connect"));
                }
                phase = Phase::Open(*conn);
                failures = 0;
            }
            Ev::Disconnect { attempt, after, .. } => {
                if !matches!(phase, Phase::Attempt | Phase::Open(_)) {
                    fail(
                        "2d",
                        format!("handle_disconnect at {at} with no attempt or connection"),
                    );
                }
                failures += 1;
                if *attempt != failures {
                    fail(
                        "2c",
                        format!(
                            "handle_disconnect at {at} got attempt {attempt}; failures since the \
                             last handle_connect: {failures}"
                        ),
                    );
                }
                phase = match after {
                    Some(delay) => Phase::Idle {
                        since: e.at,
                        delay: *delay,
                    },
                    None => Phase::Stopping,
                };
            }
            Ev::Frame { tag, len } => {
                let open = match phase {
                    Phase::Open(open) => Some(open),
                    _ => None,
                };
                if open.is_none() {
                    fail(
                        "4a",
                        format!("handle_frame ({tag:?}) at {at} while no connection was open"),
                    );
                }
                // Untagged: a pong.
                let Some(tag) = tag else { continue };
                // Tags of server messages: s<conn>.<seq>.
                let parsed = tag
                    .strip_prefix('s')
                    .and_then(|rest| rest.split_once('.'))
                    .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<usize>().ok()?)));
                let Some((conn, seq)) = parsed else {
                    fail(
                        "4a",
                        format!("handle_frame at {at} got an unknown tag {tag:?}"),
                    );
                    continue;
                };
                if let Some(open) = open.filter(|open| *open != conn) {
                    fail(
                        "4a",
                        format!("{tag} (connection {conn}) reached handle_frame at {at} on connection {open}"),
                    );
                }
                if !delivered.insert(tag.clone()) {
                    fail(
                        "4a",
                        format!("{tag} reached handle_frame twice (again at {at})"),
                    );
                }
                if last_seq.insert(conn, seq).is_some_and(|last| last > seq) {
                    fail(
                        "4a",
                        format!("{tag} reached handle_frame at {at}, after a later message"),
                    );
                }
                let sent = run
                    .conns
                    .get(conn)
                    .and_then(|c| c.sent.iter().find(|(t, _)| t == tag).map(|(_, len)| *len));
                if sent != Some(*len) {
                    fail(
                        "4a",
                        format!(
                            "{tag} reached handle_frame with {len} bytes; the server sent {sent:?}"
                        ),
                    );
                }
            }
            Ev::Terminate(_) => {
                terminates += 1;
                phase = Phase::Terminated(e.at);
            }
            Ev::Dropped => match phase {
                Phase::Terminated(t) if e.at <= t + AFTER_TERMINATE => dropped = Some(e.at),
                Phase::Terminated(t) => {
                    dropped = Some(e.at);
                    fail(
                        "1c",
                        format!("the handler was dropped {:?} after terminate", e.at - t),
                    );
                }
                _ => {
                    dropped = Some(e.at);
                    fail(
                        "1b",
                        format!("the handler was dropped at {at}, before terminate"),
                    );
                }
            },
            _ => {}
        }
    }
    if !matches!(run.log.first().map(|e| &e.ev), Some(Ev::Init { .. })) {
        fail("1a", "init did not run first".into());
    }
    match terminates {
        0 => fail("1b", "terminate never ran".into()),
        1 => {}
        n => fail("1b", format!("terminate ran {n} times")),
    }
    if let (Some(t), None) = (facts.terminate, dropped) {
        fail(
            "1c",
            format!(
                "the handler was not dropped within {AFTER_TERMINATE:?} of terminate ({})",
                facts.ms(t)
            ),
        );
    }
    if run.conns.len() > connects {
        fail(
            "2a",
            format!(
                "the server accepted {} TCP connections for {connects} connect calls",
                run.conns.len()
            ),
        );
    }
    if let Some(t) = facts.terminate {
        for (conn, log) in run.conns.iter().enumerate() {
            if log.end.is_none() {
                fail(
                    "1d",
                    format!(
                        "connection {conn} ({}) was still open {AFTER_TERMINATE:?} after terminate at {}",
                        log.plan,
                        facts.ms(t)
                    ),
                );
            }
        }
    }
}

/// The test's sends: 3a, 3b, 3d, 3e, and 4b/4c for their frames.
fn check_sends(facts: &Facts<'_>, fail: &mut impl FnMut(&'static str, String)) {
    let run = facts.run;
    for close in &run.ops.closes {
        let issued = facts.ms(close.issued);
        match &close.resolved {
            None => fail("3a", format!("Close issued at {issued} never resolved")),
            Some((_, Err(error))) => fail("3a", format!("Close issued at {issued}: {error}")),
            Some((_, Ok(()))) => {}
        }
    }
    for send in &run.ops.sends {
        let name = send.tag.as_deref().unwrap_or("close");
        let issued = facts.ms(send.issued);
        let Some((resolved_at, outcome)) = &send.resolved else {
            fail(
                "3a",
                format!("{} {name} issued at {issued} never resolved", send.what),
            );
            continue;
        };
        let resolved = facts.ms(*resolved_at);
        let what = format!(
            "{} {name} (issued {issued}, resolved {resolved})",
            send.what
        );
        if let Outcome::Mailbox(error) = outcome {
            fail("3a", format!("{what}: MailboxError {error}"));
        }

        // 3e: the expected error when not connected.
        let result = match outcome {
            Outcome::Ok => Ok(()),
            Outcome::Err(error) => Err(Some(error)),
            Outcome::Mailbox(_) => Err(None),
        };
        if let Some(t) = facts.terminate.filter(|t| send.issued > *t) {
            if result != Err(Some(&SendError::Stopped)) {
                let since = facts.ms(t);
                fail(
                    "3e",
                    format!("{what} after terminate at {since}: {outcome:?}, not Stopped"),
                );
            }
        } else if facts.idle.iter().any(|&(from, until)| {
            from <= send.issued && until.is_none_or(|until| *resolved_at < until)
        }) {
            // A final stop asked for before the answer may answer Stopped instead.
            let stopped_meanwhile = facts.terminate.is_some_and(|t| t < *resolved_at)
                || facts
                    .stop_request
                    .is_some_and(|(_, at, _)| at < *resolved_at)
                || run
                    .ops
                    .closes
                    .iter()
                    .any(|close| close.issued < *resolved_at);
            let ok = match result {
                Err(Some(SendError::NotConnected)) => true,
                Err(Some(SendError::Stopped)) => stopped_meanwhile,
                _ => false,
            };
            if !ok {
                fail(
                    "3e",
                    format!("{what} while not connected: {outcome:?}, not NotConnected"),
                );
            }
        }

        // Where the frame may have gone: the connections open while it was being processed.
        let candidates: Vec<usize> = (0..run.conns.len())
            .filter(|&conn| facts.open_during(conn, send.issued, *resolved_at))
            .collect();
        let cut = candidates
            .iter()
            .any(|&conn| !matches!(run.conns[conn].end, Some((_, End::Eof { .. }))));
        let Some(tag) = &send.tag else {
            // SendFrame(Close) resolves Ok once the close frame is written.
            let closed = candidates.iter().any(|&conn| {
                let frames = &run.conns[conn].frames;
                frames.iter().any(|f| f.opcode == opcode::CLOSE)
            });
            if matches!(outcome, Outcome::Ok) && !closed && !cut {
                fail(
                    "3b",
                    format!("{what} resolved Ok but connections {candidates:?} got no close frame"),
                );
            }
            continue;
        };
        let places = facts.wire.get(tag).map(Vec::as_slice).unwrap_or_default();
        for &(conn, _) in places {
            if !facts.open_during(conn, send.issued, *resolved_at) {
                fail(
                    "4b",
                    format!("{what} went out on connection {conn}, which was not open then"),
                );
            }
        }
        if let Some((cb, stop_at, request)) = facts.stop_request {
            if send.issued > stop_at && !places.is_empty() {
                let since = facts.ms(stop_at);
                fail(
                    "4c",
                    format!("{what} reached the server after {request} at {since} (callback {cb})"),
                );
            }
        }
        match outcome {
            Outcome::Err(error) if !places.is_empty() => {
                fail(
                    "3d",
                    format!(
                        "{what} failed with {error:?} but went out on connection {}",
                        places[0].0
                    ),
                );
            }
            Outcome::Ok if places.len() > 1 => {
                fail("3b", format!("{what} went out {} times", places.len()));
            }
            // Missing is fine only if a connection it may have gone to was cut short.
            Outcome::Ok if places.is_empty() && !cut => {
                let detail = if candidates.is_empty() {
                    "no connection was open meanwhile".to_owned()
                } else {
                    format!("the server read connections {candidates:?} to EOF")
                };
                fail(
                    "3b",
                    format!("{what} resolved Ok but is not on the wire; {detail}"),
                );
            }
            _ => {}
        }
    }
}

/// The wire: 3c, and 4b/4c for the handler's replies.
fn check_wire(facts: &Facts<'_>, fail: &mut impl FnMut(&'static str, String)) {
    let run = facts.run;
    for (conn, log) in run.conns.iter().enumerate() {
        let Some(close) = log.frames.iter().position(|f| f.opcode == opcode::CLOSE) else {
            continue;
        };
        let after: Vec<String> = log.frames[close + 1..]
            .iter()
            .filter(|f| f.is_data())
            .map(|f| {
                f.tag
                    .clone()
                    .unwrap_or_else(|| format!("opcode {}", f.opcode))
            })
            .collect();
        if !after.is_empty() {
            let at = facts.ms(log.frames[close].at);
            fail(
                "3c",
                format!("connection {conn}: data frames {after:?} after the client's close frame (read at {at})"),
            );
        }
    }
    for e in &run.log {
        let Ev::Sends { tags, conn } = &e.ev else {
            continue;
        };
        for tag in tags {
            for &(wire_conn, _) in facts.wire.get(tag).map(Vec::as_slice).unwrap_or_default() {
                if *conn != Some(wire_conn) {
                    fail(
                        "4b",
                        format!(
                            "reply {tag} (callback at {}, connection {conn:?}) went out on connection {wire_conn}",
                            facts.ms(e.at)
                        ),
                    );
                }
                if let Some((cb, at, request)) = facts.stop_request.filter(|(cb, ..)| e.cb > *cb) {
                    fail(
                        "4c",
                        format!(
                            "reply {tag} of callback {} reached the server after {request} (callback {cb}, {})",
                            e.cb,
                            facts.ms(at)
                        ),
                    );
                }
            }
        }
    }
}

/// The `FrameSender` calls: 7a–7e, and 4c for their frames.
fn check_senders(facts: &Facts<'_>, fail: &mut impl FnMut(&'static str, String)) {
    let run = facts.run;
    let recs = &run.ops.sender;
    for GetRec { issued, resolved } in &run.ops.getters {
        match resolved {
            None => fail(
                "3a",
                format!(
                    "GetFrameSender issued at {} never resolved",
                    facts.ms(*issued)
                ),
            ),
            Some((_, Err(error))) => fail(
                "3a",
                format!("GetFrameSender issued at {}: {error}", facts.ms(*issued)),
            ),
            Some((_, Ok(()))) => {}
        }
    }
    if run.unsent.is_none() && run.stuck.is_empty() {
        fail("3a", "GetStats after the end got no answer".into());
    }
    let spans = surely_open(facts);
    // A final stop asked for before `at`: the only reason for Stopped.
    let stop_asked = |at: Instant| {
        facts.stop_request.is_some_and(|(_, s, _)| s < at)
            || facts.terminate.is_some_and(|t| t < at)
            || run.ops.closes.iter().any(|close| close.issued < at)
            || run
                .log
                .iter()
                .any(|e| matches!(e.ev, Ev::Init { ok: false }) && e.at < at)
    };
    let mut close_places: HashMap<u16, Vec<(usize, usize)>> = HashMap::new();
    for (conn, log) in run.conns.iter().enumerate() {
        for (position, seen) in log.frames.iter().enumerate() {
            if let (opcode::CLOSE, Some(code)) = (seen.opcode, seen.close_code) {
                close_places.entry(code).or_default().push((conn, position));
            }
        }
    }
    let places_of = |rec: &SenderRec| -> Vec<(String, Vec<(usize, usize)>)> {
        let mut places: Vec<(String, Vec<(usize, usize)>)> = rec
            .tags
            .iter()
            .map(|tag| {
                (
                    tag.clone(),
                    facts.wire.get(tag).cloned().unwrap_or_default(),
                )
            })
            .collect();
        if let Some(code) = rec.close_code {
            let found = close_places.get(&code).cloned().unwrap_or_default();
            places.push((format!("close {code}"), found));
        }
        places
    };

    // Accounting (7c): accepted frames, those on the wire, those excused by a cut connection,
    // and those missing.
    let mut accepted = 0usize;
    let mut on_wire = 0usize;
    let mut excused = 0usize;
    let mut missing: Vec<String> = Vec::new();
    // Where each accepted data frame went.
    let mut accepted_at: Vec<Accepted> = Vec::new();
    for rec in recs {
        let thread = if rec.seq == 0 {
            "test's thread".to_owned()
        } else {
            format!("thread {}", rec.seq)
        };
        let what = format!(
            "sender {} {:?}{} on the {thread} (issued {}, returned {})",
            rec.call.name(),
            rec.tags,
            rec.close_code
                .map_or(String::new(), |code| format!(" code {code}")),
            facts.ms(rec.issued),
            facts.ms(rec.resolved)
        );
        let places = places_of(rec);
        let after_terminate = facts.terminate.is_some_and(|t| rec.issued > t);
        match &rec.result {
            Err(error) => {
                for (name, found) in &places {
                    if let Some(&(conn, _)) = found.first() {
                        fail(
                            "7a",
                            format!("{what} was refused ({error:?}) but {name} went out on connection {conn}"),
                        );
                    }
                }
                let right = match error {
                    SendError::InvalidFrame(_) => {
                        matches!(rec.call, SenderCall::Invalid | SenderCall::InvalidAll)
                    }
                    _ if rec.call == SenderCall::Invalid => false,
                    SendError::NotConnected => match spans.iter().find(|span| span.covers(rec)) {
                        Some(span) => {
                            fail(
                                    "7a",
                                    format!(
                                        "{what}: NotConnected, but connection {} was open from {} to {} with nothing closing it",
                                        span.conn,
                                        facts.ms(span.from(rec.seq).unwrap_or(span.until)),
                                        facts.ms(span.until)
                                    ),
                                );
                            true
                        }
                        None => true,
                    },
                    SendError::Stopped => stop_asked(rec.resolved),
                    _ => false,
                };
                if !right {
                    fail(
                        "7a",
                        format!("{what}: {error:?} is not a refusal at once it may give"),
                    );
                }
                if after_terminate
                    && !matches!(rec.call, SenderCall::Invalid | SenderCall::InvalidAll)
                    && *error != SendError::Stopped
                {
                    let since = facts.ms(facts.terminate.unwrap());
                    fail(
                        "7e",
                        format!("{what} after terminate at {since}: {error:?}, not Stopped"),
                    );
                }
            }
            Ok(()) => {
                if matches!(rec.call, SenderCall::Invalid | SenderCall::InvalidAll) {
                    fail("7a", format!("{what}: Ok for an invalid frame"));
                }
                if after_terminate {
                    let since = facts.ms(facts.terminate.unwrap());
                    fail(
                        "7e",
                        format!("{what} after terminate at {since}: Ok, not Stopped"),
                    );
                }
                let candidates: Vec<usize> = (0..run.conns.len())
                    .filter(|&conn| facts.sender_open_during(conn, rec.issued, rec.resolved))
                    .collect();
                if candidates.is_empty() {
                    fail("7b", format!("{what}: Ok while no connection was open"));
                }
                let cut = candidates
                    .iter()
                    .any(|&conn| !matches!(run.conns[conn].end, Some((_, End::Eof { .. }))));
                for (name, found) in &places {
                    accepted += 1;
                    match found.as_slice() {
                        [] if cut => excused += 1,
                        [] => missing.push(name.clone()),
                        [place, rest @ ..] => {
                            on_wire += 1;
                            if !rest.is_empty() {
                                fail(
                                    "7b",
                                    format!("{what}: {name} went out {} times", found.len()),
                                );
                            }
                            if rec.close_code.is_none() {
                                accepted_at.push(Accepted {
                                    seq: rec.seq,
                                    order: accepted,
                                    place: *place,
                                    at: rec.resolved,
                                    tag: name.clone(),
                                });
                            }
                        }
                    }
                    for &(conn, _) in found {
                        if !facts.sender_open_during(conn, rec.issued, rec.resolved) {
                            fail(
                                "7b",
                                format!("{what}: {name} went out on connection {conn}, which was not open then"),
                            );
                        }
                    }
                    if let Some((cb, stop_at, request)) = facts.stop_request {
                        if rec.issued > stop_at && !found.is_empty() {
                            fail(
                                "4c",
                                format!(
                                    "{what}: {name} reached the server after {request} at {} (callback {cb})",
                                    facts.ms(stop_at)
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    // 7f: once the client's close handshake began on a connection, its senders are refused
    // at once. Surely begun, for every thread: once the test's SendFrame(Close) resolved Ok
    // (after the client's turn that took it). For the test's thread, which cannot run inside a
    // client's turn, also once the server read the client's close frame, or a callback
    // returned Reply::Close. (Not for other threads: within the turn that writes a close frame
    // the client may not have closed the queue yet.)
    for (&conn, &(start, end)) in &facts.windows {
        let end = end.unwrap_or(run.t0 + Duration::from_secs(3600));
        let mut any_thread: Vec<(Instant, String)> = Vec::new();
        for send in run.ops.sends.iter().filter(|send| send.tag.is_none()) {
            if let Some((at, Outcome::Ok)) = &send.resolved {
                if facts.open_during(conn, send.issued, *at) {
                    any_thread.push((*at, "the test's SendFrame(Close) resolved Ok".into()));
                }
            }
        }
        let mut here = any_thread.clone();
        if let Some(seen) = run
            .conns
            .get(conn)
            .and_then(|log| log.frames.iter().find(|f| f.opcode == opcode::CLOSE))
        {
            let what = format!("the server read the client's close {:?}", seen.close_code);
            here.push((seen.at, what));
        }
        for e in &run.log {
            if let Ev::ReplyClose(code) = e.ev {
                if start <= e.at && e.at < end {
                    here.push((
                        e.at,
                        format!("callback {} returned Reply::Close({code})", e.cb),
                    ));
                }
            }
        }
        // `here` holds every moment `any_thread` does: it is empty only if that is.
        if let Some(closing_here) = here.iter().min_by_key(|(at, _)| *at) {
            let closing = any_thread.iter().min_by_key(|(at, _)| *at);
            check_closing(facts, conn, end, closing_here, closing, fail);
        }
    }

    // 7b: frames of one thread in send order on each connection.
    let mut by_place: Vec<&Accepted> = accepted_at.iter().collect();
    by_place.sort_by_key(|frame| frame.place);
    let mut last: HashMap<(usize, usize), &Accepted> = HashMap::new();
    for &frame in &by_place {
        let conn = frame.place.0;
        if let Some(before) = last.get(&(frame.seq, conn)) {
            if before.order > frame.order {
                fail(
                    "7b",
                    format!(
                        "connection {conn}: sender frame {} went out before {}, sent earlier by the same thread",
                        frame.tag, before.tag
                    ),
                );
            }
        }
        last.insert((frame.seq, conn), frame);
    }

    // 7d: before whatever an Addr message sent after the frame was accepted does: the test's
    // sends, and the handler's reply to a test Info.
    let mut later: Vec<(Instant, String)> = run
        .ops
        .sends
        .iter()
        .filter_map(|send| Some((send.issued, send.tag.clone()?)))
        .collect();
    for &(issued, id) in &run.ops.infos {
        let Some(cb) = run
            .log
            .iter()
            .find(|e| matches!(e.ev, Ev::Info { id: i } if i == id))
            .map(|e| e.cb)
        else {
            continue;
        };
        for e in run.log.iter().filter(|e| e.cb == cb) {
            if let Ev::Sends { tags, .. } = &e.ev {
                later.extend(tags.iter().map(|tag| (issued, tag.clone())));
            }
        }
    }
    for (issued, tag) in &later {
        for &(conn, position) in facts.wire.get(tag).map(Vec::as_slice).unwrap_or_default() {
            for frame in &accepted_at {
                if frame.place.0 == conn && frame.place.1 > position && frame.at < *issued {
                    fail(
                        "7d",
                        format!(
                            "connection {conn}: {tag} (an Addr message at {}) went out before sender frame {}, accepted at {}",
                            facts.ms(*issued),
                            frame.tag,
                            facts.ms(frame.at)
                        ),
                    );
                }
            }
        }
    }

    // 7c: every accepted frame is on the wire or accounted for, and nothing more went out.
    let reports = run
        .log
        .iter()
        .filter(|e| matches!(&e.ev, Ev::Error(error) if error.starts_with("Send(")))
        .count();
    if let Some(unsent) = run.unsent {
        if missing.len() > reports + unsent as usize {
            fail(
                "7c",
                format!(
                    "{accepted} sender frames accepted, {on_wire} on the wire, {excused} on connections cut by a reset; \
                     missing {missing:?}, but only {reports} Error::Send reports and frames_unsent = {unsent}"
                ),
            );
        }
    }
    let went_out: usize = recs
        .iter()
        .flat_map(places_of)
        .map(|(_, found)| found.len())
        .sum();
    if went_out > accepted {
        fail(
            "7c",
            format!("{went_out} sender frames went out; only {accepted} were accepted"),
        );
    }
}

/// An accepted sender data frame that went out.
struct Accepted {
    /// The thread that sent it: 0 for the test's thread.
    seq: usize,
    /// Its place among the accepted frames, in call order (per thread, send order).
    order: usize,
    /// Connection and position among its frames on the wire.
    place: (usize, usize),
    /// When its `send` returned.
    at: Instant,
    tag: String,
}

/// 7f for connection `conn`: no sender call that began after its close handshake surely had
/// (`here` for the test's thread, `any` for every thread) and ended before its end returned Ok.
fn check_closing(
    facts: &Facts<'_>,
    conn: usize,
    end: Instant,
    here: &(Instant, String),
    any: Option<&(Instant, String)>,
    fail: &mut impl FnMut(&'static str, String),
) {
    let accepted: Vec<&SenderRec> = facts
        .run
        .ops
        .sender
        .iter()
        .filter(|rec| rec.result.is_ok() && rec.resolved < end)
        .filter(|rec| {
            let since = if rec.seq == 0 { Some(here) } else { any };
            since.is_some_and(|(at, _)| rec.issued > *at)
        })
        .collect();
    let Some(first) = accepted.first() else {
        return;
    };
    let (at, why) = if first.seq == 0 {
        here
    } else {
        any.unwrap_or(here)
    };
    let frames: usize = accepted
        .iter()
        .map(|rec| rec.tags.len() + usize::from(rec.close_code.is_some()))
        .sum();
    fail(
        "7f",
        format!(
            "connection {conn}: {why} at {}, yet {} sender calls ({frames} frames) made after it returned Ok \
             (the first: {} {:?} on {}, at {}), before the connection's end at {}",
            facts.ms(*at),
            accepted.len(),
            first.call.name(),
            first.tags,
            if first.seq == 0 { "the test's thread".to_owned() } else { format!("thread {}", first.seq) },
            facts.ms(first.issued),
            facts.ms(end),
        ),
    );
}

/// A stretch in which connection `conn` was surely open for senders: from its `handle_connect`
/// (for the test's thread, which cannot run while the client's turn that ran `handle_connect`
/// and opened the senders' queue lasts) or from a later moment the queue was seen open (for
/// other threads), until the first thing that could have begun its end.
struct OpenSpan {
    conn: usize,
    from_here: Instant,
    from_thread: Option<Instant>,
    until: Instant,
}

impl OpenSpan {
    fn from(&self, seq: usize) -> Option<Instant> {
        if seq == 0 {
            Some(self.from_here)
        } else {
            self.from_thread
        }
    }

    /// Whether the call was made wholly inside the span.
    fn covers(&self, rec: &SenderRec) -> bool {
        self.from(rec.seq)
            .is_some_and(|from| from <= rec.issued && rec.resolved < self.until)
    }
}

/// The spans in which a sender's refusal with NotConnected would be wrong (7a). Anything that
/// may begin a connection's end bounds its span: the server's close, violation or reset (the
/// client learns of them later still), the test's closes, the handler's `Reply::Close`,
/// `Reply::Stop` and `ctx.stop`, a sender's close, the connection's end, and keepalive when
/// the connection may have ended for want of a pong.
fn surely_open(facts: &Facts<'_>) -> Vec<OpenSpan> {
    let run = facts.run;
    let mut spans = Vec::new();
    for (&conn, &(start, end)) in &facts.windows {
        let mut until = end.unwrap_or(run.t0 + Duration::from_secs(3600));
        let mut bound = |at: Instant| until = until.min(at);
        if let Some(log) = run.conns.get(conn) {
            for (at, action) in &log.actions {
                let ending = action.starts_with("close")
                    || action.starts_with("violation")
                    || matches!(action.as_str(), "partial header" | "RST" | "FIN");
                if ending {
                    bound(*at);
                }
            }
            if let Some((at, _)) = log.end {
                bound(at);
            }
        }
        for e in &run.log {
            if e.at >= start && matches!(e.ev, Ev::ReplyClose(_) | Ev::ReplyStop | Ev::CtxStop) {
                bound(e.at);
            }
        }
        // A message issued before the connection opened may be handled after.
        for send in run.ops.sends.iter().filter(|send| send.tag.is_none()) {
            if send.resolved.as_ref().is_none_or(|(at, _)| *at >= start) {
                bound(send.issued);
            }
        }
        for close in &run.ops.closes {
            if close.resolved.as_ref().is_none_or(|(at, _)| *at >= start) {
                bound(close.issued);
            }
        }
        for rec in &run.ops.sender {
            if rec.close_code.is_some() && rec.result.is_ok() && rec.resolved >= start {
                bound(rec.issued);
            }
        }
        if let Some(interval) = run.ping_interval {
            let ended_by = run
                .log
                .iter()
                .skip_while(|e| !matches!(e.ev, Ev::Connected { conn: c } if c == conn))
                .skip(1)
                .find_map(|e| match &e.ev {
                    Ev::Disconnect { reason, .. } => Some(Some(reason.as_str())),
                    Ev::Terminate(_) => Some(None),
                    _ => None,
                });
            if !matches!(ended_by, Some(Some(reason)) if !reason.contains("pong")) {
                bound(start + interval);
            }
        }
        let from_thread = run
            .ops
            .sender
            .iter()
            .filter_map(|rec| {
                let here = rec.seq == 0 && rec.issued > start;
                let seen_open = rec.result.is_ok()
                    && rec.issued >= start
                    && end.is_none_or(|end| rec.resolved <= end);
                if here {
                    Some(rec.issued)
                } else if seen_open {
                    Some(rec.resolved)
                } else {
                    None
                }
            })
            .min();
        spans.push(OpenSpan {
            conn,
            from_here: start,
            from_thread,
            until,
        });
    }
    spans
}

/// 6a and 6b.
fn check_extras(facts: &Facts<'_>, fail: &mut impl FnMut(&'static str, String)) {
    let run = facts.run;
    for (conn, log) in run.conns.iter().enumerate() {
        if !log.close_unanswered {
            continue;
        }
        // The handle_disconnect that ended this connection, if it was not a final stop.
        let reason = run
            .log
            .iter()
            .skip_while(|e| !matches!(e.ev, Ev::Connected { conn: c } if c == conn))
            .skip(1)
            .take_while(|e| !matches!(e.ev, Ev::Connected { .. }))
            .find_map(|e| match &e.ev {
                Ev::Disconnect {
                    reason,
                    close_timeout,
                    ..
                } => Some((e.at, reason, *close_timeout)),
                _ => None,
            });
        if let Some((at, reason, false)) = reason {
            fail(
                "6a",
                format!(
                    "connection {conn}: the server never answered the client's close, but \
                     handle_disconnect at {} got {reason:?}",
                    facts.ms(at)
                ),
            );
        }
    }
    let mut cancelled = HashSet::new();
    for e in &run.log {
        match e.ev {
            // Like Process.cancel_timer: an info that was already due may still arrive.
            Ev::Cancelled { id, pending: true } => {
                cancelled.insert(id);
            }
            Ev::Info { id } if cancelled.contains(&id) => fail(
                "6b",
                format!(
                    "info {id} reached handle_info at {} after ctx.cancel said it was pending",
                    facts.ms(e.at)
                ),
            ),
            _ => {}
        }
    }
}

// =============================================================================================
// Reports
// =============================================================================================

/// Every event of a run, in time order, relative to the client's start.
fn timeline(run: &Run) -> String {
    let mut lines: Vec<(Instant, String)> = Vec::new();
    for e in &run.log {
        lines.push((e.at, format!("handler  #{:<3} {:?}", e.cb, e.ev)));
    }
    for (i, conn) in run.conns.iter().enumerate() {
        let hang = if conn.hang { ", hang" } else { "" };
        lines.push((
            conn.accepted_at,
            format!("server   conn {i} accepted ({}{hang})", conn.plan),
        ));
        for (at, action) in &conn.actions {
            lines.push((*at, format!("server   conn {i} sends {action}")));
        }
        for f in &conn.frames {
            let what = match (f.opcode, &f.tag, f.close_code) {
                (opcode::CLOSE, _, code) => format!("close {code:?}"),
                (opcode::PING, ..) => "ping".into(),
                (opcode::PONG, ..) => "pong".into(),
                (_, Some(tag), _) => format!("{tag} ({} bytes)", f.len),
                (op, None, _) => format!("opcode {op} ({} bytes)", f.len),
            };
            let drained = if f.drained { " (drained)" } else { "" };
            lines.push((f.at, format!("server   conn {i} got {what}{drained}")));
        }
        match &conn.end {
            Some((at, end)) => lines.push((*at, format!("server   conn {i} read ended: {end:?}"))),
            None => lines.push((run.t0, format!("server   conn {i} never ended"))),
        }
    }
    for send in &run.ops.sends {
        let name = send.tag.as_deref().unwrap_or("close");
        lines.push((send.issued, format!("test     {} {name}", send.what)));
        if let Some((at, outcome)) = &send.resolved {
            lines.push((*at, format!("test     {} {name} -> {outcome:?}", send.what)));
        }
    }
    for close in &run.ops.closes {
        lines.push((close.issued, "test     Close".into()));
        if let Some((at, result)) = &close.resolved {
            lines.push((*at, format!("test     Close -> {result:?}")));
        }
    }
    for (at, id) in &run.ops.infos {
        lines.push((*at, format!("test     Info({id})")));
    }
    for GetRec { issued, resolved } in &run.ops.getters {
        lines.push((*issued, "test     GetFrameSender".into()));
        if let Some((at, result)) = resolved {
            lines.push((*at, format!("test     GetFrameSender -> {result:?}")));
        }
    }
    for rec in &run.ops.sender {
        let thread = match rec.seq {
            0 => String::new(),
            seq => format!(" (thread {seq})"),
        };
        let code = rec
            .close_code
            .map_or(String::new(), |code| format!(" code {code}"));
        lines.push((
            rec.issued,
            format!(
                "test     sender {} {:?}{code}{thread} -> {:?}",
                rec.call.name(),
                rec.tags,
                rec.result
            ),
        ));
    }
    lines.sort_by_key(|(at, _)| *at);
    let mut out = String::new();
    const MAX_LINES: usize = 250;
    for (at, line) in lines.iter().take(MAX_LINES) {
        let _ = writeln!(out, "  {:>10}  {line}", ms_since(run.t0, *at));
    }
    if lines.len() > MAX_LINES {
        let _ = writeln!(out, "  ... {} more", lines.len() - MAX_LINES);
    }
    out
}

/// Counts of what the scenarios exercised, to tell that the model reaches the interesting
/// states (printed with `--nocapture`).
fn tally(run: &Run, counts: &mut BTreeMap<String, usize>) {
    let mut add = |key: String| *counts.entry(key).or_default() += 1;
    for conn in &run.conns {
        add(format!(
            "conn: {}{}",
            conn.plan,
            if conn.hang { " (hang)" } else { "" }
        ));
        let end = match &conn.end {
            Some((_, End::Eof { .. })) => "eof",
            Some((_, End::Reset(_))) => "reset by the client",
            Some((_, End::ServerReset)) => "reset by the server",
            Some((_, End::Garbage(_))) => "garbage",
            None => "never ended",
        };
        add(format!("conn end: {end}"));
    }
    for send in &run.ops.sends {
        let outcome = match &send.resolved {
            Some((_, Outcome::Ok)) => "Ok".into(),
            Some((_, Outcome::Err(error))) => format!("{error:?}"),
            Some((_, Outcome::Mailbox(_))) => "MailboxError".into(),
            None => "unresolved".into(),
        };
        add(format!("send: {} -> {outcome}", send.what));
    }
    for rec in &run.ops.sender {
        let thread = if rec.seq == 0 { "" } else { " (thread)" };
        let result = match &rec.result {
            Ok(()) => "Ok".into(),
            Err(SendError::InvalidFrame(_)) => "InvalidFrame".into(),
            Err(error) => format!("{error:?}"),
        };
        add(format!("sender: {}{thread} -> {result}", rec.call.name()));
    }
    for e in &run.log {
        match &e.ev {
            Ev::Terminate(reason) => add(format!(
                "terminate: {}",
                reason.split(':').next().unwrap_or("")
            )),
            Ev::Disconnect { reason, .. } => {
                let kind: String = reason.chars().take(40).collect();
                add(format!("disconnect: {kind}"));
            }
            Ev::Error(error) => {
                let kind: String = error.chars().take(30).collect();
                add(format!("handle_error: {kind}"));
            }
            _ => {}
        }
    }
}

struct Failure {
    seed: u64,
    count: usize,
    violations: Vec<Violation>,
    run: Run,
}

/// Runs `scenario` `copies` times at once; returns the violations and run of the first copy that
/// breaks invariant `key`.
async fn reproduce(
    scenario: &Scenario,
    key: &str,
    copies: usize,
    servers: &tokio::runtime::Handle,
) -> Option<(Vec<Violation>, Run)> {
    let await_drop = key == "1c";
    let runs = join_all((0..copies).map(|_| run_scenario(scenario, servers, await_drop))).await;
    runs.into_iter().find_map(|run| {
        let violations = check(&run);
        violations
            .iter()
            .any(|v| v.key == key)
            .then_some((violations, run))
    })
}

/// proptest's shrinking loop: simplify while the failure persists, complicate when it goes away.
async fn shrink(
    failure: &Failure,
    key: &str,
    max_steps: usize,
    servers: &tokio::runtime::Handle,
    watchdog: &Watchdog,
) -> (Scenario, Vec<Violation>, String, usize) {
    let mut tree = generate(failure.seed);
    let mut best = (
        tree.current(),
        failure.violations.clone(),
        timeline(&failure.run),
    );
    let mut steps = 0;
    let mut accepted = 0;
    let mut more = tree.simplify();
    while more && steps < max_steps {
        steps += 1;
        let candidate = tree.current();
        watchdog.progress();
        match reproduce(&candidate, key, SHRINK_COPIES, servers).await {
            Some((violations, run)) => {
                accepted += 1;
                best = (candidate, violations, timeline(&run));
                more = tree.simplify();
            }
            None => more = tree.complicate(),
        }
    }
    (best.0, best.1, best.2, accepted)
}

/// Kills the test if no scenario finishes for a minute: a client stuck inside a poll would
/// stop the actix thread, and with it every bound the scenarios enforce themselves.
struct Watchdog {
    state: Arc<Mutex<(Instant, BTreeSet<u64>, bool)>>,
}

impl Watchdog {
    fn start() -> Self {
        let state = Arc::new(Mutex::new((Instant::now(), BTreeSet::new(), false)));
        let shared = state.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let state = lock(&shared);
            if state.2 {
                return;
            }
            if state.0.elapsed() > Duration::from_secs(60) {
                let seeds: Vec<String> = state.1.iter().map(|s| format!("{s:#x}")).collect();
                eprintln!(
                    "lifecycle_random: no scenario finished for 60 s (invariant 5: the client \
                     thread hangs); in flight: seeds {seeds:?}"
                );
                std::process::exit(101);
            }
        });
        Watchdog { state }
    }

    fn progress(&self) {
        lock(&self.state).0 = Instant::now();
    }

    fn enter(&self, seed: u64) {
        lock(&self.state).1.insert(seed);
    }

    fn leave(&self, seed: u64) {
        let mut state = lock(&self.state);
        state.1.remove(&seed);
        state.0 = Instant::now();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.state).2 = true;
    }
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

#[test]
fn lifecycle_random() {
    let seeds: Vec<u64> = match env_number("MINCH_LIFECYCLE_SEED") {
        Some(seed) => vec![seed],
        None => {
            let cases = env_number("MINCH_LIFECYCLE_CASES").unwrap_or(1000);
            let master = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            (0..cases).map(|i| splitmix(master ^ i)).collect()
        }
    };
    let max_shrink = env_number("MINCH_LIFECYCLE_SHRINK").unwrap_or(100) as usize;
    let servers = ServerThread::start();
    let watchdog = Watchdog::start();
    let started = Instant::now();

    let (report, counts) = actix_rt::System::new().block_on(async {
        let servers = &servers.handle;
        let watchdog = &watchdog;
        // Per invariant: how many scenarios broke it, and the first of them. Runs are folded
        // in as they finish: a long run must not keep them all.
        let init = (BTreeMap::new(), BTreeMap::<&'static str, Failure>::new());
        let (counts, failures) = stream::iter(seeds.iter().copied())
            .map(|seed| async move {
                watchdog.enter(seed);
                let scenario = generate(seed).current();
                let run = run_scenario(&scenario, servers, true).await;
                watchdog.leave(seed);
                (seed, check(&run), run)
            })
            .buffer_unordered(CONCURRENCY)
            .fold(init, |(mut counts, mut failures), (seed, violations, run)| {
                tally(&run, &mut counts);
                let keys: BTreeSet<&'static str> = violations.iter().map(|v| v.key).collect();
                for key in keys {
                    failures
                        .entry(key)
                        .and_modify(|failure| failure.count += 1)
                        .or_insert_with(|| Failure {
                            seed,
                            count: 1,
                            violations: violations.clone(),
                            run: run.clone(),
                        });
                }
                std::future::ready((counts, failures))
            })
            .await;
        let elapsed = started.elapsed();

        let mut report = String::new();
        if !failures.is_empty() {
            let _ = writeln!(
                report,
                "lifecycle_random: {} scenarios in {elapsed:.1?}; invariants broken:",
                seeds.len()
            );
            for (key, failure) in &failures {
                let _ = writeln!(
                    report,
                    "  {key:<3} {:>6} scenarios  {}",
                    failure.count,
                    describe(key)
                );
            }
        }
        for (key, failure) in &failures {
            let (scenario, violations, timeline, steps) =
                shrink(failure, key, max_shrink, servers, watchdog).await;
            let first = failure.violations.iter().find(|v| v.key == *key).unwrap();
            let _ = writeln!(
                report,
                "\n==== {key}: {} ====\nseed {:#x} (rerun: MINCH_LIFECYCLE_SEED={:#x} cargo test \
                 --test lifecycle_random)\nfirst violation: {}\nshrunk ({steps} simplifications) to:\n\
                 {}its violations:",
                describe(key),
                failure.seed,
                failure.seed,
                first.detail,
                scenario.report()
            );
            for v in &violations {
                let _ = writeln!(report, "  {}: {}", v.key, v.detail);
            }
            let _ = writeln!(report, "timeline of a failing run:\n{timeline}");
        }
        eprintln!(
            "lifecycle_random: {} scenarios in {elapsed:.1?} ({CONCURRENCY} at a time)",
            seeds.len()
        );
        (report, counts)
    });
    drop(watchdog);
    for (key, count) in &counts {
        eprintln!("  {count:>7}  {key}");
    }
    assert!(report.is_empty(), "{report}");
}
