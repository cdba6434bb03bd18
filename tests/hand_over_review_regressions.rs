//! Regressions from a cold review of e6c8a23 (the simple API's hand-over pause). Each test named
//! after a bug failed on e6c8a23; the `control_` tests passed there and still do.
//!
//! The bug: `Inbox::poll_refill` registers the receiving task's waker, and nothing unregisters
//! it when that receive stops waiting — a `receive_frame` that returns `ReceiveError::Timeout`
//! (any timeout, zero included), a `frames.next()` dropped by a `select!`, or a look with
//! `now_or_never()` (futures' no-op waker). The next frames the connection queued "woke" that
//! stale waker, and once the driver stopped on its budget, reading paused for a receiver that
//! would take nothing: until the next keepalive tick, or — for a pause that began after the
//! close began — the close timeout. Server pings and closes went unanswered meanwhile.
//!
//! The fix: a hand-over pause is offered only while the connection is open, and it lasts at
//! most until the driver runs again, which a deferred wake brings after the runtime's next turn.
//!
//! The peers are raw `std::net` servers on their own threads (127.0.0.1 only), like those of
//! `tests/receive_backpressure.rs`. Every wait is bounded.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use minch::{ConnectOptions, DisconnectReason, Frame, ReceiveError};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, opcode, text_frame,
};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// Longest a peer waits for the client before giving up.
const PEER_LIFETIME: Duration = Duration::from_secs(30);

/// What the peer saw, with the time it saw it.
#[derive(Default)]
struct Seen {
    /// When the client's close frame came, and its code.
    client_close: Option<(Instant, Option<u16>)>,
    /// When the peer wrote its own ping ("srv"), and when the client's pong for it came.
    server_ping_sent: Option<Instant>,
    server_ping_answered: Option<Instant>,
    /// When the peer wrote its own close frame, and when the client's echo came.
    server_close_sent: Option<Instant>,
}

struct Peer {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

/// What the peer does after a burst of text messages, besides answering the client's pings.
#[derive(Clone, Copy)]
enum Behaviour {
    /// On the client's close: `n` text messages "0" .. (the frames that were in flight when
    /// the client's close crossed them), then the close 1000.
    CloseOnClientClose(usize),
    /// On `go`: `n` text messages "0" .., then a ping "srv"; waits for its pong.
    PingOnGo(usize),
    /// On `go`: `n` text messages "0" .., then the close 1000; waits for the echo.
    CloseOnGo(usize),
}

fn burst(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| text_frame(&i.to_string())).collect()
}

/// A peer on its own thread: accepts one connection, upgrades it, and plays `behaviour`
/// while answering the client's pings; shuts down once both close frames went.
fn spawn_peer(behaviour: Behaviour, go: Option<mpsc::Receiver<()>>) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let peer_seen = seen.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(buf) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        serve(stream, buf, behaviour, go, &peer_seen);
    });
    Peer { url, seen }
}

