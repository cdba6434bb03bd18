//! Independent WebSocket peers for interop tests: Python `websockets` and Node `ws` echo
//! servers, installed on first use under `<target>/interop` (so `cargo test` works on a
//! fresh machine that has python3 and node/npm).

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Python `websockets` version installed into the venv.
pub const PY_WEBSOCKETS_VERSION: &str = "17.4";
/// pproxy (HTTP and SOCKS5 proxy on asyncio) version installed into the same venv.
pub const PPROXY_VERSION: &str = "2.7.9";
/// Node `ws` version installed with npm.
pub const NODE_WS_VERSION: &str = "8.23.0";

/// Bound for one install command (venv creation, pip, npm).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound for a started server to print its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The echo servers exit by themselves after this long (or when our stdin pipe closes).
const SERVER_LIFETIME_SECS: u64 = 600;
/// A provisioning lock older than this is considered abandoned.
const LOCK_STALE_AFTER: Duration = Duration::from_secs(2 * 300 + 120);

const ECHO_PY: &str = r#"# minch interop: echo server on Python websockets (written by tests/support)
import asyncio
import sys
import threading

from websockets.asyncio.server import serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


def fragments(message):
    """`frag N SIZE`: a text message of SIZE bytes (a repeated JSON-like record) in N parts."""
    _, n, size = message.split()
    n, size = int(n), int(size)
    record = '{"symbol":"BTC-USD","bid":"64123.5","ask":"64124.0"}'
    text = (record * (size // len(record) + 1))[:size]
    step = max(1, -(-size // n))
    return [text[i:i + step] for i in range(0, size, step)]


async def echo(ws):
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("frag "):
                await ws.send(fragments(message))
            else:
                await ws.send(message)
    except Exception:
        pass


def compression_settings(mode):
    """`default`: websockets' own (compression on); `off`; `no-context`: no context takeover
    either way and 12-bit windows, which the client must follow."""
    if mode == "off":
        return {"compression": None}
    if mode == "no-context":
        factory = ServerPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )
        return {"compression": None, "extensions": [factory]}
    return {}


async def main(lifetime, mode):
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()

    def watch_stdin():
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(
            lambda: stdin_closed.done() or stdin_closed.set_result(None)
        )

    threading.Thread(target=watch_stdin, daemon=True).start()
    settings = compression_settings(mode)
    async with serve(echo, "127.0.0.1", 0, max_size=64 * 1024 * 1024, **settings) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        try:
            await asyncio.wait_for(stdin_closed, timeout=lifetime)
        except asyncio.TimeoutError:
            pass


asyncio.run(
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 600.0,
        sys.argv[2] if len(sys.argv) > 2 else "default",
    )
)
"#;

const PPROXY_PY: &str = r#"# minch proxy tests: pproxy on a free port (written by tests/support)
import asyncio
import os
import socket
import sys
import threading

listen, lifetime, extra = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()


def watch_stdin():
    sys.stdin.buffer.read()
    os._exit(0)


threading.Thread(target=watch_stdin, daemon=True).start()
threading.Timer(lifetime, lambda: os._exit(0)).start()
asyncio.set_event_loop(asyncio.new_event_loop())
# --auth 0: credentials are checked on every connection, not remembered per client address.
sys.argv = ["pproxy", "-l", listen.replace("PORT", str(port)), "--auth", "0", "-v", *extra]
from pproxy.server import main

print(port, flush=True)
# pproxy logs to stdout: send it where the test can read it.
os.dup2(2, 1)
main()
"#;

const UNIX_ECHO_PY: &str = r#"# minch unix socket tests: Python websockets echo on a Unix socket (written by tests/support)
import asyncio
import os
import ssl
import sys
import threading

from websockets.asyncio.server import unix_serve


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except Exception:
        pass


async def main(path, lifetime, cert, key):
    context = None
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def watch_stdin():
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(lifetime, lambda: done.done() or done.set_result(None))
    async with unix_serve(echo, path, ssl=context):
        print("ready", flush=True)
        await done
    os._exit(0)


args = sys.argv[1:]
asyncio.run(main(args[0], float(args[1]), *(args[2:4] if len(args) > 2 else (None, None))))
"#;

const ECHO_JS: &str = r#"// minch interop: echo server on Node ws (written by tests/support)
'use strict';
const { WebSocketServer } = require('ws');

const lifetimeMs = 1000 * Number(process.argv[2] || 600);
// `off` (ws's default), `deflate` (every message compressed, context kept), `no-context`
// (every message compressed, no context takeover either way: the client must comply).
const mode = process.argv[3] || 'off';
const perMessageDeflate = mode === 'off' ? false : {
  threshold: 0,
  serverNoContextTakeover: mode === 'no-context',
  clientNoContextTakeover: mode === 'no-context',
};
const wss = new WebSocketServer({
  host: '127.0.0.1', port: 0, maxPayload: 64 * 1024 * 1024, perMessageDeflate,
});
// `frag N SIZE`: a text message of SIZE bytes (a repeated JSON-like record) in N fragments.
function sendFragments(ws, message) {
  const [, n, size] = message.split(' ').map(Number);
  const record = '{"symbol":"BTC-USD","bid":"64123.5","ask":"64124.0"}';
  const text = record.repeat(Math.ceil(size / record.length) + 1).slice(0, size);
  const step = Math.max(1, Math.ceil(size / n));
  for (let i = 0; i < size; i += step) {
    ws.send(text.slice(i, i + step), { binary: false, fin: i + step >= size });
  }
}
wss.on('listening', () => {
  process.stdout.write(wss.address().port + '\n');
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString().startsWith('frag ')) {
      sendFragments(ws, data.toString());
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on('error', () => {});
});
const quit = () => process.exit(0);
process.stdin.on('end', quit);
process.stdin.on('close', quit);
process.stdin.resume();
setTimeout(quit, lifetimeMs);
"#;

/// Where interop tools live: `$MINCH_INTEROP_DIR`, else `<target dir>/interop` (the parent
/// of cargo's `CARGO_TARGET_TMPDIR`, which already follows `CARGO_TARGET_DIR`).
pub fn interop_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MINCH_INTEROP_DIR") {
        return PathBuf::from(dir);
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("interop")
}

/// A child-process WebSocket server; killed on drop.
pub struct ExternalServer {
    name: &'static str,
    port: u16,
    child: Child,
    log_path: PathBuf,
}

impl ExternalServer {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:PORT/path` (the echo servers ignore the path).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("ws://127.0.0.1:{}{slash}{path}", self.port)
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether and how an interop echo server compresses (permessage-deflate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCompression {
    /// The peer's own default: on for Python `websockets`, off for Node `ws`.
    Default,
    /// No compression.
    Off,
    /// Compression with context takeover (Node: every message compressed).
    On,
    /// Compression without context takeover either way (Python: with 12-bit windows).
    NoContextTakeover,
}

/// Start an echo server on Python `websockets` (installed into a venv on first use), with
/// its default settings (compression on). Every echo server also answers a text message
/// `frag N SIZE` with a text message of SIZE bytes in N fragments.
pub fn python_echo_server() -> Result<ExternalServer, String> {
    python_echo_server_with(PeerCompression::Default)
}

/// [`python_echo_server`] with the compression settings given.
pub fn python_echo_server_with(compression: PeerCompression) -> Result<ExternalServer, String> {
    let venv = provision_python()?;
    let script = write_script(&interop_dir(), "echo_server.py", ECHO_PY)?;
    let python = venv.join("bin").join("python");
    let mode = match compression {
        PeerCompression::Default | PeerCompression::On => "default",
        PeerCompression::Off => "off",
        PeerCompression::NoContextTakeover => "no-context",
    };
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg(SERVER_LIFETIME_SECS.to_string())
        .arg(mode);
    start_child("python-websockets", cmd)
}

/// Start pproxy listening as `listen` says, with `PORT` in it replaced by a free port:
/// `http://127.0.0.1:PORT`, `socks5://127.0.0.1:PORT#user:password`,
/// `http+socks5://127.0.0.1:PORT` (both on one port). Returns once it accepts connections;
/// its log (`-v`: one line per tunnel, `http 127.0.0.1:x -> host:port`) is in `stderr()`.
pub fn pproxy(listen: &str) -> Result<ExternalServer, String> {
    pproxy_with(listen, &[])
}

/// [`pproxy`] with more arguments, e.g. `["--ssl", "cert.pem,key.pem"]` for an
/// `http+ssl://` listener.
pub fn pproxy_with(listen: &str, args: &[&str]) -> Result<ExternalServer, String> {
    let venv = provision_python()?;
    let script = write_script(&interop_dir(), "pproxy_server.py", PPROXY_PY)?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.arg(&script)
        .arg(listen)
        .arg(SERVER_LIFETIME_SECS.to_string())
        .args(args);
    let server = start_child("pproxy", cmd)?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "pproxy did not accept connections within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                server.stderr()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// Start a Python `websockets` echo server on the Unix socket at `path`; with `tls` (certificate
/// and key PEM), TLS over the socket.
pub fn python_unix_echo_server(
    path: &Path,
    tls: Option<(&str, &str)>,
) -> Result<ExternalServer, String> {
    let venv = provision_python()?;
    let script = write_script(&interop_dir(), "unix_echo_server.py", UNIX_ECHO_PY)?;
    let mut cmd = Command::new(venv.join("bin").join("python"));
    cmd.arg(&script)
        .arg(path)
        .arg(SERVER_LIFETIME_SECS.to_string());
    if let Some((certificate, key)) = tls {
        let dir = path.parent().unwrap_or(Path::new("."));
        let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("unix");
        let certificate_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        fs::write(&certificate_path, certificate).map_err(|e| format!("write cert: {e}"))?;
        fs::write(&key_path, key).map_err(|e| format!("write key: {e}"))?;
        cmd.arg(certificate_path).arg(key_path);
    }
    start_child_ready("python-websockets-unix", cmd, None)
}

/// Start an echo server on Node `ws` (installed with npm on first use), with its default
/// settings (no compression).
pub fn node_echo_server() -> Result<ExternalServer, String> {
    node_echo_server_with(PeerCompression::Default)
}

/// [`node_echo_server`] with the compression settings given.
pub fn node_echo_server_with(compression: PeerCompression) -> Result<ExternalServer, String> {
    let dir = provision_node()?;
    let script = write_script(&dir, "echo.js", ECHO_JS)?;
    let mode = match compression {
        PeerCompression::Default | PeerCompression::Off => "off",
        PeerCompression::On => "deflate",
        PeerCompression::NoContextTakeover => "no-context",
    };
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(SERVER_LIFETIME_SECS.to_string())
        .arg(mode)
        .current_dir(&dir);
    start_child("node-ws", cmd)
}

/// Create the venv and install websockets once; returns the venv directory.
fn provision_python() -> Result<PathBuf, String> {
    static DONE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let venv = interop_dir().join("venv");
    let marker = venv.join(format!(
        ".minch-ready-websockets-{PY_WEBSOCKETS_VERSION}-pproxy-{PPROXY_VERSION}"
    ));
    // A venv whose interpreter went away (e.g. a different Python now) is provisioned anew.
    if !venv.join("bin").join("python").exists() {
        let _ = fs::remove_file(&marker);
    }
    provision_once(&DONE, "python", &marker, || {
        let base = std::env::var("MINCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let logs = interop_dir().join("logs");
        let mut venv_cmd = Command::new(&base);
        venv_cmd.arg("-m").arg("venv").arg("--clear").arg(&venv);
        run_bounded(venv_cmd, &logs.join("python-venv.log"), INSTALL_TIMEOUT)?;
        let python = venv.join("bin").join("python");
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--timeout",
            "30",
            "--retries",
            "2",
        ])
        .arg(format!("websockets=={PY_WEBSOCKETS_VERSION}"))
        .arg(format!("pproxy=={PPROXY_VERSION}"));
        run_bounded(pip, &logs.join("python-pip.log"), INSTALL_TIMEOUT)?;
        let mut check = Command::new(&python);
        check.args([
            "-c",
            "from websockets.asyncio.server import serve; import pproxy.server",
        ]);
        run_bounded(check, &logs.join("python-check.log"), STARTUP_TIMEOUT)
    })?;
    Ok(venv)
}

/// `npm install ws` once; returns the directory holding `node_modules`.
fn provision_node() -> Result<PathBuf, String> {
    static DONE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let dir = interop_dir().join("node");
    let marker = dir.join(format!(".minch-ready-ws-{NODE_WS_VERSION}"));
    provision_once(&DONE, "node", &marker, || {
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        write_script(
            &dir,
            "package.json",
            "{\n  \"name\": \"minch-interop\",\n  \"private\": true\n}\n",
        )?;
        let logs = interop_dir().join("logs");
        let mut npm = Command::new("npm");
        npm.args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--fetch-retries=2",
            "--fetch-retry-mintimeout=2000",
            "--fetch-retry-maxtimeout=10000",
            "--fetch-timeout=60000",
        ])
        .arg(format!("ws@{NODE_WS_VERSION}"))
        .current_dir(&dir);
        run_bounded(npm, &logs.join("node-npm.log"), INSTALL_TIMEOUT)?;
        let mut check = Command::new("node");
        check.args(["-e", "require('ws')"]).current_dir(&dir);
        run_bounded(check, &logs.join("node-check.log"), STARTUP_TIMEOUT)
    })
    .map(|()| dir)
}

