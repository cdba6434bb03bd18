//! Mutual TLS: an actix-web server that requires a client certificate signed by its CA.
//!
//! Accepted with the right certificate, given with `TlsOptions::client_certificate_pem` or in a
//! user-built `rustls::ClientConfig`, through the actor client, the simple API and the blocking
//! API; refused with a typed `Error::Tls` without a certificate or with one from another CA
//! (TLS 1.3, where the refusal comes after the client's handshake, and TLS 1.2, where it comes
//! within it). A user `ClientConfig` offers ALPN `http/1.1` whatever its list said (the server
//! also speaks h2, and records what was negotiated). The edges of the options: PEM that holds
//! nothing usable, a key that does not match, a `ClientConfig` with the settings it replaces.
//!
//! Certificates come from rcgen, made in the test; the server listens on 127.0.0.1 only, on
//! its own thread and actix System.
#![cfg(feature = "tls")]

mod common;

use std::net::Ipv4Addr;
use std::sync::{mpsc, Arc, Mutex};

use actix_web::{dev::Extensions, web, App, HttpRequest, HttpResponse, HttpServer};
use common::{Event, Policy, Recorder, WAIT};
use minch::{
    blocking, Client, Close, ConnectOptions, ConnectRequest, Error, Frame, SendFrame, StopReason,
    TlsOptions,
};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
};

/// TLS 1.3: the server refuses a client certificate after the client's side of the handshake
/// is done. TLS 1.2: within the handshake.
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA that signs certificates, made fresh for each test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate signed by a [`Ca`], with its key.
struct Leaf {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    fn sign(&self, name: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed leaf");
        Leaf { cert, key }
    }

    fn client(&self, name: &str) -> Leaf {
        self.sign(name, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.serialize_der().into())
    }

    fn options(&self) -> TlsOptions {
        TlsOptions::default().client_certificate_pem(self.cert.pem(), self.key.serialize_pem())
    }
}

/// What the server learnt of one TLS connection that reached the route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    /// The ALPN protocol negotiated.
    alpn: Option<Vec<u8>>,
    /// The client's certificate (the first of its chain).
    client_cert: Option<Vec<u8>>,
}

/// An actix-web WebSocket echo server that requires a client certificate signed by `client_ca`,
/// with a server certificate for 127.0.0.1 signed by `server_ca`.
struct MtlsServer {
    port: u16,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    peers: Arc<Mutex<Vec<Peer>>>,
}

impl MtlsServer {
    fn start(server_ca: &Ca, client_ca: &Ca) -> MtlsServer {
        Self::start_with(server_ca, client_ca, rustls::DEFAULT_VERSIONS)
    }

