//! The lifecycle's promises at the edges where the first release broke them, one test per
//! defect, each over loopback: a stop is final, the handler goes with it, no data after a close
//! frame, a close frame's sender hears once it is written, keepalive at its interval, an
//! unanswered close times out, and a ping storm cannot grow the write buffer.

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use actix::Addr;
use minch::{
    Client, ClientContext, Close, CloseFrame, ConnectOptions, ConnectRequest, DisconnectReason,
    Error, Frame, GetStats, MinchHandler, Reconnect, Reply, Response, SendError, SendFrame,
    StopReason, Timeout,
};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, opcode, scripted_ws_server,
    wait_until, RawEvent, ServerEvent, Step, TestServer,
};

const WAIT: Duration = Duration::from_secs(10);

/// What a [`Probe`] saw, in order.
#[derive(Debug, Clone)]
enum Seen {
    Init,
    Connect,
    Connected,
    Error(Error),
    Disconnect(DisconnectReason, u32),
    Terminate(StopReason),
    Dropped,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type ConnectReply = Box<dyn FnMut(&mut ClientContext<'_, Probe>) -> Reply>;

/// A handler whose answers the test sets, that logs every callback and its own drop, and that
/// keeps its client's address (a common pattern, and the one that leaked in the first release).
struct Probe {
    request: ConnectRequest,
    log: Log,
    on_connect: ConnectReply,
    on_error: Reply,
    decision: Reconnect,
    keeps_own_addr: bool,
    /// Kept only to be dropped with the handler.
    _own_addr: Option<Addr<Client<Probe>>>,
}

impl Probe {
    fn new(request: impl Into<ConnectRequest>) -> (Probe, Log) {
        let log = Log::default();
        let probe = Probe {
            request: request.into(),
            log: log.clone(),
            on_connect: Box::new(|_| Reply::Continue),
            on_error: Reply::Continue,
            decision: Reconnect::After(Duration::from_millis(20)),
            keeps_own_addr: true,
            _own_addr: None,
        };
        (probe, log)
    }

    fn record(&self, seen: Seen) {
        self.log.lock().unwrap().push(seen);
    }
}

impl MinchHandler for Probe {
    type Info = ();

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.keeps_own_addr {
            self._own_addr = Some(ctx.address());
        }
        self.record(Seen::Init);
        Ok(())
    }

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.record(Seen::Connect);
        self.request.clone()
    }

    fn handle_connect(&mut self, _: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Seen::Connected);
        (self.on_connect)(ctx)
    }

    fn handle_frame(&mut self, _: Frame, _: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_error(&mut self, error: Error, _: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Seen::Error(error));
        self.on_error.clone()
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.record(Seen::Disconnect(reason.clone(), attempt));
        self.decision
    }

    fn terminate(&mut self, reason: &StopReason, _: &mut ClientContext<'_, Self>) {
        self.record(Seen::Terminate(reason.clone()));
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.record(Seen::Dropped);
    }
}

fn count(log: &Log, pred: impl Fn(&Seen) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|seen| pred(seen)).count()
}

fn quick_options() -> ConnectOptions {
    ConnectOptions::default()
        .close_timeout(Duration::from_millis(300))
        .upgrade_timeout(Duration::from_secs(2))
}

// ---- a stop is final ---------------------------------------------------------------------------

/// First release: after a protocol violation, `Reply::Stop` from `handle_error` ran `terminate`,
/// then `handle_disconnect`, whose reconnect restarted the client: dozens of connections a
/// second, forever.
#[actix_rt::test]
async fn a_stop_from_handle_error_after_a_violation_is_final() {
    // An unknown opcode (3) right after the upgrade.
    let server = scripted_ws_server(vec![
        Step::SendWithResponse(frame_bytes(true, 3, b"")),
        Step::Sleep(Duration::from_millis(500)),
    ]);
    let (mut probe, log) = Probe::new((
        server.url("/"),
        Vec::<(String, String)>::new(),
        quick_options(),
    ));
    probe.on_error = Reply::stop("violation");
    let addr = Client::start(probe);

    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Dropped)) == 1).await);
    // Long enough for a few reconnects, had there been any.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let seen = log.lock().unwrap().clone();
    assert!(
        matches!(
            seen.as_slice(),
            [
                Seen::Init,
                Seen::Connect,
                Seen::Connected,
                Seen::Error(Error::Protocol(_)),
                Seen::Terminate(StopReason::Requested(reason)),
                Seen::Dropped,
            ] if reason == "violation"
        ),
        "{seen:?}"
    );
    assert_eq!(server.accepted(), 1, "no reconnect after the final stop");
    // The server saw the client fail the connection with 1002.
    let failed = server
        .log()
        .count(|event| matches!(event, RawEvent::Frame { frame, .. } if frame.is_close()));
    assert_eq!(failed, 1, "{:?}", server.events());
    let after = addr.send(SendFrame(Frame::text("late"))).await;
    assert!(matches!(after, Ok(Err(SendError::Stopped))), "{after:?}");
}

