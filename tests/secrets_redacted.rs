//! Credentials in a URL (user info, query values, fragment) and in request headers never show
//! up in log records, errors or `Debug` output, while the connection still sends them: on
//! connects, on rejections (401, 403, 503 to the upgrade), and on every kind of failure
//! (refused connection, bad header value, TLS failure, a bad handshake, a timeout, a protocol
//! error), in the errors' and disconnect reasons' `Display` and `Debug` and in the log.
//!
//! Every log record of this test binary is captured, at trace level, from every crate (awc,
//! actix and the in-process server's libraries too): all tests here use the same secrets, so
//! each checks them all. Only the test server's own records (`support::server`, which reports
//! the headers it received, secrets included, as a server may) are left out: they are the peer
//! speaking, not the client.

mod common;
mod support;

use std::sync::{Mutex, Once};
use std::time::Duration;

use common::{closed_port, Defaults, Event, Policy, Recorder, WAIT};
use minch::{Client, Close, ConnectOptions, ConnectRequest, Error, Frame, Proxy, Timeout};
use support::{
    answering_proxy, masked_frame_bytes, scripted_ws_server, Handshake, ServerEvent, Step,
    TestServer,
};

const TOKEN: &str = "SECRET123";
const BEARER: &str = "SECRET456";
const PASSWORD: &str = "SECRET789";
const FRAGMENT: &str = "SECRET246";
const BAD_URL_TOKEN: &str = "SECRET321";
const PROXY_PASSWORD: &str = "SECRET864";
/// `user:SECRET864` in base64, as `Proxy-Authorization: Basic` carries it.
const PROXY_BASIC: &str = "dXNlcjpTRUNSRVQ4NjQ=";
const SECRETS: [&str; 7] = [
    TOKEN,
    BEARER,
    PASSWORD,
    FRAGMENT,
    BAD_URL_TOKEN,
    PROXY_PASSWORD,
    PROXY_BASIC,
];

/// Every log record so far, as `LEVEL target: message`.
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

/// Installs [`Capture`] as the logger, once for the whole binary (a logger can be set once).
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_boxed_logger(Box::new(Capture)).expect("no other logger in this binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn records() -> Vec<String> {
    RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Panics if `shown` contains any of the secrets.
#[track_caller]
fn assert_no_secret(what: &str, shown: &str) {
    for secret in SECRETS {
        assert!(!shown.contains(secret), "{what} shows {secret}: {shown}");
    }
}

#[track_caller]
fn assert_no_secret_in_logs() {
    let peer = concat!(module_path!(), "::support::");
    for record in records() {
        if !record
            .split_once(' ')
            .is_some_and(|(_, rest)| rest.starts_with(peer))
        {
            assert_no_secret("a log record", &record);
        }
    }
}

/// A URL of `server` carrying a password, a query token and a fragment.
fn secret_url(server: &TestServer) -> String {
    format!(
        "ws://user:{PASSWORD}@127.0.0.1:{}/echo?token={TOKEN}&v=1#{FRAGMENT}",
        server.port()
    )
}

fn secret_headers() -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {BEARER}"))]
}

#[test]
fn connect_request_debug_shows_no_secret() {
    let request: ConnectRequest = (
        format!("wss://user:{PASSWORD}@example.com/feed?token={TOKEN}#{FRAGMENT}"),
        secret_headers(),
    )
        .into();
    let shown = format!("{request:?}");
    assert_no_secret("ConnectRequest's Debug", &shown);
    assert!(
        shown.contains("wss://example.com/feed?token=REDACTED#REDACTED"),
        "{shown}"
    );
    assert!(shown.contains("authorization"), "{shown}");
}

