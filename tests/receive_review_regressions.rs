//! From a second cold review of e6c8a23 and e3a0c0b (the simple API's hand-over pause) and
//! f3bd6d7 (the cheaper encoding). Raw `std::net` peers on 127.0.0.1; every wait is bounded.
//!
//! Tests not prefixed `control_` failed on the reviewed code (a7ddbff) and are regressions
//! now. None was caused by the reviewed commits; they were older bugs of the receive side:
//!
//! * `a_late_pong_for_an_earlier_keepalive_ping_is_not_handed_to_the_program`: the client's
//!   own keepalive pong leaks to the program as `Frame::Pong` once a newer ping replaced it
//!   (`Lifecycle::pong` compares with the last ping only).
//! * `a_message_after_the_servers_close_frame_is_not_handed_to_the_program`: data after the
//!   server's close frame is queued for the program.
//! * `receive_frame_works_on_a_thread_without_a_tokio_runtime`: `Frames` is `Send`, but
//!   `receive_frame` needs a tokio timer on the calling thread.
//!
//! The `control_` tests pass: they cover the hand-over pause with every receive style, limits,
//! keepalive, receivers on spawned tasks and other threads, dropping `Frames` mid-burst, the
//! blocking API, EOF behind a burst, and the encoding (masking at length edges, fresh keys,
//! close code and reason masked as one payload, UTF-8 split across fragments and reads, 1007
//! before a bad message's last fragment).

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use minch::{ConnectOptions, DisconnectReason, Frame, ReceiveError};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, opcode, text_frame,
    ClientFrame,
};

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

const PEER_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Seen {
    frames: Mutex<Vec<ClientFrame>>,
    raw: Mutex<Vec<u8>>,
    pings: AtomicUsize,
}

struct Peer {
    url: String,
    seen: Arc<Seen>,
}

/// A peer: accepts one connection, upgrades it, runs `script` with the write side while a
/// reader thread records the client's frames, answers pings, and echoes a close.
fn spawn_peer(script: impl FnOnce(&Mutex<TcpStream>) + Send + 'static) -> Peer {
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
        let reading = stream.try_clone().unwrap();
        let out = Arc::new(Mutex::new(stream));
        let reader = {
            let (out, seen) = (out.clone(), peer_seen.clone());
            thread::spawn(move || read_client(reading, rest, &out, &seen))
        };
        script(&out);
        let _ = reader.join();
    });
    Peer { url, seen }
}

