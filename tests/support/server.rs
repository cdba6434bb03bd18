//! In-process actix-web WebSocket server on its own thread and its own actix `System`.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL, WWW_AUTHENTICATE};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{wait_until, wait_until_blocking, EventLog};

/// Largest frame / message the server accepts from a client (actix-ws defaults to 64 KiB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long `/close` waits for the client's close reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(10);
/// How long `start`/`restart` keep retrying a bind that fails with "address in use".
const BIND_RETRY: Duration = Duration::from_secs(10);
/// How long `stop` waits for the server thread to finish.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the server saw, in order, across all connections (and across restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Any HTTP request that reached a route: 101 for a successful upgrade, 401 for
    /// `/reject401`, 4xx when the handshake was invalid, 404 for unknown paths.
    Request { path: String, status: u16 },
    /// A WebSocket upgrade was accepted; `headers` are the request headers, names lowercase.
    Upgraded {
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A complete text message from the client (continuations aggregated).
    Text(String),
    /// A complete binary message from the client (continuations aggregated).
    Binary(Vec<u8>),
    /// A ping from the client.
    Ping(Vec<u8>),
    /// A pong from the client.
    Pong(Vec<u8>),
    /// A close frame from the client.
    Close { code: Option<u16>, reason: String },
    /// The client sent something invalid (e.g. an unmasked frame or bad UTF-8).
    Error { path: String, error: String },
    /// A connection's handler ended (client went away, close finished, or server stopped).
    Disconnected { path: String },
}

/// Something the test asks live connections to do (see `TestServer::send_text` & co).
#[derive(Debug, Clone)]
enum Command {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<(u16, String)>),
    Drop,
}

/// What a route does after the upgrade.
#[derive(Debug, Clone)]
enum Behaviour {
    Echo,
    Headers,
    Close(Option<(u16, String)>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Silent,
}

/// State shared by every connection and kept across `restart()`.
struct Shared {
    events: EventLog<ServerEvent>,
    live: AtomicUsize,
    upgrades: AtomicUsize,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, UnboundedSender<Command>>>,
}

impl Shared {
    fn record(&self, event: ServerEvent) {
        log::debug!("test server: {event:?}");
        self.events.push(event);
    }

    fn broadcast(&self, cmd: Command) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .values()
            .filter(|tx| tx.send(cmd.clone()).is_ok())
            .count()
    }
}

/// Self-signed certificate material for the TLS variant.
struct Tls {
    cert_der: Vec<u8>,
    cert_pem: String,
    config: rustls::ServerConfig,
}

impl Tls {
    fn generate() -> Tls {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "minch test server");
        let key = rcgen::KeyPair::generate().expect("generate key pair");
        let cert = params.self_signed(&key).expect("self-sign certificate");
        let cert_der = cert.der().to_vec();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone().into()], key_der)
        .expect("server certificate");
        Tls {
            cert_der,
            cert_pem: cert.pem(),
            config,
        }
    }
}