/// Run `install` unless `marker` exists, at most once at a time across threads (a static
/// mutex) and processes (a lock directory). The marker is written last, by rename, so it
/// only exists after a complete install. A failure is remembered for the rest of this
/// process so that every later test fails fast with the same reason.
fn provision_once(
    done: &Mutex<Option<Result<(), String>>>,
    what: &str,
    marker: &Path,
    install: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(result) = done.as_ref() {
        return result.clone();
    }
    let result = (|| {
        if marker.exists() {
            return Ok(());
        }
        let root = interop_dir();
        fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
        let _lock = DirLock::acquire(&root.join(format!("{what}.lock")))?;
        if marker.exists() {
            return Ok(()); // another process finished meanwhile
        }
        let started = Instant::now();
        eprintln!(
            "[support] provisioning {what} interop peer under {}",
            root.display()
        );
        install().map_err(|e| format!("provisioning {what} failed: {e}"))?;
        let parent = marker.parent().unwrap_or(&root);
        let tmp = parent.join(format!(".marker-{}", std::process::id()));
        fs::write(&tmp, format!("installed in {:?}\n", started.elapsed()))
            .and_then(|()| fs::rename(&tmp, marker))
            .map_err(|e| format!("write {}: {e}", marker.display()))?;
        eprintln!("[support] {what} ready after {:?}", started.elapsed());
        Ok(())
    })();
    *done = Some(result.clone());
    result
}