fn read_client(mut stream: TcpStream, mut buf: Vec<u8>, out: &Mutex<TcpStream>, seen: &Seen) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            seen.raw.lock().unwrap().extend_from_slice(&buf[..used]);
            buf.drain(..used);
            match frame.opcode {
                opcode::PING => {
                    seen.pings.fetch_add(1, Ordering::SeqCst);
                    let _ = out.lock().unwrap().write_all(&frame_bytes(
                        true,
                        opcode::PONG,
                        &frame.payload,
                    ));
                }
                opcode::CLOSE => {
                    seen.frames.lock().unwrap().push(frame);
                    let mut out = out.lock().unwrap();
                    let _ = out.write_all(&close_frame(Some(1000), ""));
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
            seen.frames.lock().unwrap().push(frame);
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

async fn connect(peer: &Peer, options: ConnectOptions) -> (minch::Connection, minch::Frames) {
    actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(peer.url.clone(), no_headers(), options),
    )
    .await
    .expect("connect resolves in time")
    .expect("connects")
}

fn burst(from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .flat_map(|i| text_frame(&i.to_string()))
        .collect()
}

fn expect_numbered(frame: &Frame, i: usize) {
    assert_eq!(frame.as_text(), Some(i.to_string().as_str()), "message {i}");
}

// ---- controls: the receive side with the hand-over pause ----

const N: usize = 100_000;

async fn timed_burst_main() -> Duration {
    let peer = spawn_peer(|out| {
        let _ = out.lock().unwrap().write_all(&burst(0, N));
        let _ = out
            .lock()
            .unwrap()
            .write_all(&close_frame(Some(1000), "bye"));
    });
    let (_connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    let started = Instant::now();
    for i in 0..N {
        let f = frames
            .receive_frame(Duration::from_secs(5))
            .await
            .expect("frame");
        expect_numbered(&f, i);
    }
    started.elapsed()
}

/// Controls: a burst of 100 000 messages then the server's close reaches a receiver on the
/// program's task, on a spawned task, and on another thread, every message in order, promptly.
#[actix_rt::test]
async fn control_a_burst_reaches_a_receiver_on_the_programs_task() {
    let took = timed_burst_main().await;
    eprintln!("main receiver: {took:?}");
    assert!(took < Duration::from_secs(20));
}

#[actix_rt::test]
async fn control_a_burst_reaches_a_receiver_on_a_spawned_task() {
    let peer = spawn_peer(|out| {
        let _ = out.lock().unwrap().write_all(&burst(0, N));
        let _ = out
            .lock()
            .unwrap()
            .write_all(&close_frame(Some(1000), "bye"));
    });
    let (_connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    let started = Instant::now();
    let handle = actix_rt::spawn(async move {
        let mut i = 0;
        while let Some(f) = frames.next().await {
            expect_numbered(&f, i);
            i += 1;
        }
        (i, frames.end().cloned())
    });
    let (n, end) = actix_rt::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap();
    eprintln!("spawned receiver: {:?} {n} {end:?}", started.elapsed());
    assert_eq!(n, N);
    assert!(matches!(end, Some(DisconnectReason::ServerClosed(Some(ref c))) if c.code.0 == 1000));
}

#[actix_rt::test]
async fn control_a_burst_reaches_a_receiver_on_another_thread() {
    let peer = spawn_peer(|out| {
        let _ = out.lock().unwrap().write_all(&burst(0, N));
        let _ = out
            .lock()
            .unwrap()
            .write_all(&close_frame(Some(1000), "bye"));
    });
    let (_connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    let started = Instant::now();
    let handle = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut i = 0;
            while let Some(f) = frames.next().await {
                expect_numbered(&f, i);
                i += 1;
            }
            (i, frames.end().cloned())
        })
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !handle.is_finished() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let (n, end) = handle.join().unwrap();
    eprintln!("thread receiver: {:?} {n} {end:?}", started.elapsed());
    assert_eq!(n, N);
    assert!(matches!(end, Some(DisconnectReason::ServerClosed(Some(ref c))) if c.code.0 == 1000));
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Receive,
    Stream,
    SelectTimer,
    TryPoll,
    Spawned,
    ZeroTimeoutPoll,
}

async fn scenario(
    mode: Mode,
    max_queue: usize,
    max_bytes: usize,
    keepalive: bool,
    n: usize,
    big: bool,
) {
    let peer = spawn_peer(move |out| {
        let mut bytes = Vec::new();
        for i in 0..n {
            if big && i % 97 == 0 {
                let mut s = i.to_string();
                s.push(' ');
                s.push_str(&"é".repeat(40_000));
                bytes.extend(text_frame(&s));
            } else {
                bytes.extend(text_frame(&i.to_string()));
            }
            if i % 1000 == 999 {
                bytes.extend(frame_bytes(true, opcode::PING, b"srv"));
            }
        }
        bytes.extend(close_frame(Some(1000), "bye"));
        let _ = out.lock().unwrap().write_all(&bytes);
    });
    let mut options = ConnectOptions::default()
        .max_queue(max_queue)
        .max_queue_bytes(max_bytes);
    if keepalive {
        options = options
            .ping_interval(Some(Duration::from_millis(20)))
            .pong_timeout(Duration::from_millis(500));
    }
    let (_connection, mut frames) = connect(&peer, options).await;
    let started = Instant::now();
    let check = move |i: &mut usize, f: &Frame| {
        if let Frame::Pong(_) = f {
            return;
        }
        let t = f.as_text().unwrap_or_else(|| panic!("{f:?}"));
        let i = {
            *i += 1;
            *i - 1
        };
        let head = t.split(' ').next().unwrap();
        assert_eq!(head, i.to_string(), "{mode:?} message {i}");
    };
    let work = async move {
        let mut i = 0;
        let mode = if let Mode::Spawned = mode {
            Mode::Stream
        } else {
            mode
        };
        match mode {
            Mode::Receive => loop {
                match frames.receive_frame(Duration::from_secs(5)).await {
                    Ok(f) => {
                        check(&mut i, &f);
                    }
                    Err(e) => return (i, format!("{e:?}")),
                }
            },
            Mode::Stream => {
                while let Some(f) = frames.next().await {
                    check(&mut i, &f);
                }
                (i, format!("{:?}", frames.end()))
            }
            Mode::SelectTimer => loop {
                tokio::select! {
                    f = frames.next() => match f {
                        Some(f) => { check(&mut i, &f); }
                        None => return (i, format!("{:?}", frames.end())),
                    },
                    () = actix_rt::time::sleep(Duration::from_micros(50)) => {}
                }
            },
            Mode::TryPoll => loop {
                match frames.try_receive_frame() {
                    Ok(Some(f)) => {
                        check(&mut i, &f);
                    }
                    Ok(None) => actix_rt::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => return (i, format!("{e:?}")),
                }
            },
            Mode::ZeroTimeoutPoll => loop {
                match frames.receive_frame(Duration::ZERO).await {
                    Ok(f) => {
                        check(&mut i, &f);
                    }
                    Err(ReceiveError::Timeout) => tokio::task::yield_now().await,
                    Err(e) => return (i, format!("{e:?}")),
                }
            },
            Mode::Spawned => unreachable!(),
        }
    };
    let result = if let Mode::Spawned = mode {
        let h = actix_rt::spawn(work);
        actix_rt::time::timeout(Duration::from_secs(20), h)
            .await
            .map(|r| r.unwrap())
    } else {
        actix_rt::time::timeout(Duration::from_secs(20), work).await
    };
    eprintln!(
        "{mode:?} q={max_queue} b={max_bytes} ka={keepalive} n={n} big={big}: {:?} {result:?}",
        started.elapsed()
    );
    let (count, end) = result.expect("bounded");
    assert_eq!(count, n);
    assert!(
        end.contains("ServerClosed") && end.contains("1000"),
        "{end}"
    );
}

/// Control: every receive style (receive_frame, the Stream, the Stream losing selects to a
/// timer, try_receive polling, a spawned task, zero-timeout receives) with queue limits at 1,
/// small, around the 256-frame budget and huge, keepalive on and off, small and 80 KB
/// messages, server pings in the burst: every message once, in order, then the server's close.
/// (Keepalive pongs the program is handed are skipped here: see
/// `a_late_pong_for_an_earlier_keepalive_ping_is_not_handed_to_the_program`.)
#[actix_rt::test]
async fn control_every_receive_style_and_limit_gets_every_frame_then_the_end() {
    for mode in [
        Mode::Receive,
        Mode::Stream,
        Mode::SelectTimer,
        Mode::TryPoll,
        Mode::Spawned,
        Mode::ZeroTimeoutPoll,
    ] {
        for (q, b) in [
            (1, 1),
            (7, 1 << 30),
            (300, 1 << 30),
            (1 << 20, 1 << 30),
            (1024, 1),
        ] {
            for ka in [false, true] {
                for big in [false, true] {
                    scenario(mode, q, b, ka, 1200, big).await;
                }
            }
        }
    }
}

async fn first_batch(mode: u8) -> usize {
    const B: usize = 8000;
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = spawn_peer(move |out| {
        if go_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            return;
        }
        let _ = out.lock().unwrap().write_all(&burst(0, B));
    });
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(1_000_000);
    let (connection, mut frames) = connect(&peer, options).await;
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let _ = go.send(());
    });
    let job = async move {
        let first = match mode {
            0 => frames.receive_frame(Duration::from_secs(10)).await.unwrap(),
            1 => frames.next().await.unwrap(),
            _ => loop {
                tokio::select! {
                    f = frames.next() => break f.unwrap(),
                    () = actix_rt::time::sleep(Duration::from_millis(1)) => {}
                }
            },
        };
        expect_numbered(&first, 0);
        let mut ready = 1;
        while let Ok(Some(f)) = frames.try_receive_frame() {
            expect_numbered(&f, ready);
            ready += 1;
        }
        ready
    };
    let ready = actix_rt::time::timeout(Duration::from_secs(10), actix_rt::spawn(job))
        .await
        .unwrap()
        .unwrap();
    connection.close().await;
    ready
}

