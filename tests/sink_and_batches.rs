//! Sending many frames: the simple API's `Connection` as a `Sink` of frames (fed in the handle,
//! handed to the client in batches on flush), the actor client's `SendFrames`, and the blocking
//! API's `send_frames`, against real peers on 127.0.0.1.

mod support;

use std::{
    net::TcpListener,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc as std_mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use actix::Addr;
use futures_util::{stream, Sink, SinkExt};
use minch::{
    blocking, Client, ClientContext, Close, CloseCode, ConnectOptions, ConnectRequest,
    DisconnectReason, Frame, MinchHandler, ProtocolError, ReceiveError, Reply, Response, SendError,
    SendFrames,
};
use support::{
    accept_upgrade_blocking, silent_tcp_server, wait_until, ServerEvent, TestServer, WAIT,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// Keepalive off (nothing but the test's own frames on the wire) and a short close timeout
/// (the `/silent` route never answers a close).
fn quiet() -> ConnectOptions {
    ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_millis(500))
}

async fn open(url: String, options: ConnectOptions) -> (minch::Connection, minch::Frames) {
    actix_rt::time::timeout(WAIT, minch::connect(url, no_headers(), options))
        .await
        .expect("connect resolves in time")
        .expect("connects")
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn count_texts(events: &[ServerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ServerEvent::Text(_)))
        .count()
}

fn is_close(code: u16) -> impl Fn(&ServerEvent) -> bool {
    move |e| matches!(e, ServerEvent::Close { code: Some(c), .. } if *c == code)
}

/// Waits until the server recorded `n` text messages, then returns every text it recorded.
async fn texts_once(server: &TestServer, n: usize) -> Vec<String> {
    let arrived = server
        .wait_for(|events| count_texts(events) >= n, WAIT)
        .await;
    let texts = server.texts();
    assert!(
        arrived,
        "the server got {} of {n} text messages within {WAIT:?}",
        texts.len()
    );
    texts
}

/// Reads frames until the connection's end; returns the texts and the end.
async fn drain(frames: &mut minch::Frames, per_frame: Duration) -> (Vec<String>, ReceiveError) {
    let mut texts = Vec::new();
    for _ in 0..100_000 {
        match frames.receive_frame(per_frame).await {
            Ok(frame) => texts.push(frame.as_text().unwrap_or("<not text>").to_owned()),
            Err(end) => return (texts, end),
        }
    }
    panic!("more than 100 000 frames before the end");
}

fn assert_client_closed_1000(end: &ReceiveError) {
    match end {
        ReceiveError::Closed(DisconnectReason::ClientClosed(close))
            if close.code == CloseCode(1000) => {}
        other => panic!("expected the client's close 1000, got {other:?}"),
    }
}

/// A raw peer that upgrades and then never reads, holding the socket until `release` is sent
/// (or 30 s pass).
fn stalled_peer() -> (String, std_mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (release, released) = std_mpsc::channel::<()>();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        if accept_upgrade_blocking(&mut stream).is_none() {
            return;
        }
        let _ = released.recv_timeout(Duration::from_secs(30));
        drop(stream);
    });
    (url, release)
}

/// The largest value of a `/proc/sys/net/ipv4/tcp_[rw]mem` triple, or `fallback`.
fn kernel_buffer_max(file: &str, fallback: usize) -> usize {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(fallback)
}

// ---- 1. the Sink: feed many, flush once --------------------------------------------------------

/// 10 000 frames fed and one flush: the handle hands them over in batches (4 096 frames each)
/// and the flush resolves once every one was written; the server gets all of them, in order.
#[actix_rt::test]
async fn ten_thousand_fed_frames_and_one_flush_arrive_in_order() {
    const N: usize = 10_000;
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/silent"), quiet()).await;
    let expected = numbered("fed-", N);

    let fed = actix_rt::time::timeout(WAIT, async {
        for text in &expected {
            connection.feed(Frame::text(text.clone())).await?;
        }
        Ok::<_, SendError>(())
    })
    .await
    .expect("feeding 10 000 small frames does not wait (16 MiB buffer)");
    fed.expect("every feed is accepted");
    let flushed = actix_rt::time::timeout(WAIT, connection.flush())
        .await
        .expect("flush resolves in time");
    assert_eq!(flushed, Ok(()));

    let texts = texts_once(&server, N).await;
    assert_eq!(texts.len(), N, "no frame more than fed");
    assert!(texts == expected, "the frames arrived out of order");
    // A flush with nothing fed since is Ok at once.
    assert_eq!(
        actix_rt::time::timeout(Duration::from_secs(1), connection.flush())
            .await
            .expect("an empty flush does not wait"),
        Ok(())
    );
}

