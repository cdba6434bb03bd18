//! The simple API for programs without an actix System: a plain `fn main`, a thread pool, or
//! a tokio application.
//!
//! awc's connections are `!Send` and need actix's single-threaded runtime, so these functions
//! run every connection on one background thread with its own actix System, started on first
//! use. The handles are `Send + Sync` and their calls block the calling thread.
//!
//! **Which flavour?** Inside an actix System (actix-web, `#[actix_rt::main]`) use
//! [`minch::connect`](crate::connect) or the actor [`Client`](crate::Client). Anywhere else
//! use this module. In a tokio application, call it from `tokio::task::spawn_blocking` (or
//! accept that the calling worker thread waits while a call blocks).
//!
//! ```no_run
//! use std::time::Duration;
//! use minch::{blocking, ConnectOptions, Frame};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (connection, frames) =
//!         blocking::connect("ws://127.0.0.1:4000/echo", Vec::<(String, String)>::new(), ConnectOptions::default())?;
//!     connection.send_frame(Frame::text("hello"))?;
//!     println!("{:?}", frames.receive_frame(Duration::from_secs(5))?);
//!     connection.close();
//!     Ok(())
//! }
//! ```

use std::{
    sync::{mpsc as std_mpsc, Arc, OnceLock},
    thread,
    time::Duration,
};

use actix_rt::{Arbiter, ArbiterHandle, System};
use tokio::sync::mpsc;

use crate::{
    client::Stats,
    error::SendError,
    frame::Frame,
    inbox::Receiver,
    options::{ConnectOptions, ConnectRequest},
    simple::{self, ReceiveError},
    transport::Response,
    Error,
};

/// The background thread that runs every blocking connection, started once.
fn runtime() -> Result<&'static ArbiterHandle, Error> {
    static RUNTIME: OnceLock<Result<ArbiterHandle, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(start_runtime)
        .as_ref()
        .map_err(|reason| Error::io(std::io::Error::other(reason.clone())))
}

fn start_runtime() -> Result<ArbiterHandle, String> {
    let (handle_tx, handle_rx) = std_mpsc::channel();
    thread::Builder::new()
        .name("minch-blocking".into())
        .spawn(move || {
            System::new().block_on(async move {
                let _ = handle_tx.send(Arbiter::current());
                std::future::pending::<()>().await;
            });
        })
        .map_err(|error| format!("could not start the minch-blocking thread: {error}"))?;
    handle_rx
        .recv()
        .map_err(|_| "the minch-blocking runtime thread failed to start".to_owned())
}

enum Command {
    Send(Frame, std_mpsc::Sender<Result<(), SendError>>),
    SendAll(Vec<Frame>, std_mpsc::Sender<Result<(), SendError>>),
    TrySend(Frame, std_mpsc::Sender<Result<(), SendError>>),
    Stats(std_mpsc::Sender<Stats>),
    Close(std_mpsc::Sender<()>),
}

/// Connects and blocks until the server accepted the upgrade, or with the error that
/// prevented it. See [`minch::connect`](crate::connect) for the arguments.
///
/// # Errors
/// Whatever stopped the connection from opening, as an [`Error`].
pub fn connect<U, K, V>(
    url: U,
    headers: Vec<(K, V)>,
    options: ConnectOptions,
) -> Result<(Connection, Frames), Error>
where
    U: Into<String>,
    K: Into<String>,
    V: Into<String>,
{
    let request: ConnectRequest = (url, headers, options).into();
    let (opened_tx, opened_rx) = std_mpsc::channel();
    let (commands_tx, commands) = mpsc::unbounded_channel();

    let spawned = runtime()?.spawn_fn(move || {
        actix_rt::spawn(serve(request, opened_tx, commands));
    });
    if !spawned {
        return Err(Error::io(std::io::Error::other(
            "the minch-blocking runtime thread has stopped",
        )));
    }
    match opened_rx.recv() {
        Ok(Ok((response, receiver))) => Ok((
            Connection {
                inner: Arc::new(Handle {
                    commands: commands_tx,
                    response,
                }),
            },
            Frames { receiver },
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::io(std::io::Error::other(
            "the connection task stopped before the handshake finished",
        ))),
    }
}

/// Runs one connection on the background thread: opens it, then carries out commands until
/// every handle is gone. Received frames go straight to the bounded queue [`Frames`] reads.
async fn serve(
    request: ConnectRequest,
    opened: std_mpsc::Sender<Result<(Response, Receiver), Error>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let connection = match simple::open(request).await {
        Ok((connection, frames)) => {
            let response = connection.response().clone();
            let _ = opened.send(Ok((response, frames.into_receiver())));
            connection
        }
        Err(error) => {
            let _ = opened.send(Err(error));
            return;
        }
    };
    // Each command waits for its own answer on a task of its own: a send held back by a peer
    // that does not read must not hold up another thread's `try_send_frame`, `stats` or `close`.
    // (A thread's own calls stay in order: each waits for its answer before the next.)
    while let Some(command) = commands.recv().await {
        let connection = connection.clone();
        actix_rt::spawn(async move {
            match command {
                Command::Send(frame, done) => {
                    let _ = done.send(connection.send_frame(frame).await);
                }
                Command::SendAll(frames, done) => {
                    let _ = done.send(connection.send_frames(frames).await);
                }
                Command::TrySend(frame, done) => {
                    let _ = done.send(connection.try_send_frame(frame).await);
                }
                Command::Stats(done) => {
                    let _ = done.send(connection.stats().await);
                }
                Command::Close(done) => {
                    connection.close().await;
                    let _ = done.send(());
                }
            }
        });
    }
    // Every handle is gone: dropping `connection` closes gracefully.
}

/// The sending side of a blocking connection: `Send + Sync`, cheap to clone. Dropping the last
/// clone closes the connection gracefully.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    commands: mpsc::UnboundedSender<Command>,
    response: Response,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Send(..) => "Send",
            Command::SendAll(..) => "SendAll",
            Command::TrySend(..) => "TrySend",
            Command::Stats(_) => "Stats",
            Command::Close(_) => "Close",
        })
    }
}