/// Control: a receiver on a spawned task (receive_frame, the Stream, the Stream in a select!)
/// is handed a burst of 8 000 a part at a time, as the program's own task is.
#[actix_rt::test]
async fn control_a_spawned_receiver_gets_a_burst_a_part_at_a_time() {
    for mode in [0u8, 1, 2] {
        let ready = first_batch(mode).await;
        eprintln!("spawned mode {mode}: {ready}");
        assert!(ready <= 1000, "mode {mode}: {ready} messages at once");
    }
}

/// Control: `Frames` dropped mid-burst (here, on another thread, on a spawned task) lets
/// `close()` finish at once behind 50 000 unread messages.
#[actix_rt::test]
async fn control_dropping_frames_mid_burst_lets_close_finish() {
    for how in 0..3 {
        let peer = spawn_peer(|out| {
            let _ = out.lock().unwrap().write_all(&burst(0, 50_000));
        });
        let options = ConnectOptions::default()
            .max_queue(1_000_000)
            .close_timeout(Duration::from_secs(5));
        let (connection, mut frames) = connect(&peer, options).await;
        for i in 0..300 {
            let f = frames.receive_frame(Duration::from_secs(5)).await.unwrap();
            expect_numbered(&f, i);
        }
        match how {
            0 => drop(frames),
            1 => {
                thread::spawn(move || drop(frames)).join().unwrap();
            }
            _ => {
                let _ = actix_rt::spawn(async move { drop(frames) }).await;
            }
        }
        let started = Instant::now();
        actix_rt::time::timeout(Duration::from_secs(10), connection.close())
            .await
            .unwrap();
        eprintln!("drop {how}: close took {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

/// Control: the blocking API gets a burst of 20 000 in order, then the server's close.
#[test]
fn control_blocking_gets_a_burst_then_the_close() {
    let peer = spawn_peer(|out| {
        let mut b = burst(0, 20_000);
        b.extend(close_frame(Some(1000), "bye"));
        let _ = out.lock().unwrap().write_all(&b);
    });
    let (_c, frames) =
        minch::blocking::connect(peer.url.clone(), no_headers(), ConnectOptions::default())
            .unwrap();
    let started = Instant::now();
    for i in 0..20_000 {
        let f = frames.receive_frame(Duration::from_secs(5)).unwrap();
        expect_numbered(&f, i);
    }
    let end = frames.receive_frame(Duration::from_secs(5));
    eprintln!("blocking: {:?} {end:?}", started.elapsed());
    assert!(
        matches!(end, Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(ref c)))) if c.code.0 == 1000)
    );
}