#[actix_rt::test]
async fn an_actor_client_logs_no_secret() {
    capture_logs();
    let server = TestServer::start();
    let request: ConnectRequest = (secret_url(&server), secret_headers()).into();
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler);
    events
        .wait_for("handle_connect", WAIT, Event::is_connected)
        .await;
    // The secrets did travel: the test is not passing because nothing was sent.
    let upgraded = server
        .wait_event(|e| matches!(e, ServerEvent::Upgraded { .. }), WAIT)
        .await;
    let Some(ServerEvent::Upgraded { headers, .. }) = upgraded else {
        panic!("no upgrade recorded")
    };
    assert!(
        headers
            .iter()
            .any(|(name, value)| name == "authorization" && value.contains(BEARER)),
        "{headers:?}"
    );
    // Some traffic, then the close handshake, so that every debug line of a connection's life
    // is logged.
    actix_rt::time::timeout(WAIT, addr.send(minch::SendFrame(Frame::text("hello"))))
        .await
        .expect("the send resolves in time")
        .expect("mailbox open")
        .expect("sent");
    events
        .wait_for("the echo", WAIT, |e| e.is_text("hello"))
        .await;
    actix_rt::time::timeout(WAIT, addr.send(Close))
        .await
        .expect("Close resolves in time")
        .expect("mailbox open");
    events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;

    let logged = records();
    assert!(
        logged
            .iter()
            .any(|r| r.contains("minch") && r.contains("/echo?token=REDACTED&v=REDACTED#REDACTED")),
        "the client's connect line was not captured; the check below would be vacuous:\n{}",
        logged.join("\n")
    );
    assert_no_secret_in_logs();
    assert_no_secret("the events", &events.history());
}

#[actix_rt::test]
async fn the_simple_api_logs_no_secret() {
    capture_logs();
    let server = TestServer::start();
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            secret_url(&server),
            secret_headers(),
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");
    assert_no_secret("the Connection's Debug", &format!("{connection:?}"));
    actix_rt::time::timeout(WAIT, connection.send_frame(Frame::text("hi")))
        .await
        .expect("the send resolves in time")
        .expect("sent");
    let echo = frames.receive_frame(WAIT).await.expect("the echo");
    assert_eq!(echo.as_text(), Some("hi"));
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close resolves in time");
    // Let the close handshake finish and its log lines arrive.
    let _ = frames.receive_frame(Duration::from_secs(2)).await;
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn a_malformed_url_error_shows_no_secret() {
    capture_logs();
    for url in [
        format!("ws://exa mple.com/feed?token={BAD_URL_TOKEN}"),
        format!("http://user:{PASSWORD}@127.0.0.1/feed?token={BAD_URL_TOKEN}#{FRAGMENT}"),
        format!("ws?token={BAD_URL_TOKEN}://user:{PASSWORD}@127.0.0.1/"),
        format!("user:{PASSWORD}@127.0.0.1/feed?token={BAD_URL_TOKEN}"),
    ] {
        // The simple API.
        let result = actix_rt::time::timeout(
            WAIT,
            minch::connect(url.as_str(), secret_headers(), ConnectOptions::default()),
        )
        .await
        .expect("connect resolves in time");
        let error = match result {
            Err(error @ Error::InvalidUrl { .. }) => error,
            other => panic!("{url:?}: expected Error::InvalidUrl, got {:?}", other.err()),
        };
        assert_no_secret("the error's Display", &error.to_string());
        assert_no_secret("the error's Debug", &format!("{error:?}"));

        // The actor client, whose default handle_disconnect logs and stops on it.
        let (handler, mut events) = Defaults::new((url.as_str(), secret_headers()));
        let _addr = Client::start(handler);
        let event = events
            .wait_for("terminate", WAIT, Event::is_terminate)
            .await;
        assert_no_secret("the stop reason", &format!("{event:?}"));
        let Event::Terminate(reason) = &event else {
            unreachable!()
        };
        assert_no_secret("the stop reason's Display", &reason.to_string());
    }
    // The query's name is kept, so that the message still says where the problem is.
    let error = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            format!("ws://exa mple.com/feed?token={BAD_URL_TOKEN}"),
            Vec::<(String, String)>::new(),
            ConnectOptions::default(),
        ),
    )
    .await
    .expect("connect resolves in time")
    .expect_err("an invalid URL");
    assert!(error.to_string().contains("token=REDACTED"), "{error}");
    assert_no_secret_in_logs();
}

/// A URL on 127.0.0.1:`port` carrying a password, a query token and a fragment.
fn secret_url_on(scheme: &str, port: u16) -> String {
    format!("{scheme}://user:{PASSWORD}@127.0.0.1:{port}/feed?token={TOKEN}&v=1#{FRAGMENT}")
}