/// `SinkExt::send_all` of a stream of frames: every one arrives, in order, and `send_all`
/// resolves Ok (it flushes at the end).
#[actix_rt::test]
async fn send_all_of_a_stream_arrives_in_order() {
    const N: usize = 5_000;
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/silent"), quiet()).await;
    let expected = numbered("streamed-", N);

    let mut frames = stream::iter(
        expected
            .clone()
            .into_iter()
            .map(|text| Ok::<_, SendError>(Frame::text(text))),
    );
    let sent = actix_rt::time::timeout(WAIT, connection.send_all(&mut frames))
        .await
        .expect("send_all resolves in time");
    assert_eq!(sent, Ok(()));

    let texts = texts_once(&server, N).await;
    assert!(
        texts == expected,
        "the streamed frames arrived out of order"
    );
}

// ---- 2. back pressure ----------------------------------------------------------------------------

/// With a peer that accepts the upgrade and never reads, a producer feeding 64 KiB frames must
/// come to a stop: `poll_ready` waits while the handle holds `max_buffered_bytes` and the batch
/// before is not written. How far it gets is bounded by what can be in flight: the kernel's
/// send and receive buffers (at most `tcp_wmem` and `tcp_rmem` maxima), the client's outgoing
/// buffer (`max_buffered_bytes` plus the frame that crossed it), one batch handed over and one
/// being fed. And `flush` does not complete while the peer does not read; once the peer goes
/// away it reports that the frames were lost.
#[actix_rt::test]
async fn poll_ready_waits_while_a_peer_that_never_reads_leaves_no_room() {
    const MAX_BUFFERED: usize = 64 * 1024;
    const FRAME: usize = 64 * 1024;
    let (url, release) = stalled_peer();
    let options = quiet().max_buffered_bytes(MAX_BUFFERED);
    let (mut connection, _frames) = open(url, options).await;

    let kernel = kernel_buffer_max("/proc/sys/net/ipv4/tcp_wmem", 32 << 20)
        + kernel_buffer_max("/proc/sys/net/ipv4/tcp_rmem", 32 << 20);
    let bound = (kernel + MAX_BUFFERED + 4 * FRAME) / FRAME + 4;
    assert!(
        bound < 2_000,
        "kernel buffers of {kernel} bytes: bound {bound}"
    );

    let payload = bytes::Bytes::from(vec![0x5a_u8; FRAME]);
    let mut fed = 0usize;
    let mut stopped = false;
    let started = Instant::now();
    while fed <= bound {
        match actix_rt::time::timeout(
            Duration::from_millis(500),
            connection.feed(Frame::binary(payload.clone())),
        )
        .await
        {
            Ok(Ok(())) => fed += 1,
            Ok(Err(error)) => panic!("feed {fed} failed: {error:?}"),
            Err(_) => {
                stopped = true;
                break;
            }
        }
    }
    let result = if !stopped {
        Err(format!(
            "{fed} frames of 64 KiB ({} MiB) were fed to a peer that never reads without a \
             feed waiting 500 ms (bound {bound} frames, kernel buffers {kernel} bytes, {:?})",
            (fed * FRAME) >> 20,
            started.elapsed()
        ))
    } else if fed < 2 {
        Err(format!(
            "only {fed} frames were fed before the producer stopped: the socket buffers take more"
        ))
    } else {
        Ok(())
    };
    if let Err(message) = result {
        let _ = release.send(());
        panic!("{message}");
    }

    // The fed frames cannot be written either.
    let flush = actix_rt::time::timeout(Duration::from_secs(1), connection.flush()).await;
    if flush.is_ok() {
        let _ = release.send(());
        panic!("flush completed with a peer that never reads: {flush:?} ({fed} frames fed)");
    }

    // The peer goes away with data unread (a reset): the frames not written are reported lost.
    let _ = release.send(());
    let flushed = actix_rt::time::timeout(WAIT, connection.flush())
        .await
        .expect("the flush resolves once the peer is gone");
    assert_eq!(flushed, Err(SendError::ConnectionLost), "{fed} frames fed");
}

// ---- 3. errors once the connection is over -----------------------------------------------------