/// Every client frame: masked with a key of its own, the payload intact at every length
/// edge, the length in its shortest form, and a close frame's code and reason masked as one
/// payload.
#[actix_rt::test]
async fn control_sent_frames_are_masked_correctly_with_fresh_keys() {
    let peer = spawn_peer(|_out| {});
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, _frames) = connect(&peer, options).await;
    let lens: Vec<usize> = (0..=9)
        .chain([15, 16, 17, 125, 126, 127, 65535, 65536, 70001])
        .collect();
    let mut sent = Vec::new();
    for &len in &lens {
        for binary in [false, true] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let frame = if binary {
                Frame::binary(payload.clone())
            } else {
                Frame::text(String::from_utf8(payload.clone()).unwrap())
            };
            connection.send_frame(frame).await.expect("sent");
            sent.push(payload);
        }
    }
    for len in 0..=9 {
        let payload = vec![7u8; len];
        connection
            .send_frame(Frame::Ping(payload.clone().into()))
            .await
            .expect("ping");
        sent.push(payload);
    }
    let reason = "going away now, héllo";
    connection
        .send_frame(Frame::Close(Some(minch::CloseFrame::new(
            minch::CloseCode(4001),
            reason,
        ))))
        .await
        .expect("close");
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.seen.frames.lock().unwrap().len() < sent.len() + 1 && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let frames = peer.seen.frames.lock().unwrap().clone();
    assert_eq!(frames.len(), sent.len() + 1);
    let mut keys = std::collections::HashSet::new();
    for (frame, payload) in frames.iter().zip(&sent) {
        assert!(frame.masked && frame.fin);
        assert_eq!(
            &frame.payload,
            payload,
            "payload of {} bytes",
            payload.len()
        );
        keys.insert(frame.mask.unwrap());
    }
    let close = frames.last().unwrap();
    assert_eq!(close.close_code, Some(4001));
    assert_eq!(close.close_reason, reason);
    keys.insert(close.mask.unwrap());
    assert_eq!(keys.len(), frames.len(), "a masking key was used twice");
    // Shortest length forms: rebuild each header and compare with the bytes on the wire.
    let raw = peer.seen.raw.lock().unwrap().clone();
    let mut at = 0;
    for frame in &frames {
        let len = frame.payload.len();
        let header = match len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        } + 4;
        let expected = match len {
            0..=125 => len as u8,
            126..=0xFFFF => 126,
            _ => 127,
        };
        assert_eq!(raw[at + 1] & 0x7f, expected, "length form for {len} bytes");
        at += header + len;
    }
    assert_eq!(at, raw.len());
}