struct Running {
    handle: ServerHandle,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

/// An actix-web WebSocket server on 127.0.0.1, on its own thread with its own actix `System`.
///
/// Routes: `/echo`, `/reject401`, `/headers`, `/close?code=N&reason=R`, `/ping?payload=P`,
/// `/pong?payload=P`, `/silent`, `/subprotocol` (see the crate's tests/support docs).
/// Stops on drop.
pub struct TestServer {
    port: u16,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl TestServer {
    /// Plain `ws://` server on an OS-chosen port.
    pub fn start() -> TestServer {
        Self::launch(0, None)
    }

    /// Plain `ws://` server on the given port (0 = OS-chosen).
    pub fn start_on(port: u16) -> TestServer {
        Self::launch(port, None)
    }

    /// `wss://` server with a fresh self-signed certificate for `127.0.0.1` and `localhost`.
    pub fn start_tls() -> TestServer {
        Self::launch(0, Some(Arc::new(Tls::generate())))
    }

    /// `wss://` server on the given port (0 = OS-chosen).
    pub fn start_tls_on(port: u16) -> TestServer {
        Self::launch(port, Some(Arc::new(Tls::generate())))
    }

    fn launch(port: u16, tls: Option<Arc<Tls>>) -> TestServer {
        let shared = Arc::new(Shared {
            events: EventLog::new(),
            live: AtomicUsize::new(0),
            upgrades: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
        });
        let mut server = TestServer {
            port,
            tls,
            shared,
            running: None,
        };
        server.run().expect("start test server");
        server
    }

    /// Bind `self.port` (retrying "address in use" for a while) and serve on a new thread.
    fn run(&mut self) -> io::Result<()> {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<(u16, ServerHandle)>>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&self.shared);
        let tls = self.tls.clone();
        let port = self.port;
        let thread = std::thread::Builder::new()
            .name(format!("minch-test-server-{port}"))
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    match serve(port, tls, shared) {
                        Ok((port, server)) => {
                            let _ = ready_tx.send(Ok((port, server.handle())));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                let _ = done_tx.send(());
            })?;
        let (port, handle) = ready_rx
            .recv_timeout(BIND_RETRY + Duration::from_secs(10))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "test server did not start"))??;
        self.port = port;
        self.running = Some(Running {
            handle,
            done: done_rx,
            thread,
        });
        Ok(())
    }

    /// The port the server listens on (stays the same across `restart`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `ws://127.0.0.1:PORT/path` (or `wss://` for the TLS variant). `path` may omit the `/`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("{scheme}://127.0.0.1:{}{slash}{path}", self.port)
    }

    /// Same as `url` but with host `localhost` (matches the certificate's DNS name).
    pub fn url_localhost(&self, path: &str) -> String {
        self.url(path).replacen("127.0.0.1", "localhost", 1)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// DER of the self-signed certificate (TLS variant only; panics otherwise).
    pub fn cert_der(&self) -> Vec<u8> {
        self.tls
            .as_ref()
            .expect("not a TLS server")
            .cert_der
            .clone()
    }

    /// PEM of the self-signed certificate (TLS variant only; panics otherwise).
    pub fn cert_pem(&self) -> String {
        self.tls
            .as_ref()
            .expect("not a TLS server")
            .cert_pem
            .clone()
    }

    /// The event log itself (shared; survives restarts).
    pub fn log(&self) -> &EventLog<ServerEvent> {
        &self.shared.events
    }

    /// Snapshot of every event so far.
    pub fn events(&self) -> Vec<ServerEvent> {
        self.shared.events.snapshot()
    }

    /// Text messages received so far, in order.
    pub fn texts(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::Text(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Binary messages received so far, in order.
    pub fn binaries(&self) -> Vec<Vec<u8>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::Binary(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// Forget the events recorded so far.
    pub fn clear_events(&self) {
        self.shared.events.clear()
    }

    /// Async: wait until `pred(events)` holds; false on timeout.
    pub async fn wait_for(&self, pred: impl Fn(&[ServerEvent]) -> bool, timeout: Duration) -> bool {
        self.shared.events.wait_for(pred, timeout).await
    }

    /// Async: wait for the first event matching `matcher`; None on timeout.
    pub async fn wait_event(
        &self,
        matcher: impl Fn(&ServerEvent) -> bool,
        timeout: Duration,
    ) -> Option<ServerEvent> {
        self.shared.events.wait_event(matcher, timeout).await
    }

    /// Blocking twin of `wait_for` (not for use inside an async test).
    pub fn wait_for_blocking(
        &self,
        pred: impl Fn(&[ServerEvent]) -> bool,
        timeout: Duration,
    ) -> bool {
        self.shared.events.wait_for_blocking(pred, timeout)
    }

    /// Blocking twin of `wait_event` (not for use inside an async test).
    pub fn wait_event_blocking(
        &self,
        matcher: impl Fn(&ServerEvent) -> bool,
        timeout: Duration,
    ) -> Option<ServerEvent> {
        self.shared.events.wait_event_blocking(matcher, timeout)
    }

    /// WebSocket connections currently open.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Async: wait until exactly `n` connections are open; false on timeout.
    pub async fn wait_live_connections(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.live_connections() == n).await
    }

    /// Blocking twin of `wait_live_connections`.
    pub fn wait_live_connections_blocking(&self, n: usize, timeout: Duration) -> bool {
        wait_until_blocking(timeout, || self.live_connections() == n)
    }

    /// WebSocket upgrades accepted so far (all routes, across restarts).
    pub fn upgrades(&self) -> usize {
        self.shared.upgrades.load(Ordering::SeqCst)
    }

    /// Number of requests that reached `path` (e.g. "/reject401"), whatever the outcome.
    pub fn request_count(&self, path: &str) -> usize {
        self.shared
            .events
            .count(|e| matches!(e, ServerEvent::Request { path: p, .. } if p == path))
    }

    /// Send a text message on every live connection; returns how many got it.
    pub fn send_text(&self, text: &str) -> usize {
        self.shared.broadcast(Command::Text(text.to_owned()))
    }

    /// Send a binary message on every live connection; returns how many got it.
    pub fn send_binary(&self, data: &[u8]) -> usize {
        self.shared.broadcast(Command::Binary(data.to_vec()))
    }

    /// Send a ping on every live connection; returns how many got it.
    pub fn send_ping(&self, payload: &[u8]) -> usize {
        self.shared.broadcast(Command::Ping(payload.to_vec()))
    }

    /// Start a close handshake on every live connection (code None = empty close payload);
    /// the handler then waits (bounded) for the client's reply and records it.
    pub fn close_all(&self, code: Option<u16>, reason: &str) -> usize {
        self.shared
            .broadcast(Command::Close(code.map(|c| (c, reason.to_owned()))))
    }

    /// End every live connection without a close frame.
    pub fn drop_all(&self) -> usize {
        self.shared.broadcast(Command::Drop)
    }

    /// Stop the server (forcefully: open connections are dropped). Idempotent.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        // The stop command is queued eagerly; the returned future only awaits completion.
        drop(running.handle.stop(false));
        match running.done.recv_timeout(STOP_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!("test server thread did not stop within {STOP_WAIT:?}")
            }
            _ => {
                let _ = running.thread.join();
            }
        }
        // Handlers end when their worker goes away; give the bookkeeping a moment.
        wait_until_blocking(Duration::from_secs(2), || self.live_connections() == 0);
    }

    /// Whether the server is currently running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stop, then start again on the same port (events and counters are kept).
    pub fn restart(&mut self) {
        self.stop();
        self.run().expect("restart test server on the same port");
    }

    /// Start again after `stop()` on the same port (no-op when running).
    pub fn start_again(&mut self) {
        if self.running.is_none() {
            self.run()
                .expect("start test server again on the same port");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Build, bind (retrying "address in use" for up to `BIND_RETRY`) and start the server.
/// Must run inside an actix `System`.
fn serve(
    port: u16,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
) -> io::Result<(u16, actix_web::dev::Server)> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/echo", web::to(echo_route))
                .route("/reject401", web::to(reject401_route))
                .route("/headers", web::to(headers_route))
                .route("/close", web::to(close_route))
                .route("/ping", web::to(ping_route))
                .route("/pong", web::to(pong_route))
                .route("/silent", web::to(silent_route))
                .route("/subprotocol", web::to(subprotocol_route))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1);
        // actix-server sets SO_REUSEADDR on listeners it creates, so a port whose old
        // connections sit in TIME_WAIT can be bound again right away.
        let addr = (Ipv4Addr::LOCALHOST, port);
        let bound = match &tls {
            Some(tls) => server.bind_rustls_0_23(addr, tls.config.clone()),
            None => server.bind(addr),
        };
        match bound {
            Ok(server) => {
                let port = server.addrs().first().map_or(port, SocketAddr::port);
                return Ok((port, server.run()));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

type Shr = web::Data<Shared>;

fn query(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

async fn echo_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    upgrade(req, body, shared, Behaviour::Echo, false)
}

async fn headers_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    upgrade(req, body, shared, Behaviour::Headers, false)
}

async fn silent_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    upgrade(req, body, shared, Behaviour::Silent, false)
}

async fn subprotocol_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    upgrade(req, body, shared, Behaviour::Echo, true)
}

async fn close_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    let q = query(&req);
    let code = q.get("code").and_then(|c| c.parse::<u16>().ok());
    let reason = q.get("reason").cloned().unwrap_or_default();
    upgrade(
        req,
        body,
        shared,
        Behaviour::Close(code.map(|c| (c, reason))),
        false,
    )
}

