//! Shared test support for minch's integration tests: real WebSocket peers on 127.0.0.1.
//!
//! Every test binary includes this with `mod support;`, and not every test uses every helper,
//! hence the crate-level allowances below.
//!
//! * [`TestServer`]: an actix-web + actix-ws server on its own thread and actix `System`
//!   (plain `ws://` or TLS `wss://` with a self-signed rcgen certificate).
//! * [`silent_tcp_server`] / [`scripted_ws_server`]: raw TCP peers for handshake and framing
//!   edge cases, with hand-made frames ([`frame_bytes`], [`frame_header`], ...).
//! * [`Proxy`]: a TCP forwarder that can pass, pause, blackhole or reset connections.
//! * [`python_echo_server`] / [`node_echo_server`]: independent implementations (Python
//!   `websockets`, Node `ws`) installed on first use under `<target>/interop`.
//! * [`forwarding_proxy`] / [`answering_proxy`] / [`scripted_proxy`]: small HTTP CONNECT and
//!   SOCKS proxies that follow a script.
//! * [`TempDir`]: a temporary directory, removed on drop.
//! * [`set_proxy_environment`] / [`PROXY_VARIABLES`]: the proxy environment variables.
//! * [`cli`] (with the `cli` feature): the `minch` binary run as a bounded process.
//!
//! Everything binds 127.0.0.1 only, and every wait is bounded.
//!
//! Waiting: the `wait_*` methods are async (they sleep with `actix_rt::time::sleep`, so the
//! client under test keeps running inside `#[actix_rt::test]`); each has a `*_blocking` twin
//! for plain `#[test]`s. `TestServer::stop`/`restart`, dropping any peer, and the interop
//! starters block the calling thread briefly (bounded); that is fine in async tests because
//! none of these peers runs on the test's runtime.
#![allow(dead_code)]
#![allow(unused_imports)]

mod bg;
#[cfg(feature = "cli")]
pub mod cli;
mod eventlog;
mod heap;
mod interop;
mod proxy;
mod proxy_env;
mod raw;
mod scripted_proxy;
mod server;
pub mod stream;
mod tempdir;

pub use self::bg::MAX_PEER_LIFETIME;
pub use self::eventlog::EventLog;
pub use self::heap::{live_bytes, CountingAllocator};
pub use self::interop::{
    interop_dir, node_echo_server, node_echo_server_with, pproxy, pproxy_with, python_echo_server,
    python_echo_server_with, python_unix_echo_server, ExternalServer, PeerCompression,
    NODE_WS_VERSION, PY_WEBSOCKETS_VERSION,
};
pub use self::proxy::{Proxy, ProxyMode};
pub use self::proxy_env::{set_proxy_environment, PROXY_VARIABLES};
pub use self::raw::{
    accept_upgrade_blocking, binary_frame, close_frame, decode_frame, frame_bytes, frame_header,
    masked_frame_bytes, scripted_ws_server, scripted_ws_server_seq, sec_websocket_accept,
    silent_tcp_server, text_frame, ClientFrame, Handshake, LenForm, RawEvent, RawFrame,
    ScriptedServer, SilentServer, Step, WS_GUID,
};
pub use self::scripted_proxy::{
    answering_proxy, forwarding_proxy, read_head, scripted_proxy, AnsweringProxy, Heads,
};
pub use self::server::{ServerEvent, TestServer};
pub use self::tempdir::TempDir;

use std::time::Duration;

/// Default bound for waits in tests that do not pass their own.
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll interval used by every `wait_*` helper.
pub const POLL: Duration = Duration::from_millis(10);

/// WebSocket opcodes, for building and matching frames.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Async: poll `cond` every [`POLL`] until it returns true or `timeout` passes.
///
/// Uses `actix_rt::time::sleep`, so it is fine inside `#[actix_rt::test]` (it never blocks
/// the client's runtime).
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        actix_rt::time::sleep(POLL).await;
    }
}

/// Blocking twin of [`wait_until`] (std sleep). Never call this inside an async test: it
/// would block the runtime the client needs.
pub fn wait_until_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Initialise env_logger once (honours `RUST_LOG`); handy at the top of a test.
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}