/// Tries `request` with the simple API and with an actor client that stops at its first
/// disconnect. Checks that no secret shows in the simple API's error (`Display`, `Debug`), the
/// disconnect reason (`Display`, `Debug`), or anything the actor's callbacks saw; returns the
/// simple API's error and the actor's.
async fn fail_both_ways(request: ConnectRequest) -> (Error, Error) {
    capture_logs();
    let result = actix_rt::time::timeout(
        WAIT,
        minch::connect(
            request.url.clone(),
            request.headers.clone(),
            request.options.clone(),
        ),
    )
    .await
    .expect("connect resolves in time");
    let Err(error) = result else {
        panic!("{request:?} connected");
    };
    assert_no_secret("the error's Display", &error.to_string());
    assert_no_secret("the error's Debug", &format!("{error:?}"));

    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let (reason, _) = event.disconnect().expect("a disconnect");
    assert_no_secret("the disconnect reason's Display", &reason.to_string());
    assert_no_secret("the disconnect reason's Debug", &format!("{reason:?}"));
    let actor_error = reason.error().expect("a failed attempt").clone();
    events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert_no_secret("the events", &events.history());
    drop(addr);
    (error, actor_error)
}

/// The request a server will turn down: secrets in the URL and in the headers.
fn secret_request(url: String) -> ConnectRequest {
    ConnectRequest::from((url, secret_headers()))
}