/// Text whose multibyte characters are cut between fragments and between TCP writes arrives
/// intact; a message whose first fragment holds invalid UTF-8 is failed with 1007 before its
/// last fragment comes.
#[actix_rt::test]
async fn control_split_utf8_arrives_and_invalid_utf8_fails_with_1007_early() {
    let text = "aé€𝄞κόσμε z ascii tail";
    let bytes = text.as_bytes().to_vec();
    let peer = spawn_peer(move |out| {
        // Fragments of 1..=5 bytes, each written in two parts with a pause between them.
        let mut at = 0;
        let mut size = 1;
        let mut first = true;
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            let op = if first {
                opcode::TEXT
            } else {
                opcode::CONTINUATION
            };
            let frame = frame_bytes(end == bytes.len(), op, &bytes[at..end]);
            let cut = frame.len() - 1;
            let _ = out.lock().unwrap().write_all(&frame[..cut]);
            thread::sleep(Duration::from_millis(3));
            let _ = out.lock().unwrap().write_all(&frame[cut..]);
            first = false;
            at = end;
            size = size % 5 + 1;
        }
        // Then a message whose first fragment ends in a carried lead byte that the next
        // fragment continues wrongly, and which never ends.
        let _ = out
            .lock()
            .unwrap()
            .write_all(&frame_bytes(false, opcode::TEXT, b"ok \xe2\x82"));
        thread::sleep(Duration::from_millis(20));
        let _ = out.lock().unwrap().write_all(&frame_bytes(
            false,
            opcode::CONTINUATION,
            b"Aplain ascii",
        ));
    });
    let options = ConnectOptions::default().ping_interval(None);
    let (_connection, mut frames) = connect(&peer, options).await;
    let frame = frames
        .receive_frame(Duration::from_secs(5))
        .await
        .expect("the split text");
    assert_eq!(frame.as_text(), Some(text));
    let end = frames.receive_frame(Duration::from_secs(5)).await;
    assert!(
        matches!(&end, Err(ReceiveError::Closed(DisconnectReason::Error(_)))),
        "invalid UTF-8 ends the connection; got {end:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let code = loop {
        let close = peer
            .seen
            .frames
            .lock()
            .unwrap()
            .iter()
            .find(|f| f.is_close())
            .cloned();
        if let Some(close) = close {
            break close.close_code;
        }
        assert!(Instant::now() < deadline, "no close frame from the client");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(code, Some(1007));
}

