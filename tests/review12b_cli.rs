//! Review 12b: the `minch` command-line client's new flags (`--proxy`, `--unix-socket`,
//! `--cert/--key`), its reconnects after a refused upgrade, and what it prints. Every run of
//! the binary is bounded (killed after `support::cli::RUN_LIMIT`).
//!
//! ```sh
//! cargo test --features cli --test review12b_cli
//! ```
#![cfg(feature = "cli")]

mod support;

use std::process::Stdio;

use support::cli::{minch_with, without_proxy_variables, Ended};
use support::{answering_proxy, scripted_ws_server, Handshake, Step, TempDir};

/// Runs `minch` with `args`, no proxy variables, NO_COLOR set, stdin closed; kills it after
/// `support::cli::RUN_LIMIT`.
fn run(args: &[&str]) -> Ended {
    minch_with(args, |command| {
        without_proxy_variables(command);
        command.env("NO_COLOR", "1").stdin(Stdio::null());
    })
    .finish()
}

/// Review finding (failed on 4bf3c85, fixed since): `--unix-socket PATH --proxy URL` silently drops the proxy. The user asked for both,
/// gets no message, and the connection goes to the socket (the proxy is never contacted:
/// the library ignores proxies for Unix sockets, as documented). The two cannot be combined,
/// so this should be a usage error (exit 2) naming both flags, before any connection is tried,
/// like clap's `conflicts_with` gives for `--verbose --quiet`.
#[test]
fn unix_socket_with_proxy_is_a_usage_error() {
    let dir = TempDir::new();
    let socket = dir.path().join("nobody.sock");
    let refusing = answering_proxy(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
          Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n",
    );
    let proxy = format!("http://127.0.0.1:{}", refusing.port());
    let ended = run(&[
        "ws://localhost/",
        "--unix-socket",
        socket.to_str().unwrap(),
        "--proxy",
        &proxy,
        "--no-stdin",
        "--connect-timeout",
        "2",
    ]);
    assert_eq!(refusing.accepted(), 0, "the proxy was used");
    assert_eq!(
        ended.code,
        Some(2),
        "--unix-socket with --proxy should be refused as a usage error: {ended:#?}"
    );
    assert!(
        ended.stderr.contains("--unix-socket") && ended.stderr.contains("--proxy"),
        "the error should name both flags: {ended:#?}"
    );
}

/// Review finding (failed on 4bf3c85, fixed since): with `--reconnect`, a server that refuses the upgrade with `503` and
/// `Retry-After: 3` is retried after 200 ms, then 800 ms, ..., ignoring the wait it asked for.
/// The CLI even prints "it asks to retry after 3 s (Retry-After)" and on the next line
/// "reconnecting in 200 ms". The library's default `handle_disconnect` honours Retry-After
/// (README, "When the server says when to come back") but the CLI's own handler uses
/// `backoff_duration` alone (src/bin/minch/session.rs, `handle_disconnect`). A client that
/// hammers a server which said "come back in 3 s" is what Retry-After exists to prevent; it
/// should wait `reconnect_delay(...)`, i.e. 3 s, so within 2.5 s only the first attempt is made.
#[test]
fn reconnect_honours_retry_after_on_503() {
    let server = scripted_ws_server(vec![
        Step::Handshake(
            Handshake::new()
                .status(503, "Service Unavailable")
                .omit_upgrade()
                .omit_accept()
                .header("Retry-After", "3")
                .header("Content-Length", "0"),
        ),
        Step::Close,
    ]);
    let url = server.url("/");
    let ended = run(&[&url, "--reconnect", "--no-stdin", "--timeout", "2.5"]);
    assert_eq!(
        ended.code,
        Some(6),
        "--timeout ends the session: {ended:#?}"
    );
    assert!(ended.stdout.is_empty(), "no frames: {ended:#?}");
    assert!(
        ended.stderr.contains("Retry-After"),
        "the refusal is reported with its Retry-After: {ended:#?}"
    );
    assert_eq!(
        server.accepted(),
        1,
        "the server asked for 3 s between attempts, but within 2.5 s minch connected {} times:\n{}",
        server.accepted(),
        ended.stderr
    );
}