/// A cross-process lock: a directory created atomically, holding the owner's pid.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path) -> Result<DirLock, String> {
        let deadline = Instant::now() + LOCK_STALE_AFTER + Duration::from_secs(30);
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(DirLock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if Self::is_stale(path) {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("timed out waiting for lock {}", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(format!("create lock {}: {e}", path.display())),
            }
        }
    }

    /// Stale if its owner process is gone, or if it is older than any install could take.
    fn is_stale(path: &Path) -> bool {
        let age = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age > LOCK_STALE_AFTER {
            return true;
        }
        match fs::read_to_string(path.join("pid")) {
            Ok(pid) => match pid.trim().parse::<u32>() {
                Ok(pid) => {
                    Path::new("/proc").exists() && !Path::new(&format!("/proc/{pid}")).exists()
                }
                Err(_) => age > Duration::from_secs(30),
            },
            // The owner may not have written its pid yet.
            Err(_) => age > Duration::from_secs(30),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Write `contents` to `dir/name` atomically (temp file + rename); returns the path.
fn write_script(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    if fs::read_to_string(&path).is_ok_and(|c| c == contents) {
        return Ok(path);
    }
    let tmp = dir.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    fs::write(&tmp, contents)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Last `max` bytes of a log file, for error messages.
fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut out = String::new();
    let _ = file.read_to_string(&mut out);
    out
}

/// Run a command to completion with stdout+stderr going to `log`, killing it after `timeout`.
fn run_bounded(mut cmd: Command, log: &Path, timeout: Duration) -> Result<(), String> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("clone log handle: {e}"))?;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(format!(
                    "{shown} exited with {status}; log {}:\n{}",
                    log.display(),
                    log_tail(log, 3000)
                ))
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {timeout:?}; log {}:\n{}",
                    log.display(),
                    log_tail(log, 3000)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    }
}

