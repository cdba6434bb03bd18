//! Review 12b: the `minch` command-line client's new flags (`--proxy`, `--unix-socket`,
//! `--cert/--key`), its reconnects after a refused upgrade, and what it prints. Every run of
//! the binary is bounded (killed after [`RUN_LIMIT`]).
//!
//! ```sh
//! cargo test --features cli --test review12b_cli
//! ```
#![cfg(feature = "cli")]

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use support::{scripted_ws_server, Handshake, Step};

const BIN: &str = env!("CARGO_BIN_EXE_minch");

/// The longest a run of the binary may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// How a run ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `minch` with `args`, no proxy variables, stdin closed; kills it after [`RUN_LIMIT`].
fn run(args: &[&str]) -> Ended {
    let mut command = Command::new(BIN);
    command.args(args);
    for name in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        command.env_remove(name);
    }
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start minch");
    let collect = |mut stream: Box<dyn Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all);
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&all));
        });
        (text, reader)
    };
    let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for minch") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_reader.join();
    let _ = err_reader.join();
    let ended = Ended {
        code: status.and_then(|status| status.code()),
        stdout: stdout.lock().unwrap().clone(),
        stderr: stderr.lock().unwrap().clone(),
    };
    assert!(
        status.is_some(),
        "minch did not exit within {RUN_LIMIT:?}: {ended:#?}"
    );
    ended
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "minch-r12b-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP proxy that answers every `CONNECT` with 407; counts the connections it got.
fn refusing_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    (port, seen)
}

/// Review finding (failed on 4bf3c85, fixed since): `--unix-socket PATH --proxy URL` silently drops the proxy. The user asked for both,
/// gets no message, and the connection goes to the socket (the proxy is never contacted:
/// the library ignores proxies for Unix sockets, as documented). The two cannot be combined,
/// so this should be a usage error (exit 2) naming both flags, before any connection is tried,
/// like clap's `conflicts_with` gives for `--verbose --quiet`.
#[test]
fn unix_socket_with_proxy_is_a_usage_error() {
    let dir = TempDir::new();
    let socket = dir.0.join("nobody.sock");
    let (proxy_port, contacted) = refusing_proxy();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
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
    assert_eq!(contacted.load(Ordering::SeqCst), 0, "the proxy was used");
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
