//! Regressions found by a cold review of the simple API's direct send path (handles writing
//! straight into the client's connection, numbered `Progress`): each test showed a bug against
//! a real peer on 127.0.0.1, with bounded waits.

mod support;

use std::{
    cell::RefCell,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    task::{Context, Poll, Wake, Waker},
    thread,
    time::{Duration, Instant},
};

use futures_util::Sink;
use minch::{ConnectOptions, Frame, SendError};
use support::{accept_upgrade_blocking, decode_frame, frame_bytes, ClientFrame};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// Longest a peer lives.
const PEER_LIFETIME: Duration = Duration::from_secs(30);

/// What the test tells its raw peer to do.
enum Cmd {
    /// Write these bytes to the client.
    Write(Vec<u8>),
    /// Start reading (and decoding) what the client sent.
    Read,
}

/// A raw peer: upgrades one connection, reads nothing until told to, writes what it is told.
struct Peer {
    url: String,
    cmds: std_mpsc::Sender<Cmd>,
    frames: Arc<Mutex<Vec<ClientFrame>>>,
}

impl Peer {
    fn write(&self, bytes: Vec<u8>) {
        let _ = self.cmds.send(Cmd::Write(bytes));
    }

    fn start_reading(&self) {
        let _ = self.cmds.send(Cmd::Read);
    }
}

fn peer() -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (cmds, commands) = std_mpsc::channel::<Cmd>();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let recorded = frames.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(rest) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let reading = Arc::new(AtomicBool::new(false));
        let reader = {
            let stream = stream.try_clone().expect("clone");
            let reading = reading.clone();
            thread::spawn(move || read_client(stream, rest, &reading, &recorded))
        };
        let deadline = Instant::now() + PEER_LIFETIME;
        while Instant::now() < deadline {
            match commands.recv_timeout(Duration::from_millis(50)) {
                Ok(Cmd::Write(bytes)) => {
                    let _ = stream.write_all(&bytes);
                }
                Ok(Cmd::Read) => reading.store(true, Ordering::SeqCst),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        let _ = reader.join();
    });
    Peer { url, cmds, frames }
}

fn read_client(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    reading: &AtomicBool,
    frames: &Mutex<Vec<ClientFrame>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 256 << 10];
    while Instant::now() < deadline {
        if !reading.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            buf.drain(..used);
            frames.lock().unwrap().push(frame);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

async fn open(url: &str, options: ConnectOptions) -> (minch::Connection, minch::Frames) {
    actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(url.to_owned(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects")
}

/// A frame far larger than loopback's socket buffers: with a peer that does not read, its
/// write cannot complete.
fn huge_frame() -> Frame {
    Frame::binary(vec![7u8; 48 << 20])
}

// ---- 1. a frame refused because the server broke the protocol is reported as `Closing` ------

/// `send_frame`'s docs: `Closing` "once the connection is closing", `ConnectionLost` "if it
/// broke before the frame was written". Here the program never closes: while one frame waits
/// behind a huge one (the peer does not read), the server sends a frame with a reserved opcode
/// and the client fails the connection (RFC 6455 §7.1.7). The held-back frame was never
/// written because the connection broke, and the actor client's `SendFrame` says so
/// (`ConnectionLost`, the refusal `Connection::fail` passes to `close_now`).
///
/// The simple handle gets `Closing` instead: `close_now` records only `refused_from` in
/// `Progress`, and `Progress::outcome` maps every refused number to `Closing`, whatever refusal
/// the caller asked for.
#[actix_rt::test]
async fn a_frame_refused_by_a_protocol_failure_is_connection_lost_not_closing() {
    let peer = peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_millis(500))
        .max_buffered_bytes(64 << 10);
    let (connection, _frames) = open(&peer.url, options).await;

    // The huge frame fills the write buffer (and the socket); the next one is held back.
    let big = {
        let connection = connection.clone();
        actix_rt::spawn(async move { connection.send_frame(huge_frame()).await })
    };
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let held = {
        let connection = connection.clone();
        actix_rt::spawn(async move { connection.send_frame(Frame::text("held back")).await })
    };
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !held.is_finished(),
        "the second frame waits behind the first"
    );

    // A frame with reserved opcode 3: the client must fail the connection.
    peer.write(frame_bytes(true, 3, b""));

    let held = actix_rt::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held-back send resolves once the connection failed")
        .expect("task");
    let big = actix_rt::time::timeout(Duration::from_secs(5), big)
        .await
        .expect("the huge send resolves once the connection failed")
        .expect("task");
    assert!(
        matches!(big, Err(SendError::ConnectionLost)),
        "the partly written frame: {big:?}"
    );
    assert!(
        matches!(held, Err(SendError::ConnectionLost)),
        "the program never closed: a frame the protocol failure kept from the wire is \
         ConnectionLost (as the actor client reports it), got {held:?}"
    );
}

// ---- 2. a waker that runs code synchronously hits a RefCell double borrow ----------------------

thread_local! {
    /// A handle the synchronous waker uses, on the connection's (the test's) thread.
    static HANDLE: RefCell<Option<minch::Connection>> = const { RefCell::new(None) };
    /// What the synchronous waker saw: a panic message, if any.
    static PANICKED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A waker that, when woken, asks another handle whether the connection has room — as an
/// executor that polls a woken task right away would. `Waker` allows this; it is `Send + Sync`
/// and touches the handle only through a thread-local of the thread it is woken on.
struct PollsOnWake;

impl Wake for PollsOnWake {
    fn wake(self: Arc<Self>) {
        HANDLE.with(|handle| {
            let Some(mut handle) = handle.borrow_mut().take() else {
                return;
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut cx = Context::from_waker(Waker::noop());
                let _ = Pin::new(&mut handle).poll_ready(&mut cx);
            }));
            if let Err(panic) = result {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".to_owned());
                PANICKED.with(|panicked| *panicked.borrow_mut() = Some(message));
                // The handle's borrow state is unknown after the panic: do not drop it here.
                std::mem::forget(handle);
                return;
            }
            HANDLE.with(|slot| *slot.borrow_mut() = Some(handle));
        });
    }
}