fn serve(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    behaviour: Behaviour,
    go: Option<mpsc::Receiver<()>>,
    seen: &Mutex<Seen>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 16 << 10];
    let mut go = go;
    let mut close_sent = false;
    loop {
        if let Some(rx) = &go {
            if rx.try_recv().is_ok() {
                go = None;
                match behaviour {
                    Behaviour::PingOnGo(n) => {
                        let _ = stream.write_all(&burst(n));
                        let _ = stream.write_all(&frame_bytes(true, opcode::PING, b"srv"));
                        seen.lock().unwrap().server_ping_sent = Some(Instant::now());
                    }
                    Behaviour::CloseOnGo(n) => {
                        let _ = stream.write_all(&burst(n));
                        let _ = stream.write_all(&close_frame(Some(1000), ""));
                        close_sent = true;
                        seen.lock().unwrap().server_close_sent = Some(Instant::now());
                    }
                    Behaviour::CloseOnClientClose(_) => {}
                }
            }
        }
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            buf.drain(..used);
            match frame.opcode {
                opcode::PING if !close_sent => {
                    let _ = stream.write_all(&frame_bytes(true, opcode::PONG, &frame.payload));
                }
                opcode::PONG if frame.payload == b"srv" => {
                    seen.lock()
                        .unwrap()
                        .server_ping_answered
                        .get_or_insert(Instant::now());
                }
                opcode::CLOSE => {
                    seen.lock().unwrap().client_close = Some((Instant::now(), frame.close_code));
                    if !close_sent {
                        if let Behaviour::CloseOnClientClose(n) = behaviour {
                            let _ = stream.write_all(&burst(n));
                        }
                        let _ = stream.write_all(&close_frame(Some(1000), ""));
                    }
                    let _ = stream.shutdown(Shutdown::Both);
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

async fn connect(peer: &Peer, options: ConnectOptions) -> (minch::Connection, minch::Frames) {
    actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects")
}

/// How the program stops waiting for frames, leaving its waker registered in the queue.
#[derive(Debug, Clone, Copy)]
enum StopWaiting {
    /// `receive_frame(50 ms)` returns `ReceiveError::Timeout`.
    ReceiveTimesOut,
    /// `receive_frame(Duration::ZERO)` returns `ReceiveError::Timeout`.
    ReceiveWithZeroTimeout,
    /// `frames.next()` loses a `select!` to a timer.
    StreamLosesASelect,
    /// `frames.next().now_or_never()` (futures' own no-op waker, not `Waker::noop()`).
    NowOrNever,
    /// `frames.try_receive_frame()`: documented not to count as waiting (a control).
    TryReceive,
}

async fn receive_nothing(frames: &mut minch::Frames, how: StopWaiting) {
    match how {
        StopWaiting::ReceiveTimesOut => assert!(matches!(
            frames.receive_frame(Duration::from_millis(50)).await,
            Err(ReceiveError::Timeout)
        )),
        StopWaiting::ReceiveWithZeroTimeout => assert!(matches!(
            frames.receive_frame(Duration::ZERO).await,
            Err(ReceiveError::Timeout)
        )),
        StopWaiting::StreamLosesASelect => {
            tokio::select! {
                frame = frames.next() => panic!("nothing was sent yet; got {frame:?}"),
                () = actix_rt::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        StopWaiting::NowOrNever => {
            use futures_util::FutureExt as _;
            assert!(
                frames.next().now_or_never().is_none(),
                "nothing was sent yet"
            );
        }
        StopWaiting::TryReceive => {
            assert!(
                matches!(frames.try_receive_frame(), Ok(None)),
                "nothing was sent yet"
            )
        }
    }
}

/// Receives `n` numbered messages in order; returns how many came and, if fewer, what came
/// instead.
async fn receive_numbered(
    frames: &mut minch::Frames,
    n: usize,
) -> (usize, Option<Result<Frame, ReceiveError>>) {
    for i in 0..n {
        match frames.receive_frame(Duration::from_secs(5)).await {
            Ok(frame) => assert_eq!(
                frame.as_text(),
                Some(i.to_string().as_str()),
                "message {i} out of order or altered"
            ),
            other => return (i, Some(other)),
        }
    }
    (n, None)
}

/// Receives `n` numbered messages in order, then the end; returns how many came and the end
/// (or what came instead).
async fn drain(frames: &mut minch::Frames, n: usize) -> (usize, Result<Frame, ReceiveError>) {
    match receive_numbered(frames, n).await {
        (received, Some(other)) => (received, other),
        (received, None) => (received, frames.receive_frame(Duration::from_secs(5)).await),
    }
}

const IN_FLIGHT: usize = 1_000;

/// "Read until the server is idle, then close": the program's last receive timed out, it
/// calls `close()`, and the server — which had 1 000 messages in flight when the client's
/// close reached it — answers with those messages, then its close 1000. The queue (1 024
/// messages by default) has room for all of it, so the client should read on to the server's
/// close: `close()` returns at once, and the program gets every message, then the end
/// `ClientClosed(1000)`.
///
/// What happens: the driver reads 256 messages, which "wake" the receive that timed out, and
/// pauses for a hand-over nobody will take (`pause_for_hand_over` does not check that the
/// lifecycle left Open; the `end_hand_over` in `run()` only ran before). Nothing ends that
/// pause but the close timeout: `close()` takes the whole `close_timeout`, the connection ends
/// with `Timeout(Close)`, and 744 messages the server sent are never delivered.
async fn close_after_the_program_stopped_waiting(how: StopWaiting) {
    let peer = spawn_peer(Behaviour::CloseOnClientClose(IN_FLIGHT), None);
    let options = ConnectOptions::default().close_timeout(Duration::from_secs(3));
    let (connection, mut frames) = connect(&peer, options).await;
    receive_nothing(&mut frames, how).await;

    let started = Instant::now();
    actix_rt::time::timeout(Duration::from_secs(10), connection.close())
        .await
        .expect("close() resolves within close_timeout and then some");
    let took = started.elapsed();
    let (received, end) = drain(&mut frames, IN_FLIGHT).await;
    eprintln!("{how:?}: close() took {took:?}; {received} of {IN_FLIGHT} messages, then {end:?}");

    assert_eq!(
        peer.seen.lock().unwrap().client_close.map(|(_, code)| code),
        Some(Some(1000)),
        "the server got the client's close 1000"
    );
    assert!(
        took < Duration::from_millis(1500),
        "{how:?}: close() took {took:?} (close_timeout 3 s): the client stopped reading \
         behind a hand-over to a receive that was no longer waiting"
    );
    assert_eq!(
        received, IN_FLIGHT,
        "{how:?}: only {received} of the {IN_FLIGHT} messages the server sent before its \
         close were delivered; then {end:?}"
    );
    match end {
        Err(ReceiveError::Closed(DisconnectReason::ClientClosed(close))) => {
            assert_eq!(close.code.0, 1000)
        }
        other => panic!("{how:?}: after every message, the client's close 1000; got {other:?}"),
    }
}

#[actix_rt::test]
async fn close_after_a_receive_timed_out_waits_for_a_hand_over_nobody_takes() {
    close_after_the_program_stopped_waiting(StopWaiting::ReceiveTimesOut).await;
}

#[actix_rt::test]
async fn close_after_a_zero_timeout_receive_waits_for_a_hand_over_nobody_takes() {
    close_after_the_program_stopped_waiting(StopWaiting::ReceiveWithZeroTimeout).await;
}

#[actix_rt::test]
async fn close_after_a_stream_lost_a_select_waits_for_a_hand_over_nobody_takes() {
    close_after_the_program_stopped_waiting(StopWaiting::StreamLosesASelect).await;
}

const BURST: usize = 600;

/// Default options (keepalive every 20 s, queue of 1 024): the program's receive timed out and
/// it is busy for 1.5 s; meanwhile the server sends 600 messages (room for all of them) and a
/// ping. Before e6c8a23 the client read them all and answered the ping at once; the option docs
/// say reading pauses only while the queue is full. Now reading stops after 256 messages for a
/// hand-over to the receive that timed out, so the server's ping goes unanswered until the
/// program receives again (or the keepalive tick, up to 20 s later): a server with its own
/// keepalive drops a healthy client whose queue is a quarter full.
async fn server_ping_behind_a_burst_while_the_program_is_busy(how: StopWaiting) {
    let (go, go_rx) = mpsc::channel();
    let peer = spawn_peer(Behaviour::PingOnGo(BURST), Some(go_rx));
    let (connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    receive_nothing(&mut frames, how).await;

    go.send(()).unwrap();
    // The program does something else for 1.5 s.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let (sent, answered) = {
        let seen = peer.seen.lock().unwrap();
        (seen.server_ping_sent, seen.server_ping_answered)
    };
    let frames_in = connection.stats().await.frames_in;
    let (received, instead) = receive_numbered(&mut frames, BURST).await;
    assert_eq!(
        received, BURST,
        "every message comes once the program receives: {instead:?}"
    );
    assert!(
        matches!(frames.try_receive_frame(), Ok(None)),
        "nothing after the burst, and still open"
    );
    actix_rt::time::timeout(Duration::from_secs(10), connection.close())
        .await
        .expect("close() resolves");

    let sent = sent.expect("setup: the server sent its ping");
    let delay = answered.map(|answered| answered.duration_since(sent));
    assert!(
        delay.is_some_and(|delay| delay < Duration::from_millis(500)),
        "{how:?}: the server's ping (behind {BURST} messages, queue 1 024) was answered after {delay:?} \
         (None: not within 1.5 s); the client had read {frames_in} frames: it stopped reading \
         for a receiver that was not waiting"
    );
}

#[actix_rt::test]
async fn a_server_ping_behind_a_burst_is_unanswered_while_a_program_that_stopped_waiting_is_busy() {
    server_ping_behind_a_burst_while_the_program_is_busy(StopWaiting::ReceiveTimesOut).await;
}

/// `now_or_never()` polls with futures' `noop_waker`, which `will_wake(Waker::noop())` in
/// `Inbox::poll_refill` does not recognise: the look registers as a waiting receiver.
#[actix_rt::test]
async fn a_server_ping_behind_a_burst_is_unanswered_after_a_now_or_never_look() {
    server_ping_behind_a_burst_while_the_program_is_busy(StopWaiting::NowOrNever).await;
}

/// Control: `try_receive_frame` does not register, and the ping is answered at once.
#[actix_rt::test]
async fn control_a_server_ping_behind_a_burst_is_answered_after_a_try_receive() {
    server_ping_behind_a_burst_while_the_program_is_busy(StopWaiting::TryReceive).await;
}

/// The same with the server's close behind the burst: the client should echo it at once (the
/// queue has room), not when the busy program next receives.
#[actix_rt::test]
async fn a_server_close_behind_a_burst_is_not_echoed_while_a_program_that_stopped_waiting_is_busy()
{
    let (go, go_rx) = mpsc::channel();
    let peer = spawn_peer(Behaviour::CloseOnGo(BURST), Some(go_rx));
    let (_connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    receive_nothing(&mut frames, StopWaiting::ReceiveTimesOut).await;

    go.send(()).unwrap();
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let (sent, echoed) = {
        let seen = peer.seen.lock().unwrap();
        (seen.server_close_sent, seen.client_close.map(|(at, _)| at))
    };
    let (received, end) = drain(&mut frames, BURST).await;
    assert_eq!(
        received, BURST,
        "every message comes once the program receives: {end:?}"
    );
    assert!(
        matches!(&end, Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))) if close.code.0 == 1000),
        "then the server's close: {end:?}"
    );

    let sent = sent.expect("setup: the server sent its close");
    let delay = echoed.map(|echoed| echoed.duration_since(sent));
    assert!(
        delay.is_some_and(|delay| delay < Duration::from_millis(500)),
        "the server's close (behind {BURST} messages, queue 1 024) was echoed after {delay:?} \
         (None: not within 1.5 s): the client stopped reading for a receiver that was not waiting"
    );
}

// ---- controls: what was checked and found sound -------------------------------------------------

/// Sends `go` once the program has had time to start waiting.
fn go_soon(go: mpsc::Sender<()>) {
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let _ = go.send(());
    });
}

const BIG_BURST: usize = 8_000;

/// A waiting program, the queue's limits around the 256-frame budget (so that a hand-over
/// pause and a full queue coincide): every message in order, then the server's close.
#[actix_rt::test]
async fn control_hand_over_and_a_full_queue_together_deliver_everything_then_the_close() {
    for options in [
        ConnectOptions::default().max_queue(255),
        ConnectOptions::default().max_queue(256),
        ConnectOptions::default().max_queue(257),
        ConnectOptions::default().max_queue(300),
        // Text messages "0" .. "7999" are 1 to 4 bytes: full after a few hundred.
        ConnectOptions::default().max_queue_bytes(700),
    ] {
        let (go, go_rx) = mpsc::channel();
        let peer = spawn_peer(Behaviour::CloseOnGo(BIG_BURST), Some(go_rx));
        let (_connection, mut frames) = connect(&peer, options.ping_interval(None)).await;
        go_soon(go);
        let (received, end) = drain(&mut frames, BIG_BURST).await;
        assert_eq!(received, BIG_BURST, "{end:?}");
        assert!(
            matches!(&end, Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))) if close.code.0 == 1000),
            "{end:?}"
        );
    }
}

