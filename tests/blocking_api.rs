//! `minch::blocking`: the simple API without an actix System — from plain threads and from
//! inside tokio runtimes.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use minch::{blocking, ConnectOptions, DisconnectReason, Error, Frame, ReceiveError};
use support::{ServerEvent, TestServer};

const WAIT: Duration = Duration::from_secs(10);

// Compile-time: the handles can be shared between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<blocking::Connection>();
    send_sync::<blocking::Frames>();
};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

fn is_close_1000(event: &ServerEvent) -> bool {
    matches!(
        event,
        ServerEvent::Close {
            code: Some(1000),
            ..
        }
    )
}

/// The whole flow, blocking: connect, text + binary echo, close, end of the frames.
fn echo_flow(server: &TestServer, label: &str) {
    let (connection, frames) =
        blocking::connect(server.url("/echo"), no_headers(), ConnectOptions::default())
            .expect("connects");
    connection
        .send_frame(Frame::text(label.to_owned()))
        .expect("text sent");
    connection
        .send_frame(Frame::binary(vec![9u8, 8, 7]))
        .expect("binary sent");
    assert_eq!(
        frames.receive_frame(WAIT).expect("text echo").as_text(),
        Some(label)
    );
    assert_eq!(
        frames.receive_frame(WAIT).expect("binary echo"),
        Frame::binary(vec![9u8, 8, 7])
    );
    let started = Instant::now();
    connection.close();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "close took {:?}",
        started.elapsed()
    );
    assert!(
        server.wait_event_blocking(is_close_1000, WAIT).is_some(),
        "server events: {:?}",
        server.events()
    );
    match frames.receive_frame(WAIT) {
        Err(ReceiveError::Closed(DisconnectReason::ClientClosed(close))) => {
            assert_eq!(close.code, minch::CloseCode::NORMAL)
        }
        other => panic!("expected Closed(ClientClosed(1000)), got {other:?}"),
    }
    assert!(connection.send_frame(Frame::text("late")).is_err());
}

#[test]
fn from_a_plain_thread() {
    let server = TestServer::start();
    echo_flow(&server, "plain thread");
    assert_eq!(server.texts(), ["plain thread"]);
}

#[test]
fn an_unreachable_host_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let result = blocking::connect(
        format!("ws://127.0.0.1:{port}/"),
        no_headers(),
        ConnectOptions::default(),
    );
    assert!(
        matches!(result, Err(Error::Connect(_))),
        "{:?}",
        result.err()
    );
}

#[test]
fn receive_frame_times_out() {
    let server = TestServer::start();
    let (connection, frames) = blocking::connect(
        server.url("/silent"),
        no_headers(),
        // /silent never answers a close frame.
        ConnectOptions::default().close_timeout(Duration::from_millis(500)),
    )
    .expect("connects");
    let started = Instant::now();
    let result = frames.receive_frame(Duration::from_millis(200));
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(ReceiveError::Timeout)), "{result:?}");
    assert!(elapsed >= Duration::from_millis(190) && elapsed < Duration::from_secs(2));
    let started = Instant::now();
    connection.close();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close took {:?}",
        started.elapsed()
    );
    assert!(matches!(
        frames.receive_frame(WAIT),
        Err(ReceiveError::Closed(_))
    ));
}

#[test]
fn handles_are_shared_between_threads() {
    let server = TestServer::start();
    let (connection, frames) =
        blocking::connect(server.url("/echo"), no_headers(), ConnectOptions::default())
            .expect("connects");
    let frames = Arc::new(frames);
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let connection = connection.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    connection
                        .send_frame(Frame::text(format!("t{t} m{i}")))
                        .expect("sent from a thread");
                }
            })
        })
        .collect();
    let receiver = {
        let frames = Arc::clone(&frames);
        std::thread::spawn(move || {
            (0..20)
                .map(|_| {
                    frames
                        .receive_frame(WAIT)
                        .expect("an echo")
                        .as_text()
                        .expect("text")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
    };
    for sender in senders {
        sender.join().expect("sender thread");
    }
    let mut echoes = receiver.join().expect("receiver thread");
    echoes.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|t| (0..5).map(move |i| format!("t{t} m{i}")))
        .collect();
    expected.sort();
    assert_eq!(echoes, expected);
    // Each thread's messages stay in their own order.
    let texts = server.texts();
    for t in 0..4 {
        let mine: Vec<&String> = texts
            .iter()
            .filter(|m| m.starts_with(&format!("t{t} ")))
            .collect();
        let in_order: Vec<String> = (0..5).map(|i| format!("t{t} m{i}")).collect();
        assert_eq!(mine, in_order.iter().collect::<Vec<_>>());
    }
    drop(connection);
    assert!(server.wait_event_blocking(is_close_1000, WAIT).is_some());
}

#[tokio::test]
async fn direct_calls_inside_a_current_thread_tokio_runtime() {
    let server = TestServer::start();
    echo_flow(&server, "direct in tokio");
    // The runtime still works afterwards.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_spawn_blocking_in_a_multi_thread_runtime() {
    let server = TestServer::start();
    let url = server.url("/echo");
    // Connect in one blocking task, use the handles in others.
    let (connection, frames) = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            blocking::connect(url, no_headers(), ConnectOptions::default())
        }),
    )
    .await
    .expect("connect in time")
    .expect("task")
    .expect("connects");
    let echo = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            connection
                .send_frame(Frame::text("via spawn_blocking"))
                .expect("sent");
            let echo = frames.receive_frame(WAIT);
            connection.close();
            (echo, frames.receive_frame(WAIT))
        }),
    )
    .await
    .expect("in time")
    .expect("task");
    assert_eq!(echo.0.expect("echo").as_text(), Some("via spawn_blocking"));
    assert!(
        matches!(echo.1, Err(ReceiveError::Closed(_))),
        "{:?}",
        echo.1
    );
    // The async wait sleeps on this tokio runtime.
    assert!(server.wait_event(is_close_1000, WAIT).await.is_some());
}

#[test]
fn inside_block_on_of_a_hand_built_runtime() {
    let server = TestServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        echo_flow(&server, "block_on");
    });
}