/// First release: with `Reconnect::Stop` after a violation, `terminate` ran twice.
#[actix_rt::test]
async fn reconnect_stop_after_a_violation_terminates_once() {
    let server = scripted_ws_server(vec![Step::SendWithResponse(frame_bytes(true, 3, b""))]);
    let (mut probe, log) = Probe::new((
        server.url("/"),
        Vec::<(String, String)>::new(),
        quick_options(),
    ));
    probe.decision = Reconnect::Stop;
    let _addr = Client::start(probe);

    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Dropped)) == 1).await);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count(&log, |s| matches!(s, Seen::Terminate(_))),
        1,
        "{:?}",
        log.lock().unwrap()
    );
    assert_eq!(count(&log, |s| matches!(s, Seen::Disconnect(_, 1))), 1);
    assert_eq!(server.accepted(), 1);
}

/// First release: after the final stop the supervisor kept the actor, and with it the handler,
/// for as long as any address lived; a handler holding its own address was never dropped.
#[actix_rt::test]
async fn the_handler_is_dropped_after_terminate_while_addresses_live() {
    let server = TestServer::start();
    let (probe, log) = Probe::new(server.url("/echo"));
    let addr = Client::start(probe);
    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Connected)) == 1).await);

    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .unwrap()
        .unwrap();
    // `Close` resolves after terminate; the drop follows right after it.
    let seen = log.lock().unwrap().clone();
    assert!(
        matches!(
            seen.as_slice(),
            [.., Seen::Terminate(StopReason::Closed), Seen::Dropped]
        ),
        "{seen:?}"
    );
    // The address still answers, and says the client has stopped.
    let after = addr.send(SendFrame(Frame::text("late"))).await;
    assert!(matches!(after, Ok(Err(SendError::Stopped))), "{after:?}");
    let stats = addr.send(GetStats).await.unwrap();
    assert!(!stats.connected);
}

/// A client whose owner keeps no address still reconnects: the supervisor restarts an actor
/// only while an address lives, so the client holds one across its restart.
#[actix_rt::test]
async fn a_client_without_addresses_still_reconnects() {
    let server = TestServer::start();
    let (mut probe, _log) = Probe::new(server.url("/echo"));
    probe.keeps_own_addr = false;
    let connects = Arc::new(AtomicUsize::new(0));
    let seen_connects = connects.clone();
    probe.on_connect = Box::new(move |_| {
        seen_connects.fetch_add(1, Ordering::SeqCst);
        Reply::Continue
    });
    let addr = Client::start(probe);
    assert!(wait_until(WAIT, || connects.load(Ordering::SeqCst) == 1).await);
    drop(addr);
    server.drop_all();
    assert!(
        wait_until(WAIT, || connects.load(Ordering::SeqCst) >= 2).await,
        "no reconnect after the connection dropped"
    );
}

// ---- nothing after a close frame ----------------------------------------------------------------

/// Starts one WebSocket connection from `handle_connect`'s reply that fills the outgoing buffer
/// (1 KiB) at once, and sends 20 frames that are held back behind it.
fn fill_the_buffer_then_send(
    results: Arc<Mutex<Vec<Result<(), SendError>>>>,
) -> impl FnMut(&mut ClientContext<'_, Probe>) -> Reply {
    move |ctx| {
        let addr = ctx.address();
        // `send` puts each message in the mailbox now; the client takes them before it reads.
        let requests: Vec<_> = (0..20)
            .map(|i| addr.send(SendFrame(Frame::text(format!("held back {i}")))))
            .collect();
        let results = results.clone();
        actix_rt::spawn(async move {
            for request in requests {
                let result = request.await.expect("the mailbox answers");
                results.lock().unwrap().push(result);
            }
        });
        Reply::Send(Frame::binary(vec![7u8; 4096]))
    }
}

