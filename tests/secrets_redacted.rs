//! Credentials in a URL (user info, query values, fragment) and in request headers never show
//! up in log records, errors or `Debug` output, while the connection still sends them.
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

use common::{Defaults, Event, Recorder, WAIT};
use minch::{Client, Close, ConnectOptions, ConnectRequest, Error, Frame};
use support::{ServerEvent, TestServer};

const TOKEN: &str = "SECRET123";
const BEARER: &str = "SECRET456";
const PASSWORD: &str = "SECRET789";
const FRAGMENT: &str = "SECRET246";
const BAD_URL_TOKEN: &str = "SECRET321";
const SECRETS: [&str; 5] = [TOKEN, BEARER, PASSWORD, FRAGMENT, BAD_URL_TOKEN];

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
