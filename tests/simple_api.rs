//! The simple API: `minch::connect`, `Connection`, `Frames`.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{closed_port, WAIT};
use futures_util::StreamExt as _;
use minch::{
    CloseCode, ConnectOptions, DisconnectReason, Error, Frame, ReceiveError, SendError, Timeout,
};
use support::{silent_tcp_server, wait_until, ServerEvent, TestServer};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

async fn open(url: String) -> (minch::Connection, minch::Frames) {
    actix_rt::time::timeout(
        WAIT,
        minch::connect(url, no_headers(), ConnectOptions::default()),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects")
}

fn is_server_close(code: u16) -> impl Fn(&ServerEvent) -> bool {
    move |e| matches!(e, ServerEvent::Close { code: Some(c), .. } if *c == code)
}

#[actix_rt::test]
async fn an_unreachable_host_is_a_connect_error() {
    let url = format!("ws://127.0.0.1:{}/echo", closed_port());
    let result = actix_rt::time::timeout(
        WAIT,
        minch::connect(url, no_headers(), ConnectOptions::default()),
    )
    .await
    .expect("connect resolves in time");
    assert!(matches!(result, Err(Error::Connect(_))), "{result:?}");
}

#[actix_rt::test]
async fn an_unanswered_upgrade_times_out() {
    let silent = silent_tcp_server();
    let options = ConnectOptions::default().upgrade_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let result = actix_rt::time::timeout(
        Duration::from_secs(20),
        minch::connect(silent.url("/echo"), no_headers(), options),
    )
    .await
    .expect("connect resolves in time");
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(Timeout::Upgrade))),
        "{result:?}"
    );
    assert_eq!(silent.accepted(), 1);
    assert!(
        elapsed < Duration::from_secs(3),
        "a 300 ms upgrade timeout fired after {elapsed:?}"
    );
}

#[actix_rt::test]
async fn headers_reach_the_server() {
    let server = TestServer::start();
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            server.url("/headers"),
            vec![("x-minch-test", "hello"), ("authorization", "Bearer abc")],
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect resolves")
    .expect("connects");
    assert_eq!(connection.response().status.as_u16(), 101);
    let listing = frames
        .receive_frame(WAIT)
        .await
        .expect("the header listing");
    let listing = listing.as_text().expect("text").to_owned();
    assert!(listing.contains("x-minch-test: hello\n"), "{listing}");
    assert!(listing.contains("authorization: Bearer abc\n"), "{listing}");
    let Some(ServerEvent::Upgraded { headers, .. }) = server
        .wait_event(|e| matches!(e, ServerEvent::Upgraded { .. }), WAIT)
        .await
    else {
        panic!("no upgrade recorded")
    };
    assert!(headers.contains(&("x-minch-test".into(), "hello".into())));
    connection.close().await;
}

#[actix_rt::test]
async fn send_and_receive() {
    let server = TestServer::start();
    let (connection, mut frames) = open(server.url("/echo")).await;
    connection
        .send_frame(Frame::text("héllo"))
        .await
        .expect("text sent");
    connection
        .send_frame(Frame::binary(vec![1u8, 2, 3]))
        .await
        .expect("binary sent");
    connection
        .send_frame(Frame::ping(&b"p"[..]))
        .await
        .expect("ping sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("text echo"),
        Frame::text("héllo")
    );
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("binary echo"),
        Frame::binary(vec![1u8, 2, 3])
    );
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("pong"),
        Frame::pong(&b"p"[..])
    );
    assert_eq!(server.texts(), ["héllo"]);
    connection.close().await;
}

#[actix_rt::test]
async fn receive_frame_times_out_when_nothing_comes() {
    let server = TestServer::start();
    // /silent never answers a close frame: a short close timeout keeps the test fast.
    let options = ConnectOptions::default().close_timeout(Duration::from_millis(500));
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(server.url("/silent"), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    let started = Instant::now();
    let result = frames.receive_frame(Duration::from_millis(200)).await;
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(ReceiveError::Timeout)), "{result:?}");
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    // Still open after a timeout.
    connection
        .send_frame(Frame::text("still here"))
        .await
        .expect("sent after a receive timeout");
    assert!(wait_until(WAIT, || server.texts() == ["still here"]).await);
    let started = Instant::now();
    connection.close().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "close with an unanswered close frame took {elapsed:?} (close_timeout 500 ms)"
    );
    assert!(server
        .wait_event(is_server_close(1000), WAIT)
        .await
        .is_some());
    assert!(matches!(
        frames.receive_frame(WAIT).await,
        Err(ReceiveError::Closed(_))
    ));
}

