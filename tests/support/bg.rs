//! A tokio current-thread runtime on its own thread, for the raw TCP peers and the proxy.

use std::future::Future;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest a background peer lives, as a safety net if a test forgets to drop it.
pub const MAX_PEER_LIFETIME: Duration = Duration::from_secs(600);
/// How long dropping a peer waits for its thread.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Runs one future on a dedicated thread until it ends, the handle is dropped, or
/// `MAX_PEER_LIFETIME` passes. Everything it spawned is dropped with the runtime, which
/// closes any socket the tasks still held.
pub struct Background {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    pub fn start<F, Fut>(name: &str, make: F) -> Background
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for test peer");
                rt.block_on(async move {
                    tokio::select! {
                        _ = make() => {}
                        _ = shutdown_rx => {}
                        _ = tokio::time::sleep(MAX_PEER_LIFETIME) => {
                            log::warn!("test peer reached its maximum lifetime");
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
                let _ = done_tx.send(());
            })
            .expect("spawn test peer thread");
        Background {
            shutdown: Some(shutdown_tx),
            done: done_rx,
            thread: Some(thread),
        }
    }

    /// Stop the peer and wait (bounded) for its thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            if !matches!(
                self.done.recv_timeout(STOP_WAIT),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                let _ = thread.join();
            } else {
                log::warn!("test peer thread did not stop within {STOP_WAIT:?}");
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind 127.0.0.1:`port` (0 = OS-chosen) as a non-blocking std listener, ready to be
/// handed to tokio on the peer's thread.
pub fn bind_local(port: u16) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    listener
}
