//! # minch — a WebSocket client for actix that stays connected
//!
//! A port of Elixir's [Minch](https://hexdocs.pm/minch) to Rust and [actix]: write a handler
//! type, implement [`MinchHandler`] for it, and [`Client`] runs it — connecting, answering pings,
//! completing close handshakes, reassembling fragmented messages, validating UTF-8, and
//! reconnecting with [`backoff`] when the connection drops.
//!
//! ## Which API do I want?
//!
//! | you want | use | runs on |
//! |---|---|---|
//! | a long-lived feed that reconnects by itself, with callbacks | the actor [`Client`] and a [`MinchHandler`] | an actix System |
//! | one connection, `await`ing frames in your own code, no reconnects | [`connect`] → [`Connection`] + [`Frames`] | an actix System |
//! | the same without actix (`fn main`, threads, tokio) | [`blocking::connect`] | a background thread of its own |
//!
//! - **[`Client`]** is minch proper, after Elixir's Minch: callbacks for each event, `connect`
//!   before every attempt (refresh a token there), reconnects with [`backoff`], timers
//!   ([`ClientContext::send_info_after`]) and async work ([`ClientContext::spawn_info`]) that
//!   outlive a connection, keepalive, and an [`Addr`](actix::Addr) that stays valid throughout.
//!   Send to it with [`SendFrame`]; stop it with [`Close`].
//! - **[`connect`]** opens one connection and returns when it is up (or why not): send with
//!   [`Connection::send_frame`], receive with [`Frames::receive_frame`]. When the connection
//!   ends, it is over: reconnecting is up to you.
//! - **[`blocking`]** is [`connect`] with blocking, `Send + Sync` handles, for programs that do
//!   not run an actix System.
//!
//! All three share the same [`ConnectOptions`], [`Error`] and [`Frame`] types, and the same
//! framing, keepalive and close handshake.
//!
//! ## A client
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use minch::{Client, ClientContext, ConnectRequest, Frame, MinchHandler, Reply, Response, SendFrame};
//!
//! struct Ticker {
//!     received: usize,
//! }
//!
//! impl MinchHandler for Ticker {
//!     type Info = ();
//!
//!     // Runs before every attempt: the place to refresh a token.
//!     fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
//!         ("wss://feed.example.com/ticks", vec![("authorization", "Bearer secret")]).into()
//!     }
//!
//!     fn handle_connect(&mut self, _response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
//!         Reply::Send(Frame::text(r#"{"subscribe":"BTC-USD"}"#))
//!     }
//!
//!     fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
//!         self.received += 1;
//!         if let Some(text) = frame.as_text() {
//!             println!("tick: {text}");
//!         }
//!         Reply::Continue
//!     }
//! }
//!
//! #[actix_rt::main]
//! async fn main() {
//!     let client = Client::start(Ticker { received: 0 });
//!     actix_rt::time::sleep(Duration::from_secs(1)).await;
//!     // Fails with SendError::NotConnected unless the client is connected: nothing is queued.
//!     let _ = client.send(SendFrame(Frame::text("ping"))).await;
//!     client.send(minch::Close).await.unwrap();
//! }
//! ```
//!
//! ## The callbacks
//!
//! | callback | when | default |
//! |---|---|---|
//! | [`init`](MinchHandler::init) | once, at start | ok |
//! | [`connect`](MinchHandler::connect) | before every attempt | required |
//! | [`handle_connect`](MinchHandler::handle_connect) | after the `101` | continue |
//! | [`handle_frame`](MinchHandler::handle_frame) | text, binary, pong | required |
//! | [`handle_info`](MinchHandler::handle_info) | an [`Info`] message, a timer or a [`spawn_info`](ClientContext::spawn_info) future's output, connected or not | continue |
//! | [`handle_error`](MinchHandler::handle_error) | a reply could not be sent; a protocol error | log, continue |
//! | [`handle_disconnect`](MinchHandler::handle_disconnect) | the connection ended or an attempt failed | reconnect after `backoff(attempt)` |
//! | [`terminate`](MinchHandler::terminate) | once, when stopping | nothing |
//!
//! `handle_connect`, `handle_frame`, `handle_info` and `handle_error` return a [`Reply`]:
//! [`Continue`](Reply::Continue), [`Send`](Reply::Send) / [`SendAll`](Reply::SendAll) frames,
//! [`Close`](Reply::Close) the connection, or [`Stop`](Reply::Stop) the client.
//!
//! ## The lifecycle
//!
//! ```text
//! init ─▶ connect ─▶ (TCP, TLS, upgrade) ─▶ handle_connect ─▶ handle_frame / handle_info …
//!            ▲                 │ failed                               │ ended (close, error, timeout)
//!            │                 ▼                                      ▼
//!            └── after the delay ◀── handle_disconnect(reason, attempt) ──▶ Stop ─▶ terminate
//! ```
//!
//! `init` runs once; `connect` before every attempt; `handle_disconnect` once for every attempt
//! that failed and every connection that ended, and decides: reconnect after a delay, or stop.
//! [`Reply::Stop`] from any callback, or a [`Close`] message, closes the connection (with 1000,
//! completing the handshake) and stops. `terminate` runs exactly once, last; the handler is
//! dropped right after. While the client waits to reconnect, its address answers
//! [`SendError::NotConnected`], and [`handle_info`](MinchHandler::handle_info) keeps running:
//! timers and [`ClientContext::spawn_info`] futures belong to the handler, not to a connection.
//!
//! ## Reconnecting
//!
//! `attempt` counts the failures since the last successful upgrade, so a server that keeps
//! refusing the upgrade is retried with a growing delay. [`backoff`] is Minch's formula,
//! `round(min * attempt^factor)` capped at `max`:
//!
//! ```
//! use minch::{backoff, BackoffOptions};
//!
//! let delays: Vec<u64> = (1..=5).map(|a| backoff(a, BackoffOptions::default())).collect();
//! assert_eq!(delays, [200, 800, 1800, 3200, 5000]);
//! ```
//!
//! ## Sending
//!
//! [`SendFrame`] resolves once the frame has been written to the socket, or with a
//! [`SendError`] saying why not; [`SendFrames`] sends many in one message. A client that is not
//! connected answers [`SendError::NotConnected`] at once: frames are never buffered for a later
//! connection.
//!
//! To send without waiting for the answer, use actix's `do_send`. Nothing then fails silently:
//! a frame refused on the spot (not connected, closing, invalid, a full buffer for
//! [`TrySendFrame`]) goes to [`handle_error`](MinchHandler::handle_error), and a frame accepted
//! and later lost with its connection is counted in [`Stats::frames_unsent`].
//!
//! ```no_run
//! # use minch::{Client, Frame, MinchHandler, SendFrame, SendFrames};
//! # fn demo<H: MinchHandler>(client: actix::Addr<Client<H>>) {
//! client.do_send(SendFrame(Frame::text("tick")));
//! client.do_send(SendFrames((0..100).map(|n| Frame::text(n.to_string())).collect()));
//! # }
//! ```
//!
//! A program that streams frames to its client, from any thread, should use a [`FrameSender`]
//! ([`GetFrameSender`]): no mailbox message per frame (each costs two allocations in actix),
//! one lock and a push, and the client is woken once per burst. It refuses a frame at once,
//! with the reason, while no connection is open; frames it accepted and the client could not
//! write go to `handle_error`.
//!
//! ```no_run
//! # use minch::{Client, Frame, GetFrameSender, MinchHandler};
//! # async fn demo<H: MinchHandler>(client: actix::Addr<Client<H>>) {
//! let sender = client.send(GetFrameSender).await.unwrap();
//! if let Err(error) = sender.send(Frame::text("tick")) {
//!     eprintln!("not sent: {error}");
//! }
//! # }
//! ```
//!
//! ## Liveness and flow control
//!
//! The client pings every [`ConnectOptions::ping_interval`] and drops a connection that stays
//! silent for [`ConnectOptions::pong_timeout`] after a ping, reporting [`Timeout::Pong`].
//! Outgoing frames beyond [`ConnectOptions::max_buffered_bytes`] are held back, so a sender that
//! awaits each [`SendFrame`] slows down to the server's pace; [`TrySendFrame`] fails with
//! [`SendError::BufferFull`] instead. [`GetStats`] reports traffic and the last ping's round trip.
//!
//! | [`ConnectOptions`] | default | allowed |
//! |---|---|---|
//! | [`ping_interval`](ConnectOptions::ping_interval) / [`pong_timeout`](ConnectOptions::pong_timeout) | 20 s / 20 s | over 0, at most 24 h; `None` turns keepalive off |
//! | [`connect_timeout`](ConnectOptions::connect_timeout), `tls_timeout`, `upgrade_timeout` | 10 s each | over 0, at most 24 h |
//! | [`close_timeout`](ConnectOptions::close_timeout) | 5 s | over 0, at most 24 h |
//! | [`max_buffered_bytes`](ConnectOptions::max_buffered_bytes) | 16 MiB | at least 1 |
//! | [`max_queue`](ConnectOptions::max_queue) / [`max_queue_bytes`](ConnectOptions::max_queue_bytes) (simple and blocking APIs) | 1 024 messages / 16 MiB | at least 1 |
//! | [`max_frame_size`](ConnectOptions::max_frame_size) / [`max_message_size`](ConnectOptions::max_message_size) | 16 MiB / 64 MiB | at least 125 / at least 1 |
//! | [`compression`](ConnectOptions::compression()) | permessage-deflate offered | a [`Deflate`], or `None` |
//! | [`proxy`](ConnectOptions::proxy()) | from the environment | a [`Proxy`] |
//! | [`unix_socket`](ConnectOptions::unix_socket()) | none (TCP) | a path of at most [`MAX_UNIX_SOCKET_PATH`](ConnectOptions::MAX_UNIX_SOCKET_PATH) bytes, on Unix |
//! | [`tcp_nodelay`](ConnectOptions::tcp_nodelay) | `true`: small frames go out at once | `true` or `false` (Nagle's algorithm) |
//!
//! A value outside its range is [`Error::InvalidOptions`], naming the option, before any I/O.
//!
//! ## The simple API
//!
//! [`connect`] returns a [`Connection`] to send with and [`Frames`] to receive from, with no
//! handler type and no reconnects; [`blocking`] offers the same for programs without an actix
//! System.
//!
//! ## Compression
//!
//! permessage-deflate (RFC 7692) is offered by default; a server that accepts gets text and
//! binary messages of at least [`Deflate::threshold`] bytes compressed, and its compressed
//! messages are inflated with [`max_message_size`](ConnectOptions::max_message_size) holding
//! the *inflated* size. The answer is checked strictly ([`Error::Extension`]), zlib state is
//! allocated only on the first compressed message in each direction, and the
//! [`Deflate`] settings trade compression for memory:
//!
//! ```
//! use minch::{ConnectOptions, Deflate};
//!
//! let lean = ConnectOptions::default()
//!     .compression(Deflate::default().server_no_context_takeover(true));
//! let off = ConnectOptions::default().compression(None);
//! # let _ = (lean, off);
//! ```
//!
//! ## Proxies
//!
//! Connections go through the proxy the environment names (`https_proxy`, `http_proxy`,
//! `all_proxy`, minus `no_proxy`), or the one [`ConnectOptions::proxy`] gives: HTTP `CONNECT`
//! or SOCKS5, with credentials; [`Proxy::None`] connects directly. See [`Proxy`].
//!
//! ## TLS
//!
//! `wss://` uses rustls (with the ring provider) and the bundled Mozilla roots. Add a private CA
//! with [`TlsOptions::add_root_certificate`], trust the operating system's roots as well with
//! [`TlsOptions::native_roots()`], present a client certificate (mutual TLS) with
//! [`TlsOptions::client_certificate_pem`], or give a `rustls::ClientConfig` of your own with
//! [`TlsOptions::client_config`] (ALPN is always `http/1.1`);
//! [`TlsOptions::danger_accept_invalid_certs`] turns verification off, for tests only. A server
//! that refuses the client's certificate, or wants one, fails the connection with
//! [`Error::Tls`]. TLS is the `tls` feature, on by default: see [Feature flags](#feature-flags).
//!
//! ```no_run
//! use minch::{ConnectOptions, TlsOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let tls = TlsOptions::default()
//!     .native_roots(true)
//!     .client_certificate_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?);
//! let options = ConnectOptions::default().tls(tls);
//! # let _ = options;
//! # Ok(())
//! # }
//! ```
//!
//! ## Feature flags
//!
//! - `tls` (default): `wss://` URLs, through rustls, and [`TlsOptions`] to configure them.
//!   Without it (`default-features = false`) minch speaks `ws://` only, with neither rustls nor
//!   ring in the build; a `wss://` URL then fails before any I/O with
//!   [`Error::TlsNotEnabled`], a configuration error whose message says how to turn TLS on.
//! - `cli`: the `minch` command-line client (`cargo install minch --features cli`); the library
//!   itself does not change.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The crate docs link to `TlsOptions`, which exists only with the `tls` feature.
#![cfg_attr(not(feature = "tls"), allow(rustdoc::broken_intra_doc_links))]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms)]

