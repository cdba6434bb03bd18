//! Regressions found by `fuzz/handshake_response`: a server that sends the
//! `Sec-WebSocket-Protocol` or `Sec-WebSocket-Extensions` header twice. The client checked only
//! the first of each, so a second subprotocol, or an extension after an empty first header,
//! was accepted; RFC 6455 §4.1 says the client must fail the connection.

mod common;
mod support;

use common::WAIT;
use minch::{ConnectOptions, Error};
use support::{scripted_ws_server, Handshake, Step};

async fn connect_to(handshake: Handshake, options: ConnectOptions) -> Result<(), Error> {
    let server = scripted_ws_server(vec![Step::Handshake(handshake), Step::WaitClose(WAIT)]);
    let result = actix_rt::time::timeout(
        WAIT,
        minch::connect(server.url("/"), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time");
    result.map(|_| ())
}

fn offering(protocols: &[&str]) -> ConnectOptions {
    protocols
        .iter()
        .fold(ConnectOptions::default(), |options, p| {
            options.subprotocol(*p)
        })
}

#[actix_rt::test]
async fn one_offered_subprotocol_is_accepted() {
    let handshake = Handshake::new().header("Sec-WebSocket-Protocol", "v2.json");
    let result = connect_to(handshake, offering(&["chat", "v2.json"])).await;
    assert!(result.is_ok(), "{:?}", result.err());
}

#[actix_rt::test]
async fn two_subprotocol_headers_fail_the_connection() {
    let handshake = Handshake::new()
        .header("Sec-WebSocket-Protocol", "chat")
        .header("Sec-WebSocket-Protocol", "v2.json");
    let result = connect_to(handshake, offering(&["chat", "v2.json"])).await;
    match result {
        Err(Error::Handshake(reason)) => {
            assert!(reason.contains("more than one subprotocol"), "{reason}");
        }
        other => panic!("expected Error::Handshake, got {:?}", other.err()),
    }
}

#[actix_rt::test]
async fn an_extension_in_a_second_header_fails_the_connection() {
    let handshake = Handshake::new()
        .header("Sec-WebSocket-Extensions", "")
        .header("Sec-WebSocket-Extensions", "x-never-offered");
    let result = connect_to(handshake, ConnectOptions::default()).await;
    // Since compression (issue 11) an extension answer that was not offered is its own typed
    // error, naming the extension.
    match result {
        Err(Error::Extension { parameter, .. }) => {
            assert_eq!(parameter, "x-never-offered");
        }
        other => panic!("expected Error::Extension, got {:?}", other.err()),
    }
}