async fn ping_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    let payload = query(&req).remove("payload").unwrap_or_default();
    upgrade(
        req,
        body,
        shared,
        Behaviour::Ping(payload.into_bytes()),
        false,
    )
}

async fn pong_route(req: HttpRequest, body: web::Payload, shared: Shr) -> HttpResponse {
    let payload = query(&req).remove("payload").unwrap_or_default();
    upgrade(
        req,
        body,
        shared,
        Behaviour::Pong(payload.into_bytes()),
        false,
    )
}

async fn reject401_route(req: HttpRequest, shared: Shr) -> HttpResponse {
    shared.record(ServerEvent::Request {
        path: req.path().to_owned(),
        status: 401,
    });
    HttpResponse::Unauthorized()
        .insert_header((WWW_AUTHENTICATE, "Basic realm=\"minch-test\""))
        .body("unauthorized")
}

async fn not_found(req: HttpRequest, shared: Shr) -> HttpResponse {
    shared.record(ServerEvent::Request {
        path: req.path().to_owned(),
        status: 404,
    });
    HttpResponse::NotFound().body("no such route")
}

fn request_headers(req: &HttpRequest) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    headers
}

/// Perform the handshake, record it, and spawn the connection's handler.
fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    shared: Shr,
    behaviour: Behaviour,
    subprotocol: bool,
) -> HttpResponse {
    let path = req.path().to_owned();
    let headers = request_headers(&req);
    let (mut response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(err) => {
            let response = err.error_response();
            shared.record(ServerEvent::Request {
                path,
                status: response.status().as_u16(),
            });
            return response;
        }
    };
    if subprotocol {
        let first = req
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| !p.is_empty())
            .and_then(|p| HeaderValue::from_str(p).ok());
        if let Some(protocol) = first {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, protocol);
        }
    }
    shared.record(ServerEvent::Request {
        path: path.clone(),
        status: response.status().as_u16(),
    });
    shared.record(ServerEvent::Upgraded {
        path: path.clone(),
        headers: headers.clone(),
    });
    shared.upgrades.fetch_add(1, Ordering::SeqCst);
    let shared = shared.into_inner();
    let (tx, rx) = unbounded_channel();
    let guard = Connection::register(Arc::clone(&shared), path, tx);
    actix_web::rt::spawn(handle_connection(
        guard, shared, behaviour, headers, session, stream, rx,
    ));
    response
}

