//! Interop: the actor client and the simple API against independent WebSocket servers
//! (Python `websockets`, Node `ws`), installed on first use by the support module. A peer
//! that cannot be provisioned fails the test with the reason.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{Event, Policy, Recorder, WAIT};
use minch::{
    Client, Close, CloseCode, ConnectOptions, ConnectRequest, DisconnectReason, Frame,
    ReceiveError, SendFrame, StopReason,
};
use support::{node_echo_server, python_echo_server, ExternalServer};

/// Long enough that a close finishing well before it was completed by the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn peer(start: fn() -> Result<ExternalServer, String>, name: &str) -> ExternalServer {
    match start() {
        Ok(server) => server,
        Err(reason) => panic!("the {name} interop peer could not be started: {reason}"),
    }
}

fn payload() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

async fn actor_echo_flow(mut server: ExternalServer) {
    let request = ConnectRequest::new(server.url("/"))
        .options(ConnectOptions::default().close_timeout(CLOSE_TIMEOUT));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Stop));
    let connected = events
        .wait_for("handle_connect", WAIT, |e| {
            e.is_connected() || e.is_disconnect()
        })
        .await;
    assert!(
        matches!(connected, Event::Connected { status: 101, .. }),
        "{}: {}",
        server.name(),
        events.history()
    );

    let sent = addr.send(SendFrame(Frame::text("héllo interop"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the text echo", WAIT, |e| e.is_text("héllo interop"))
        .await;

    let data = payload();
    let sent = addr.send(SendFrame(Frame::binary(data.clone()))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for(
            "the binary echo",
            WAIT,
            |e| matches!(e, Event::Frame(Frame::Binary(b)) if b[..] == data[..]),
        )
        .await;

    let sent = addr
        .send(SendFrame(Frame::ping(&b"are you there"[..])))
        .await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for(
            "the pong",
            WAIT,
            |e| matches!(e, Event::Frame(Frame::Pong(p)) if p[..] == b"are you there"[..]),
        )
        .await;

    // The close handshake: the peer answers, so Close resolves well before the timeout.
    let started = Instant::now();
    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves")
        .expect("mailbox");
    let elapsed = started.elapsed();
    assert!(
        elapsed < CLOSE_TIMEOUT / 2,
        "{}: the close handshake took {elapsed:?}",
        server.name()
    );
    events.drain_now();
    assert!(
        events
            .seen
            .iter()
            .any(|e| matches!(e, Event::Terminate(StopReason::Closed))),
        "{}",
        events.history()
    );
    assert_eq!(
        events.count(|e| matches!(e, Event::Error(_))),
        0,
        "{}",
        events.history()
    );
    assert!(server.is_running(), "stderr: {}", server.stderr());
}

async fn simple_echo_flow(mut server: ExternalServer) {
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            server.url("/"),
            Vec::<(String, String)>::new(),
            ConnectOptions::default().close_timeout(CLOSE_TIMEOUT),
        ),
    )
    .await
    .expect("connect resolves")
    .unwrap_or_else(|e| panic!("{}: {e}", server.name()));
    assert_eq!(connection.response().status.as_u16(), 101);

    connection
        .send_frame(Frame::text("simple interop"))
        .await
        .expect("text sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("text echo"),
        Frame::text("simple interop")
    );
    let data = payload();
    connection
        .send_frame(Frame::binary(data.clone()))
        .await
        .expect("binary sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("binary echo"),
        Frame::binary(data)
    );
    connection
        .send_frame(Frame::ping(&b"ping?"[..]))
        .await
        .expect("ping sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("pong"),
        Frame::pong(&b"ping?"[..])
    );

    let started = Instant::now();
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close resolves");
    let elapsed = started.elapsed();
    assert!(
        elapsed < CLOSE_TIMEOUT / 2,
        "{}: the close handshake took {elapsed:?}",
        server.name()
    );
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::ClientClosed(close))) => {
            assert_eq!(close.code, CloseCode::NORMAL)
        }
        other => panic!(
            "{}: expected Closed(ClientClosed), got {other:?}",
            server.name()
        ),
    }
    assert!(server.is_running(), "stderr: {}", server.stderr());
}

#[actix_rt::test]
async fn actor_client_against_python_websockets() {
    actor_echo_flow(peer(python_echo_server, "Python websockets")).await;
}

#[actix_rt::test]
async fn simple_api_against_python_websockets() {
    simple_echo_flow(peer(python_echo_server, "Python websockets")).await;
}

#[actix_rt::test]
async fn actor_client_against_node_ws() {
    actor_echo_flow(peer(node_echo_server, "Node ws")).await;
}

#[actix_rt::test]
async fn simple_api_against_node_ws() {
    simple_echo_flow(peer(node_echo_server, "Node ws")).await;
}
