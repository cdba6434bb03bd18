//! `ConnectOptions::unix_socket`: WebSocket servers listening on a Unix domain socket in a
//! temporary directory: an in-process actix-web echo server for the actor, simple and blocking
//! APIs, and Python `websockets` (`unix_serve`, plain and with TLS) as an independent peer.
//! The URL gives the request path and `Host`; the socket path's length limit is tested at its
//! edge with a real socket.
#![cfg(unix)]

mod common;
mod support;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use common::{Event, Policy, Recorder, WAIT};
use futures_util::StreamExt;
use minch::{blocking, Client, ConnectOptions, ConnectRequest, Error, Frame, Proxy, SendFrame};
use support::TempDir;

/// What the server saw of each upgrade request: its path and `Host`.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An actix-web echo server on the Unix socket at `path`, on its own thread and System.
fn echo_server(path: &Path) -> Seen {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let path = path.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let recorded = recorded.clone();
                App::new().default_service(web::to(
                    move |request: HttpRequest, body: web::Payload| {
                        let recorded = recorded.clone();
                        async move {
                            let host = request
                                .headers()
                                .get("host")
                                .and_then(|host| host.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            recorded
                                .lock()
                                .unwrap()
                                .push((request.path().to_owned(), host));
                            let (response, mut session, stream) = actix_ws::handle(&request, body)?;
                            let mut stream = stream.aggregate_continuations();
                            actix_rt::spawn(async move {
                                while let Some(Ok(message)) = stream.next().await {
                                    let sent = match message {
                                        actix_ws::AggregatedMessage::Text(text) => {
                                            session.text(text).await
                                        }
                                        actix_ws::AggregatedMessage::Binary(bytes) => {
                                            session.binary(bytes).await
                                        }
                                        actix_ws::AggregatedMessage::Ping(bytes) => {
                                            session.pong(&bytes).await
                                        }
                                        actix_ws::AggregatedMessage::Close(reason) => {
                                            let _ = session.close(reason).await;
                                            return;
                                        }
                                        _ => Ok(()),
                                    };
                                    if sent.is_err() {
                                        return;
                                    }
                                }
                            });
                            Ok::<HttpResponse, actix_web::Error>(response)
                        }
                    },
                ))
            })
            .workers(1)
            .bind_uds(&path)
            .expect("bind the Unix socket")
            .run();
            let _ = ready_tx.send(());
            let _ = server.await;
        });
    });
    ready_rx.recv_timeout(WAIT).expect("server started");
    seen
}

fn through(path: &Path) -> ConnectOptions {
    ConnectOptions::default().unix_socket(path)
}

async fn simple_echo(url: &str, options: ConnectOptions) -> Result<(), Error> {
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(url.to_owned(), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time")?;
    connection
        .send_frame(Frame::text("over a socket"))
        .await
        .expect("sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("echo").as_text(),
        Some("over a socket")
    );
    connection.close().await;
    Ok(())
}

#[actix_rt::test]
async fn the_simple_api_over_a_unix_socket_sends_the_urls_path_and_host() {
    let dir = TempDir::new();
    let socket = dir.path().join("ws.sock");
    let seen = echo_server(&socket);
    simple_echo("ws://daemon.local/v1/events?x=1", through(&socket))
        .await
        .unwrap();
    assert_eq!(
        seen.lock().unwrap().clone(),
        [("/v1/events".to_owned(), "daemon.local".to_owned())]
    );
    // A proxy, from the options or the environment, does not apply to a Unix socket.
    let dead = format!("http://127.0.0.1:{}", common::closed_port());
    simple_echo(
        "ws://localhost:8080/other",
        through(&socket).proxy(Proxy::url(dead)),
    )
    .await
    .unwrap();
    assert_eq!(
        seen.lock().unwrap()[1],
        ("/other".into(), "localhost:8080".into())
    );
}

#[actix_rt::test]
async fn the_actor_client_over_a_unix_socket() {
    let dir = TempDir::new();
    let socket = dir.path().join("ws.sock");
    echo_server(&socket);
    let request = ConnectRequest::new("ws://localhost/echo").options(through(&socket));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Stop));
    events
        .wait_for("connected", WAIT, Event::is_connected)
        .await;
    let sent = addr.send(SendFrame(Frame::text("actor"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events.wait_for("echo", WAIT, |e| e.is_text("actor")).await;
}

#[test]
fn the_blocking_api_over_a_unix_socket() {
    let dir = TempDir::new();
    let socket = dir.path().join("ws.sock");
    echo_server(&socket);
    let (connection, frames) = blocking::connect(
        "ws://localhost/echo",
        Vec::<(String, String)>::new(),
        through(&socket),
    )
    .expect("connects");
    connection
        .send_frame(Frame::text("blocking"))
        .expect("sent");
    assert_eq!(
        frames.receive_frame(WAIT).expect("echo").as_text(),
        Some("blocking")
    );
    connection.close();
}

#[actix_rt::test]
async fn a_missing_socket_is_a_connect_error_naming_it() {
    let dir = TempDir::new();
    let socket = dir.path().join("nobody-listens.sock");
    let error = simple_echo("ws://localhost/", through(&socket))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect(_)), "{error:?}");
    assert!(!error.is_config());
    assert!(error.to_string().contains("nobody-listens.sock"), "{error}");
}

#[actix_rt::test]
async fn the_path_length_limit_is_checked_at_its_edge() {
    let max = ConnectOptions::MAX_UNIX_SOCKET_PATH;
    let dir = TempDir::new();
    let prefix = dir.path().join("s").into_os_string().into_string().unwrap();
    assert!(
        prefix.len() < max,
        "temp dir too long for this test: {prefix}"
    );
    // A socket at a path of exactly the limit works.
    let longest = PathBuf::from(format!("{prefix}{}", "x".repeat(max - prefix.len())));
    assert_eq!(longest.as_os_str().len(), max);
    echo_server(&longest);
    simple_echo("ws://localhost/", through(&longest))
        .await
        .unwrap();
    // One byte more, or no path at all, is refused before any I/O.
    let too_long = PathBuf::from(format!("{prefix}{}", "x".repeat(max + 1 - prefix.len())));
    for path in [too_long, PathBuf::new()] {
        let error = simple_echo("ws://localhost/", through(&path))
            .await
            .unwrap_err();
        assert!(error.is_config(), "{error:?}");
        assert!(error.to_string().contains("unix_socket"), "{error}");
    }
}

#[cfg(feature = "tls")]
#[actix_rt::test]
async fn python_websockets_over_a_unix_socket_plain_and_with_tls() {
    let dir = TempDir::new();
    let socket = dir.path().join("py.sock");
    let _plain =
        support::python_unix_echo_server(&socket, None).unwrap_or_else(|e| panic!("python: {e}"));
    simple_echo("ws://localhost/", through(&socket))
        .await
        .unwrap();

    // TLS over the socket, checked against the URL's host.
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["daemon.local".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls_socket = dir.path().join("py-tls.sock");
    let _tls = support::python_unix_echo_server(
        &tls_socket,
        Some((&certificate.pem(), &key.serialize_pem())),
    )
    .unwrap_or_else(|e| panic!("python: {e}"));
    let trusting = minch::TlsOptions::default().add_root_pem(certificate.pem());
    simple_echo(
        "wss://daemon.local/",
        through(&tls_socket).tls(trusting.clone()),
    )
    .await
    .unwrap();
    let error = simple_echo("wss://other.local/", through(&tls_socket).tls(trusting))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
}