    fn start_with(
        server_ca: &Ca,
        client_ca: &Ca,
        versions: &'static [&'static SupportedProtocolVersion],
    ) -> MtlsServer {
        let server = server_ca.sign(
            "minch mtls server",
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let mut client_roots = RootCertStore::empty();
        client_roots.add(client_ca.der()).expect("client CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider())
                .build()
                .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.der(), server_ca.der()], server.key_der())
            .expect("server certificate");

        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&peers);
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let seen = web::Data::new(seen);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(seen.clone())
                        .route("/echo", web::to(echo))
                })
                .on_connect(record_tls)
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind_rustls_0_23((Ipv4Addr::LOCALHOST, 0), config)
                .expect("bind 127.0.0.1");
                let port = server.addrs()[0].port();
                let server = server.run();
                ready_tx.send((port, server.handle())).expect("test alive");
                let _ = server.await;
            });
        });
        let (port, handle) = ready_rx
            .recv_timeout(WAIT)
            .expect("the mTLS server started");
        MtlsServer {
            port,
            handle,
            thread: Some(thread),
            peers,
        }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/echo", self.port)
    }

    fn peers(&self) -> Vec<Peer> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for MtlsServer {
    fn drop(&mut self) {
        let stopping = self.handle.stop(false);
        let _ = std::thread::spawn(move || actix_rt::System::new().block_on(stopping)).join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps the negotiated ALPN and the client certificate of each TLS connection.
fn record_tls(connection: &dyn std::any::Any, data: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = connection.downcast_ref::<Tls>() {
        let (_, session) = tls.get_ref();
        data.insert(Peer {
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            client_cert: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.to_vec()),
        });
    }
}

async fn echo(
    req: HttpRequest,
    body: web::Payload,
    seen: web::Data<Arc<Mutex<Vec<Peer>>>>,
) -> actix_web::Result<HttpResponse> {
    if let Some(peer) = req.conn_data::<Peer>() {
        seen.lock().unwrap().push(peer.clone());
    }
    let (response, mut session, mut stream) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = stream.recv().await {
            let sent = match message {
                actix_ws::Message::Text(text) => session.text(text).await,
                actix_ws::Message::Binary(bytes) => session.binary(bytes).await,
                actix_ws::Message::Ping(bytes) => session.pong(&bytes).await,
                actix_ws::Message::Close(reason) => {
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
    Ok(response)
}

/// A client configuration trusting `ca`, presenting `client`, offering `alpn`.
fn user_config(ca: &Ca, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).expect("CA");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => builder
            .with_client_auth_cert(vec![client.der()], client.key_der())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn options(tls: TlsOptions) -> ConnectOptions {
    ConnectOptions::default().tls(tls)
}

/// `minch::connect`, bounded.
async fn connect(
    server: &MtlsServer,
    tls: TlsOptions,
) -> Result<(minch::Connection, minch::Frames), Error> {
    actix_rt::time::timeout(
        WAIT,
        minch::connect(server.url(), Vec::<(String, String)>::new(), options(tls)),
    )
    .await
    .expect("connect resolves in time")
}

/// Connects with the simple API, checks an echo and closes.
async fn assert_echo(server: &MtlsServer, tls: TlsOptions, text: &str) {
    let (connection, mut frames) = connect(server, tls).await.expect("connects");
    assert_eq!(connection.response().status.as_u16(), 101);
    connection
        .send_frame(Frame::text(text.to_owned()))
        .await
        .expect("sent");
    let echo = frames.receive_frame(WAIT).await.expect("echo");
    assert_eq!(echo.as_text(), Some(text));
    connection.close().await;
}

/// The connection failed with `Error::Tls`, whose message says the server refused it and
/// points at the client certificate options.
fn assert_refused_by_server(result: Result<(minch::Connection, minch::Frames), Error>) {
    let error = match result {
        Err(error @ Error::Tls(_)) => error,
        Err(other) => panic!("expected Error::Tls, got {other:?}"),
        Ok(_) => panic!("expected Error::Tls, but the server accepted the connection"),
    };
    assert!(!error.is_config());
    let shown = error.to_string();
    assert!(shown.contains("client_certificate_pem"), "{shown}");
}

#[actix_rt::test]
async fn the_simple_api_is_accepted_with_the_right_client_certificate() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch test client");
    let tls = client.options().add_root_pem(ca.pem());
    assert_echo(&server, tls, "mutual").await;
    let peers = server.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].client_cert.as_deref(), Some(client.der().as_ref()));
    assert_eq!(peers[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[actix_rt::test]
async fn the_actor_client_is_accepted_with_the_right_client_certificate() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch actor client");
    let request =
        ConnectRequest::new(server.url()).options(options(client.options().add_root_pem(ca.pem())));
    let (handler, mut events) = Recorder::new(request);
    let addr = Client::start(handler.policy(Policy::Stop));
    let connected = events
        .wait_for("handle_connect over mTLS", WAIT, |e| {
            e.is_connected() || e.is_disconnect()
        })
        .await;
    assert!(
        matches!(connected, Event::Connected { status: 101, .. }),
        "{}",
        events.history()
    );
    let sent = addr.send(SendFrame(Frame::text("actor over mTLS"))).await;
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    events
        .wait_for("the echo", WAIT, |e| e.is_text("actor over mTLS"))
        .await;
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
    assert_eq!(
        server.peers()[0].client_cert.as_deref(),
        Some(client.der().as_ref())
    );
}

#[test]
fn the_blocking_api_is_accepted_with_the_right_client_certificate() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch blocking client");
    for (tls, text) in [
        (client.options().add_root_pem(ca.pem()), "blocking, PEM"),
        (
            TlsOptions::default().client_config(user_config(&ca, Some(&client), &[])),
            "blocking, ClientConfig",
        ),
    ] {
        let (connection, frames) =
            blocking::connect(server.url(), Vec::<(String, String)>::new(), options(tls))
                .expect("connects");
        connection.send_frame(Frame::text(text)).expect("sent");
        let echo = frames.receive_frame(WAIT).expect("echo");
        assert_eq!(echo.as_text(), Some(text));
        connection.close();
    }
    let peers = server.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers
        .iter()
        .all(|peer| peer.client_cert.as_deref() == Some(client.der().as_ref())));
}

#[actix_rt::test]
async fn a_user_client_config_offers_http_1_1_whatever_its_alpn() {
    // The server speaks h2 as well, and prefers it: a client that offered h2 would get it, and
    // its HTTP/1.1 upgrade request would fail.
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch config client");
    let cases: [&[&[u8]]; 5] = [
        &[],
        &[b"h2"],
        &[b"h2", b"http/1.1"],
        &[b"http/1.1"],
        &[b"http/1.1", b"h2"],
    ];
    for alpn in cases {
        let config = user_config(&ca, Some(&client), alpn);
        let tls = TlsOptions::default().client_config(config.clone());
        assert_echo(&server, tls, "user config").await;
        // The user's configuration itself is not changed.
        assert_eq!(config.alpn_protocols.len(), alpn.len());
        let peer = server.peers().pop().expect("the server saw the connection");
        assert_eq!(
            peer.alpn.as_deref(),
            Some(&b"http/1.1"[..]),
            "ALPN offered {alpn:?}"
        );
        assert_eq!(peer.client_cert.as_deref(), Some(client.der().as_ref()));
    }
    assert_eq!(server.peers().len(), cases.len());
}

#[actix_rt::test]
async fn without_a_client_certificate_the_connection_fails_with_a_tls_error() {
    let ca = Ca::new("minch test CA");
    for versions in [TLS13_ONLY, TLS12_ONLY] {
        let server = MtlsServer::start_with(&ca, &ca, versions);
        // The server's certificate is trusted: only the client's is missing.
        assert_refused_by_server(
            connect(&server, TlsOptions::default().add_root_pem(ca.pem())).await,
        );
        assert_refused_by_server(
            connect(
                &server,
                TlsOptions::default().client_config(user_config(&ca, None, &[])),
            )
            .await,
        );
        assert!(server.peers().is_empty(), "{:?}", server.peers());
    }
}

#[actix_rt::test]
async fn a_client_certificate_from_another_ca_fails_with_a_tls_error() {
    let ca = Ca::new("minch test CA");
    let other = Ca::new("someone else's CA");
    let stranger = other.client("minch stranger");
    for versions in [TLS13_ONLY, TLS12_ONLY] {
        let server = MtlsServer::start_with(&ca, &ca, versions);
        assert_refused_by_server(connect(&server, stranger.options().add_root_pem(ca.pem())).await);
        assert_refused_by_server(
            connect(
                &server,
                TlsOptions::default().client_config(user_config(&ca, Some(&stranger), &[])),
            )
            .await,
        );
        assert!(server.peers().is_empty(), "{:?}", server.peers());
    }
}

#[actix_rt::test]
async fn the_actor_client_reports_a_refused_client_certificate_as_a_tls_error() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let request = ConnectRequest::new(server.url())
        .options(options(TlsOptions::default().add_root_pem(ca.pem())));
    let (handler, mut events) = Recorder::new(request);
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    match event.disconnect_error() {
        Some(error @ Error::Tls(_)) => {
            assert!(!error.is_config());
            assert!(
                error.to_string().contains("client_certificate_pem"),
                "{error}"
            );
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    assert_eq!(events.count(Event::is_connected), 0);
}

#[actix_rt::test]
async fn a_user_client_config_is_used_as_given_without_roots_added() {
    // No roots in the configuration: not even the server's CA is trusted, as no roots were
    // added to it (and the bundled ones would not help either).
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch client");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(vec![client.der()], client.key_der())
        .expect("client certificate");
    let result = connect(
        &server,
        TlsOptions::default().client_config(Arc::new(config)),
    )
    .await;
    match result {
        Err(Error::Tls(reason)) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
        other => panic!("expected Error::Tls, got {:?}", other.err()),
    }
}

// ---- the edges of the options: configuration errors, before any I/O ----

/// `minch::connect` with `tls` fails with `Error::InvalidOptions` before any I/O; returns its
/// message.
async fn invalid(server: &MtlsServer, tls: TlsOptions) -> String {
    match connect(server, tls).await {
        Err(error @ Error::InvalidOptions(_)) => {
            assert!(error.is_config());
            error.to_string()
        }
        other => panic!("expected Error::InvalidOptions, got {:?}", other.err()),
    }
}

#[actix_rt::test]
async fn unusable_client_certificates_are_invalid_options_naming_the_fault() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch client");
    let other = ca.client("another client");
    let cert_pem = client.cert.pem();
    let key_pem = client.key.serialize_pem();
    let key_line = key_pem.lines().nth(1).expect("a key line").to_owned();
    let encrypted = key_pem.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
    let not_base64 = key_pem.replacen(&key_line, &format!("{key_line}*!"), 1);
    let garbage_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "empty PEM",
            String::new(),
            String::new(),
            "the certificate chain holds no CERTIFICATE block",
        ),
        (
            "empty key",
            cert_pem.clone(),
            String::new(),
            "the key holds no PRIVATE KEY",
        ),
        (
            "only certificates",
            cert_pem.clone(),
            cert_pem.clone(),
            "it holds a certificate: were the chain and the key swapped?",
        ),
        (
            "only a key",
            key_pem.clone(),
            key_pem.clone(),
            "it holds a private key: were the chain and the key swapped?",
        ),
        (
            "swapped",
            key_pem.clone(),
            cert_pem.clone(),
            "the certificate chain holds no CERTIFICATE block",
        ),
        (
            "another certificate's key",
            cert_pem.clone(),
            other.key.serialize_pem(),
            "the private key does not match the certificate",
        ),
        (
            "an encrypted key",
            cert_pem.clone(),
            encrypted,
            "an ENCRYPTED PRIVATE KEY must be decrypted first",
        ),
        (
            "a key that is not base64",
            cert_pem.clone(),
            not_base64,
            "the key is not valid PEM",
        ),
        (
            "a certificate that does not parse",
            garbage_cert.to_owned(),
            key_pem.clone(),
            "the first certificate in the chain cannot be parsed",
        ),
    ];
    for (case, chain, key, expected) in cases {
        let tls = TlsOptions::default()
            .add_root_pem(ca.pem())
            .client_certificate_pem(chain, key);
        let shown = invalid(&server, tls).await;
        assert!(shown.contains("client_certificate_pem"), "{case}: {shown}");
        assert!(shown.contains(expected), "{case}: {shown}");
        assert!(!shown.contains(&key_line), "{case} shows the key: {shown}");
    }
    // A file with the certificate and the key in it works for both.
    let both = format!("{cert_pem}{key_pem}");
    assert_echo(
        &server,
        TlsOptions::default()
            .add_root_pem(ca.pem())
            .client_certificate_pem(&both, &both),
        "one file for both",
    )
    .await;
    assert_eq!(server.peers().len(), 1, "only the last one connected");
}

