//! `ConnectOptions` outside their documented ranges are configuration errors, reported before
//! any I/O by both the simple API and the actor client: never a hang, a hot loop or a retry loop.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{Defaults, Event, Policy, Recorder, WAIT};
use minch::{Client, ConnectOptions, ConnectRequest, DisconnectReason, Error, Frame, StopReason};
use support::{silent_tcp_server, wait_until, TestServer};

/// How long an options error may take: it is reported before any I/O, so this is generous.
const PROMPT: Duration = Duration::from_secs(2);

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// `minch::connect` with `options`, bounded by [`WAIT`]; also returns how long it took.
async fn connect_with(
    url: String,
    options: ConnectOptions,
) -> (Result<(minch::Connection, minch::Frames), Error>, Duration) {
    let started = Instant::now();
    let result = actix_rt::time::timeout(WAIT, minch::connect(url, no_headers(), options))
        .await
        .expect("connect resolves in time");
    (result, started.elapsed())
}

#[actix_rt::test]
async fn zero_max_buffered_bytes_is_an_invalid_options_error_from_connect() {
    // A server that would accept the TCP connection and never answer: had the options not
    // been checked first, connect would wait for the upgrade timeout.
    let silent = silent_tcp_server();
    let options = ConnectOptions::default().max_buffered_bytes(0);
    let (result, elapsed) = connect_with(silent.url("/echo"), options).await;
    let error = match result {
        Err(error @ Error::InvalidOptions(_)) => error,
        other => panic!("expected Error::InvalidOptions, got {:?}", other.err()),
    };
    assert!(error.is_config());
    let shown = error.to_string();
    assert!(
        shown.contains("max_buffered_bytes must be at least 1 (got 0)"),
        "{shown}"
    );
    assert!(
        elapsed < PROMPT,
        "an options error took {elapsed:?} to report"
    );
    // Checked before any I/O: the server never saw a connection.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(silent.accepted(), 0);
}

#[actix_rt::test]
async fn every_kind_of_bad_option_is_reported_by_connect_with_its_name() {
    let silent = silent_tcp_server();
    let cases: Vec<(&str, ConnectOptions)> = vec![
        (
            "connect_timeout",
            ConnectOptions::default().connect_timeout(Duration::ZERO),
        ),
        (
            "tls_timeout",
            ConnectOptions::default().tls_timeout(ConnectOptions::MAX_DURATION * 2),
        ),
        (
            "upgrade_timeout",
            ConnectOptions::default().upgrade_timeout(Duration::MAX),
        ),
        (
            "close_timeout",
            ConnectOptions::default().close_timeout(Duration::ZERO),
        ),
        (
            "ping_interval",
            ConnectOptions::default().ping_interval(Some(Duration::ZERO)),
        ),
        (
            "pong_timeout has no effect without ping_interval",
            ConnectOptions::default()
                .ping_interval(None)
                .pong_timeout(Duration::from_secs(1)),
        ),
        (
            "max_frame_size",
            ConnectOptions::default().max_frame_size(124),
        ),
        (
            "max_message_size",
            ConnectOptions::default().max_message_size(0),
        ),
        (
            "subprotocols[1]",
            ConnectOptions::default()
                .subprotocol("chat")
                .subprotocol("two words"),
        ),
    ];
    for (name, options) in cases {
        let (result, elapsed) = connect_with(silent.url("/"), options).await;
        match result {
            Err(error @ Error::InvalidOptions(_)) => {
                assert!(error.to_string().contains(name), "{name}: {error}");
                assert!(error.is_config(), "{name}");
            }
            other => panic!(
                "{name}: expected Error::InvalidOptions, got {:?}",
                other.err()
            ),
        }
        assert!(elapsed < PROMPT, "{name}: took {elapsed:?}");
    }
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(silent.accepted(), 0);
}

#[test]
fn the_blocking_api_reports_bad_options_too() {
    let silent = silent_tcp_server();
    let (tx, rx) = std::sync::mpsc::channel();
    let url = silent.url("/");
    // On its own thread so that a hang fails the test instead of stalling it.
    std::thread::spawn(move || {
        let options = ConnectOptions::default().max_buffered_bytes(0);
        let _ = tx.send(minch::blocking::connect(url, no_headers(), options).err());
    });
    let error = rx
        .recv_timeout(WAIT)
        .expect("blocking::connect returns in time");
    assert!(
        matches!(&error, Some(Error::InvalidOptions(m)) if m.contains("max_buffered_bytes")),
        "{error:?}"
    );
    assert_eq!(silent.accepted(), 0);
}

#[actix_rt::test]
async fn a_zero_ping_interval_reaches_handle_disconnect_and_stops_the_client_by_default() {
    let server = TestServer::start();
    let request = ConnectRequest::new(server.url("/echo"))
        .options(ConnectOptions::default().ping_interval(Some(Duration::ZERO)));

    // handle_disconnect sees the reason, on the first attempt.
    let (handler, mut events) = Recorder::new(request.clone());
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let (reason, attempt) = event.disconnect().unwrap();
    assert_eq!(attempt, 1);
    match reason.error() {
        Some(error @ Error::InvalidOptions(message)) => {
            assert!(error.is_config());
            assert!(message.contains("ping_interval"), "{message}");
        }
        other => panic!("expected Error::InvalidOptions, got {other:?}"),
    }
    assert_eq!(events.count(Event::is_connected), 0, "{}", events.history());

    // The default handle_disconnect stops the client instead of retrying.
    let (handler, mut events) = Defaults::new(request);
    let _addr = Client::start(handler);
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert!(
        matches!(
            &event,
            Event::Terminate(StopReason::Disconnected(DisconnectReason::Error(
                Error::InvalidOptions(_)
            )))
        ),
        "{event:?}"
    );
    events
        .assert_none(
            "a second attempt",
            Duration::from_millis(300),
            Event::is_connect,
        )
        .await;
    assert_eq!(events.count(Event::is_connect), 1);
    // Neither client got as far as the server.
    assert_eq!(server.request_count("/echo"), 0);
}

#[actix_rt::test]
async fn a_one_byte_buffer_still_delivers_every_frame_in_order() {
    const FRAMES: usize = 100;
    let server = TestServer::start();
    let options = ConnectOptions::default().max_buffered_bytes(1);
    let (result, _) = connect_with(server.url("/echo"), options).await;
    let (connection, mut frames) = result.expect("connects with max_buffered_bytes(1)");

    // All sent at once, so that all but one wait in the backlog behind a full buffer.
    let expected: Vec<String> = (0..FRAMES).map(|i| format!("frame {i}")).collect();
    let sends = expected
        .iter()
        .map(|text| connection.send_frame(Frame::text(text.clone())));
    let results = actix_rt::time::timeout(WAIT, futures_util::future::join_all(sends))
        .await
        .expect("every send resolves in time");
    for (i, result) in results.into_iter().enumerate() {
        result.unwrap_or_else(|error| panic!("frame {i} was not sent: {error}"));
    }

    assert!(
        wait_until(WAIT, || server.texts().len() >= FRAMES).await,
        "the server got {} of {FRAMES} frames",
        server.texts().len()
    );
    assert_eq!(server.texts(), expected, "the server got them out of order");
    for want in &expected {
        let echo = frames.receive_frame(WAIT).await.expect("an echo");
        assert_eq!(echo.as_text(), Some(want.as_str()));
    }
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close resolves in time");
}
