//! permessage-deflate against independent implementations: Node `ws` with `perMessageDeflate`
//! on (context kept, and no context takeover either way) and Python `websockets` (compression on
//! by default, and a no-context configuration with 12-bit windows). Each run checks that the
//! extension was negotiated as configured, then echoes many messages that reuse the context,
//! large compressible and incompressible messages, and fragmented compressed messages from the
//! server. The simple API runs against every configuration, the actor client and the blocking
//! API against Node `ws`.

mod support;

use std::time::Duration;

use actix::Addr;
use minch::{
    Client, ClientContext, ConnectOptions, ConnectRequest, Frame, MinchHandler, Reply, Response,
    SendFrame,
};
use support::{node_echo_server_with, python_echo_server_with, ExternalServer, PeerCompression};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn peer(
    start: fn(PeerCompression) -> Result<ExternalServer, String>,
    compression: PeerCompression,
) -> ExternalServer {
    start(compression).unwrap_or_else(|reason| panic!("the interop peer did not start: {reason}"))
}

fn json(i: usize) -> String {
    format!(
        r#"{{"type":"l2update","product_id":"ETH-USD","sequence":{i},"changes":[["buy","3123.{}","0.{}"]],"time":"2026-12-04T21:00:00.{:06}Z"}}"#,
        i % 100,
        i % 977,
        i
    )
}

/// What the peers send for `frag N SIZE`.
fn fragmented_text(size: usize) -> String {
    let record = r#"{"symbol":"BTC-USD","bid":"64123.5","ask":"64124.0"}"#;
    record.repeat(size / record.len() + 1)[..size].to_owned()
}

/// Pseudo-random bytes: deflate cannot shrink them, so they test stored blocks.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The messages every flow sends, and what comes back for each: the echo, or for a
/// `frag N SIZE` request the fragmented text.
fn script() -> Vec<(Frame, Frame)> {
    let mut script: Vec<(Frame, Frame)> = (0..300)
        .map(|i| (Frame::text(json(i)), Frame::text(json(i))))
        .collect();
    let big_text = json(1).repeat(40_000);
    script.push((Frame::text(big_text.clone()), Frame::text(big_text)));
    let random = noise(1 << 20);
    script.push((Frame::binary(random.clone()), Frame::binary(random)));
    script.push((Frame::text("tiny"), Frame::text("tiny")));
    for (parts, size) in [(40, 1_000_000), (3, 100)] {
        script.push((
            Frame::text(format!("frag {parts} {size}")),
            Frame::text(fragmented_text(size)),
        ));
    }
    script
}

/// The negotiated extension, from the 101's headers.
fn negotiated(response: &Response) -> String {
    response
        .headers
        .get("sec-websocket-extensions")
        .map(|value| value.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn check_negotiated(response: &Response, compression: PeerCompression, peer: &str) {
    let answer = negotiated(response);
    assert!(
        answer.starts_with("permessage-deflate"),
        "{peer}: compression was not negotiated: {answer:?}"
    );
    if compression == PeerCompression::NoContextTakeover {
        assert!(
            answer.contains("client_no_context_takeover")
                && answer.contains("server_no_context_takeover"),
            "{peer}: {answer:?}"
        );
    }
}

async fn simple_flow(mut server: ExternalServer, compression: PeerCompression) {
    let (connection, mut frames) = minch::connect(
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", server.name()));
    check_negotiated(connection.response(), compression, server.name());
    let script = script();
    // Everything in flight at once: the context carries across messages in both directions.
    for (message, _) in &script {
        connection.send_frame(message.clone()).await.unwrap();
    }
    for (i, (_, expected)) in script.iter().enumerate() {
        let frame = frames
            .receive_frame(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: message {i}: {e}", server.name()));
        assert!(
            &frame == expected,
            "{}: message {i} differs ({} bytes, expected {})",
            server.name(),
            frame.payload_len(),
            expected.payload_len()
        );
    }
    connection.close().await;
    assert!(server.is_running(), "stderr: {}", server.stderr());
}

#[actix_rt::test]
async fn simple_api_with_node_ws_compressing_every_message() {
    let server = peer(node_echo_server_with, PeerCompression::On);
    simple_flow(server, PeerCompression::On).await;
}

#[actix_rt::test]
async fn simple_api_with_node_ws_without_context_takeover() {
    let server = peer(node_echo_server_with, PeerCompression::NoContextTakeover);
    simple_flow(server, PeerCompression::NoContextTakeover).await;
}

#[actix_rt::test]
async fn simple_api_with_python_websockets_defaults() {
    let server = peer(python_echo_server_with, PeerCompression::Default);
    simple_flow(server, PeerCompression::Default).await;
}

#[actix_rt::test]
async fn simple_api_with_python_websockets_without_context_takeover() {
    let server = peer(python_echo_server_with, PeerCompression::NoContextTakeover);
    simple_flow(server, PeerCompression::NoContextTakeover).await;
}

#[actix_rt::test]
async fn uncompressed_when_the_peer_does_not_compress() {
    let mut server = peer(node_echo_server_with, PeerCompression::Off);
    let (connection, mut frames) = minch::connect(
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(negotiated(connection.response()), "");
    connection.send_frame(Frame::text(json(1))).await.unwrap();
    assert_eq!(
        frames.receive_frame(WAIT).await.unwrap(),
        Frame::text(json(1))
    );
    connection.close().await;
    assert!(server.is_running(), "stderr: {}", server.stderr());
}

/// Forwards every frame to the test.
struct Forward {
    url: String,
    frames: mpsc::UnboundedSender<Frame>,
    connected: mpsc::UnboundedSender<Response>,
}

impl MinchHandler for Forward {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        ConnectRequest::new(self.url.clone())
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.connected.send(response.clone());
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.frames.send(frame);
        Reply::Continue
    }
}

#[actix_rt::test]
async fn actor_client_with_node_ws() {
    let mut server = peer(node_echo_server_with, PeerCompression::On);
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let (connected_tx, mut connected) = mpsc::unbounded_channel();
    let addr: Addr<Client<Forward>> = Client::start(Forward {
        url: server.url("/"),
        frames: frames_tx,
        connected: connected_tx,
    });
    let response = actix_rt::time::timeout(WAIT, connected.recv())
        .await
        .expect("connected in time")
        .expect("connected");
    check_negotiated(&response, PeerCompression::On, "node ws");
    let script = script();
    for (message, _) in &script {
        addr.send(SendFrame(message.clone()))
            .await
            .expect("mailbox")
            .expect("sent");
    }
    for (i, (_, expected)) in script.iter().enumerate() {
        let frame = actix_rt::time::timeout(WAIT, frames.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} in time"))
            .expect("a frame");
        assert!(&frame == expected, "message {i} differs");
    }
    addr.send(minch::Close).await.expect("mailbox");
    assert!(server.is_running(), "stderr: {}", server.stderr());
}

#[test]
fn blocking_api_with_node_ws() {
    let mut server = peer(node_echo_server_with, PeerCompression::On);
    let (connection, frames) = minch::blocking::connect(
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .unwrap();
    check_negotiated(connection.response(), PeerCompression::On, "node ws");
    let script = script();
    let messages: Vec<Frame> = script.iter().map(|(message, _)| message.clone()).collect();
    connection.send_frames(messages).unwrap();
    for (i, (_, expected)) in script.iter().enumerate() {
        let frame = frames
            .receive_frame(WAIT)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert!(&frame == expected, "message {i} differs");
    }
    connection.close();
    assert!(server.is_running(), "stderr: {}", server.stderr());
}