/// After `Connection::close().await`, `feed` and `send` fail with `Stopped` (from `poll_ready`).
/// A frame fed to another handle before the close went into the connection's write buffer, so it
/// reaches the server ahead of the close frame, and that handle's flush afterwards reports Ok.
/// A flush with nothing fed has nothing to report: Ok.
#[actix_rt::test]
async fn feed_send_and_flush_after_close_fail_with_stopped() {
    let server = TestServer::start();
    let (mut connection, mut frames) = open(server.url("/echo"), quiet()).await;
    let mut other = connection.clone();
    other
        .feed(Frame::text("fed before the close"))
        .await
        .expect("fed while open");

    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close resolves in time");
    assert!(
        server.wait_event(is_close(1000), WAIT).await.is_some(),
        "the server saw the close: {:?}",
        server.events()
    );
    let (_, end) = drain(&mut frames, Duration::from_secs(2)).await;
    assert_client_closed_1000(&end);

    assert_eq!(
        connection.feed(Frame::text("after close")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send(Frame::text("after close")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send_frame(Frame::text("after close")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        actix_rt::time::timeout(Duration::from_secs(2), connection.flush())
            .await
            .expect("an empty flush resolves"),
        Ok(()),
        "nothing was fed, so nothing failed"
    );
    assert_eq!(
        actix_rt::time::timeout(WAIT, other.flush())
            .await
            .expect("the flush resolves"),
        Ok(()),
        "a frame fed before the close was written ahead of it"
    );
    assert_eq!(server.texts(), vec!["fed before the close".to_owned()]);
    let events = server.events();
    let text_at = events
        .iter()
        .position(|e| matches!(e, ServerEvent::Text(t) if t == "fed before the close"));
    let close_at = events.iter().position(is_close(1000));
    assert!(
        matches!((text_at, close_at), (Some(t), Some(c)) if t < c),
        "the fed frame before the close: {events:?}"
    );
}

/// After `SinkExt::close`, the same handle's `feed`, `send`, `send_frame` and `send_frames`
/// fail with `Stopped`.
#[actix_rt::test]
async fn feed_and_send_after_sink_close_fail_with_stopped() {
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/echo"), quiet()).await;
    let closed = actix_rt::time::timeout(WAIT, SinkExt::close(&mut connection))
        .await
        .expect("close resolves in time");
    assert_eq!(closed, Ok(()));
    assert!(server.wait_event(is_close(1000), WAIT).await.is_some());

    assert_eq!(
        connection.feed(Frame::text("after close")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send(Frame::binary(vec![1u8, 2, 3])).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send_frame(Frame::text("after close")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection
            .send_frames(vec![Frame::text("after close")])
            .await,
        Err(SendError::Stopped)
    );
    assert_eq!(server.texts(), Vec::<String>::new());
}

/// Closing a sink that is already closed is Ok, as for other sinks (futures' channels,
/// tokio-util's `FramedWrite`): code that closes on every exit path must not have to remember
/// whether it already did.
#[actix_rt::test]
async fn a_second_sink_close_is_ok() {
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/echo"), quiet()).await;
    let first = actix_rt::time::timeout(WAIT, SinkExt::close(&mut connection))
        .await
        .expect("close resolves in time");
    assert_eq!(first, Ok(()));
    let second = actix_rt::time::timeout(WAIT, SinkExt::close(&mut connection))
        .await
        .expect("a second close resolves in time");
    assert_eq!(second, Ok(()));
    assert_eq!(
        server.events().iter().filter(|e| is_close(1000)(e)).count(),
        1,
        "one close handshake"
    );
}

/// The server closes (4000 "bye"): once `Frames` reports it, `feed`, `send` and `send_frame`
/// fail with `Stopped`. Frames fed before the server's close were handed to the connection at
/// once: they reach the server, and the flush (or `SinkExt::close`) afterwards reports Ok.
#[actix_rt::test]
async fn feed_send_and_flush_after_the_server_closed_fail_with_stopped() {
    let server = TestServer::start();
    let (mut connection, mut frames) = open(server.url("/echo"), quiet()).await;
    let mut other = connection.clone();
    other
        .feed(Frame::text("fed before the server closed"))
        .await
        .expect("fed while open");
    let mut third = connection.clone();
    third
        .feed(Frame::text("also fed before the server closed"))
        .await
        .expect("fed while open");

    assert_eq!(server.close_all(Some(4000), "bye"), 1);
    let (_, end) = drain(&mut frames, WAIT).await;
    match &end {
        ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))
            if close.code == CloseCode(4000) && close.reason == "bye" => {}
        other => panic!("expected the server's close 4000 \"bye\", got {other:?}"),
    }

    assert_eq!(
        connection.feed(Frame::text("after the end")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send(Frame::text("after the end")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        connection.send_frame(Frame::text("after the end")).await,
        Err(SendError::Stopped)
    );
    assert_eq!(
        actix_rt::time::timeout(WAIT, other.flush())
            .await
            .expect("the flush resolves"),
        Ok(())
    );
    assert_eq!(
        actix_rt::time::timeout(WAIT, SinkExt::close(&mut third))
            .await
            .expect("the close resolves"),
        Ok(())
    );
    let mut texts = server.texts();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "also fed before the server closed".to_owned(),
            "fed before the server closed".to_owned()
        ]
    );
}

// ---- 4. invalid frames ---------------------------------------------------------------------------

/// `start_send` checks the frame before queueing it: a 126-byte ping and a close with the
/// reserved code 1005 fail at once with `InvalidFrame`, nothing of them reaches the server, and
/// the connection (and the frames fed around them) carry on.
#[actix_rt::test]
async fn start_send_of_an_invalid_frame_fails_at_once_and_sends_nothing() {
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/silent"), quiet()).await;

    // Straight through the Sink trait: no waiting involved.
    let mut sink = Pin::new(&mut connection);
    assert_eq!(
        sink.as_mut().start_send(Frame::ping(vec![0u8; 126])),
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingControlFrameTooLong(126)
        ))
    );
    assert_eq!(
        sink.as_mut().start_send(Frame::close(1005, "")),
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingInvalidCloseCode(1005)
        ))
    );

    // Through feed, between valid frames.
    connection
        .feed(Frame::text("before"))
        .await
        .expect("valid frame fed");
    assert_eq!(
        connection.feed(Frame::ping(vec![0u8; 126])).await,
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingControlFrameTooLong(126)
        ))
    );
    assert_eq!(
        connection.feed(Frame::close(1005, "")).await,
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingInvalidCloseCode(1005)
        ))
    );
    connection
        .feed(Frame::text("after"))
        .await
        .expect("valid frame fed");
    assert_eq!(
        actix_rt::time::timeout(WAIT, connection.flush())
            .await
            .expect("flush resolves"),
        Ok(())
    );

    assert_eq!(texts_once(&server, 2).await, vec!["before", "after"]);
    // Give stray frames a moment to show up, then check none did.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let events = server.events();
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ServerEvent::Ping(_) | ServerEvent::Close { .. } | ServerEvent::Error { .. }
        )),
        "{events:?}"
    );
    assert_eq!(server.live_connections(), 1, "the connection is still open");
    assert_eq!(
        connection.send_frame(Frame::text("still open")).await,
        Ok(())
    );
}