#[actix_rt::test]
async fn a_user_client_config_refuses_the_settings_it_replaces() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch client");
    let config = || TlsOptions::default().client_config(user_config(&ca, Some(&client), &[]));
    for (tls, name) in [
        (config().add_root_pem(ca.pem()), "add_root_pem"),
        (
            config().add_root_certificate(ca.der().to_vec()),
            "add_root_certificate",
        ),
        (config().native_roots(true), "native_roots"),
        (
            client.options().client_config(user_config(&ca, None, &[])),
            "client_certificate_pem",
        ),
        (
            config().danger_accept_invalid_certs(true),
            "danger_accept_invalid_certs",
        ),
    ] {
        let shown = invalid(&server, tls).await;
        assert!(shown.contains("TlsOptions::client_config"), "{shown}");
        assert!(shown.contains(name), "{name}: {shown}");
    }
    // Several at once are all named.
    let shown = invalid(&server, config().native_roots(true).add_root_pem(ca.pem())).await;
    assert!(shown.contains("add_root_pem, native_roots"), "{shown}");
    assert!(server.peers().is_empty());
}

#[actix_rt::test]
async fn the_actor_client_stops_on_an_unusable_client_certificate() {
    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch client");
    let tls = TlsOptions::default().client_certificate_pem(client.cert.pem(), "");
    let (handler, mut events) =
        Recorder::new(ConnectRequest::new(server.url()).options(options(tls)));
    // The default policy would reconnect: a configuration error stops the client anyway when
    // the handler's defaults are used; this recorder reports it and stops.
    let _addr = Client::start(handler.policy(Policy::Stop));
    let event = events
        .wait_for("the failed attempt", WAIT, Event::is_disconnect)
        .await;
    match event.disconnect_error() {
        Some(error @ Error::InvalidOptions(_)) => assert!(error.is_config()),
        other => panic!("expected Error::InvalidOptions, got {other:?}"),
    }
    assert!(server.peers().is_empty());
}