impl Connection {
    /// The server's answer to the upgrade: its headers tell the subprotocol and whether
    /// compression was negotiated (`sec-websocket-extensions`).
    pub fn response(&self) -> &Response {
        &self.inner.response
    }

    /// Sends a frame and blocks until it has been written to the socket.
    ///
    /// # Errors
    /// As [`simple::Connection::send_frame`](crate::Connection::send_frame).
    pub fn send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.request(|done| Command::Send(frame, done))
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Sends several frames in order and blocks until the last one has been written: one trip
    /// to the connection's thread for the whole batch, which a thread producing many frames
    /// should prefer to a [`send_frame`](Self::send_frame) each.
    ///
    /// # Errors
    /// As [`simple::Connection::send_frames`](crate::Connection::send_frames): the first
    /// frame that failed; the ones after it were not sent. If any frame is invalid, none is sent.
    pub fn send_frames(&self, frames: Vec<Frame>) -> Result<(), SendError> {
        self.request(|done| Command::SendAll(frames, done))
            .unwrap_or(Err(SendError::Stopped))
    }

    /// Like [`send_frame`](Self::send_frame), but fails at once with
    /// [`SendError::BufferFull`] when the outgoing buffer is full.
    ///
    /// # Errors
    /// As [`send_frame`](Self::send_frame), plus [`SendError::BufferFull`].
    pub fn try_send_frame(&self, frame: Frame) -> Result<(), SendError> {
        self.request(|done| Command::TrySend(frame, done))
            .unwrap_or(Err(SendError::Stopped))
    }

    /// The connection's state and traffic.
    pub fn stats(&self) -> Stats {
        self.request(Command::Stats).unwrap_or_default()
    }

    /// Sends a command to the runtime thread and blocks for its answer; `None` if the
    /// connection task is gone.
    fn request<T>(&self, command: impl FnOnce(std_mpsc::Sender<T>) -> Command) -> Option<T> {
        let (done_tx, done) = std_mpsc::channel();
        self.inner.commands.send(command(done_tx)).ok()?;
        done.recv().ok()
    }

    /// Closes the connection with code 1000 and blocks until the close handshake is over (at
    /// most [`ConnectOptions::close_timeout`], even when the server stops reading).
    pub fn close(&self) {
        let _ = self.request(Command::Close);
    }
}

/// The receiving side of a blocking connection: `Send + Sync`. Frames wait in a bounded queue
/// ([`ConnectOptions::max_queue`], [`ConnectOptions::max_queue_bytes`]); while it is full the
/// connection stops reading, so the server is made to wait. Dropping it discards frames that
/// arrive later.
pub struct Frames {
    receiver: Receiver,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames").finish_non_exhaustive()
    }
}

impl Frames {
    /// The next frame, blocking at most `timeout` (`Duration::ZERO` does not block).
    ///
    /// # Errors
    /// [`ReceiveError::Timeout`] if nothing came in time; [`ReceiveError::Closed`] once the
    /// connection has ended and every earlier frame was received.
    pub fn receive_frame(&self, timeout: Duration) -> Result<Frame, ReceiveError> {
        match self.receiver.take_within(timeout) {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(reason)) => Err(ReceiveError::Closed(reason)),
            None => Err(ReceiveError::Timeout),
        }
    }
}

/// The handles are promised to be `Send + Sync`: this fails to compile otherwise.
#[allow(dead_code)]
fn assert_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Connection>();
    send_sync::<Frames>();
}
