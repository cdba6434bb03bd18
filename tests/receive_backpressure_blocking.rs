//! The bounded receive queue of the blocking API, measured in a process of its own: a server
//! streams 256 MiB while the program takes nothing, and the process's VmRSS must not follow.
//! (The simple API's twin and the other receive-queue tests are in
//! `tests/receive_backpressure.rs`; the memory of a test binary is shared by all its tests, so
//! this one has its binary to itself.)

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use minch::{blocking, ConnectOptions, DisconnectReason, ReceiveError};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_header, opcode, stream::*,
};

/// Longest the peer waits for the client before giving up.
const PEER_LIFETIME: Duration = Duration::from_secs(60);

/// A peer on its own thread: upgrades one connection, writes 4 096 binary frames of 64 KiB,
/// each starting with its sequence number (big-endian u32) and ending with its low byte,
/// counting the bytes after each frame's `write_all`; then closes with 1000, waits for the
/// client's close (at most [`PEER_LIFETIME`]) and shuts the connection down.
fn stream_peer() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(rest) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let header = frame_header(true, opcode::BINARY, STREAM_FRAME_LEN as u64);
        assert_eq!(
            header.len() as u64,
            STREAM_FRAME_WIRE - STREAM_FRAME_LEN as u64
        );
        let mut payload = vec![0u8; STREAM_FRAME_LEN];
        for seq in 0..STREAM_FRAMES {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            payload[STREAM_FRAME_LEN - 1] = seq as u8;
            if stream.write_all(&header).is_err() || stream.write_all(&payload).is_err() {
                return;
            }
            counter.fetch_add(STREAM_FRAME_WIRE, Ordering::SeqCst);
        }
        if stream.write_all(&close_frame(Some(1000), "")).is_err() {
            return;
        }
        wait_for_close(&mut stream, rest);
        let _ = stream.shutdown(Shutdown::Both);
    });
    (url, written)
}

/// Reads until the client's close frame, EOF, an error or [`PEER_LIFETIME`].
fn wait_for_close(stream: &mut TcpStream, mut buf: Vec<u8>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + PEER_LIFETIME;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        while let Ok(Some((frame, used))) = decode_frame(&buf) {
            buf.drain(..used);
            if frame.is_close() {
                return;
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

/// Blocking API: a server streams 256 MiB in 64 KiB frames while the program receives nothing
/// for 3 s. The client stops reading once 16 frames wait, so the server stalls at a few MiB
/// (what the socket buffers hold) and the process does not grow by more than the queue's
/// worth; afterwards every frame arrives, in order and whole, then the server's close.
#[test]
fn blocking_a_256_mib_stream_waits_for_the_program_and_memory_stays_bounded() {
    let rss_before_connect = rss_bytes();
    let (url, written) = stream_peer();
    let options = ConnectOptions::default()
        .ping_interval(None)
        .max_queue(STREAM_QUEUE)
        .max_queue_bytes(STREAM_QUEUE_BYTES);
    let (connection, frames) =
        blocking::connect(url, Vec::<(String, String)>::new(), options).expect("connects");
    let rss_connected = rss_bytes();

    // The program takes nothing for 3 s.
    let paused = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let written_at_3s = written.load(Ordering::SeqCst);
    thread::sleep(Duration::from_secs(1));
    let written_at_4s = written.load(Ordering::SeqCst);
    let rss_paused = rss_bytes();
    let stats = connection.stats();
    eprintln!(
        "blocking: RSS before connect {:.1} MiB, connected {:.1} MiB, after {:?} paused \
         {:.1} MiB (+{:.1} MiB over connected, +{:.1} MiB over before connect); server wrote \
         {} bytes ({:.1} MiB) at 3 s and {} at 4 s; client decoded {} frames, {} payload bytes",
        mib(rss_before_connect),
        mib(rss_connected),
        paused.elapsed(),
        mib(rss_paused),
        mib(rss_paused.saturating_sub(rss_connected)),
        mib(rss_paused.saturating_sub(rss_before_connect)),
        written_at_3s,
        mib(written_at_3s),
        written_at_4s,
        stats.frames_in,
        stats.bytes_in,
    );

    assert!(stats.connected, "the connection is still open while paused");
    assert_eq!(
        stats.frames_in, STREAM_QUEUE as u64,
        "the client decodes exactly max_queue frames, then stops reading"
    );
    assert_eq!(
        written_at_3s, written_at_4s,
        "the server kept writing while the program took nothing: the client still reads"
    );
    assert!(
        written_at_4s < WRITTEN_BOUND,
        "the server wrote {written_at_4s} bytes to a client whose program took nothing"
    );
    assert!(
        written_at_4s < STREAM_BYTES,
        "the whole stream went out while the program took nothing"
    );
    let growth = rss_paused.saturating_sub(rss_before_connect);
    assert!(
        growth <= RSS_GROWTH_BOUND,
        "the process grew by {:.1} MiB while holding back a stream (bound {:.1} MiB)",
        mib(growth),
        mib(RSS_GROWTH_BOUND)
    );

    // Now take everything.
    let draining = Instant::now();
    let deadline = draining + Duration::from_secs(50);
    for seq in 0..STREAM_FRAMES {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "draining took over 50 s; at frame {seq}");
        match frames.receive_frame(left.min(Duration::from_secs(10))) {
            Ok(frame) => check_stream_frame(seq, &frame),
            Err(error) => panic!("frame {seq} of {STREAM_FRAMES}: {error:?}"),
        }
    }
    match frames.receive_frame(Duration::from_secs(10)) {
        Err(ReceiveError::Closed(DisconnectReason::ServerClosed(Some(close))))
            if close.code.0 == 1000 => {}
        other => panic!("after the last frame, the server's close 1000; got {other:?}"),
    }
    eprintln!(
        "blocking: drained {STREAM_FRAMES} frames in {:?}; server wrote {} bytes",
        draining.elapsed(),
        written.load(Ordering::SeqCst)
    );
    assert_eq!(
        written.load(Ordering::SeqCst),
        STREAM_FRAMES as u64 * STREAM_FRAME_WIRE
    );
}
