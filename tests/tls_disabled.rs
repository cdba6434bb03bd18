//! A build without the `tls` feature (`cargo test --no-default-features --test tls_disabled`):
//! `wss://` is refused up front with `Error::TlsNotEnabled`, a configuration error whose message
//! says how to turn TLS on, by the simple API and by the actor client alike (which stops rather
//! than retrying). Compiled only without the feature.
#![cfg(not(feature = "tls"))]

mod common;
mod support;

use std::time::Duration;

use common::{Defaults, Event, WAIT};
use minch::{Client, ConnectOptions, DisconnectReason, Error, StopReason};
use support::silent_tcp_server;

/// The error names the feature and the way out, and shows the URL redacted.
fn assert_explains_the_feature(error: &Error) {
    assert!(
        matches!(error, Error::TlsNotEnabled { url } if url == "wss://127.0.0.1:1/feed?token=REDACTED"),
        "{error:?}"
    );
    assert!(error.is_config(), "{error:?}");
    let message = error.to_string();
    for needed in ["wss://", "\"tls\" feature", "ws:// URL"] {
        assert!(message.contains(needed), "{needed:?} not in {message:?}");
    }
    assert!(!message.contains("s3cret"), "{message}");
}

#[actix_rt::test]
async fn the_simple_api_refuses_wss_without_connecting() {
    // A listener that would accept: the attempt must not even reach TCP.
    let silent = silent_tcp_server();
    let url = format!("wss://127.0.0.1:{}/feed?token=s3cret", silent.port());
    let error = minch::connect(
        url,
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await
    .expect_err("wss:// cannot work without TLS");
    let Error::TlsNotEnabled { url } = &error else {
        panic!("{error:?}");
    };
    assert!(url.ends_with("/feed?token=REDACTED"), "{url}");
    assert!(error.is_config());
    assert!(error.to_string().contains("\"tls\" feature"), "{error}");
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(silent.accepted(), 0, "a TCP connection was opened");
}

#[actix_rt::test]
async fn the_actor_client_stops_on_wss_instead_of_retrying() {
    // Default handle_disconnect: a configuration error stops the client.
    let (handler, mut events) = Defaults::new("wss://127.0.0.1:1/feed?token=s3cret");
    let _client = Client::start(handler);
    let event = events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    let Event::Terminate(StopReason::Disconnected(DisconnectReason::Error(error))) = &event else {
        panic!("{event:?}");
    };
    assert_explains_the_feature(error);
}

#[actix_rt::test]
async fn ws_still_works_without_tls() {
    let server = support::TestServer::start();
    let (connection, mut frames) = minch::connect(
        server.url("/echo"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .await
    .expect("ws:// needs no TLS");
    connection
        .send_frame(minch::Frame::text("plain"))
        .await
        .expect("send");
    let echoed = frames.receive_frame(WAIT).await;
    assert!(
        matches!(&echoed, Ok(minch::Frame::Text(text)) if text == "plain"),
        "{echoed:?}"
    );
}