/// Counts a live connection; on drop (even when the task is cancelled because the server
/// stopped) records `Disconnected` and unregisters.
struct Connection {
    id: u64,
    path: String,
    shared: Arc<Shared>,
}

impl Connection {
    fn register(shared: Arc<Shared>, path: String, tx: UnboundedSender<Command>) -> Connection {
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        shared.live.fetch_add(1, Ordering::SeqCst);
        Connection { id, path, shared }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.shared.record(ServerEvent::Disconnected {
            path: std::mem::take(&mut self.path),
        });
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn close_reason(close: Option<(u16, String)>) -> Option<CloseReason> {
    close.map(|(code, reason)| CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then_some(reason),
    })
}

/// Record one message from the client. Returns false when it was a close frame.
fn record_message(shared: &Shared, msg: &AggregatedMessage) -> bool {
    let event = match msg {
        AggregatedMessage::Text(t) => ServerEvent::Text(t.to_string()),
        AggregatedMessage::Binary(b) => ServerEvent::Binary(b.to_vec()),
        AggregatedMessage::Ping(p) => ServerEvent::Ping(p.to_vec()),
        AggregatedMessage::Pong(p) => ServerEvent::Pong(p.to_vec()),
        AggregatedMessage::Close(reason) => ServerEvent::Close {
            code: reason.as_ref().map(|r| u16::from(r.code)),
            reason: reason
                .as_ref()
                .and_then(|r| r.description.clone())
                .unwrap_or_default(),
        },
    };
    let is_close = matches!(event, ServerEvent::Close { .. });
    shared.record(event);
    !is_close
}

type Messages = actix_ws::AggregatedMessageStream;

/// Send our close frame, then wait (bounded) for the client's close reply and record it.
/// A clone of the session keeps the response body (and so the socket) open meanwhile.
async fn close_and_wait(
    shared: &Shared,
    path: &str,
    session: Session,
    stream: &mut Messages,
    close: Option<(u16, String)>,
) {
    let keep_open = session.clone();
    if session.close(close_reason(close)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
        while let Some(item) = stream.recv().await {
            match item {
                Ok(msg) => {
                    if !record_message(shared, &msg) {
                        break;
                    }
                }
                Err(e) => {
                    shared.record(ServerEvent::Error {
                        path: path.to_owned(),
                        error: e.to_string(),
                    });
                    break;
                }
            }
        }
    })
    .await;
    drop(keep_open);
}

