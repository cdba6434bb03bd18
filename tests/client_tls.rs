//! `wss://` against the TLS test server: refused by default (self-signed, not trusted), and
//! working once the certificate is trusted (DER or PEM) or verification is turned off.
//! Only with the `tls` feature; `tests/tls_disabled.rs` covers a build without it.
#![cfg(feature = "tls")]

mod common;
mod support;

use common::{Event, Policy, Recorder, WAIT};
use minch::{
    Client, Close, ConnectOptions, ConnectRequest, Error, Frame, SendFrame, StopReason, TlsOptions,
};
use support::{ServerEvent, TestServer};

fn request(server: &TestServer, tls: TlsOptions) -> ConnectRequest {
    ConnectRequest::new(server.url("/echo")).options(ConnectOptions::default().tls(tls))
}

/// Connects with `tls`, checks an echo of a text and a binary message, closes.
async fn assert_echo_over_tls(server: &TestServer, tls: TlsOptions, text: &str) {
    assert!(server.url("/").starts_with("wss://"));
    let (handler, mut events) = Recorder::new(request(server, tls));
    let addr = Client::start(handler.policy(Policy::Stop));
    let connected = events
        .wait_for("handle_connect over TLS", WAIT, |e| {
            e.is_connected() || e.is_disconnect()
        })
        .await;
    assert!(
        matches!(connected, Event::Connected { status: 101, .. }),
        "{}",
        events.history()
    );

    let sent = addr.send(SendFrame(Frame::text(text.to_owned()))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the text echo", WAIT, |e| e.is_text(text))
        .await;
    let sent = addr
        .send(SendFrame(Frame::binary(vec![0u8, 1, 2, 254, 255])))
        .await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for(
            "the binary echo",
            WAIT,
            |e| matches!(e, Event::Frame(Frame::Binary(b)) if b[..] == [0u8, 1, 2, 254, 255]),
        )
        .await;
    assert!(server.texts().iter().any(|t| t == text));

    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves")
        .expect("mailbox");
    events.drain_now();
    assert!(
        events
            .seen
            .iter()
            .any(|e| matches!(e, Event::Terminate(StopReason::Closed))),
        "{}",
        events.history()
    );
    assert!(server
        .wait_event(
            |e| matches!(
                e,
                ServerEvent::Close {
                    code: Some(1000),
                    ..
                }
            ),
            WAIT
        )
        .await
        .is_some());
}

#[actix_rt::test]
async fn an_untrusted_certificate_fails_with_a_tls_error() {
    let server = TestServer::start_tls();
    let (handler, mut events) = Recorder::new(request(&server, TlsOptions::default()));
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    let (reason, attempt) = event.disconnect().unwrap();
    assert_eq!(attempt, 1);
    match reason.error() {
        Some(error @ Error::Tls(_)) => assert!(!error.is_config()),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    assert_eq!(events.count(Event::is_connected), 0);
    assert_eq!(server.upgrades(), 0);
}

#[actix_rt::test]
async fn a_der_root_certificate_is_trusted() {
    let server = TestServer::start_tls();
    let tls = TlsOptions::default().add_root_certificate(server.cert_der());
    assert_echo_over_tls(&server, tls, "trusted by DER").await;
}

#[actix_rt::test]
async fn a_pem_root_certificate_is_trusted() {
    let server = TestServer::start_tls();
    let tls = TlsOptions::default().add_root_pem(server.cert_pem());
    assert_echo_over_tls(&server, tls, "trusted by PEM").await;
}

#[actix_rt::test]
async fn accepting_invalid_certificates_connects() {
    let server = TestServer::start_tls();
    let tls = TlsOptions::default().danger_accept_invalid_certs(true);
    assert_echo_over_tls(&server, tls, "unverified").await;
}

#[actix_rt::test]
async fn another_servers_certificate_is_not_trusted() {
    // Trusting one self-signed certificate must not make a different one acceptable.
    let server = TestServer::start_tls();
    let other = TestServer::start_tls();
    let tls = TlsOptions::default().add_root_certificate(other.cert_der());
    let (handler, mut events) = Recorder::new(request(&server, tls));
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    assert!(
        matches!(event.disconnect_error(), Some(Error::Tls(_))),
        "{event:?}"
    );
}

#[actix_rt::test]
async fn the_simple_api_works_over_tls() {
    let server = TestServer::start_tls();
    let options = ConnectOptions::default()
        .tls(TlsOptions::default().add_root_certificate(server.cert_der()));
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(server.url("/echo"), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves")
    .expect("connects over TLS");
    connection
        .send_frame(Frame::text("simple over TLS"))
        .await
        .expect("sent");
    let echo = frames.receive_frame(WAIT).await.expect("echo");
    assert_eq!(echo.as_text(), Some("simple over TLS"));
    connection.close().await;

    let refused = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            server.url("/echo"),
            Vec::<(String, String)>::new(),
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect resolves");
    assert!(matches!(refused, Err(Error::Tls(_))), "{refused:?}");
}

#[actix_rt::test]
async fn a_peer_that_never_answers_the_tls_handshake_times_out() {
    let silent = support::silent_tcp_server();
    let url = format!("wss://127.0.0.1:{}/echo", silent.port());
    let options = ConnectOptions::default().tls_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let result = actix_rt::time::timeout(
        std::time::Duration::from_secs(20),
        minch::connect(url, Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves");
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(minch::Timeout::Tls))),
        "{:?}",
        result.err()
    );
    assert!(
        elapsed < std::time::Duration::from_secs(3),
        "a 300 ms TLS timeout fired after {elapsed:?}"
    );
}

#[actix_rt::test]
async fn unusable_root_certificates_are_invalid_options() {
    let server = TestServer::start_tls();
    for tls in [
        TlsOptions::default().add_root_certificate(vec![1u8, 2, 3]),
        TlsOptions::default().add_root_pem("no certificate here"),
    ] {
        let result = actix_rt::time::timeout(
            WAIT,
            minch::connect(
                server.url("/echo"),
                Vec::<(String, String)>::new(),
                ConnectOptions::default().tls(tls),
            ),
        )
        .await
        .expect("connect resolves");
        match result {
            Err(error @ Error::InvalidOptions(_)) => assert!(error.is_config()),
            other => panic!("expected Error::InvalidOptions, got {:?}", other.err()),
        }
    }
    assert_eq!(server.upgrades(), 0);
}