// ---- 5. dropping a handle ------------------------------------------------------------------------

/// Frames fed and not flushed when the last `Connection` is dropped still go out, before the
/// close with code 1000 that the drop starts.
#[actix_rt::test]
async fn a_dropped_connection_sends_its_fed_frames_then_closes_with_1000() {
    const N: usize = 100;
    let server = TestServer::start();
    let (mut connection, mut frames) = open(server.url("/echo"), quiet()).await;
    let expected = numbered("dropped-", N);
    for text in &expected {
        connection
            .feed(Frame::text(text.clone()))
            .await
            .expect("fed");
    }
    drop(connection);

    assert!(
        server.wait_event(is_close(1000), WAIT).await.is_some(),
        "no close 1000 after the drop: {:?}",
        server.events()
    );
    let events = server.events();
    let close_at = events.iter().position(is_close(1000)).unwrap();
    let before: Vec<String> = events[..close_at]
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert!(
        before == expected,
        "the fed frames ({N}) come before the close; before it the server got {} texts",
        before.len()
    );
    assert_eq!(count_texts(&events), N, "nothing after the close");

    let (echoes, end) = drain(&mut frames, Duration::from_secs(5)).await;
    assert!(echoes == expected, "{} echoes", echoes.len());
    assert_client_closed_1000(&end);
}