/// Control: one task receiving from two connections through a select! gets both bursts.
#[actix_rt::test]
async fn control_two_connections_received_by_one_task() {
    let mk = || {
        spawn_peer(|out| {
            let mut b = burst(0, 30_000);
            b.extend(close_frame(Some(1000), "bye"));
            let _ = out.lock().unwrap().write_all(&b);
        })
    };
    let (pa, pb) = (mk(), mk());
    let (_ca, mut fa) = connect(&pa, ConnectOptions::default()).await;
    let (_cb, mut fb) = connect(&pb, ConnectOptions::default()).await;
    let started = Instant::now();
    let (mut ia, mut ib) = (0, 0);
    let (mut da, mut db) = (false, false);
    let work = async {
        while !(da && db) {
            tokio::select! {
                f = fa.next(), if !da => match f { Some(f) => { expect_numbered(&f, ia); ia += 1; } None => da = true },
                f = fb.next(), if !db => match f { Some(f) => { expect_numbered(&f, ib); ib += 1; } None => db = true },
            }
        }
    };
    actix_rt::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("bounded");
    eprintln!("two: {:?} {ia} {ib}", started.elapsed());
    assert_eq!((ia, ib), (30_000, 30_000));
}

/// The client's own keepalive pongs are its business: a program never sees them.
///
/// The server answers the client's first keepalive ping late — after sending some messages,
/// and after the client's second ping came (a busy server, or a pong stuck behind a flood the
/// client paused reading for). The client cleared the first ping when the messages arrived
/// and, at the next interval, sent a second one; the late pong for the first then matches
/// nothing the client remembers (`Lifecycle::pong` compares with the last ping only) and is
/// queued for the program as `Frame::Pong` with the client's random 8-byte payload.
#[actix_rt::test]
async fn a_late_pong_for_an_earlier_keepalive_ping_is_not_handed_to_the_program() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let pings = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let peer_pings = pings.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(mut buf) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let deadline = Instant::now() + PEER_LIFETIME;
        let mut chunk = vec![0u8; 4096];
        loop {
            while let Ok(Some((frame, used))) = decode_frame(&buf) {
                buf.drain(..used);
                match frame.opcode {
                    opcode::PING => {
                        let mut pings = peer_pings.lock().unwrap();
                        pings.push(frame.payload.clone());
                        match pings.len() {
                            1 => {
                                let _ = stream.write_all(&burst(0, 3));
                            }
                            2 => {
                                let mut out = frame_bytes(true, opcode::PONG, &pings[0]);
                                out.extend(frame_bytes(true, opcode::PONG, &pings[1]));
                                out.extend(text_frame("done"));
                                let _ = stream.write_all(&out);
                            }
                            _ => {
                                let _ = stream.write_all(&frame_bytes(
                                    true,
                                    opcode::PONG,
                                    &frame.payload,
                                ));
                            }
                        }
                    }
                    opcode::CLOSE => {
                        let _ = stream.write_all(&close_frame(Some(1000), ""));
                        let _ = stream.shutdown(Shutdown::Both);
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
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_secs(2));
    let (connection, mut frames) = actix_rt::time::timeout(
        Duration::from_secs(10),
        minch::connect(url, no_headers(), options),
    )
    .await
    .expect("connect in time")
    .expect("connects");
    let mut received = Vec::new();
    loop {
        match frames.receive_frame(Duration::from_secs(5)).await {
            Ok(frame) => {
                let done = frame.as_text() == Some("done");
                received.push(frame);
                if done {
                    break;
                }
            }
            Err(error) => panic!("before \"done\": {error:?}; got {received:?}"),
        }
    }
    connection.close().await;
    let pings = pings.lock().unwrap().clone();
    assert!(pings.len() >= 2, "the client pinged twice");
    let pongs: Vec<&Frame> = received
        .iter()
        .filter(|f| matches!(f, Frame::Pong(_)))
        .collect();
    assert!(
        pongs.is_empty(),
        "the program was handed the pong of the client's own keepalive ping {:?}: {pongs:?} \
         (all received: {received:?})",
        pings[0]
    );
}

/// A minimal executor for a plain thread (no tokio runtime): polls `future` to completion,
/// parking the thread between wake-ups.
fn block_on_plain_thread<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park_timeout(Duration::from_millis(50));
    }
}