/// First release: when the server closed while frames were held back by the buffer limit,
/// the close reply went first and the held-back data after it (RFC 6455 §5.5.1 forbids that),
/// and their senders heard `Ok`.
#[actix_rt::test]
async fn held_back_frames_are_refused_when_the_server_closes_and_never_follow_the_close() {
    // The server's close arrives with the 101, so it is read before anything is flushed.
    let server = scripted_ws_server(vec![
        Step::SendWithResponse(close_frame(Some(1001), "going away")),
        Step::Sleep(Duration::from_millis(300)),
        Step::Close,
    ]);
    let options = quick_options().max_buffered_bytes(1024);
    let (mut probe, log) = Probe::new((server.url("/"), Vec::<(String, String)>::new(), options));
    let results = Arc::new(Mutex::new(Vec::new()));
    probe.on_connect = Box::new(fill_the_buffer_then_send(results.clone()));
    probe.decision = Reconnect::Stop;
    let _addr = Client::start(probe);

    assert!(wait_until(WAIT, || results.lock().unwrap().len() == 20).await);
    assert!(
        wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Terminate(_)))
            == 1)
        .await
    );
    let results = results.lock().unwrap().clone();
    assert!(
        results
            .iter()
            .all(|result| matches!(result, Err(SendError::Closing))),
        "held-back frames must be refused, not reported sent: {results:?}"
    );
    let frames: Vec<_> = server
        .events()
        .into_iter()
        .filter_map(|event| match event {
            RawEvent::Frame { frame, .. } => Some(frame),
            _ => None,
        })
        .collect();
    let close_at = frames.iter().position(|frame| frame.is_close());
    let close_at = close_at.expect("the client answered the close");
    assert_eq!(
        close_at,
        frames.len() - 1,
        "frames after the close: {frames:?}"
    );
    assert_eq!(
        frames[0].opcode,
        opcode::BINARY,
        "the buffered frame went first"
    );
}

/// A raw peer that completes the upgrade and then never reads: its socket buffers fill, and
/// the client's writes stop. `then` runs with the socket after the 101.
fn deaf_server(
    then: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        if accept_upgrade_blocking(&mut stream).is_none() {
            return;
        }
        then(&mut stream);
    });
    (url, handle)
}

/// First release: `SendFrame(Frame::Close(..))` resolved `Ok` before anything was written.
#[actix_rt::test]
async fn a_close_frame_send_resolves_only_once_written() {
    let (url, server) = deaf_server(|_| thread::sleep(Duration::from_millis(1500)));
    let options = quick_options()
        .max_buffered_bytes(1024)
        .close_timeout(Duration::from_secs(5));
    let (probe, log) = Probe::new((url, Vec::<(String, String)>::new(), options));
    let addr = Client::start(probe);
    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Connected)) == 1).await);

    // Far more than the kernel buffers of a peer that does not read: the last ones wait.
    let chunk = Frame::binary(vec![1u8; 1 << 20]);
    let mut sends = Vec::new();
    for _ in 0..32 {
        sends.push(addr.send(SendFrame(chunk.clone())));
    }
    let close = addr.send(SendFrame(Frame::Close(Some(CloseFrame::new(1000, "done")))));
    let early = actix_rt::time::timeout(Duration::from_millis(500), close).await;
    assert!(
        early.is_err(),
        "the close resolved before it could be written: {early:?}"
    );
    drop(sends);
    server.join().unwrap();
}

/// RFC 6455 §5.5.2: a ping is answered unless a close was received. A pong owed while the
/// client's own close waits behind held-back data goes before that close (the first release
/// answered nothing once a close was queued).
#[actix_rt::test]
async fn a_ping_while_the_clients_close_is_held_back_is_answered_before_the_close() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, server) = deaf_server(move |stream| {
        // Let the client fill the socket buffers with frames this peer does not read yet.
        thread::sleep(Duration::from_millis(300));
        stream
            .write_all(&frame_bytes(true, opcode::PING, b"still there?"))
            .unwrap();
        thread::sleep(Duration::from_millis(200));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut seen = Vec::new();
        while !seen.iter().any(|(op, _)| *op == opcode::CLOSE) {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Ok(Some((frame, used))) = decode_frame(&buf) {
                buf.drain(..used);
                seen.push((frame.opcode, frame.payload));
            }
        }
        let _ = tx.send(seen);
    });
    let options = quick_options()
        .max_buffered_bytes(1024)
        .close_timeout(Duration::from_secs(5));
    let (mut probe, log) = Probe::new((url, Vec::<(String, String)>::new(), options));
    probe.on_connect = Box::new(|_| {
        let mut frames = vec![Frame::binary(vec![3u8; 1 << 20]); 32];
        frames.push(Frame::Close(Some(CloseFrame::new(4000, "bye"))));
        Reply::SendAll(frames)
    });
    let _addr = Client::start(probe);
    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Connected)) == 1).await);

    let mut seen = None;
    let deadline = Instant::now() + WAIT;
    while seen.is_none() && Instant::now() < deadline {
        seen = rx.try_recv().ok();
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.expect("the server read up to the close");
    let opcodes: Vec<u8> = seen.iter().map(|(op, _)| *op).collect();
    let pong = seen
        .iter()
        .position(|(op, payload)| *op == opcode::PONG && payload == b"still there?");
    let close = opcodes.iter().position(|op| *op == opcode::CLOSE);
    assert!(
        matches!((pong, close), (Some(pong), Some(close)) if pong < close),
        "pong at {pong:?}, close at {close:?}: {} frames",
        opcodes.len()
    );
    assert_eq!(close, Some(opcodes.len() - 1), "nothing after the close");
    server.join().unwrap();
}