/// Dropping one clone sends the frames fed to it, but the connection stays open for the other
/// clones; dropping the last one closes it.
#[actix_rt::test]
async fn a_dropped_clone_sends_its_fed_frames_and_leaves_the_connection_open() {
    let server = TestServer::start();
    let (connection, _frames) = open(server.url("/silent"), quiet()).await;
    let mut clone = connection.clone();
    clone.feed(Frame::text("a")).await.expect("fed");
    clone.feed(Frame::text("b")).await.expect("fed");
    drop(clone);

    assert_eq!(texts_once(&server, 2).await, vec!["a", "b"]);
    assert_eq!(connection.send_frame(Frame::text("c")).await, Ok(()));
    assert_eq!(texts_once(&server, 3).await, vec!["a", "b", "c"]);
    assert!(
        !server
            .events()
            .iter()
            .any(|e| matches!(e, ServerEvent::Close { .. })),
        "a clone's drop does not close: {:?}",
        server.events()
    );

    drop(connection);
    assert!(
        server.wait_event(is_close(1000), WAIT).await.is_some(),
        "dropping the last clone closes with 1000: {:?}",
        server.events()
    );
}

// ---- 6. fed frames go before later sends --------------------------------------------------------

/// `feed(a)`, `feed(b)`, then `send_frame(c)`: the fed frames are handed over first, so the
/// server sees a, b, c; a flush afterwards reports that a and b were written.
#[actix_rt::test]
async fn fed_frames_go_before_a_later_send_frame_and_flush_reports_them() {
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/silent"), quiet()).await;
    connection.feed(Frame::text("a")).await.expect("fed");
    connection.feed(Frame::text("b")).await.expect("fed");
    assert_eq!(
        actix_rt::time::timeout(WAIT, connection.send_frame(Frame::text("c")))
            .await
            .expect("send_frame resolves"),
        Ok(())
    );
    assert_eq!(
        actix_rt::time::timeout(WAIT, connection.flush())
            .await
            .expect("flush resolves"),
        Ok(())
    );
    assert_eq!(texts_once(&server, 3).await, vec!["a", "b", "c"]);
}

/// The same order with the other ways of sending: `send_frames`, `try_send_frame`, and `close`
/// (whose close frame goes after the fed frames).
#[actix_rt::test]
async fn fed_frames_go_before_send_frames_try_send_frame_and_close() {
    let server = TestServer::start();
    let (mut connection, _frames) = open(server.url("/echo"), quiet()).await;
    connection.feed(Frame::text("1")).await.expect("fed");
    assert_eq!(
        connection
            .send_frames(vec![Frame::text("2"), Frame::text("3")])
            .await,
        Ok(())
    );
    connection.feed(Frame::text("4")).await.expect("fed");
    assert_eq!(connection.try_send_frame(Frame::text("5")).await, Ok(()));
    connection.feed(Frame::text("6")).await.expect("fed");
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close resolves");
    assert!(server.wait_event(is_close(1000), WAIT).await.is_some());

    let events = server.events();
    let close_at = events.iter().position(is_close(1000)).unwrap();
    let before: Vec<String> = events[..close_at]
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(before, vec!["1", "2", "3", "4", "5", "6"], "{events:?}");
    // The fed frames were all written before the close: nothing left to fail.
    assert_eq!(
        actix_rt::time::timeout(WAIT, connection.flush())
            .await
            .expect("flush resolves"),
        Ok(())
    );
}

// ---- 7. SendFrames through the actor client -----------------------------------------------------

/// A minimal handler: connects to `url`, tells the test when it is connected, ignores frames.
struct Batcher {
    request: ConnectRequest,
    connected: UnboundedSender<()>,
}

impl Batcher {
    fn start(request: impl Into<ConnectRequest>) -> (Addr<Client<Batcher>>, UnboundedReceiver<()>) {
        let (connected, on_connect) = unbounded_channel();
        let addr = Client::start(Batcher {
            request: request.into(),
            connected,
        });
        (addr, on_connect)
    }
}

impl MinchHandler for Batcher {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.request.clone()
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        let _ = self.connected.send(());
        Reply::Continue
    }

    fn handle_frame(&mut self, _frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }
}

async fn send_frames(addr: &Addr<Client<Batcher>>, frames: Vec<Frame>) -> Result<(), SendError> {
    actix_rt::time::timeout(WAIT, addr.send(SendFrames(frames)))
        .await
        .expect("SendFrames resolves in time")
        .unwrap_or(Err(SendError::Stopped))
}