#[actix_rt::test]
async fn rejections_show_no_secret() {
    for (status, text) in [
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (503, "Unavailable"),
    ] {
        let server = scripted_ws_server(vec![Step::Handshake(
            Handshake::new()
                .status(status, text)
                .header("WWW-Authenticate", "Bearer realm=\"feed\"")
                .header("Content-Length", "0"),
        )]);
        let (error, actor_error) =
            fail_both_ways(secret_request(secret_url_on("ws", server.port()))).await;
        for error in [error, actor_error] {
            assert_eq!(
                error.status().map(|s| s.as_u16()),
                Some(status),
                "{error:?}"
            );
        }
        // The request did carry the secrets: the rejection was of a real attempt.
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|head| head.contains(BEARER) && head.contains(TOKEN)),
            "{requests:?}"
        );
    }
    let logged = records();
    assert!(
        logged
            .iter()
            .any(|r| r.contains("minch") && r.contains("401")),
        "no record of the rejection was captured; the check below would be vacuous"
    );
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn a_refused_connection_shows_no_secret() {
    let url = secret_url_on("ws", closed_port());
    let (error, actor_error) = fail_both_ways(secret_request(url)).await;
    for error in [error, actor_error] {
        assert!(matches!(error, Error::Connect(_)), "{error:?}");
    }
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn a_bad_header_value_is_not_shown() {
    let server = TestServer::start();
    let request = ConnectRequest::new(secret_url_on("ws", server.port()))
        .header("x-api-key", format!("{BEARER}\r\nx-evil: 1"))
        .header("authorization", format!("Bearer {BEARER}\0"));
    let (error, actor_error) = fail_both_ways(request).await;
    for error in [error, actor_error] {
        assert!(
            matches!(&error, Error::InvalidHeader { name, .. } if name == "x-api-key"),
            "{error:?}"
        );
        assert!(!error.to_string().contains("evil"), "{error}");
    }
    assert_eq!(server.upgrades(), 0, "nothing is sent with a bad header");
    assert_no_secret_in_logs();
}

#[cfg(feature = "tls")]
#[actix_rt::test]
async fn a_tls_failure_shows_no_secret() {
    // A self-signed certificate the default roots do not trust.
    let server = TestServer::start_tls();
    let (error, actor_error) =
        fail_both_ways(secret_request(secret_url_on("wss", server.port()))).await;
    for error in [error, actor_error] {
        assert!(matches!(error, Error::Tls(_)), "{error:?}");
    }
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn a_bad_handshake_and_a_timeout_show_no_secret() {
    // A subprotocol nobody offered.
    let server = scripted_ws_server(vec![Step::Handshake(
        Handshake::new().header("Sec-WebSocket-Protocol", "chat"),
    )]);
    let (error, actor_error) =
        fail_both_ways(secret_request(secret_url_on("ws", server.port()))).await;
    for error in [error, actor_error] {
        assert!(matches!(error, Error::Handshake(_)), "{error:?}");
    }

    // An upgrade answered too late.
    let server = scripted_ws_server(vec![Step::Handshake(
        Handshake::new().delay(Duration::from_secs(3)),
    )]);
    let options = ConnectOptions::default().upgrade_timeout(Duration::from_millis(300));
    let request = ConnectRequest::from((
        secret_url_on("ws", server.port()),
        secret_headers(),
        options,
    ));
    let (error, actor_error) = fail_both_ways(request).await;
    for error in [error, actor_error] {
        assert_eq!(error.timeout(), Some(Timeout::Upgrade), "{error:?}");
    }
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn a_protocol_error_while_connected_shows_no_secret() {
    capture_logs();
    // A masked frame from the server: the client fails the connection (1002).
    let server = scripted_ws_server(vec![
        Step::Send(masked_frame_bytes(true, 0x1, b"hi", [1, 2, 3, 4])),
        Step::WaitClose(WAIT),
    ]);
    let (handler, mut events) = Recorder::new(secret_request(secret_url_on("ws", server.port())));
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("handle_disconnect", WAIT, Event::is_disconnect)
        .await;
    let (reason, _) = event.disconnect().expect("a disconnect");
    assert!(
        matches!(reason.error(), Some(Error::Protocol(_))),
        "{reason:?}"
    );
    assert_no_secret("the disconnect reason's Display", &reason.to_string());
    assert_no_secret("the disconnect reason's Debug", &format!("{reason:?}"));
    events
        .wait_for("terminate", WAIT, Event::is_terminate)
        .await;
    assert_no_secret("the events", &events.history());
    assert_no_secret_in_logs();
}

#[actix_rt::test]
async fn proxy_credentials_are_never_shown() {
    let server = TestServer::start();
    let refusing = answering_proxy(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\
         Content-Length: 0\r\n\r\n",
    );
    let port = refusing.port();
    let through = |url: String| {
        secret_request(secret_url(&server))
            .options(ConnectOptions::default().proxy(Proxy::url(url)))
    };
    let (error, actor_error) = fail_both_ways(through(format!(
        "http://user:{PROXY_PASSWORD}@127.0.0.1:{port}"
    )))
    .await;
    for error in [error, actor_error] {
        assert!(
            matches!(
                error,
                Error::Proxy {
                    error: minch::ProxyError::AuthenticationRequired,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    // The credentials did go to the proxy.
    let heads = refusing.heads();
    assert!(
        heads.iter().any(|head| head.contains(PROXY_BASIC)),
        "{heads:?}"
    );

    // Unreachable, hanging, and malformed in the options: no credentials either.
    let (error, _) = fail_both_ways(through(format!(
        "socks5://user:{PROXY_PASSWORD}@127.0.0.1:{}",
        closed_port()
    )))
    .await;
    assert!(matches!(error, Error::Proxy { .. }), "{error:?}");
    let hanging = answering_proxy(b"");
    let request = through(format!(
        "http://user:{PROXY_PASSWORD}@127.0.0.1:{}",
        hanging.port()
    ));
    let options = request
        .options
        .clone()
        .connect_timeout(Duration::from_millis(200));
    let (error, _) = fail_both_ways(request.options(options)).await;
    assert!(
        matches!(error, Error::Timeout(Timeout::Connect)),
        "{error:?}"
    );
    let (error, _) = fail_both_ways(through(format!(
        "http://user:{PROXY_PASSWORD}@127.0.0.1:99999"
    )))
    .await;
    assert!(error.is_config(), "{error:?}");
    let options = ConnectOptions::default().proxy(Proxy::url(format!(
        "socks5h://user:{PROXY_PASSWORD}@proxy:1080"
    )));
    assert_no_secret("ConnectOptions' Debug", &format!("{options:?}"));
    assert!(
        records().iter().any(|r| r.contains("tunnel through")),
        "no record of a tunnel was captured; the check below would be vacuous"
    );
    assert_no_secret_in_logs();
}
