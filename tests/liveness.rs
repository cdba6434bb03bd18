//! Liveness and flow control: keepalive against a black-holed peer, the upgrade timeout, a
//! server that stops reading, delivery results across forced disconnects, and stats.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use minch::{
    Client, ClientContext, ConnectOptions, ConnectRequest, DisconnectReason, Error, Frame,
    GetStats, MinchHandler, Reconnect, Reply, Response, SendError, SendFrame, Timeout,
    TrySendFrame,
};
use support::{silent_tcp_server, Proxy, TestServer};
use tokio::sync::mpsc;

#[derive(Debug)]
enum Event {
    Connected,
    Frame(Frame),
    Disconnected(DisconnectReason),
}

/// Forwards what happens to the test; reconnects after 50 ms.
struct Probe {
    url: String,
    options: ConnectOptions,
    events: mpsc::UnboundedSender<Event>,
}

impl MinchHandler for Probe {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        (
            self.url.clone(),
            Vec::<(String, String)>::new(),
            self.options.clone(),
        )
            .into()
    }

    fn handle_connect(&mut self, _: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.events.send(Event::Connected);
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.events.send(Event::Frame(frame));
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = self.events.send(Event::Disconnected(reason.clone()));
        Reconnect::After(Duration::from_millis(50))
    }
}

fn start_probe(
    url: String,
    options: ConnectOptions,
) -> (actix::Addr<Client<Probe>>, mpsc::UnboundedReceiver<Event>) {
    let (events, received) = mpsc::unbounded_channel();
    let addr = Client::start(Probe {
        url,
        options,
        events,
    });
    (addr, received)
}

/// The next event for which `pick` returns something, within `timeout`.
async fn next_matching<T>(
    events: &mut mpsc::UnboundedReceiver<Event>,
    timeout: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match actix_rt::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(event) {
                    return Some(found);
                }
            }
            _ => return None,
        }
    }
}

async fn connected(events: &mut mpsc::UnboundedReceiver<Event>) {
    next_matching(events, Duration::from_secs(10), |event| {
        matches!(event, Event::Connected).then_some(())
    })
    .await
    .expect("the client did not connect");
}

#[actix_rt::test]
async fn a_black_holed_peer_is_noticed_by_the_pong_timeout_and_the_client_reconnects() {
    let server = TestServer::start();
    let proxy = Proxy::start(server.port());
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(500));
    let (_client, mut events) = start_probe(proxy.url("/echo"), options);
    connected(&mut events).await;

    // Healthy: several keepalive rounds pass without a disconnect.
    let early = next_matching(
        &mut events,
        Duration::from_millis(900),
        |event| match event {
            Event::Disconnected(reason) => Some(reason),
            _ => None,
        },
    )
    .await;
    assert!(early.is_none(), "disconnected while healthy: {early:?}");

    proxy.blackhole();
    let cut_at = Instant::now();
    let reason = next_matching(&mut events, Duration::from_secs(5), |event| match event {
        Event::Disconnected(reason) => Some(reason),
        _ => None,
    })
    .await
    .expect("the dead peer was not noticed");
    let noticed_after = cut_at.elapsed();
    assert!(
        matches!(reason.error(), Some(Error::Timeout(Timeout::Pong))),
        "unexpected reason: {reason}"
    );
    // At most one ping interval until the next ping, then the pong timeout, plus slack.
    assert!(
        noticed_after < Duration::from_millis(200 + 500 + 1500),
        "took {noticed_after:?}"
    );

    proxy.pass();
    connected(&mut events).await;
}

#[actix_rt::test]
async fn keepalive_pongs_are_measured_and_not_shown_to_handle_frame() {
    let server = TestServer::start();
    let options = ConnectOptions::default().ping_interval(Some(Duration::from_millis(50)));
    let (client, mut events) = start_probe(server.url("/echo"), options);
    connected(&mut events).await;

    client
        .send(SendFrame(Frame::text("one")))
        .await
        .unwrap()
        .unwrap();
    let echo = next_matching(&mut events, Duration::from_secs(5), |event| match event {
        Event::Frame(frame) => Some(frame),
        _ => None,
    })
    .await;
    assert_eq!(echo, Some(Frame::text("one")));

    let mut stats = client.send(GetStats).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.last_ping_rtt.is_none() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        stats = client.send(GetStats).await.unwrap();
    }
    assert!(stats.connected);
    assert!(stats.connected_since.is_some());
    assert_eq!(stats.attempt, 0);
    assert_eq!(stats.reconnects, 0);
    let rtt = stats
        .last_ping_rtt
        .expect("no keepalive round trip measured");
    assert!(rtt < Duration::from_secs(1), "rtt {rtt:?}");
    assert!(stats.frames_out >= 2, "text + at least one ping: {stats:?}");
    assert!(stats.bytes_out >= 3);
    assert!(stats.frames_in >= 2, "echo + at least one pong: {stats:?}");

    // Only the echo reached handle_frame: keepalive pongs stay inside the client.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, Event::Frame(_)),
            "unexpected frame: {event:?}"
        );
    }
}

