//! Through real proxies on loopback: pproxy (HTTP CONNECT and SOCKS5, with and without
//! credentials, installed into the interop venv on first use), and small scripted proxies for
//! a refusal, a SOCKS5 reply code and a proxy that never answers. ws:// and wss:// (TLS end to
//! end with the server, checked against the server's name), the actor, simple and blocking
//! APIs, and every failure typed. The environment variables have their own binary
//! (`tests/proxy_environment.rs`): they are process-wide.
//!
//! Every request here names its proxy, or `Proxy::None`, so a proxy set in the environment
//! of the machine running the tests changes nothing.

// wss:// cases run beside the ws:// ones: the file needs the `tls` feature (the default).
#![cfg(feature = "tls")]

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{closed_port, Event, Policy, Recorder, WAIT};
use minch::{
    blocking, http::StatusCode, Client, ConnectOptions, ConnectRequest, Error, Frame, Proxy,
    ProxyError,
};
use support::{pproxy, pproxy_with, scripted_proxy, ExternalServer, TempDir, TestServer};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

fn through(proxy: &str) -> ConnectOptions {
    ConnectOptions::default().proxy(Proxy::url(proxy))
}

fn started(listen: &str) -> ExternalServer {
    pproxy(listen).unwrap_or_else(|e| panic!("pproxy: {e}"))
}

/// Whether pproxy's log shows a tunnel to `target` (`host:port`).
async fn tunnelled(proxy: &ExternalServer, target: &str) -> bool {
    support::wait_until(WAIT, || proxy.stderr().contains(&format!("-> {target}"))).await
}

/// Connects with the simple API, echoes one text, closes.
async fn echo(url: &str, options: ConnectOptions) -> Result<(), Error> {
    let (connection, mut frames) =
        actix_rt::time::timeout(WAIT, minch::connect(url.to_owned(), no_headers(), options))
            .await
            .expect("connect resolves in time")?;
    connection
        .send_frame(Frame::text("through"))
        .await
        .expect("sent");
    let echoed = frames.receive_frame(WAIT).await.expect("echo");
    assert_eq!(echoed.as_text(), Some("through"));
    connection.close().await;
    Ok(())
}

fn tls_options(server: &TestServer) -> minch::TlsOptions {
    minch::TlsOptions::default().add_root_pem(server.cert_pem())
}

#[actix_rt::test]
async fn ws_through_an_http_proxy_without_and_with_credentials() {
    let server = TestServer::start();
    let open = started("http://127.0.0.1:PORT");
    let url = format!("http://127.0.0.1:{}", open.port());
    echo(&server.url("/echo"), through(&url)).await.unwrap();
    assert!(
        tunnelled(&open, &format!("127.0.0.1:{}", server.port())).await,
        "{}",
        open.stderr()
    );

    let guarded = started("http://127.0.0.1:PORT#user:pa%ss");
    let url = format!("http://user:pa%25ss@127.0.0.1:{}", guarded.port());
    echo(&server.url("/echo"), through(&url)).await.unwrap();
    assert!(tunnelled(&guarded, &format!("127.0.0.1:{}", server.port())).await);
}

#[actix_rt::test]
async fn wss_through_an_http_proxy_checks_the_servers_certificate_end_to_end() {
    let server = TestServer::start_tls();
    let proxy = started("http://127.0.0.1:PORT#user:pw");
    let url = format!("http://user:pw@127.0.0.1:{}", proxy.port());
    // The proxy resolves `localhost`; TLS is with the server, whose certificate names it.
    let options = through(&url).tls(tls_options(&server));
    echo(&server.url_localhost("/echo"), options).await.unwrap();
    assert!(tunnelled(&proxy, &format!("localhost:{}", server.port())).await);

    // Without the server's certificate trusted, the TLS error is the server's, not the proxy's:
    // the proxy only carries the bytes.
    let error = echo(&server.url_localhost("/echo"), through(&url))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
}

