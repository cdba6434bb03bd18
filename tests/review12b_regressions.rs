//! Review 12b: the Unix-socket route, the connector (IPv6 literals, proxies) and the
//! upgrade's answer, against real peers on 127.0.0.1, ::1 and Unix sockets in temporary
//! directories. Every test here but the one marked GUARD failed on the code it was written
//! against (b93331b); each says what a user sees and what should happen instead.
//!
//! ```sh
//! cargo test --test review12b_regressions
//! ```
#![cfg(all(unix, feature = "tls"))]

mod common;
mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{mpsc, Arc},
    time::Duration,
};

use minch::{ConnectOptions, Error, Frame, Proxy, TlsOptions};
use support::{close_frame, read_head, sec_websocket_accept, text_frame, TempDir};

/// The bound on every wait in this file.
const WAIT: Duration = Duration::from_secs(10);

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// A self-signed certificate for `names` (IP addresses become IP SANs) and a server config.
struct Cert {
    der: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
}

fn cert_for(names: &[&str]) -> Cert {
    let params = rcgen::CertificateParams::new(
        names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>(),
    )
    .expect("certificate params");
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed");
    let der = cert.der().to_vec();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![der.clone().into()], key_der)
    .expect("server certificate");
    Cert {
        der,
        config: Arc::new(config),
    }
}

/// Answers a WebSocket upgrade on `stream` with a correct 101 followed, in the same write, by
/// `after`; then holds the connection until the client goes (or the read timeout). Sends the
/// request head on `heads`.
fn answer_upgrade(mut stream: impl Read + Write, after: &[u8], heads: &mpsc::Sender<String>) {
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let _ = heads.send(head);
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        sec_websocket_accept(&key)
    )
    .into_bytes();
    answer.extend_from_slice(after);
    if stream
        .write_all(&answer)
        .and_then(|()| stream.flush())
        .is_err()
    {
        return;
    }
    // The client's next bytes are its close frame (the tests send nothing else): answer it.
    let mut sink = [0u8; 1024];
    if matches!(stream.read(&mut sink), Ok(n) if n > 0) {
        let _ = stream.write_all(&close_frame(Some(1000), ""));
        let _ = stream.flush();
    }
}

/// Serves WebSocket upgrades on a TCP listener (TLS with `tls`), one thread per connection,
/// each answered with a 101 and the text frame "hello". Returns the request heads seen.
fn serve_tcp(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(WAIT));
            let tx = tx.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let connection = rustls::ServerConnection::new(config).expect("tls");
                    answer_upgrade(
                        rustls::StreamOwned::new(connection, stream),
                        &text_frame("hello"),
                        &tx,
                    );
                }
                None => answer_upgrade(stream, &text_frame("hello"), &tx),
            });
        }
    });
    rx
}

/// The same over a Unix socket listener.
fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(WAIT));
            let tx = tx.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let connection = rustls::ServerConnection::new(config).expect("tls");
                    answer_upgrade(
                        rustls::StreamOwned::new(connection, stream),
                        &text_frame("hello"),
                        &tx,
                    );
                }
                None => answer_upgrade(stream, &text_frame("hello"), &tx),
            });
        }
    });
    rx
}

/// Connects with the simple API within [`WAIT`] and expects the server's "hello".
async fn connect_and_hear_hello(url: &str, options: ConnectOptions) -> Result<(), Error> {
    let (connection, mut frames) =
        actix_rt::time::timeout(WAIT, minch::connect(url.to_owned(), no_headers(), options))
            .await
            .expect("connect resolves within the bound")?;
    let frame = frames.receive_frame(WAIT).await;
    assert!(
        matches!(&frame, Ok(Frame::Text(text)) if text.as_str() == "hello"),
        "expected the server's first frame, got {frame:?}"
    );
    connection.close().await;
    Ok(())
}

fn trusting(cert: &Cert) -> ConnectOptions {
    ConnectOptions::default()
        .proxy(Proxy::None)
        .tls(TlsOptions::default().add_root_certificate(cert.der.clone()))
}

// ------------------------------------------------------------------------------------------
// IPv6 literal hosts and wss://
// ------------------------------------------------------------------------------------------

/// Review finding (failed on 4bf3c85, fixed since): `wss://[::1]:PORT/` never connects. The user sees
/// `Error::Tls("... invalid server name ...")` against a server whose certificate is valid for
/// `::1`: the connector hands actix-tls a `Uri` whose host is `[::1]` *with* the brackets, and
/// `rustls::pki_types::ServerName::try_from("[::1]")` refuses it (neither a DNS name nor an IP
/// address). `ws://[::1]` works, so only TLS to IPv6 literals is broken. It should connect,
/// verifying the certificate's IP address SAN `::1`.
#[actix_rt::test]
async fn wss_to_an_ipv6_literal_host_connects() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let cert = cert_for(&["::1"]);
    let heads = serve_tcp(listener, Some(cert.config.clone()));
    let url = format!("wss://[::1]:{port}/feed");
    let result = connect_and_hear_hello(&url, trusting(&cert)).await;
    assert!(
        result.is_ok(),
        "wss:// to an IPv6 literal with a certificate valid for ::1 failed: {result:?}"
    );
    let head = heads.recv_timeout(WAIT).expect("request head");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: [::1]:{port}\r\n")),
        "{head}"
    );
}