async fn handle_connection(
    conn: Connection,
    shared: Arc<Shared>,
    behaviour: Behaviour,
    headers: Vec<(String, String)>,
    mut session: Session,
    stream: actix_ws::MessageStream,
    mut commands: UnboundedReceiver<Command>,
) {
    let path = conn.path.clone();
    let mut stream = stream
        .max_frame_size(MAX_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE);
    let echo = match behaviour {
        Behaviour::Echo => true,
        Behaviour::Silent => false,
        Behaviour::Headers => {
            let listing: String = headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}\n"))
                .collect();
            if session.text(listing).await.is_err() {
                return;
            }
            true
        }
        Behaviour::Ping(payload) => {
            if session.ping(&payload).await.is_err() {
                return;
            }
            true
        }
        Behaviour::Pong(payload) => {
            if session.pong(&payload).await.is_err() {
                return;
            }
            true
        }
        Behaviour::Close(close) => {
            close_and_wait(&shared, &path, session, &mut stream, close).await;
            return;
        }
    };

    loop {
        tokio::select! {
            item = stream.recv() => {
                let msg = match item {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        shared.record(ServerEvent::Error { path: path.clone(), error: e.to_string() });
                        let reason = CloseReason { code: CloseCode::Protocol, description: None };
                        let _ = session.close(Some(reason)).await;
                        break;
                    }
                    None => break,
                };
                let open = record_message(&shared, &msg);
                if !echo {
                    continue;
                }
                let sent = match msg {
                    AggregatedMessage::Text(t) => session.text(t).await,
                    AggregatedMessage::Binary(b) => session.binary(b).await,
                    AggregatedMessage::Ping(p) => session.pong(&p).await,
                    AggregatedMessage::Pong(_) => Ok(()),
                    AggregatedMessage::Close(reason) => {
                        // Echo the client's close; returning drops the session, which ends
                        // the response body and so the TCP connection.
                        let _ = session.close(reason).await;
                        break;
                    }
                };
                if sent.is_err() || !open {
                    break;
                }
            }
            cmd = commands.recv() => {
                let sent = match cmd {
                    Some(Command::Text(t)) => session.text(t).await,
                    Some(Command::Binary(b)) => session.binary(b).await,
                    Some(Command::Ping(p)) => session.ping(&p).await,
                    Some(Command::Close(close)) => {
                        close_and_wait(&shared, &path, session, &mut stream, close).await;
                        break;
                    }
                    Some(Command::Drop) | None => break,
                };
                if sent.is_err() {
                    break;
                }
            }
        }
    }
    drop(conn);
}