#[actix_rt::test]
async fn close_reaches_the_server_then_receive_reports_closed() {
    let server = TestServer::start();
    let (connection, mut frames) = open(server.url("/echo")).await;
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close finishes in time");
    assert!(
        server
            .wait_event(is_server_close(1000), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    for _ in 0..2 {
        match frames.receive_frame(WAIT).await {
            Err(ReceiveError::Closed(reason)) => {
                assert!(
                    matches!(&reason, DisconnectReason::ClientClosed(c) if c.code == CloseCode::NORMAL),
                    "{reason:?}"
                );
            }
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    assert!(frames.end().is_some());
    let after = connection.send_frame(Frame::text("after close")).await;
    assert!(
        matches!(
            after,
            Err(SendError::Stopped | SendError::Closing | SendError::NotConnected)
        ),
        "{after:?}"
    );
}

#[actix_rt::test]
async fn dropping_every_handle_closes_the_connection() {
    let server = TestServer::start();
    let (connection, mut frames) = open(server.url("/echo")).await;
    let clone = connection.clone();
    drop(connection);
    // One clone is left: the connection stays open.
    clone
        .send_frame(Frame::text("one handle left"))
        .await
        .expect("sent through the clone");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("echo").as_text(),
        Some("one handle left")
    );
    assert!(!server
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Close { .. })));

    drop(clone);
    assert!(
        server
            .wait_event(is_server_close(1000), WAIT)
            .await
            .is_some(),
        "server events: {:?}",
        server.events()
    );
    assert!(matches!(
        frames.receive_frame(WAIT).await,
        Err(ReceiveError::Closed(_))
    ));
}

#[actix_rt::test]
async fn a_server_close_is_reported_after_every_earlier_frame() {
    let server = TestServer::start();
    let (connection, mut frames) = open(server.url("/echo")).await;
    let expected: Vec<String> = (0..5).map(|i| format!("frame {i}")).collect();
    for text in &expected {
        connection
            .send_frame(Frame::text(text.clone()))
            .await
            .expect("sent");
    }
    assert!(wait_until(WAIT, || server.texts().len() == expected.len()).await);
    assert_eq!(server.close_all(Some(4002), "done"), 1);
    // The close handshake completes before anything is read on our side.
    assert!(server
        .wait_event(is_server_close(4002), WAIT)
        .await
        .is_some());
    assert!(server.wait_live_connections(0, WAIT).await);

    for text in &expected {
        let frame = frames.receive_frame(WAIT).await.expect("an earlier frame");
        assert_eq!(frame.as_text(), Some(text.as_str()));
    }
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))) => {
            assert_eq!(close.code, CloseCode(4002));
            assert_eq!(close.reason, "done");
        }
        other => panic!("expected Closed(ServerClosed(4002)), got {other:?}"),
    }
    let after = connection.send_frame(Frame::text("late")).await;
    assert!(after.is_err(), "{after:?}");
}

#[actix_rt::test]
async fn a_close_right_after_the_upgrade_is_reported() {
    let server = TestServer::start();
    let (_connection, mut frames) = open(server.url("/close?code=4001&reason=bye")).await;
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close)))) => {
            assert_eq!(close.code, CloseCode(4001));
            assert_eq!(close.reason, "bye");
        }
        other => panic!("expected Closed(ServerClosed(4001)), got {other:?}"),
    }
    assert!(server
        .wait_event(is_server_close(4001), WAIT)
        .await
        .is_some());
}

#[actix_rt::test]
async fn frames_is_a_stream() {
    let server = TestServer::start();
    let (connection, mut frames) = open(server.url("/echo")).await;
    for i in 0..3 {
        connection
            .send_frame(Frame::text(format!("s{i}")))
            .await
            .expect("sent");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let frame = actix_rt::time::timeout(WAIT, frames.next())
            .await
            .expect("a frame in time")
            .expect("the stream has not ended");
        got.push(frame.as_text().expect("text").to_owned());
    }
    assert_eq!(got, ["s0", "s1", "s2"]);
    assert!(frames.end().is_none());

    connection.close().await;
    let end = actix_rt::time::timeout(WAIT, frames.next())
        .await
        .expect("the stream ends in time");
    assert!(end.is_none(), "{end:?}");
    assert!(frames.end().is_some());
    // A finished stream stays finished.
    assert!(frames.next().await.is_none());
}

#[actix_rt::test]
async fn a_rejected_upgrade_is_an_error_with_the_status() {
    let server = TestServer::start();
    let result = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            server.url("/reject401"),
            no_headers(),
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect resolves in time");
    match result {
        Err(error @ Error::Rejected { .. }) => {
            assert_eq!(error.status().map(|s| s.as_u16()), Some(401))
        }
        other => panic!("expected Error::Rejected, got {:?}", other.err()),
    }
    // The simple API never retries.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.request_count("/reject401"), 1);
}

#[actix_rt::test]
async fn an_invalid_url_is_an_error() {
    for url in ["not a url", "http://127.0.0.1/echo"] {
        let result = actix_rt::time::timeout(
            WAIT,
            minch::connect(url, no_headers(), ConnectOptions::default()),
        )
        .await
        .expect("connect resolves in time");
        assert!(
            matches!(result, Err(Error::InvalidUrl { .. })),
            "{url:?}: {:?}",
            result.err()
        );
    }
}

#[actix_rt::test]
async fn a_dropped_connection_ends_the_frames_with_an_error() {
    let server = TestServer::start();
    let (_connection, mut frames) = open(server.url("/echo")).await;
    assert_eq!(server.drop_all(), 1);
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::Error(_))) => {}
        other => panic!("expected Closed(Error(_)), got {other:?}"),
    }
}
