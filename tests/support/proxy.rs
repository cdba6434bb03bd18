//! A TCP proxy on 127.0.0.1 whose behaviour can be switched while connections are open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::bg::{bind_local, Background};
use super::{wait_until, wait_until_blocking};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the proxy treats bytes on open (and new) connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both directions (including a half-close).
    Pass,
    /// Stop reading both sides: bytes wait in the kernel buffers and flow again, intact,
    /// after `pass()`. Senders eventually block once buffers fill.
    Pause,
    /// Read both sides and throw the bytes away (connections stay open, nothing arrives;
    /// FIN is not forwarded either). Like a peer whose packets vanish.
    Blackhole,
}

#[derive(Debug, Clone, Copy)]
struct Control {
    mode: ProxyMode,
    reset_gen: u64,
    close_gen: u64,
}

/// TCP forwarder 127.0.0.1:PORT → 127.0.0.1:TARGET. Stops (closing everything) on drop.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: Arc<watch::Sender<Control>>,
    accepted: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    bg: Background,
}

/// Decrements the active count however the connection task ends.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    /// Proxy on an OS-chosen port to `127.0.0.1:target_port`, in `Pass` mode.
    pub fn start(target_port: u16) -> Proxy {
        Self::start_to(SocketAddr::from(([127, 0, 0, 1], target_port)))
    }

    /// Proxy on an OS-chosen port to `target` (must be a loopback address).
    pub fn start_to(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the test proxy only forwards to loopback"
        );
        let listener = bind_local(0);
        let addr = listener.local_addr().expect("local addr");
        let (control, _) = watch::channel(Control {
            mode: ProxyMode::Pass,
            reset_gen: 0,
            close_gen: 0,
        });
        let control = Arc::new(control);
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (ctl, acc, act) = (
            Arc::clone(&control),
            Arc::clone(&accepted),
            Arc::clone(&active),
        );
        let bg = Background::start("minch-test-proxy", move || async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                act.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(Arc::clone(&act));
                tokio::spawn(forward(client, target, ctl.subscribe(), guard));
            }
        });
        Proxy {
            addr,
            target,
            control,
            accepted,
            active,
            bg,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `ws://127.0.0.1:PORT/path` through the proxy.
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("ws://127.0.0.1:{}{slash}{path}", self.addr.port())
    }

    pub fn mode(&self) -> ProxyMode {
        self.control.borrow().mode
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.control.send_modify(|c| c.mode = mode);
    }

    /// Forward normally again.
    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    /// Stop reading both sides (bytes are kept and flow again after `pass()`).
    pub fn pause(&self) {
        self.set_mode(ProxyMode::Pause);
    }

    /// Read and drop everything in both directions, keeping connections open.
    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole);
    }

    /// Abort every current connection, both sides, with RST (SO_LINGER 0 then close).
    /// Later connections are unaffected.
    pub fn reset_all(&self) {
        self.control.send_modify(|c| c.reset_gen += 1);
    }

    /// Close every current connection, both sides, with a normal FIN.
    pub fn close_all(&self) {
        self.control.send_modify(|c| c.close_gen += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Async: wait until `n` connections were accepted.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.accepted() >= n).await
    }

    /// Async: wait until exactly `n` connections are open.
    pub async fn wait_active(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.active() == n).await
    }

    /// Blocking twin of `wait_active`.
    pub fn wait_active_blocking(&self, n: usize, timeout: Duration) -> bool {
        wait_until_blocking(timeout, || self.active() == n)
    }

    /// Stop listening and close every connection.
    pub fn stop(&mut self) {
        self.bg.stop();
    }
}

/// How one direction of a proxied connection ended.
enum Ended {
    /// The sender closed its side (passed on as a shutdown while passing traffic).
    Eof,
    /// Reset asked for, or an I/O error: both sockets are to be reset.
    Reset,
    /// Close asked for, or the proxy stopped.
    Closed,
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    mut ctl: watch::Receiver<Control>,
    _active: ActiveGuard,
) {
    let start = *ctl.borrow_and_update();
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Each direction on its own: a write that waits for one peer to read must not stop the
    // other direction (two peers each waiting for the other to read would never move again).
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let to_upstream = pump(client_read, upstream_write, ctl.clone(), start);
    let to_client = pump(upstream_read, client_write, ctl, start);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let ended = tokio::select! {
            ended = &mut to_upstream, if !up_done => { up_done = true; ended }
            ended = &mut to_client, if !down_done => { down_done = true; ended }
        };
        match ended {
            Ended::Eof => {}
            // Dropping the other direction's future drops (and so closes or resets) its halves.
            Ended::Reset | Ended::Closed => return,
        }
    }
}

/// Copies `from` to `to` while the proxy passes traffic; reads nothing while paused, drops
/// what it reads while black-holing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut ctl: watch::Receiver<Control>,
    start: Control,
) -> Ended {
    let mut buffer = vec![0u8; 16 * 1024];
    // Both sockets this direction touches (which are both of the connection) end with a reset.
    let reset = |from: &tokio::net::tcp::OwnedReadHalf, to: &tokio::net::tcp::OwnedWriteHalf| {
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
        Ended::Reset
    };
    loop {
        let now = *ctl.borrow();
        if now.reset_gen != start.reset_gen {
            return reset(&from, &to);
        }
        if now.close_gen != start.close_gen {
            return Ended::Closed;
        }
        let reading = now.mode != ProxyMode::Pause;
        // Bytes are dropped only when the read began black-holing. What was read while passing
        // is forwarded even if `pause()` came in meanwhile: dropping it corrupted the stream
        // (seen on a loaded machine, where the read won the race with the pause).
        tokio::select! {
            r = from.read(&mut buffer), if reading => match r {
                Ok(0) => {
                    if now.mode != ProxyMode::Blackhole {
                        let _ = to.shutdown().await;
                    }
                    return Ended::Eof;
                }
                Ok(n) => {
                    if now.mode != ProxyMode::Blackhole
                        && to.write_all(&buffer[..n]).await.is_err()
                    {
                        return reset(&from, &to);
                    }
                }
                Err(_) => return reset(&from, &to),
            },
            changed = ctl.changed() => {
                if changed.is_err() {
                    return Ended::Closed;
                }
            }
        }
    }
}
