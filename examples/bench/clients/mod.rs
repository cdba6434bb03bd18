//! The clients under test, and the scenario loops they share.
//!
//! The stream-shaped clients (raw awc, tokio-tungstenite, minch's simple API, and minch's actor
//! client driven through its address) implement
//! [`EchoConn`] and share [`echo_job`] and [`fanout_streams`], so they run the very same loop.
//! The minch actor is callback-driven and has its own module; so has minch's blocking API, run
//! by a producer thread and a consumer thread. yawc (the compressed scenarios' baseline) is a
//! stream client too.

mod awc_raw;
mod minch_actor;
mod minch_addr;
mod minch_blocking;
mod minch_simple;
mod tungstenite;
mod yawc;

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use crate::sys;
use minch_addr::AddrConn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientKind {
    MinchActor,
    MinchAddr,
    MinchAddrBatch,
    MinchSender,
    MinchSenderBatch,
    MinchSimple,
    MinchBlocking,
    RawAwc,
    Tungstenite,
    Yawc,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::MinchActor => "minch-actor",
            ClientKind::MinchAddr => "minch-addr",
            ClientKind::MinchAddrBatch => "minch-addr-batch",
            ClientKind::MinchSender => "minch-sender",
            ClientKind::MinchSenderBatch => "minch-sender-batch",
            ClientKind::MinchSimple => "minch-simple",
            ClientKind::MinchBlocking => "minch-blocking",
            ClientKind::RawAwc => "raw-awc",
            ClientKind::Tungstenite => "tokio-tungstenite",
            ClientKind::Yawc => "yawc",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            ClientKind::MinchActor => "actor",
            ClientKind::MinchAddr => "addr",
            ClientKind::MinchAddrBatch => "addr-batch",
            ClientKind::MinchSender => "sender",
            ClientKind::MinchSenderBatch => "sender-batch",
            ClientKind::MinchSimple => "simple",
            ClientKind::MinchBlocking => "blocking",
            ClientKind::RawAwc => "awc",
            ClientKind::Tungstenite => "tt",
            ClientKind::Yawc => "yawc",
        }
    }

    pub fn available() -> Vec<ClientKind> {
        vec![
            ClientKind::MinchActor,
            ClientKind::MinchAddr,
            ClientKind::MinchAddrBatch,
            ClientKind::MinchSender,
            ClientKind::MinchSenderBatch,
            ClientKind::MinchSimple,
            ClientKind::MinchBlocking,
            ClientKind::RawAwc,
            ClientKind::Tungstenite,
            ClientKind::Yawc,
        ]
    }

    /// Whether the client can negotiate permessage-deflate (the compressed scenarios).
    /// Raw awc and tokio-tungstenite cannot.
    pub fn deflates(self) -> bool {
        !matches!(self, ClientKind::RawAwc | ClientKind::Tungstenite)
    }

    /// Whether the client runs in the uncompressed scenarios: yawc is only the compressed
    /// scenarios' baseline.
    pub fn plain(self) -> bool {
        self != ClientKind::Yawc
    }

    pub fn from_name(name: &str) -> Option<ClientKind> {
        ClientKind::available()
            .into_iter()
            .find(|kind| kind.name() == name || kind.short() == name)
    }
}

/// What each message of a scenario carries.
#[derive(Clone, Debug)]
pub enum Payload {
    Text(&'static str),
    Binary(Bytes),
    /// Text messages taken in turn from a set (the compressed scenarios' market feed).
    Ticks(Arc<Ticks>),
}

impl Payload {
    /// The text of the next message, for a text payload.
    pub fn text(&self) -> Option<&'static str> {
        match self {
            Payload::Text(text) => Some(text),
            Payload::Binary(_) => None,
            Payload::Ticks(ticks) => Some(ticks.next()),
        }
    }

