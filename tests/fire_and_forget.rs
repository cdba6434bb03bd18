//! Sending without waiting for the answer (`addr.do_send(SendFrame(..))`): nothing fails
//! silently. A frame refused on the spot (not connected, an invalid frame, a full buffer) goes
//! to `handle_error`, since no sender waits to hear; one awaited with `addr.send` goes to its
//! sender only. A frame accepted and then lost with its connection counts in
//! `Stats::frames_unsent`.
//!
//! Servers: the in-process test server, and a raw `std::net` peer that never reads (127.0.0.1
//! only). Every wait is bounded.

mod common;
mod support;

use std::{
    io::Read as _,
    net::{Shutdown, TcpListener},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{closed_port, Event, Policy, Recorder, WAIT};
use minch::{
    Client, ConnectOptions, ConnectRequest, Error, Frame, GetStats, SendError, SendFrame,
    SendFrames, TrySendFrame,
};
use support::{accept_upgrade_blocking, TestServer};

fn is_send_error(event: &Event, expected: fn(&SendError) -> bool) -> bool {
    matches!(event, Event::Error(Error::Send(error)) if expected(error))
}

#[actix_rt::test]
async fn a_do_send_refused_while_not_connected_reaches_handle_error() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let (handler, mut events) = Recorder::new(url);
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;

    addr.do_send(SendFrame(Frame::text("into the void")));
    events
        .wait_for("handle_error with NotConnected", WAIT, |event| {
            is_send_error(event, |error| matches!(error, SendError::NotConnected))
        })
        .await;
    addr.do_send(SendFrames(vec![Frame::text("a"), Frame::text("b")]));
    events
        .wait_for(
            "handle_error with NotConnected for the batch",
            WAIT,
            |event| is_send_error(event, |error| matches!(error, SendError::NotConnected)),
        )
        .await;
}

#[actix_rt::test]
async fn a_do_send_of_an_invalid_frame_reaches_handle_error_and_the_connection_stays() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let addr = Client::start(handler);
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;

    // A ping's payload is at most 125 bytes (RFC 6455 §5.5).
    addr.do_send(SendFrame(Frame::Ping(Bytes::from(vec![0u8; 200]))));
    events
        .wait_for("handle_error with InvalidFrame", WAIT, |event| {
            is_send_error(event, |error| matches!(error, SendError::InvalidFrame(_)))
        })
        .await;
    addr.do_send(SendFrame(Frame::text("still here")));
    events
        .wait_for("the echo", WAIT, |event| event.is_text("still here"))
        .await;
}

#[actix_rt::test]
async fn an_awaited_send_is_answered_to_its_sender_not_to_handle_error() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let (handler, mut events) = Recorder::new(url);
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;

    let answer = addr.send(SendFrame(Frame::text("x"))).await.unwrap();
    assert!(matches!(answer, Err(SendError::NotConnected)), "{answer:?}");
    let answer = addr.send(TrySendFrame(Frame::text("x"))).await.unwrap();
    assert!(matches!(answer, Err(SendError::NotConnected)), "{answer:?}");
    events
        .assert_none(
            "handle_error for an awaited send",
            Duration::from_millis(300),
            |event| matches!(event, Event::Error(_)),
        )
        .await;
}

/// Accepts one connection, upgrades it and never reads; drops it (RST, since unread data
/// waits) when told to.
fn deaf_peer(drop_now: mpsc::Receiver<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        if accept_upgrade_blocking(&mut stream).is_none() {
            return;
        }
        let _ = drop_now.recv_timeout(Duration::from_secs(30));
        // Reading a little first would not help the client: its frames stay unread.
        let _ = stream.set_nonblocking(true);
        let _ = stream.read(&mut [0u8; 1]);
        let _ = stream.shutdown(Shutdown::Both);
    });
    url
}

/// Frames sent with `do_send` to a server that never reads: the socket buffers fill, later
/// frames are held back, and the server then drops the connection. The frames never written
/// are counted in `frames_unsent`; together with those written they are all the frames sent.
#[actix_rt::test]
async fn frames_lost_with_the_connection_are_counted_in_the_stats() {
    let (drop_now, drop_rx) = mpsc::channel();
    let url = deaf_peer(drop_rx);
    let request = ConnectRequest::from((
        url,
        Vec::<(String, String)>::new(),
        ConnectOptions::default()
            .ping_interval(None)
            .max_buffered_bytes(64 * 1024),
    ));
    let (handler, mut events) = Recorder::new(request);
    // Waiting to reconnect, the client still answers GetStats.
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;

    const FRAMES: u64 = 400;
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..FRAMES {
        addr.do_send(SendFrame(Frame::Binary(payload.clone())));
    }
    // Until the socket takes no more: what stays is held back.
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = addr.send(GetStats).await.unwrap();
        if stats.frames_out > 0 && stats.frames_out < FRAMES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the frames never backed up: {stats:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let before = addr.send(GetStats).await.unwrap();
    assert_eq!(before.frames_unsent, 0, "nothing is lost while connected");

    drop_now.send(()).unwrap();
    events
        .wait_for("the end of the connection", WAIT, Event::is_disconnect)
        .await;
    let after = addr.send(GetStats).await.unwrap();
    let held_back = FRAMES - before.frames_out;
    assert!(
        after.frames_unsent >= held_back && after.frames_unsent <= FRAMES,
        "{held_back} frames were held back and never written, so at least that many (and at \
         most all {FRAMES}) are unsent: {after:?}"
    );
    // Lost later, they have no sender to tell, and handle_error is for refusals on the spot.
    events
        .assert_none(
            "handle_error for a frame lost later",
            Duration::from_millis(100),
            |event| matches!(event, Event::Error(Error::Send(_))),
        )
        .await;
}

/// A session whose every frame was written counts none unsent.
#[actix_rt::test]
async fn a_clean_session_counts_no_frame_unsent() {
    let server = TestServer::start();
    let (handler, mut events) = Recorder::new(server.url("/echo"));
    let handler = handler.policy(Policy::Reconnect(Duration::from_secs(60)));
    let addr = Client::start(handler);
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    for n in 0..100 {
        addr.do_send(SendFrame(Frame::text(n.to_string())));
    }
    events
        .wait_for("the last echo", WAIT, |event| event.is_text("99"))
        .await;
    server.close_all(Some(1000), "bye");
    events
        .wait_for("the server's close", WAIT, Event::is_disconnect)
        .await;
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(stats.frames_unsent, 0, "{stats:?}");
    assert!(stats.frames_out >= 100, "{stats:?}");
}