#[test]
fn debug_shows_that_a_client_certificate_is_set_and_nothing_of_it() {
    let ca = Ca::new("minch test CA");
    let client = ca.client("minch client");
    let key_pem = client.key.serialize_pem();
    let tls = client.options();
    let shown = format!("{tls:?} {:?}", options(tls.clone()));
    assert!(shown.contains("client_certificate: true"), "{shown}");
    assert!(shown.contains("client_config: false"), "{shown}");
    for line in key_pem
        .lines()
        .chain(client.cert.pem().lines())
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!shown.contains(line), "Debug shows PEM: {shown}");
    }
    let with_config = TlsOptions::default().client_config(user_config(&ca, Some(&client), &[]));
    let shown = format!("{with_config:?}");
    assert!(shown.contains("client_config: true"), "{shown}");
    assert!(shown.contains("client_certificate: false"), "{shown}");
    // Even a key that could not be used stays out of it.
    let bad = TlsOptions::default().client_certificate_pem("", &key_pem);
    let shown = format!("{bad:?}");
    assert!(shown.contains("client_certificate: true"), "{shown}");
    assert!(!shown.contains(key_pem.lines().nth(1).unwrap()), "{shown}");
}

// ---- nothing of the key in the log ----

/// Every log record of this binary, from every crate, at trace level.
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