/// Review finding (failed on 4bf3c85, fixed since; same cause as above, over a Unix socket, so it needs no IPv6 on the machine): with
/// `unix_socket` and `wss://[::1]/…`, the README promises "`wss://` runs TLS over the socket,
/// with the certificate checked against the URL's host"; the user instead gets a TLS error
/// about an invalid server name before any byte of TLS is sent.
#[actix_rt::test]
async fn wss_over_a_unix_socket_with_an_ipv6_literal_url_host_connects() {
    let dir = TempDir::new();
    let path = dir.path().join("tls.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let cert = cert_for(&["::1"]);
    let heads = serve_unix(listener, Some(cert.config.clone()));
    let result =
        connect_and_hear_hello("wss://[::1]/events", trusting(&cert).unix_socket(&path)).await;
    assert!(
        result.is_ok(),
        "wss://[::1]/ over a Unix socket, certificate valid for ::1, failed: {result:?}"
    );
    let head = heads.recv_timeout(WAIT).expect("request head");
    assert!(head.starts_with("GET /events HTTP/1.1\r\n"), "{head}");
}

/// Review finding (failed on 4bf3c85, fixed since; same cause, through an HTTP proxy): `wss://[::1]:PORT/` through a `CONNECT` proxy
/// sends a correct `CONNECT [::1]:PORT` and gets `200`, then fails the same TLS way. The
/// "proxy" here answers `200` and then is the TLS server itself, with a certificate for `::1`.
#[actix_rt::test]
async fn wss_to_an_ipv6_literal_host_through_an_http_proxy_connects() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy_port = listener.local_addr().unwrap().port();
    let cert = cert_for(&["::1"]);
    let config = cert.config.clone();
    let (connects_tx, connects) = mpsc::channel();
    let (heads_tx, heads) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(WAIT));
            let Some(head) = read_head(&mut stream) else {
                continue;
            };
            let _ = connects_tx.send(head);
            let _ = stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            let connection = rustls::ServerConnection::new(config.clone()).expect("tls");
            answer_upgrade(
                rustls::StreamOwned::new(connection, stream),
                &text_frame("hello"),
                &heads_tx,
            );
        }
    });
    let options = trusting(&cert).proxy(Proxy::url(format!("http://127.0.0.1:{proxy_port}")));
    let result = connect_and_hear_hello("wss://[::1]:9443/feed", options).await;
    let connect = connects.recv_timeout(WAIT).expect("a CONNECT request");
    assert!(
        connect.starts_with("CONNECT [::1]:9443 HTTP/1.1\r\n"),
        "{connect}"
    );
    assert!(
        result.is_ok(),
        "wss://[::1] through an HTTP proxy, certificate valid for ::1, failed: {result:?}"
    );
    let head = heads.recv_timeout(WAIT).expect("request head");
    assert!(
        head.to_ascii_lowercase().contains("host: [::1]:9443\r\n"),
        "{head}"
    );
}

// ------------------------------------------------------------------------------------------
// Unix sockets
// ------------------------------------------------------------------------------------------

/// Review finding (failed on 4bf3c85, fixed since): `connect_timeout` is documented as the time allowed to connect to the Unix socket
/// ("To the Unix socket at `path` ..., within `connect_timeout`"), but a listener whose
/// backlog is momentarily full makes the attempt fail at once with
/// `Error::Connect("... Resource temporarily unavailable (os error 11)")`: Linux answers a
/// non-blocking `connect(2)` on a full `AF_UNIX` backlog with `EAGAIN`, and minch takes that
/// as final. Over TCP the same situation waits (the SYN is retried) within `connect_timeout`,
/// and a blocking client waits for room in the backlog. A daemon under a burst of connections
/// (exactly what Docker-style sockets see) thus refuses clients that would have been accepted
/// 200 ms later. Expected: the attempt keeps trying until `connect_timeout` (here 5 s) and
/// connects once the server accepts.
#[actix_rt::test]
async fn a_full_unix_backlog_is_waited_for_within_connect_timeout() {
    let dir = TempDir::new();
    let path = dir.path().join("busy.sock");
    let socket = tokio::net::UnixSocket::new_stream().expect("socket");
    socket.bind(&path).expect("bind");
    // A backlog of 0: one pending connection fills it on Linux.
    let listener = socket.listen(0).expect("listen").into_std().expect("std");
    listener.set_nonblocking(false).expect("blocking");
    let filler = std::os::unix::net::UnixStream::connect(&path).expect("fill the backlog");
    let (tx, heads) = mpsc::channel();
    std::thread::spawn(move || {
        // The server is busy for 300 ms, then catches up with its backlog.
        std::thread::sleep(Duration::from_millis(300));
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(WAIT));
            let tx = tx.clone();
            std::thread::spawn(move || answer_upgrade(stream, &text_frame("hello"), &tx));
        }
    });
    let options = ConnectOptions::default()
        .unix_socket(&path)
        .connect_timeout(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let result = connect_and_hear_hello("ws://localhost/", options).await;
    drop(filler);
    assert!(
        result.is_ok(),
        "a Unix socket whose backlog was full for 300 ms failed after {:?} with {result:?} \
         (connect_timeout 5 s)",
        started.elapsed()
    );
    let _ = heads.recv_timeout(WAIT);
}

