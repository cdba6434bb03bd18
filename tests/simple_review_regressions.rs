//! Regressions found by a cold review of the bounded receive queue, the `Sink` and the batches
//! (issue 10): each test showed a bug against a real peer on 127.0.0.1, with bounded waits.

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use minch::{ConnectOptions, ReceiveError};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, opcode, text_frame,
};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

/// Longest a peer lives.
const PEER_LIFETIME: Duration = Duration::from_secs(30);

struct Out {
    stream: TcpStream,
    close_sent: bool,
}

#[derive(Default)]
struct Seen {
    written_frames: AtomicU64,
    pings: AtomicUsize,
    client_closed: AtomicBool,
    texts: Mutex<Vec<String>>,
}

struct Script {
    out: Arc<Mutex<Out>>,
    seen: Arc<Seen>,
}

impl Script {
    fn send(&self, bytes: &[u8]) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.close_sent {
            return false;
        }
        if out.stream.write_all(bytes).is_err() {
            return false;
        }
        self.seen.written_frames.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn client_closed(&self) -> bool {
        self.seen.client_closed.load(Ordering::SeqCst)
    }
}

struct Peer {
    url: String,
    seen: Arc<Seen>,
}

impl Peer {
    fn pings(&self) -> usize {
        self.seen.pings.load(Ordering::SeqCst)
    }
}

/// A raw peer: upgrades one connection, runs `script` on its thread; a reader thread answers
/// pings with pongs, records texts, and answers a close with a close.
fn spawn_peer(script: impl FnOnce(&Script) + Send + 'static) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let peer_seen = seen.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(rest) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let reading = stream.try_clone().expect("clone");
        let out = Arc::new(Mutex::new(Out {
            stream,
            close_sent: false,
        }));
        let reader = {
            let (out, seen) = (out.clone(), peer_seen.clone());
            thread::spawn(move || read_client(reading, rest, &out, &seen))
        };
        script(&Script {
            out,
            seen: peer_seen,
        });
        let _ = reader.join();
    });
    Peer { url, seen }
}