#[actix_rt::test]
async fn ws_and_wss_through_socks5_with_local_and_remote_name_resolution() {
    let server = TestServer::start();
    let tls_server = TestServer::start_tls();
    let proxy = started("socks5://127.0.0.1:PORT#user:pw");
    let port = proxy.port();

    // socks5://: minch resolves the name and asks for an address (an IP literal here: which
    // of 127.0.0.1 and ::1 `localhost` gives first depends on the machine).
    let local = format!("socks5://user:pw@127.0.0.1:{port}");
    echo(&server.url("/echo"), through(&local)).await.unwrap();
    assert!(tunnelled(&proxy, &format!("127.0.0.1:{}", server.port())).await);
    // socks5h://: the proxy gets the name.
    let remote = format!("socks5h://user:pw@127.0.0.1:{port}");
    let options = through(&remote).tls(tls_options(&tls_server));
    echo(&tls_server.url_localhost("/echo"), options)
        .await
        .unwrap();
    assert!(
        tunnelled(&proxy, &format!("localhost:{}", tls_server.port())).await,
        "{}",
        proxy.stderr()
    );
    let unauthenticated = started("socks5://127.0.0.1:PORT");
    let url = format!("socks5h://127.0.0.1:{}", unauthenticated.port());
    echo(&server.url("/echo"), through(&url)).await.unwrap();
}

#[actix_rt::test]
async fn wrong_or_missing_credentials_are_typed() {
    let server = TestServer::start();
    let proxy = started("http+socks5://127.0.0.1:PORT#user:right");
    let port = proxy.port();
    for url in [
        format!("http://user:wrong@127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
        let Error::Proxy { proxy, error } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(*error, ProxyError::AuthenticationRequired);
        assert_eq!(*proxy, format!("http://127.0.0.1:{port}"));
    }
    // pproxy hangs up on a SOCKS5 client without credentials, or with wrong ones, instead of
    // answering: a proxy error whose message points at the credentials.
    for url in [
        format!("socks5://127.0.0.1:{port}"),
        format!("socks5://user:wrong@127.0.0.1:{port}"),
    ] {
        let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
        let Error::Proxy { error: cause, .. } = &error else {
            panic!("{error:?}")
        };
        match cause {
            ProxyError::SocksAuthentication => {}
            ProxyError::Protocol(reason) => assert!(reason.contains("credentials"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{error} {error:?}").contains("wrong"));
    }
}

#[actix_rt::test]
async fn a_refused_connect_carries_its_status() {
    let server = TestServer::start();
    let port = scripted_proxy(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 8);
    let url = format!("http://127.0.0.1:{port}");
    let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::Refused(StatusCode::FORBIDDEN),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("403"), "{error}");
    assert!(!error.is_config());

    // Bytes after a 200: the tunnel cannot be trusted.
    let port = scripted_proxy(b"HTTP/1.1 200 OK\r\n\r\nextra", 8);
    let url = format!("http://127.0.0.1:{port}");
    let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::Protocol(_),
                ..
            }
        ),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn a_socks5_refusal_carries_its_reply_code() {
    let server = TestServer::start();
    // Greeting (version 5, one method: none) → method none; then the request (IPv4 target:
    // 10 bytes) → reply 2, connection not allowed by ruleset. The scripted proxy reads the
    // greeting only, so it answers both at once.
    let port = scripted_proxy(&[5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0], 3);
    let url = format!("socks5://127.0.0.1:{port}");
    let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::SocksReply(2),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("not allowed"), "{error}");
}

#[actix_rt::test]
async fn a_proxy_that_never_answers_times_out_within_connect_timeout() {
    let server = TestServer::start();
    for url in [
        format!("http://127.0.0.1:{}", scripted_proxy(b"", 8)),
        format!("socks5://127.0.0.1:{}", scripted_proxy(b"", 3)),
    ] {
        let options = through(&url).connect_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let error = echo(&server.url("/echo"), options).await.unwrap_err();
        assert!(
            matches!(error, Error::Timeout(minch::Timeout::Connect)),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[actix_rt::test]
async fn an_unreachable_proxy_is_typed_and_retried_by_the_actor_client() {
    let server = TestServer::start();
    let url = format!("http://127.0.0.1:{}", closed_port());
    let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::Unreachable(_),
                ..
            }
        ),
        "{error:?}"
    );

    // The actor client treats it as any connect failure: handle_disconnect, then again.
    let request = ConnectRequest::new(server.url("/echo")).options(through(&url));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Reconnect(Duration::from_millis(20))));
    for attempt in 1..=2 {
        let event = events
            .wait_for("a disconnect", WAIT, Event::is_disconnect)
            .await;
        let (_, seen_attempt) = event.disconnect().unwrap();
        assert_eq!(seen_attempt, attempt);
        assert!(
            matches!(
                event.disconnect_error(),
                Some(Error::Proxy {
                    error: ProxyError::Unreachable(_),
                    ..
                })
            ),
            "{event:?}"
        );
    }
    drop(addr);
}