// ---- keepalive and the close timer ----------------------------------------------------------

/// First release: the pending ping was kept until its pong timeout ran out, so pings went every
/// `ping_interval + pong_timeout`.
#[actix_rt::test]
async fn keepalive_pings_every_ping_interval() {
    let server = TestServer::start();
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(400));
    let (probe, log) = Probe::new((server.url("/echo"), Vec::<(String, String)>::new(), options));
    let addr = Client::start(probe);
    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Connected)) == 1).await);
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_millis(1050)).await;
    let pings = server
        .log()
        .count(|event| matches!(event, ServerEvent::Ping(_)));
    let elapsed = started.elapsed();
    // Every 100 ms: 10 in a second; at `interval + pong_timeout` it would be 2.
    assert!(pings >= 7, "{pings} pings in {elapsed:?}");
    let stats = addr.send(GetStats).await.unwrap();
    assert!(
        stats.connected && stats.last_ping_rtt.is_some(),
        "{stats:?}"
    );
    assert_eq!(count(&log, |s| matches!(s, Seen::Disconnect(..))), 0);
}

/// First release: `Timeout::Close` was documented but never produced; a close the server never
/// answered was reported as a clean close.
#[actix_rt::test]
async fn an_unanswered_close_is_a_close_timeout() {
    let server = scripted_ws_server(vec![Step::Sleep(Duration::from_secs(3))]);
    let options = quick_options().close_timeout(Duration::from_millis(200));
    let (mut probe, log) = Probe::new((server.url("/"), Vec::<(String, String)>::new(), options));
    probe.on_connect = Box::new(|_| Reply::close(4000, "bye"));
    probe.decision = Reconnect::Stop;
    let _addr = Client::start(probe);

    assert!(
        wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Disconnect(..)))
            == 1)
        .await
    );
    let seen = log.lock().unwrap().clone();
    let reason = seen.iter().find_map(|seen| match seen {
        Seen::Disconnect(reason, _) => Some(reason.clone()),
        _ => None,
    });
    let error = reason.as_ref().and_then(DisconnectReason::error);
    assert_eq!(
        error.and_then(Error::timeout),
        Some(Timeout::Close),
        "{reason:?}"
    );
}

// ---- pongs ----------------------------------------------------------------------------------

/// First release: every server ping was answered outside `max_buffered_bytes`, so a peer that
/// pings in a loop and never reads grew the client's write buffer without bound. Now pongs
/// count against the limit, and past it only the latest ping waits for its answer.
#[actix_rt::test]
async fn a_ping_storm_from_a_peer_that_does_not_read_keeps_pongs_bounded() {
    const PINGS: usize = 100_000;
    let done = Arc::new(AtomicBool::new(false));
    let server_done = done.clone();
    let (url, server) = deaf_server(move |stream| {
        let ping = frame_bytes(true, opcode::PING, &[0x55; 125]);
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1000)
            .collect();
        for _ in 0..PINGS / 1000 {
            if stream.write_all(&batch).is_err() {
                return;
            }
        }
        server_done.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(1000));
    });
    // Pongs count against the buffer limit; past it, only the latest ping is answered.
    let options = quick_options()
        .ping_interval(None)
        .max_buffered_bytes(64 * 1024);
    let (probe, log) = Probe::new((url, Vec::<(String, String)>::new(), options));
    let addr = Client::start(probe);
    assert!(wait_until(WAIT, || count(&log, |s| matches!(s, Seen::Connected)) == 1).await);

    let mut stats = addr.send(GetStats).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while (stats.frames_in as usize) < PINGS && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        stats = addr.send(GetStats).await.unwrap();
    }
    assert!(done.load(Ordering::SeqCst), "the server wrote every ping");
    assert_eq!(stats.frames_in as usize, PINGS, "{stats:?}");
    // What the kernel buffers take (a few MiB of 131-byte pongs), not one pong per ping.
    assert!(
        (stats.frames_out as usize) < PINGS / 2,
        "{} pongs written for {PINGS} pings: the write buffer grew with the pings",
        stats.frames_out
    );
    server.join().unwrap();
}