#[actix_rt::test]
async fn send_frames_through_the_actor_client() {
    let server = TestServer::start();
    let (addr, mut connected) = Batcher::start((server.url("/silent"), no_headers(), quiet()));
    actix_rt::time::timeout(WAIT, connected.recv())
        .await
        .expect("connects in time")
        .expect("handle_connect ran");

    // A batch arrives whole and in order.
    let batch = numbered("batch-", 1_000);
    assert_eq!(
        send_frames(&addr, batch.iter().cloned().map(Frame::text).collect()).await,
        Ok(())
    );
    assert!(
        texts_once(&server, 1_000).await == batch,
        "the batch arrived out of order"
    );

    // One invalid frame anywhere: nothing of the batch is sent.
    assert_eq!(
        send_frames(
            &addr,
            vec![
                Frame::text("valid before"),
                Frame::ping(vec![0u8; 126]),
                Frame::text("valid after"),
            ]
        )
        .await,
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingControlFrameTooLong(126)
        ))
    );
    assert_eq!(
        send_frames(&addr, vec![Frame::text("ok"), Frame::close(1005, "")]).await,
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingInvalidCloseCode(1005)
        ))
    );
    // An empty batch: Ok at once.
    assert_eq!(send_frames(&addr, Vec::new()).await, Ok(()));
    // A marker: once it arrives, whatever the refused batches sent would have arrived too.
    assert_eq!(
        send_frames(&addr, vec![Frame::text("marker")]).await,
        Ok(())
    );
    let texts = texts_once(&server, 1_001).await;
    assert_eq!(texts.len(), 1_001, "{:?}", &texts[1_000..]);
    assert_eq!(texts[1_000], "marker");
    assert!(
        !server
            .events()
            .iter()
            .any(|e| matches!(e, ServerEvent::Ping(_) | ServerEvent::Close { .. })),
        "a refused batch sent a control frame"
    );

    // After the client stopped: Stopped.
    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves")
        .expect("mailbox open");
    assert_eq!(
        send_frames(&addr, vec![Frame::text("after close")]).await,
        Err(SendError::Stopped)
    );
}

/// While the client is still connecting (the server never answers the upgrade), a batch is
/// refused with `NotConnected`; an invalid batch is still `InvalidFrame` (checked first), and an
/// empty one Ok.
#[actix_rt::test]
async fn send_frames_while_connecting_is_not_connected() {
    let silent = silent_tcp_server();
    let (addr, _connected) = Batcher::start((
        silent.url("/"),
        no_headers(),
        quiet().upgrade_timeout(Duration::from_secs(30)),
    ));
    assert!(
        wait_until(WAIT, || silent.accepted() == 1).await,
        "the client reached the server"
    );
    assert_eq!(
        send_frames(&addr, vec![Frame::text("a"), Frame::text("b")]).await,
        Err(SendError::NotConnected)
    );
    assert_eq!(
        send_frames(&addr, vec![Frame::text("a"), Frame::ping(vec![0u8; 126])]).await,
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingControlFrameTooLong(126)
        ))
    );
    assert_eq!(send_frames(&addr, Vec::new()).await, Ok(()));
    assert!(
        silent.received(0).len() < 4096,
        "only the upgrade request was written"
    );
    let _ = actix_rt::time::timeout(WAIT, addr.send(Close)).await;
}

// ---- 8. the blocking API ---------------------------------------------------------------------------

/// `blocking::Connection::send_frames` of 1 000 frames: they arrive in order, and the call
/// returns once all were written.
#[test]
fn blocking_send_frames_arrive_in_order() {
    const N: usize = 1_000;
    let server = TestServer::start();
    let (connection, _frames) =
        blocking::connect(server.url("/echo"), no_headers(), quiet()).expect("connects");
    let expected = numbered("blocking-", N);
    assert_eq!(
        connection.send_frames(expected.iter().cloned().map(Frame::text).collect()),
        Ok(())
    );
    assert!(
        server.wait_for_blocking(|events| count_texts(events) >= N, WAIT),
        "{} of {N} arrived",
        server.texts().len()
    );
    assert!(server.texts() == expected, "out of order");
    assert_eq!(
        connection.send_frames(vec![Frame::text("x"), Frame::pong(vec![0u8; 200])]),
        Err(SendError::InvalidFrame(
            ProtocolError::OutgoingControlFrameTooLong(200)
        ))
    );
    connection.close();
    assert!(server.wait_event_blocking(is_close(1000), WAIT).is_some());
    assert_eq!(server.texts().len(), N, "the invalid batch sent nothing");
}