/// The brief's promise: no panics. A task waits in `Sink::poll_flush` for a frame the peer does
/// not read yet; its waker runs code synchronously (legal for a `Waker`) that polls another
/// handle. When the peer reads and the frame is written, `Progress::wake_all` runs the waker
/// from inside `Connection::poll_flush` — while the driver (or a handle's `flush_or_wake`)
/// holds the connection's `RefCell` mutably borrowed — and the other handle's `poll_room`
/// borrows it again: "already mutably borrowed".
#[actix_rt::test]
async fn a_waker_that_polls_another_handle_does_not_hit_a_double_borrow() {
    let peer = peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_millis(500));
    let (mut connection, _frames) = open(&peer.url, options).await;
    HANDLE.with(|handle| *handle.borrow_mut() = Some(connection.clone()));

    let waker = Waker::from(Arc::new(PollsOnWake));
    let mut cx = Context::from_waker(&waker);
    assert!(matches!(
        Pin::new(&mut connection).poll_ready(&mut cx),
        Poll::Ready(Ok(()))
    ));
    Pin::new(&mut connection)
        .start_send(huge_frame())
        .expect("fed");
    assert!(
        Pin::new(&mut connection).poll_flush(&mut cx).is_pending(),
        "the peer does not read: the huge frame cannot be written yet"
    );

    peer.start_reading();
    let written = support::wait_until(Duration::from_secs(10), || {
        PANICKED.with(|panicked| panicked.borrow().is_some())
            || HANDLE.with(|handle| handle.borrow().is_some())
                && matches!(
                    Pin::new(&mut connection).poll_flush(&mut Context::from_waker(Waker::noop())),
                    Poll::Ready(_)
                )
    })
    .await;
    let panicked = PANICKED.with(|panicked| panicked.borrow_mut().take());
    assert!(
        panicked.is_none(),
        "polling a handle from a waker woken by the connection panicked: {panicked:?}"
    );
    assert!(written, "the frame was written once the peer read");
    let _ = peer.frames.lock().unwrap().len();
}

// ---- 3. poll_ready says there is room while the connection is closing -----------------------------

/// The `Sink` docs: `poll_ready` "fails with `SendError::Stopped` once the connection has ended
/// (or `SendError::Closing` once it is closing)". After the server's close frame the client has
/// echoed it and is closing (waiting for the server's FIN, up to `close_timeout`): `send_frame`
/// says `Closing`, but `poll_ready` says `Ok` — it checks only the handle's own `closing` flag
/// and the buffer's room, not whether the connection has a close queued — so a producer that
/// relies on `poll_ready` learns of the close only from the next `start_send`.
#[actix_rt::test]
async fn poll_ready_fails_with_closing_after_the_server_closed() {
    let peer = peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_secs(3));
    let (mut connection, _frames) = open(&peer.url, options).await;
    // The server closes; it keeps TCP open, so the client stays in the closing state.
    peer.write(support::close_frame(Some(1000), ""));
    actix_rt::time::sleep(Duration::from_millis(300)).await;

    let sent = connection.clone().send_frame(Frame::text("x")).await;
    assert!(matches!(sent, Err(SendError::Closing)), "setup: {sent:?}");
    let ready = Pin::new(&mut connection).poll_ready(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(ready, Poll::Ready(Err(SendError::Closing))),
        "send_frame already says Closing; poll_ready says {ready:?}"
    );
}