mod backoff;
pub mod blocking;
mod client;
mod compression;
mod connection;
mod connector;
mod error;
mod frame;
mod framed;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz_api;
mod handler;
mod inbox;
mod options;
mod protocol;
mod proxy;
mod simple;
#[cfg(feature = "tls")]
mod tls;
mod transport;

/// HTTP types used in handshakes, re-exported from awc.
pub mod http {
    pub use awc::http::{header, header::HeaderMap, StatusCode};
}

#[cfg(feature = "tls")]
pub use crate::options::TlsOptions;
pub use crate::{
    backoff::{
        backoff, backoff_duration, backoff_with_jitter, reconnect_delay, BackoffOptions, Jitter,
    },
    client::{
        Client, Close, FrameSender, GetFrameSender, GetStats, Info, SendFrame, SendFrames, Stats,
        TimerId, TrySendFrame,
    },
    compression::Deflate,
    error::{Error, ProxyError, Rejection, SendError, Timeout},
    frame::{CloseCode, CloseFrame, Frame, Utf8Bytes},
    handler::{ClientContext, DisconnectReason, MinchHandler, Reconnect, Reply, StopReason},
    options::{redact_url, ConnectOptions, ConnectRequest},
    protocol::ProtocolError,
    proxy::Proxy,
    simple::{connect, Connection, Frames, ReceiveError},
    transport::Response,
};
/// The rustls minch is built with, for [`TlsOptions::client_config`]: build the
/// `ClientConfig` with `minch::rustls` and it is always the version minch takes.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