/// A blocking connection to a stalled peer, with one thread stuck in `send_frame` because the
/// socket and the outgoing buffer are full (the pattern of simple_and_blocking_edges.rs).
fn blocking_connection_with_a_stuck_sender() -> (
    blocking::Connection,
    blocking::Frames,
    std_mpsc::Sender<()>,
    thread::JoinHandle<()>,
) {
    let (url, release) = stalled_peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_buffered_bytes(1)
        .close_timeout(Duration::from_millis(300));
    let (connection, frames) = blocking::connect(url, no_headers(), options).expect("connects");

    let sent = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let sender = {
        let connection = connection.clone();
        let (sent, finished) = (sent.clone(), finished.clone());
        thread::spawn(move || {
            for _ in 0..64 {
                if connection
                    .send_frame(Frame::binary(vec![7u8; 1 << 20]))
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            finished.store(true, Ordering::SeqCst);
        })
    };
    // Stuck = no progress for 500 ms (loopback socket buffers hold a few MiB at most).
    let mut last = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = sent.load(Ordering::SeqCst);
        if finished.load(Ordering::SeqCst) {
            let _ = release.send(());
            panic!("setup: 64 MiB went to a peer that never reads");
        }
        if now == last {
            break;
        }
        last = now;
        if Instant::now() >= deadline {
            let _ = release.send(());
            panic!("setup: the sender never got stuck");
        }
    }
    (connection, frames, release, sender)
}

/// `stats()` from another thread answers within milliseconds while a `send_frame` waits for a
/// peer that stopped reading, and tells the truth: connected, at least the first MiB written.
#[test]
fn blocking_stats_answers_at_once_while_another_thread_waits_in_send_frame() {
    let (connection, _frames, release, sender) = blocking_connection_with_a_stuck_sender();

    let mut took = Vec::new();
    let mut stats = Vec::new();
    for _ in 0..5 {
        let (done_tx, done) = std_mpsc::channel();
        let connection = connection.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let answer = connection.stats();
            let _ = done_tx.send((answer, started.elapsed()));
        });
        match done.recv_timeout(Duration::from_secs(2)) {
            Ok((answer, elapsed)) => {
                stats.push(answer);
                took.push(elapsed);
            }
            Err(_) => {
                let _ = release.send(());
                let _ = sender.join();
                panic!("stats() did not return within 2 s: it waits behind another thread's send_frame");
            }
        }
    }
    let _ = release.send(());
    let _ = sender.join();

    took.sort();
    assert!(
        took[2] < Duration::from_millis(50) && took[4] < Duration::from_millis(500),
        "stats() took {took:?} (median over 50 ms or one over 500 ms)"
    );
    let last = stats.last().unwrap();
    assert!(last.connected, "{last:?}");
    assert!(last.bytes_out >= 1 << 20, "{last:?}");
}

// ---- 9. SinkExt::close ---------------------------------------------------------------------------

/// `SinkExt::close` flushes the fed frames, then closes with 1000 and waits for the handshake:
/// when it returns Ok, the server has every frame before the close, and `Frames` holds every
/// echo and then the end.
#[actix_rt::test]
async fn sink_close_flushes_then_closes_with_1000() {
    const N: usize = 100;
    let server = TestServer::start();
    let (mut connection, mut frames) = open(server.url("/echo"), quiet()).await;
    let expected = numbered("closing-", N);
    for text in &expected {
        connection
            .feed(Frame::text(text.clone()))
            .await
            .expect("fed");
    }
    let closed = actix_rt::time::timeout(WAIT, SinkExt::close(&mut connection))
        .await
        .expect("SinkExt::close resolves in time");
    assert_eq!(closed, Ok(()));

    // The handshake is over: the echoes and the end are already there.
    let (echoes, end) = drain(&mut frames, Duration::from_millis(200)).await;
    assert!(echoes == expected, "{} echoes before the end", echoes.len());
    assert_client_closed_1000(&end);

    assert!(server.wait_event(is_close(1000), WAIT).await.is_some());
    let events = server.events();
    let close_at = events.iter().position(is_close(1000)).unwrap();
    assert_eq!(
        count_texts(&events[..close_at]),
        N,
        "every frame before the close"
    );
    assert_eq!(count_texts(&events), N, "none after it");
}