fn read_client(mut stream: TcpStream, mut buf: Vec<u8>, out: &Mutex<Out>, seen: &Seen) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            buf.drain(..used);
            match frame.opcode {
                opcode::PING => {
                    seen.pings.fetch_add(1, Ordering::SeqCst);
                    let mut out = out.lock().unwrap();
                    if !out.close_sent {
                        let pong = frame_bytes(true, opcode::PONG, &frame.payload);
                        let _ = out.stream.write_all(&pong);
                    }
                }
                opcode::TEXT => {
                    if let Some(text) = frame.text() {
                        seen.texts.lock().unwrap().push(text);
                    }
                }
                opcode::CLOSE => {
                    seen.client_closed.store(true, Ordering::SeqCst);
                    let mut out = out.lock().unwrap();
                    if !out.close_sent {
                        out.close_sent = true;
                        let _ = out.stream.write_all(&close_frame(Some(1000), ""));
                    }
                    let _ = out.stream.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Writes numbered text frames "0", "1", ... as fast as the client takes them (up to `n`).
fn flood_peer(n: usize) -> Peer {
    spawn_peer(move |script| {
        for i in 0..n {
            if script.client_closed() || !script.send(&text_frame(&i.to_string())) {
                return;
            }
        }
    })
}

// ---- 1. a steady reader is disconnected as if it had stopped reading ----------------------------

/// README / `max_queue` docs: "a program that takes no frame for longer than `pong_timeout` after
/// a keepalive ping is disconnected with `Timeout::ReceiveQueueFull`". This program takes a frame
/// every 25 ms — twelve times more often than the 300 ms pong timeout — from a server that
/// streams faster than that, and the peer answers every ping. It must stay connected.
///
/// It is disconnected: reading only resumes once the program has taken the queue down to half
/// (32 of 64 frames, 800 ms at this pace), so the pong is not read for longer than the pong
/// timeout although the program never stopped taking frames.
#[actix_rt::test]
async fn simple_a_steady_slow_reader_is_not_disconnected_by_keepalive() {
    let peer = flood_peer(100_000);
    let options = ConnectOptions::default()
        .max_queue(64)
        .ping_interval(Some(Duration::from_millis(300)))
        .pong_timeout(Duration::from_millis(300));
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    let started = Instant::now();
    let mut next = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        match frames.receive_frame(Duration::from_secs(2)).await {
            Ok(frame) => {
                assert_eq!(frame.as_text(), Some(next.to_string().as_str()));
                next += 1;
            }
            Err(error) => panic!(
                "disconnected after {:?} and {next} frames taken one every 25 ms (pong timeout \
                 300 ms, {} pings answered by the peer): {error:?}",
                started.elapsed(),
                peer.pings()
            ),
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(connection.stats().await.connected);
    connection.close().await;
}

/// Waits (bounded) until the peer saw the client's close frame; returns the texts it got.
async fn texts_after_client_close(peer: &Peer) -> Vec<String> {
    let closed = support::wait_until(Duration::from_secs(10), || {
        peer.seen.client_closed.load(Ordering::SeqCst)
    })
    .await;
    let texts = peer.seen.texts.lock().unwrap().clone();
    assert!(
        closed,
        "the client never sent its close frame; texts so far: {texts:?}"
    );
    texts
}

// ---- 2. a dropped Connection loses the frames of a batch handed over and not yet handled ------

/// `Connection`'s docs: dropping it sends the frames fed to it ("Fed frames are still sent,
/// ahead of the close"), and nothing is lost silently. Here ten frames are fed; `poll_ready`
/// hands the first ones over to the client as a batch once the handle holds
/// `max_buffered_bytes` (64), the rest stay in the handle; then the handle is dropped.
///
/// The server gets only the frames still in the handle: the batch already handed over is
/// never written. It went as an actix request (`Addr::send`) whose response future lived in
/// the handle's `in_flight`; dropping the handle drops that future, and actix skips a message
/// whose requester is gone. So the program loses frames 0.. silently, and the server sees a
/// gap (later frames without the earlier ones).
#[actix_rt::test]
async fn dropping_a_connection_sends_every_fed_frame_even_a_batch_already_handed_over() {
    use futures_util::SinkExt as _;
    let peer = flood_peer(0);
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_buffered_bytes(64);
    let (mut connection, _frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    for n in 0..10 {
        // Each feed is ready at once (no earlier batch in flight): nothing waits here.
        actix_rt::time::timeout(
            Duration::from_secs(5),
            connection.feed(minch::Frame::text(n.to_string())),
        )
        .await
        .expect("feed is ready")
        .expect("feed accepted");
        if n == 6 {
            break;
        }
    }
    drop(connection);

    let texts = texts_after_client_close(&peer).await;
    let expected: Vec<String> = (0..7).map(|n| n.to_string()).collect();
    assert_eq!(
        texts, expected,
        "every frame fed before the drop, in order, then the close (the server got {texts:?})"
    );
}

// ---- 3. a close frame in the middle of send_frames wedges the connection ------------------------

/// `send_frames([text, close, text])`: the frames after the close may fail (`Closing`), but the
/// close itself must start the close handshake, bounded by `close_timeout`, and `Frames` must
/// then report the end.
#[actix_rt::test]
async fn a_close_frame_inside_send_frames_closes_the_connection() {
    let peer = flood_peer(0);
    let options = ConnectOptions::default()
        .ping_interval(None)
        .close_timeout(Duration::from_millis(500));
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects");

    let batch = vec![
        minch::Frame::text("a"),
        minch::Frame::Close(None),
        minch::Frame::text("b"),
    ];
    let answer = actix_rt::time::timeout(Duration::from_secs(5), connection.send_frames(batch))
        .await
        .expect("send_frames resolves");
    assert!(
        matches!(answer, Err(minch::SendError::Closing)),
        "the frame after the close fails with Closing; got {answer:?}"
    );
    // The peer answers a close at once; close_timeout is 500 ms in any case.
    let end = frames.receive_frame(Duration::from_secs(5)).await;
    let stats = connection.stats().await;
    assert!(
        matches!(end, Err(ReceiveError::Closed(_))),
        "the close frame in the batch ends the connection within close_timeout; got {end:?} \
         after 5 s (peer saw a close: {}, stats {stats:?})",
        peer.seen.client_closed.load(Ordering::SeqCst)
    );
}