#[actix_rt::test]
async fn a_server_that_never_answers_the_upgrade_times_out() {
    let silent = silent_tcp_server();
    let started = Instant::now();
    let result = minch::connect(
        silent.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default()
            .connect_timeout(Duration::from_millis(500))
            .upgrade_timeout(Duration::from_millis(300)),
    )
    .await;
    let error = result.expect_err("the upgrade cannot succeed");
    assert_eq!(error.timeout(), Some(Timeout::Upgrade), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(silent.accepted() >= 1);
}

#[actix_rt::test]
async fn a_server_that_stops_reading_holds_senders_back_with_bounded_buffering() {
    const FRAME: usize = 64 * 1024;
    const LIMIT: usize = 512 * 1024;
    let server = TestServer::start();
    let proxy = Proxy::start(server.port());
    let options = ConnectOptions::default().max_buffered_bytes(LIMIT);
    let (client, mut events) = start_probe(proxy.url("/echo"), options);
    connected(&mut events).await;

    proxy.pause();
    // Sixteen senders that each await every send, as well-behaved producers do.
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let mut producers = Vec::new();
    for producer in 0..16u32 {
        let sender = client.clone();
        let progress_tx = progress_tx.clone();
        producers.push(actix_rt::spawn(async move {
            for n in 0..125u32 {
                let mut data = vec![0u8; FRAME];
                data[..4].copy_from_slice(&(producer * 1000 + n).to_be_bytes());
                let result = sender.send(SendFrame(Frame::binary(data))).await.unwrap();
                let _ = progress_tx.send(result);
            }
        }));
    }

    // Sends complete until the kernel buffers and our buffer are full, then stop.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let mut written = 0;
    while let Ok(result) = progress.try_recv() {
        result.expect("no send may fail while the connection is up");
        written += 1;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let mut later = 0;
    while progress.try_recv().is_ok() {
        later += 1;
    }
    assert_eq!(
        later, 0,
        "sends kept completing while the server was not reading"
    );
    // Our buffer (LIMIT) plus what the kernel and the paused proxy hold (a few MiB on
    // loopback): nowhere near the 2000 frames (125 MiB) offered.
    assert!(written > 0);
    assert!(
        written * FRAME < LIMIT + 24 * 1024 * 1024,
        "{written} frames of 64 KiB were accepted"
    );
    // try_send does not wait: it says the buffer is full.
    let full = client
        .send(TrySendFrame(Frame::binary(vec![1u8; 16])))
        .await
        .unwrap();
    assert_eq!(full, Err(SendError::BufferFull));

    // The server reads again: every held-back frame is written and echoed, each producer's
    // frames in the order it sent them.
    proxy.pass();
    let mut next_of: HashMap<u32, u32> = HashMap::new();
    let mut echoed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while echoed < 2000 && Instant::now() < deadline {
        if let Some(Event::Frame(Frame::Binary(data))) = actix_rt::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.recv(),
        )
        .await
        .ok()
        .flatten()
        {
            let id = u32::from_be_bytes(data[..4].try_into().unwrap());
            let expected = next_of.entry(id / 1000).or_insert(0);
            assert_eq!(id % 1000, *expected, "producer {} out of order", id / 1000);
            *expected += 1;
            echoed += 1;
        }
    }
    assert_eq!(echoed, 2000);
    for producer in producers {
        producer.await.unwrap();
    }
    while let Ok(result) = progress.try_recv() {
        result.expect("no send may fail while the connection is up");
    }
}

/// 100 forced disconnects (TCP resets) while a sender streams numbered frames through an echo
/// server. A frame is never duplicated; a frame whose send failed never arrives; every frame
/// whose send succeeded arrives, except the one in flight when a reset cut the connection —
/// its bytes were handed to the socket, which is all a client can know without an
/// application-level acknowledgement.
#[actix_rt::test]
async fn no_frame_vanishes_or_repeats_across_forced_disconnects() {
    let server = TestServer::start();
    let proxy = Proxy::start(server.port());
    let options = ConnectOptions::default().ping_interval(None);
    let (client, mut events) = start_probe(proxy.url("/echo"), options);
    connected(&mut events).await;

    let mut results: HashMap<u32, Result<(), SendError>> = HashMap::new();
    let mut echoed: Vec<u32> = Vec::new();
    let mut resets = 0;
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while resets < 100 && Instant::now() < deadline {
        // Send the next frame and wait for its echo, or for the connection to drop.
        let result = client
            .send(SendFrame(Frame::text(next.to_string())))
            .await
            .unwrap();
        let sent_ok = result.is_ok();
        results.insert(next, result);
        if sent_ok {
            let outcome = next_matching(&mut events, Duration::from_secs(5), |event| match event {
                Event::Frame(Frame::Text(text)) => Some(Some(text.parse::<u32>().unwrap())),
                Event::Disconnected(_) => Some(None),
                _ => None,
            })
            .await;
            if let Some(Some(number)) = outcome {
                echoed.push(number);
            }
        }
        next += 1;
        // Every third frame, cut the connection just after sending the next one.
        if next.is_multiple_of(3) {
            let result = client
                .send(SendFrame(Frame::text(next.to_string())))
                .await
                .unwrap();
            results.insert(next, result);
            next += 1;
            proxy.reset_all();
            resets += 1;
            // Wait for the client to notice and come back.
            let mut echo_before_drop = None;
            next_matching(&mut events, Duration::from_secs(10), |event| match event {
                Event::Frame(Frame::Text(text)) => {
                    echo_before_drop = Some(text.parse::<u32>().unwrap());
                    None
                }
                Event::Connected => Some(()),
                _ => None,
            })
            .await
            .expect("no reconnect after a reset");
            echoed.extend(echo_before_drop);
        }
    }
    assert_eq!(resets, 100, "ran out of time after {resets} resets");

    let unique: HashSet<u32> = echoed.iter().copied().collect();
    assert_eq!(unique.len(), echoed.len(), "a frame was echoed twice");
    for number in &echoed {
        assert_eq!(
            results.get(number),
            Some(&Ok(())),
            "frame {number} arrived although its send did not succeed"
        );
    }
    let lost: Vec<u32> = results
        .iter()
        .filter(|(number, result)| result.is_ok() && !unique.contains(number))
        .map(|(number, _)| *number)
        .collect();
    // Only a frame sent right before a reset may be lost: at most one per reset.
    assert!(lost.len() <= resets, "lost {} frames: {lost:?}", lost.len());
    let failed = results.values().filter(|result| result.is_err()).count();
    for result in results.values().filter_map(|result| result.clone().err()) {
        assert!(
            matches!(result, SendError::NotConnected | SendError::ConnectionLost),
            "unexpected send error {result:?}"
        );
    }
    println!(
        "sent {}, echoed {}, failed with an error {failed}, lost in a reset {}",
        results.len(),
        echoed.len(),
        lost.len()
    );
}

#[cfg(feature = "tls")]
#[actix_rt::test]
async fn a_tls_handshake_that_never_completes_times_out_as_tls() {
    // The TCP connection opens, but nobody ever answers the ClientHello.
    let silent = silent_tcp_server();
    let url = format!("wss://127.0.0.1:{}/", silent.port());
    let started = Instant::now();
    let error = minch::connect(
        url,
        Vec::<(String, String)>::new(),
        ConnectOptions::default()
            .connect_timeout(Duration::from_secs(2))
            .tls_timeout(Duration::from_millis(300)),
    )
    .await
    .expect_err("the TLS handshake cannot succeed");
    assert_eq!(error.timeout(), Some(Timeout::Tls), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[actix_rt::test]
async fn a_tcp_connect_that_never_completes_times_out_as_connect() {
    // A listener whose accept queue is full: Linux drops further SYNs, so connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }
    assert!(queued.len() < 16, "the accept queue never filled up");

    let started = Instant::now();
    let error = minch::connect(
        format!("ws://{address}/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default().connect_timeout(Duration::from_millis(300)),
    )
    .await
    .expect_err("the TCP connection cannot open");
    assert_eq!(error.timeout(), Some(Timeout::Connect), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}