/// Start a server that prints its port as the first stdout line; stderr goes to a log file.
/// Our end of its stdin stays open: the scripts exit when it closes (i.e. if we die).
fn start_child(name: &'static str, cmd: Command) -> Result<ExternalServer, String> {
    start_child_ready(name, cmd, Some(()))
}

/// [`start_child`], for a server that prints its port (`port: Some(())`, the port is then
/// `ExternalServer::port`) or any line once it is ready (`None`: the port is 0).
fn start_child_ready(
    name: &'static str,
    mut cmd: Command,
    port: Option<()>,
) -> Result<ExternalServer, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let logs = interop_dir().join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let log_path = logs.join(format!(
        "{name}-{}-{}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let err = fs::File::create(&log_path).map_err(|e| format!("create log: {e}"))?;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let failure = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        format!(
            "{name} echo server ({shown}) {why}; stderr:\n{}",
            log_tail(&log_path, 3000)
        )
    };
    let port = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Some(Ok(_))) if port.is_none() => 0,
        Ok(Some(Ok(line))) => match line.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(failure(&mut child, format!("printed {line:?}, not a port"))),
        },
        Ok(_) => {
            return Err(failure(
                &mut child,
                "exited before printing its port".into(),
            ))
        }
        Err(_) => {
            return Err(failure(
                &mut child,
                format!("did not print its port within {STARTUP_TIMEOUT:?}"),
            ))
        }
    };
    Ok(ExternalServer {
        name,
        port,
        child,
        log_path,
    })
}