/// `Frames` is `Send`, and its `Stream` works from any thread and executor; `receive_frame`,
/// the documented way to receive, panics there: its timeout is a tokio timer, which needs a
/// tokio runtime on the calling thread ("there is no reactor running").
#[actix_rt::test]
async fn receive_frame_works_on_a_thread_without_a_tokio_runtime() {
    let peer = spawn_peer(|out| {
        let _ = out.lock().unwrap().write_all(&burst(0, 3));
    });
    let (connection, mut frames) = connect(&peer, ConnectOptions::default()).await;
    let handle = thread::spawn(move || {
        // The Stream: fine.
        let first = block_on_plain_thread(frames.next());
        // receive_frame: the same frames, through the documented call.
        let second = block_on_plain_thread(frames.receive_frame(Duration::from_secs(5)));
        let third = block_on_plain_thread(frames.receive_frame(Duration::from_secs(5)));
        assert!(third.is_ok(), "the burst's last message: {third:?}");
        // Nothing more comes: the timeout, kept without tokio's timer.
        let started = Instant::now();
        let waited = block_on_plain_thread(frames.receive_frame(Duration::from_millis(100)));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the 100 ms timeout took {:?}",
            started.elapsed()
        );
        (first, second.map_err(|e| e.to_string()), waited)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = handle.join();
    connection.close().await;
    match outcome {
        Ok((first, second, waited)) => {
            assert!(
                matches!(waited, Err(ReceiveError::Timeout)),
                "with nothing to receive, the timeout: {waited:?}"
            );
            assert_eq!(
                first
                    .and_then(|f| f.as_text().map(str::to_owned))
                    .as_deref(),
                Some("0")
            );
            assert_eq!(
                second
                    .ok()
                    .and_then(|f| f.as_text().map(str::to_owned))
                    .as_deref(),
                Some("1")
            );
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("receive_frame panicked on a thread without a tokio runtime: {message}");
        }
    }
}

/// Nothing after the end: the server's close frame ends its messages (RFC 6455 §5.5.1: no data
/// frame may follow it; Autobahn 7.1.4 expects a text message after the close to be ignored).
/// The client queues a message that follows the server's close for the program anyway,
/// between the last real message and the end: the program sees "after".
#[actix_rt::test]
async fn a_message_after_the_servers_close_frame_is_not_handed_to_the_program() {
    let peer = spawn_peer(|out| {
        let mut bytes = text_frame("before");
        bytes.extend(close_frame(Some(1000), "bye"));
        bytes.extend(text_frame("after"));
        let _ = out.lock().unwrap().write_all(&bytes);
    });
    let options = ConnectOptions::default().ping_interval(None);
    let (_connection, mut frames) = connect(&peer, options).await;
    let mut got = Vec::new();
    let end = loop {
        match frames.receive_frame(Duration::from_secs(5)).await {
            Ok(frame) => got.push(frame),
            Err(end) => break end,
        }
    };
    assert!(
        matches!(&end, ReceiveError::Closed(DisconnectReason::ServerClosed(Some(c))) if c.code.0 == 1000),
        "{end:?}"
    );
    assert_eq!(
        got.iter()
            .map(|f| f.as_text().unwrap_or("?"))
            .collect::<Vec<_>>(),
        ["before"],
        "the program was handed a message the server sent after its close frame"
    );
}

/// Control: the server's TCP connection ends (no close frame) right behind a burst of 5 000
/// messages that lands on a waiting program: every message in order, then an abnormal end.
#[actix_rt::test]
async fn control_a_burst_then_eof_delivers_every_message_then_the_end() {
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = spawn_peer(move |out| {
        if go_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            return;
        }
        let mut out = out.lock().unwrap();
        let _ = out.write_all(&burst(0, 5_000));
        let _ = out.shutdown(Shutdown::Both);
    });
    let options = ConnectOptions::default().ping_interval(None);
    let (_connection, mut frames) = connect(&peer, options).await;
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let _ = go.send(());
    });
    for i in 0..5_000 {
        match frames.receive_frame(Duration::from_secs(5)).await {
            Ok(frame) => expect_numbered(&frame, i),
            Err(error) => panic!("message {i}: {error:?}"),
        }
    }
    let end = frames.receive_frame(Duration::from_secs(5)).await;
    eprintln!("after eof: {end:?}");
    assert!(matches!(end, Err(ReceiveError::Closed(_))), "{end:?}");
}