/// The receiving task on another thread (its own tokio runtime), racing the connection's
/// driver for the queue's lock: every message in order, then the server's close.
#[actix_rt::test]
async fn control_a_receiver_on_another_thread_gets_every_message_then_the_close() {
    for _ in 0..5 {
        let (go, go_rx) = mpsc::channel();
        let peer = spawn_peer(Behaviour::CloseOnGo(BIG_BURST), Some(go_rx));
        let (_connection, frames) =
            connect(&peer, ConnectOptions::default().ping_interval(None)).await;
        let receiving = thread::spawn(move || {
            let mut frames = frames;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move { drain(&mut frames, BIG_BURST).await })
        });
        go_soon(go);
        let (received, end) = loop {
            if receiving.is_finished() {
                break receiving.join().unwrap();
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(received, BIG_BURST, "{end:?}");
        assert!(
            matches!(&end, Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))) if close.code.0 == 1000),
            "{end:?}"
        );
    }
}

/// Dropping `Frames` ends even the pause of the first bug (a hand-over to a receive that
/// timed out, begun after `close()`): the close handshake then completes at once.
#[actix_rt::test]
async fn control_dropping_frames_ends_a_hand_over_pause_during_the_close() {
    let peer = spawn_peer(Behaviour::CloseOnClientClose(IN_FLIGHT), None);
    let options = ConnectOptions::default().close_timeout(Duration::from_secs(3));
    let (connection, mut frames) = connect(&peer, options).await;
    receive_nothing(&mut frames, StopWaiting::ReceiveTimesOut).await;
    let started = Instant::now();
    let closing = actix_rt::spawn(async move { connection.close().await });
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    drop(frames);
    actix_rt::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close() resolves")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "close() took {:?} after Frames was dropped",
        started.elapsed()
    );
}