#[actix_rt::test]
async fn the_client_key_appears_in_no_log_record() {
    log::set_boxed_logger(Box::new(Capture)).expect("the only logger in this binary");
    log::set_max_level(log::LevelFilter::Trace);

    let ca = Ca::new("minch test CA");
    let server = MtlsServer::start(&ca, &ca);
    let client = ca.client("minch logged client");
    let key_pem = client.key.serialize_pem();
    assert_echo(
        &server,
        client.options().add_root_pem(ca.pem()),
        "logged, accepted",
    )
    .await;
    assert_echo(
        &server,
        TlsOptions::default().client_config(user_config(&ca, Some(&client), &[b"h2"])),
        "logged, user config",
    )
    .await;
    // Refused by the server (another CA), and refused up front (no certificate with the key).
    let stranger = Ca::new("someone else's CA").client("minch stranger");
    assert_refused_by_server(connect(&server, stranger.options().add_root_pem(ca.pem())).await);
    let shown = invalid(
        &server,
        TlsOptions::default().client_certificate_pem("", &key_pem),
    )
    .await;
    assert!(shown.contains("no CERTIFICATE block"), "{shown}");

    let records = RECORDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        records.iter().any(|r| r.contains("rustls")),
        "the TLS handshakes were logged: {} records",
        records.len()
    );
    // The key as PEM lines, and its DER bytes as Rust prints them (a list of numbers) or in hex.
    let key_der = client.key.serialize_der();
    let middle = &key_der[key_der.len() / 2..key_der.len() / 2 + 12];
    let as_list = format!("{middle:?}");
    let as_list = &as_list[1..as_list.len() - 1];
    let as_hex: String = middle.iter().map(|b| format!("{b:02x}")).collect();
    let stranger_key = stranger.key.serialize_pem();
    let pem_lines = key_pem
        .lines()
        .chain(stranger_key.lines())
        .filter(|line| !line.starts_with("-----"));
    for needle in pem_lines.chain([as_list, as_hex.as_str()]) {
        for record in &records {
            assert!(
                !record.contains(needle),
                "a log record shows the key: {record}"
            );
        }
    }
}