#[actix_rt::test]
async fn the_actor_client_connects_and_reconnects_through_a_proxy() {
    let mut server = TestServer::start();
    let proxy = started("socks5://127.0.0.1:PORT#user:pw");
    let url = format!("socks5h://user:pw@127.0.0.1:{}", proxy.port());
    let request = ConnectRequest::new(server.url("/echo")).options(through(&url));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Reconnect(Duration::from_millis(20))));
    events
        .wait_for("connected", WAIT, Event::is_connected)
        .await;
    server.drop_all();
    events
        .wait_for("disconnected", WAIT, Event::is_disconnect)
        .await;
    events
        .wait_for("connected again", WAIT, Event::is_connected)
        .await;
    let sent = addr.send(minch::SendFrame(Frame::text("again"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the echo", WAIT, |e| e.is_text("again"))
        .await;
    server.stop();
}

#[test]
fn the_blocking_api_goes_through_the_proxy_too() {
    let server = TestServer::start();
    let proxy = started("http://127.0.0.1:PORT#user:pw");
    let url = format!("http://user:pw@127.0.0.1:{}", proxy.port());
    let (connection, frames) =
        blocking::connect(server.url("/echo"), no_headers(), through(&url)).expect("connects");
    connection
        .send_frame(Frame::text("blocking"))
        .expect("sent");
    assert_eq!(
        frames.receive_frame(WAIT).expect("echo").as_text(),
        Some("blocking")
    );
    connection.close();
    assert!(proxy
        .stderr()
        .contains(&format!("-> 127.0.0.1:{}", server.port())));

    let Err(error) = blocking::connect(
        server.url("/echo"),
        no_headers(),
        through(&format!("http://user:bad@127.0.0.1:{}", proxy.port())),
    ) else {
        panic!("connected with wrong credentials");
    };
    assert!(
        matches!(
            error,
            Error::Proxy {
                error: ProxyError::AuthenticationRequired,
                ..
            }
        ),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn proxy_none_connects_directly() {
    let server = TestServer::start();
    echo(
        &server.url("/echo"),
        ConnectOptions::default().proxy(Proxy::None),
    )
    .await
    .unwrap();
}

/// pproxy speaking TLS (`http+ssl://`) with a certificate for 127.0.0.1 made here; returns it
/// and the certificate's PEM.
fn tls_pproxy(dir: &std::path::Path, auth: &str) -> (ExternalServer, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert_path, key_path) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    std::fs::write(&cert_path, certificate.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let files = format!("{},{}", cert_path.display(), key_path.display());
    let proxy = pproxy_with(
        &format!("http+ssl://127.0.0.1:PORT{auth}"),
        &["--ssl", &files],
    )
    .unwrap_or_else(|e| panic!("pproxy: {e}"));
    (proxy, certificate.pem())
}

#[actix_rt::test]
async fn an_https_proxy_is_spoken_to_over_tls_and_wss_runs_inside() {
    let dir = TempDir::new();
    let (proxy, proxy_pem) = tls_pproxy(dir.path(), "#user:pw");
    let url = format!("https://user:pw@127.0.0.1:{}", proxy.port());
    let server = TestServer::start();
    let tls_server = TestServer::start_tls();
    let trust_proxy = || minch::TlsOptions::default().add_root_pem(proxy_pem.clone());

    // ws:// through it: TLS with the proxy only.
    echo(&server.url("/echo"), through(&url).tls(trust_proxy()))
        .await
        .unwrap();
    assert!(tunnelled(&proxy, &format!("127.0.0.1:{}", server.port())).await);
    // wss:// through it: TLS with the server inside TLS with the proxy.
    let both = trust_proxy().add_root_pem(tls_server.cert_pem());
    echo(&tls_server.url_localhost("/echo"), through(&url).tls(both))
        .await
        .unwrap();
    assert!(tunnelled(&proxy, &format!("localhost:{}", tls_server.port())).await);

    // The proxy's certificate is checked: not trusted, a typed proxy TLS error.
    let error = echo(&server.url("/echo"), through(&url)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::Tls(_),
                ..
            }
        ),
        "{error:?}"
    );
    // Wrong credentials inside the TLS: 407 as with a plain proxy.
    let wrong = format!("https://user:bad@127.0.0.1:{}", proxy.port());
    let error = echo(&server.url("/echo"), through(&wrong).tls(trust_proxy()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::AuthenticationRequired,
                ..
            }
        ),
        "{error:?}"
    );
}