    /// The next message as a minch frame.
    pub fn minch_frame(&self) -> minch::Frame {
        match self {
            Payload::Text(text) => minch::Frame::text(*text),
            Payload::Binary(data) => minch::Frame::Binary(data.clone()),
            Payload::Ticks(ticks) => minch::Frame::text(ticks.next()),
        }
    }

    /// The length of each message (the ticks all have the same length).
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(text) => text.len(),
            Payload::Binary(data) => data.len(),
            Payload::Ticks(ticks) => ticks.messages[0].len(),
        }
    }
}

/// A market feed: [`TICK_MESSAGES`] JSON messages of exactly [`TICK_LEN`] bytes, each a batch
/// of trades with the same keys and symbols and varying prices, sizes, times and ids, sent in
/// turn by every connection that shares the set.
#[derive(Debug)]
pub struct Ticks {
    messages: Vec<&'static str>,
    next: AtomicUsize,
}

pub const TICK_LEN: usize = 1024;
const TICK_MESSAGES: usize = 512;

impl Ticks {
    pub fn new() -> Ticks {
        const SYMBOLS: [&str; 6] = [
            "BTC-USD", "ETH-USD", "SOL-USD", "BTC-EUR", "ETH-BTC", "XRP-USD",
        ];
        // A fixed xorshift sequence: the same messages in every run and every process.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut time_ms: u64 = 1_764_892_800_000;
        let mut trade_id: u64 = 4_127_730_000;
        let messages = (0..TICK_MESSAGES)
            .map(|seq| {
                let mut text = format!("{{\"type\":\"trades\",\"seq\":{seq},\"data\":[");
                let mut first = true;
                loop {
                    let r = random();
                    let symbol = SYMBOLS[(r % SYMBOLS.len() as u64) as usize];
                    time_ms += r % 97;
                    trade_id += 1 + r % 5;
                    let tick = format!(
                        "{}{{\"s\":\"{symbol}\",\"p\":\"{}.{:02}\",\"q\":\"{}.{:06}\",\"side\":\"{}\",\"t\":{time_ms},\"id\":{trade_id}}}",
                        if first { "" } else { "," },
                        20_000 + (r >> 8) % 90_000,
                        (r >> 24) % 100,
                        (r >> 32) % 4,
                        (r >> 36) % 1_000_000,
                        if r & (1 << 40) == 0 { "buy" } else { "sell" },
                    );
                    // Room for the tick and the closing "]}".
                    if text.len() + tick.len() + 2 > TICK_LEN {
                        break;
                    }
                    text.push_str(&tick);
                    first = false;
                }
                text.push_str("]}");
                // JSON allows whitespace after the value: pad to exactly TICK_LEN bytes.
                while text.len() < TICK_LEN {
                    text.push(' ');
                }
                &*Box::leak(text.into_boxed_str())
            })
            .collect();
        Ticks {
            messages,
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> &'static str {
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        self.messages[at % self.messages.len()]
    }
}

/// An echo scenario on one connection: `warmup + measured` messages, at most `window` in flight.
/// Only the replies after the first `warmup` ones are timed.
#[derive(Clone, Debug)]
pub struct Job {
    pub warmup: usize,
    pub measured: usize,
    pub window: usize,
    pub payload: Payload,
    /// Time each message from send to reply (rtt).
    pub record_latency: bool,
}

impl Job {
    fn total(&self) -> usize {
        self.warmup + self.measured
    }
}

#[derive(Debug)]
pub struct JobResult {
    pub elapsed: Duration,
    pub messages: usize,
    /// Payload bytes received in the timed part.
    pub bytes: u64,
    /// Send-to-reply latency of each timed message, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// CPU time of this process (all its threads) in the timed part, in nanoseconds.
    pub cpu_ns: Option<u64>,
}

pub struct FanoutParams {
    pub conns: usize,
    pub echoes: usize,
    /// Connections being opened (and echoing) at once.
    pub concurrency: usize,
    /// What each echo carries.
    pub payload: Payload,
}

pub struct FanoutResult {
    pub connected: usize,
    pub failed: usize,
    /// From the first connect to the last connection open.
    pub connect_all: Duration,
    /// From the first connect to the last connection done with its echoes.
    pub all_echoed: Duration,
    pub base_rss_kib: u64,
    pub idle_rss_kib: u64,
    pub hwm_kib: u64,
}

/// Far above any job's run time (the slowest full job takes about 2 s): a job still running
/// then has stalled.
const JOB_TIMEOUT: Duration = Duration::from_secs(15);
const FANOUT_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run_job(kind: ClientKind, url: &str, job: &Job) -> Result<JobResult, String> {
    if job.record_latency {
        assert!(
            job.warmup >= job.window,
            "latency needs the first window in the warm-up"
        );
    }
    let run = async {
        match kind {
            ClientKind::MinchActor => minch_actor::run_job(url, job).await,
            ClientKind::MinchAddr => with_conn::<AddrConn<{ minch_addr::DO_SEND }>>(url, job).await,
            ClientKind::MinchAddrBatch => {
                with_conn::<AddrConn<{ minch_addr::BATCH }>>(url, job).await
            }
            ClientKind::MinchSender => {
                with_conn::<AddrConn<{ minch_addr::SENDER }>>(url, job).await
            }
            ClientKind::MinchSenderBatch => {
                with_conn::<AddrConn<{ minch_addr::SENDER_BATCH }>>(url, job).await
            }
            ClientKind::MinchSimple => with_conn::<minch_simple::SimpleConn>(url, job).await,
            ClientKind::MinchBlocking => minch_blocking::run_job(url, job).await,
            ClientKind::RawAwc => with_conn::<awc_raw::AwcConn>(url, job).await,
            ClientKind::Tungstenite => with_conn::<tungstenite::TtConn>(url, job).await,
            ClientKind::Yawc => with_conn::<yawc::YawcConn>(url, job).await,
        }
    };
    actix_rt::time::timeout(JOB_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {JOB_TIMEOUT:?}")))
}

pub async fn fanout(
    kind: ClientKind,
    url: &str,
    params: &FanoutParams,
) -> Result<FanoutResult, String> {
    let run = async {
        match kind {
            ClientKind::MinchActor => minch_actor::fanout(url, params).await,
            ClientKind::MinchAddr => {
                fanout_streams::<AddrConn<{ minch_addr::DO_SEND }>>(url, params).await
            }
            ClientKind::MinchAddrBatch => {
                fanout_streams::<AddrConn<{ minch_addr::BATCH }>>(url, params).await
            }
            ClientKind::MinchSender => {
                fanout_streams::<AddrConn<{ minch_addr::SENDER }>>(url, params).await
            }
            ClientKind::MinchSenderBatch => {
                fanout_streams::<AddrConn<{ minch_addr::SENDER_BATCH }>>(url, params).await
            }
            ClientKind::MinchSimple => {
                fanout_streams::<minch_simple::SimpleConn>(url, params).await
            }
            ClientKind::MinchBlocking => minch_blocking::fanout(url, params).await,
            ClientKind::RawAwc => fanout_streams::<awc_raw::AwcConn>(url, params).await,
            ClientKind::Tungstenite => fanout_streams::<tungstenite::TtConn>(url, params).await,
            ClientKind::Yawc => fanout_streams::<yawc::YawcConn>(url, params).await,
        }
    };
    actix_rt::time::timeout(FANOUT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {FANOUT_TIMEOUT:?}")))
}

/// A client connection seen as a message stream: what the shared loops need.
#[allow(async_fn_in_trait)]
pub trait EchoConn: Sized {
    async fn connect(url: &str) -> Result<Self, String>;
    /// Queues a message (it may be written at once).
    async fn feed(&mut self, payload: &Payload) -> Result<(), String>;
    /// Writes whatever is queued.
    async fn flush(&mut self) -> Result<(), String>;
    /// The next whole data message; returns its payload length.
    async fn recv(&mut self) -> Result<usize, String>;
    /// A whole data message if one is ready without waiting.
    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        None
    }
    /// Sends one message and waits for its whole reply (with one message in flight).
    async fn round_trip(&mut self, payload: &Payload) -> Result<usize, String> {
        self.feed(payload).await?;
        self.flush().await?;
        self.recv().await
    }
    async fn close(self);
}

async fn with_conn<C: EchoConn>(url: &str, job: &Job) -> Result<JobResult, String> {
    let mut conn = C::connect(url).await?;
    let result = echo_job(&mut conn, job).await;
    conn.close().await;
    result
}

/// Keeps `window` messages in flight until `total` replies came back. Replies are fed and
/// flushed once nothing more is ready to read.
async fn echo_job<C: EchoConn>(conn: &mut C, job: &Job) -> Result<JobResult, String> {
    let total = job.total();
    let mut tally = Tally::new(job);

    if job.window == 1 {
        for _ in 0..total {
            let sent_at = Instant::now();
            let len = conn.round_trip(&job.payload).await?;
            tally.reply(len, Some(sent_at));
        }
        return Ok(tally.finish());
    }

    let mut sent_at = VecDeque::new();
    let mut sent = 0;
    while sent < job.window.min(total) {
        conn.feed(&job.payload).await?;
        if job.record_latency {
            sent_at.push_back(Instant::now());
        }
        sent += 1;
    }
    conn.flush().await?;
    while tally.received < total {
        let len = match conn.try_recv() {
            Some(len) => len?,
            None => {
                conn.flush().await?;
                conn.recv().await?
            }
        };
        tally.reply(len, sent_at.pop_front());
        if sent < total {
            conn.feed(&job.payload).await?;
            if job.record_latency {
                sent_at.push_back(Instant::now());
            }
            sent += 1;
        }
    }
    Ok(tally.finish())
}

/// Counts replies, starts the clock when the warm-up is over, keeps latencies.
struct Tally {
    warmup: usize,
    total: usize,
    received: usize,
    bytes: u64,
    started: Instant,
    latencies_ns: Vec<u64>,
    /// The process's CPU time when the clock started, if it could be read.
    cpu_started_ns: Option<u64>,
}

impl Tally {
    fn new(job: &Job) -> Tally {
        Tally {
            warmup: job.warmup,
            total: job.total(),
            received: 0,
            bytes: 0,
            started: Instant::now(),
            latencies_ns: Vec::with_capacity(if job.record_latency { job.measured } else { 0 }),
            cpu_started_ns: if job.warmup == 0 { sys::cpu_ns() } else { None },
        }
    }

    /// One reply of `len` payload bytes, to a message sent at `sent_at` if timed.
    fn reply(&mut self, len: usize, sent_at: Option<Instant>) {
        self.received += 1;
        let now = Instant::now();
        if self.received <= self.warmup {
            if self.received == self.warmup {
                self.cpu_started_ns = sys::cpu_ns();
                self.started = Instant::now();
            }
            return;
        }
        self.bytes += len as u64;
        if let Some(sent_at) = sent_at {
            self.latencies_ns.push((now - sent_at).as_nanos() as u64);
        }
    }

    fn done(&self) -> bool {
        self.received >= self.total
    }

    fn finish(self) -> JobResult {
        let elapsed = self.started.elapsed();
        let cpu_ns = self
            .cpu_started_ns
            .zip(sys::cpu_ns())
            .map(|(started, now)| now.saturating_sub(started));
        JobResult {
            elapsed,
            cpu_ns,
            messages: self.received - self.warmup,
            bytes: self.bytes,
            latencies_ns: self.latencies_ns,
        }
    }
}

pub const FANOUT_MESSAGE: &str = "0123456789abcdef";

enum FanoutEvent {
    Connected,
    Echoed,
    Failed(String),
}

/// Tracks a fanout's progress from the connections' events.
struct FanoutProgress {
    conns: usize,
    connected: usize,
    echoed: usize,
    failed: usize,
    started: Instant,
    connect_all: Option<Duration>,
    first_error: Option<String>,
}

impl FanoutProgress {
    fn new(conns: usize) -> Self {
        FanoutProgress {
            conns,
            connected: 0,
            echoed: 0,
            failed: 0,
            started: Instant::now(),
            connect_all: None,
            first_error: None,
        }
    }

    fn on(&mut self, event: FanoutEvent) {
        match event {
            FanoutEvent::Connected => self.connected += 1,
            FanoutEvent::Echoed => self.echoed += 1,
            FanoutEvent::Failed(error) => {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
        }
        if self.connect_all.is_none() && self.connected + self.failed >= self.conns {
            self.connect_all = Some(self.started.elapsed());
        }
    }

    fn finished(&self) -> bool {
        self.echoed + self.failed >= self.conns
    }

    /// Waits a moment for the allocator and the sockets to settle, then reads the memory.
    async fn result(self, base_rss_kib: u64) -> Result<FanoutResult, String> {
        let all_echoed = self.started.elapsed();
        if self.failed * 100 > self.conns {
            return Err(format!(
                "{} of {} connections failed; first error: {}",
                self.failed,
                self.conns,
                self.first_error.unwrap_or_default()
            ));
        }
        if let Some(error) = &self.first_error {
            eprintln!("fanout: {} connection(s) failed, e.g. {error}", self.failed);
        }
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        Ok(FanoutResult {
            connected: self.echoed,
            failed: self.failed,
            connect_all: self.connect_all.unwrap_or(all_echoed),
            all_echoed,
            base_rss_kib,
            idle_rss_kib: sys::status_kib("VmRSS"),
            hwm_kib: sys::status_kib("VmHWM"),
        })
    }
}

/// Opens `conns` connections, `concurrency` at a time, each in its own task; each echoes
/// `echoes` messages and then stays open, idle, until the process exits.
async fn fanout_streams<C: EchoConn + 'static>(
    url: &str,
    params: &FanoutParams,
) -> Result<FanoutResult, String> {
    let base_rss_kib = sys::status_kib("VmRSS");
    let permits = Arc::new(Semaphore::new(params.concurrency));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let url: Arc<str> = url.into();
    let (conns, echoes) = (params.conns, params.echoes);
    let payload = params.payload.clone();
    let mut progress = FanoutProgress::new(conns);

    actix_rt::spawn(async move {
        for _ in 0..conns {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let events = events_tx.clone();
            let url = url.clone();
            let payload = payload.clone();
            actix_rt::spawn(async move {
                // Boxed, so that the (large) connect future's state is not kept in every idle
                // task: the idle task holds the connection and little else.
                let mut conn = match Box::pin(C::connect(&url)).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        drop(permit);
                        let _ = events.send(FanoutEvent::Failed(error));
                        return;
                    }
                };
                let _ = events.send(FanoutEvent::Connected);
                for _ in 0..echoes {
                    if let Err(error) = conn.round_trip(&payload).await {
                        drop(permit);
                        let _ = events.send(FanoutEvent::Failed(error));
                        return;
                    }
                }
                drop(permit);
                let _ = events.send(FanoutEvent::Echoed);
                drop(events);
                // Idle, holding the connection, until the process exits.
                hold(conn).await;
            });
        }
    });

    while !progress.finished() {
        match events.recv().await {
            Some(event) => progress.on(event),
            None => break,
        }
    }
    progress.result(base_rss_kib).await
}

/// Keeps `value` alive forever.
async fn hold<T>(value: T) {
    std::future::pending::<()>().await;
    drop(value);
}