/// GUARD (passes): the actor client reconnects by path on every attempt, so a daemon that
/// goes away (socket file removed) and comes back (a new socket at the same path) is found
/// again; the failed attempts in between are typed connect errors, not configuration errors.
#[actix_rt::test]
async fn guard_the_actor_client_finds_a_socket_removed_and_recreated() {
    let dir = TempDir::new();
    let path = dir.path().join("restart.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let (tx, _first_heads) = mpsc::channel();
    let first = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let _ = stream.set_read_timeout(Some(WAIT));
        let mut after = text_frame("hello");
        after.extend_from_slice(&close_frame(Some(1001), "restarting"));
        answer_upgrade(stream, &after, &tx);
        // The listener goes with the thread.
    });
    let request = minch::ConnectRequest::new("ws://localhost/feed")
        .options(ConnectOptions::default().unix_socket(&path));
    let (handler, mut events) = common::Recorder::new(request);
    let _client =
        minch::Client::start(handler.policy(common::Policy::Reconnect(Duration::from_millis(50))));
    events
        .wait_for("first connection", WAIT, common::Event::is_connected)
        .await;
    events.wait_for("hello", WAIT, |e| e.is_text("hello")).await;
    events
        .wait_for("the server's close", WAIT, common::Event::is_disconnect)
        .await;
    first.join().expect("first server");
    std::fs::remove_file(&path).expect("remove the socket");
    for _ in 0..2 {
        let failed = events
            .wait_for("a failed attempt", WAIT, common::Event::is_disconnect)
            .await;
        let error = failed.disconnect_error().cloned();
        assert!(
            matches!(&error, Some(Error::Connect(_))),
            "while the socket is gone: {error:?}"
        );
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind again");
    let heads = serve_unix(listener, None);
    events
        .wait_for(
            "the connection to the new socket",
            WAIT,
            common::Event::is_connected,
        )
        .await;
    let head = heads.recv_timeout(WAIT).expect("request head");
    assert!(head.starts_with("GET /feed HTTP/1.1\r\n"), "{head}");
}

// ------------------------------------------------------------------------------------------
// The upgrade's answer
// ------------------------------------------------------------------------------------------

/// Review finding (failed on 4bf3c85, fixed since; low severity): an interim `1xx` answer before the `101` (here `103 Early Hints`, which
/// CDNs and some frameworks send) fails the connection with `Error::Rejected { status: 103 }`
/// ("the server rejected the WebSocket upgrade with HTTP 103 Early Hints"), a rejection with a
/// complete, empty body. RFC 9110 §15.2: "A client MUST be able to parse one or more 1xx
/// responses received prior to a final response, even if the client does not expect one."
/// minch's own CONNECT code skips them (src/proxy/tunnel.rs); the upgrade does not (awc takes
/// the first head it parses, src/transport.rs `open`). Expected: skip the 103 and upgrade.
#[actix_rt::test]
async fn an_interim_103_before_the_101_is_skipped() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (heads_tx, _heads) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(WAIT));
            let heads_tx = heads_tx.clone();
            std::thread::spawn(move || {
                answer_upgrade(
                    EarlyHints {
                        stream,
                        hinted: false,
                    },
                    &text_frame("hello"),
                    &heads_tx,
                )
            });
        }
    });
    let result = connect_and_hear_hello(
        &format!("ws://127.0.0.1:{port}/"),
        ConnectOptions::default().proxy(Proxy::None),
    )
    .await;
    assert!(
        result.is_ok(),
        "a 103 Early Hints before the 101 failed the connection: {result:?}"
    );
}

/// A stream that writes `103 Early Hints` before the first thing written to it.
struct EarlyHints<S> {
    stream: S,
    hinted: bool,
}

impl<S: Read> Read for EarlyHints<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl<S: Write> Write for EarlyHints<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !std::mem::replace(&mut self.hinted, true) {
            self.stream
                .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n")?;
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
