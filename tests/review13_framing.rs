//! Review 13, cold: minch's own framing of the socket (`src/framed.rs`) and the first inflate
//! step (`Decompressor::inflate`), against hand-scripted servers on 127.0.0.1.
//!
//! Tests named `control_...` cover what the review checked and found right. The others failed
//! on the reviewed code (they pass since the fixes in `Framed::poll_read`); each names the bug
//! it proved.
//!
//! The tests run one at a time (behind [`SERIAL`]): one of them measures the heap, and the
//! scripted byte boundaries rely on the pauses between writes not being stretched too much.

mod support;

use std::time::Duration;

use minch::{
    ConnectOptions, Connection, DisconnectReason, Error, Frame, Frames, ProtocolError, ReceiveError,
};
use support::{
    close_frame, frame_bytes, live_bytes, opcode, ClientFrame, Handshake, RawFrame, Step,
};
use tokio::sync::Mutex;
use zlib_rs::{DeflateConfig, DeflateFlush, Method, Strategy};

const WAIT: Duration = Duration::from_secs(20);
/// A pause long enough for the client to read what came before it on its own.
const PAUSE: Duration = Duration::from_millis(150);
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

static SERIAL: Mutex<()> = Mutex::const_new(());

// The heap each thread holds, counted (see `support::heap`).
#[global_allocator]
static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A server's compressor: sync flush, tail removed (RFC 7692 §7.2.1), context kept.
struct ServerDeflater(zlib_rs::Deflate);

impl ServerDeflater {
    fn new() -> Self {
        ServerDeflater(zlib_rs::Deflate::new_with_config(DeflateConfig {
            level: 6,
            method: Method::Deflated,
            window_bits: -15,
            mem_level: 8,
            strategy: Strategy::Default,
        }))
    }

    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        if data.is_empty() {
            // An empty message is one empty stored block (RFC 7692 §7.2.3.6).
            return vec![0x00];
        }
        let mut out = vec![0; data.len() + data.len() / 8 + 1024];
        let (in_before, out_before) = (self.0.total_in(), self.0.total_out());
        self.0
            .compress(data, &mut out, DeflateFlush::SyncFlush)
            .expect("compress");
        assert_eq!((self.0.total_in() - in_before) as usize, data.len());
        out.truncate((self.0.total_out() - out_before) as usize);
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }
}

fn compressed_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    RawFrame::new(op, payload.to_vec())
        .fin(fin)
        .rsv(0b100)
        .bytes()
}

fn accepting_deflate() -> Step {
    Step::Handshake(Handshake::new().header("Sec-WebSocket-Extensions", "permessage-deflate"))
}

fn answer_close(mut steps: Vec<Step>) -> Vec<Step> {
    steps.extend([
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1000), "")),
        Step::Close,
    ]);
    steps
}

async fn connect(
    server: &support::ScriptedServer,
    options: ConnectOptions,
) -> (Connection, Frames) {
    let connecting = minch::connect(server.url("/"), Vec::<(String, String)>::new(), options);
    actix_rt::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// The next frame, or what ended the connection instead.
async fn next(frames: &mut Frames) -> Result<Frame, String> {
    match frames.receive_frame(WAIT).await {
        Ok(frame) => Ok(frame),
        Err(ReceiveError::Closed(reason)) => Err(format!("the connection ended: {reason:?}")),
        Err(other) => Err(format!("no frame: {other:?}")),
    }
}

async fn ending(frames: &mut Frames) -> DisconnectReason {
    loop {
        match frames.receive_frame(WAIT).await {
            Ok(_) => continue,
            Err(ReceiveError::Closed(reason)) => return reason,
            Err(other) => panic!("the connection did not end: {other:?}"),
        }
    }
}

/// Distinct, recognisable binary payloads.
fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

/// Cuts `wire` at `cuts` (ascending offsets) into `Send` steps with a pause after each.
fn sends_cut_at(wire: &[u8], cuts: &[usize]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        if cut > at && cut <= wire.len() {
            steps.push(Step::Send(wire[at..cut].to_vec()));
            steps.push(Step::Sleep(PAUSE));
            at = cut;
        }
    }
    steps
}

// =============================================================================================
// Bugs (these failed on the reviewed code; fixed in `Framed::poll_read`)
// =============================================================================================

/// Was a bug: a small message received after a large one kept the large one's whole read buffer
/// (here ~1.8 MB for a 5-byte message), and so did the idle connection itself.
///
/// The fix: only what is left of an 8 KiB stack-read allocation takes later reads.
///
/// `Framed::poll_read` read into what is left of the read buffer when
/// the buffer is empty and 1 to 8 KiB of room is left, on the comment's assumption that such a
/// buffer is "at most 8 KiB, so not that of a large frame". Room left says nothing about the
/// allocation's size: a large frame that arrived in parts is read into a heap buffer that the
/// `reserve(HEAP_READ)` at src/framed.rs doubles (bytes' `reserve` doubles a unique shared
/// buffer), and whatever is left after the frames it held can be anywhere from 0 to its size.
/// Every later small frame read into that room is a `Bytes` into the multi-megabyte
/// allocation, and the empty read buffer holds it until the next keepalive ping (never with
/// `ping_interval(None)`). A program that keeps small messages (a cache, a queue) after an
/// occasional large one holds megabytes per message.
///
/// The script makes the sizes exact: a 900 000-byte frame arrives as 8192 bytes (copied into an
/// 8 KiB buffer), then all but 500 bytes (the codec reserves exactly the rest), then the last
/// 500 with a second frame sized so that 4000 bytes of room are left (the first read with
/// under 1 KiB of room doubled the buffer to ~1.8 MB); after a pause, a 5-byte text message.
#[actix_rt::test]
async fn a_small_message_after_a_large_one_does_not_keep_its_read_buffer() {
    let _serial = SERIAL.lock().await;
    const P: usize = 900_000;
    let big = frame_bytes(true, opcode::BINARY, &payload(1, P));
    assert_eq!(big.len(), P + 10, "a 64-bit length header");
    let second_len = P - 4000;
    let second = frame_bytes(true, opcode::BINARY, &payload(2, second_len));
    let mut last = big[big.len() - 500..].to_vec();
    last.extend_from_slice(&second);
    let steps = answer_close(vec![
        // Nothing goes with the 101: the first read is the socket's.
        Step::Sleep(PAUSE),
        Step::Send(big[..8192].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(big[8192..big.len() - 500].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(last),
        Step::Sleep(PAUSE),
        Step::Send(frame_bytes(true, opcode::TEXT, b"later")),
    ]);
    let server = support::scripted_ws_server(steps);
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, mut frames) = connect(&server, options).await;
    let first = next(&mut frames).await.expect("the large frame");
    assert_eq!(first, Frame::binary(payload(1, P)));
    drop(first);
    let frame = next(&mut frames).await.expect("the second frame");
    assert_eq!(frame, Frame::binary(payload(2, second_len)));
    drop(frame);
    let later = next(&mut frames).await.expect("the small message");
    assert_eq!(later.as_text(), Some("later"));
    // The connection is gone, with its buffers; only the program's message is left.
    connection.close().await;
    let _ = ending(&mut frames).await;
    drop(frames);
    actix_rt::time::sleep(PAUSE).await;
    let with_message = live_bytes();
    drop(later);
    let held = with_message - live_bytes();
    assert!(
        held < 64 * 1024,
        "a kept 5-byte message received after a large one holds {held} bytes of heap"
    );
}

/// Was a bug: a large message that arrives in parts was handed over in an allocation twice its size
/// (1.8 MB for a 900 000-byte message), which the program holds for as long as it keeps the
/// message.
///
/// The fix: mid-payload, `Framed::poll_read` reserves nothing beyond what the codec did.
///
/// The codec reserves exactly the rest of a frame it awaits (src/protocol/codec.rs), but
/// `Framed::poll_read` reserved another `HEAP_READ` whenever less than 1 KiB of room is left
/// (src/framed.rs), even when that room is all the frame still needs; bytes' `reserve`
/// on a unique buffer then doubles it. The payload is `split_to(..).freeze()`d out of that buffer
/// (codec.rs `complete_data_frame`), capacity and all; the compressed path copies a payload
/// whose buffer has more than an eighth of spare room (codec.rs), the uncompressed one
/// does not. Whether it happens depends only on where TCP cuts the reads: here the last read
/// but one leaves 500 bytes to come.
#[actix_rt::test]
async fn a_large_message_received_in_parts_holds_about_its_size() {
    let _serial = SERIAL.lock().await;
    const P: usize = 900_000;
    let big = frame_bytes(true, opcode::BINARY, &payload(3, P));
    let server = support::scripted_ws_server(answer_close(vec![
        Step::Sleep(PAUSE),
        Step::Send(big[..8192].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(big[8192..big.len() - 500].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(big[big.len() - 500..].to_vec()),
    ]));
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, mut frames) = connect(&server, options).await;
    let message = next(&mut frames).await.expect("the large frame");
    assert_eq!(message, Frame::binary(payload(3, P)));
    connection.close().await;
    let _ = ending(&mut frames).await;
    drop(frames);
    actix_rt::time::sleep(PAUSE).await;
    let with_message = live_bytes();
    drop(message);
    let held = with_message - live_bytes();
    assert!(
        held < (P + P / 8 + 64 * 1024) as i64,
        "a kept {P}-byte message holds {held} bytes of heap"
    );
}

// =============================================================================================
// Controls (these pass: checked and found right)
// =============================================================================================

/// Bytes that came with the 101 come first, in order, also when they are more than the stack
/// buffer takes at once and end inside a frame header, and the rest follows from the socket.
#[actix_rt::test]
async fn control_bytes_with_the_101_come_first() {
    let _serial = SERIAL.lock().await;
    let messages: Vec<Vec<u8>> = (0..40).map(|i| payload(i, 700 + 13 * i as usize)).collect();
    let wire: Vec<u8> = messages
        .iter()
        .flat_map(|m| frame_bytes(true, opcode::BINARY, m))
        .collect();
    // 20 KiB with the 101 (cut inside the 126-form header of a frame), the rest later.
    let header_at = {
        let mut at = 0;
        let mut cut = 0;
        for m in &messages {
            if at > 20 * 1024 {
                cut = at + 2;
                break;
            }
            at += frame_bytes(true, opcode::BINARY, m).len();
        }
        cut
    };
    assert!(header_at > 0);
    let server = support::scripted_ws_server(answer_close(vec![
        Step::SendWithResponse(wire[..header_at].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(wire[header_at..].to_vec()),
    ]));
    let (connection, mut frames) = connect(&server, ConnectOptions::default()).await;
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(
            next(&mut frames).await,
            Ok(Frame::binary(m.clone())),
            "message {i}"
        );
    }
    connection.close().await;
}

/// Reads that end exactly at the stack buffer's size, inside a header, right after a header,
/// and one byte into a payload: every frame comes out whole and in order, compressed or not.
#[actix_rt::test]
async fn control_frames_across_read_boundaries() {
    let _serial = SERIAL.lock().await;
    for compressed in [false, true] {
        let mut deflater = ServerDeflater::new();
        let messages: Vec<Vec<u8>> = [10usize, 8000, 125, 126, 65535, 65536, 3, 20_000, 0, 900]
            .iter()
            .enumerate()
            .map(|(i, &len)| payload(i as u8, len))
            .collect();
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for m in &messages {
            starts.push(wire.len());
            if compressed {
                wire.extend(compressed_frame(
                    true,
                    opcode::BINARY,
                    &deflater.compress(m),
                ));
            } else {
                wire.extend(frame_bytes(true, opcode::BINARY, m));
            }
        }
        // 8192 exactly, then cuts inside and right after headers and one byte into payloads.
        let mut cuts = vec![8192];
        for &s in &starts[1..] {
            for cut in [s, s + 1, s + 2, s + 4, s + 5] {
                if cut > *cuts.last().unwrap() && cut < wire.len() {
                    cuts.push(cut);
                }
            }
        }
        let mut steps = vec![if compressed {
            accepting_deflate()
        } else {
            Step::Sleep(Duration::ZERO)
        }];
        steps.push(Step::Sleep(PAUSE));
        steps.extend(sends_cut_at(&wire, &cuts));
        let server = support::scripted_ws_server(answer_close(steps));
        let (connection, mut frames) = connect(&server, ConnectOptions::default()).await;
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(
                next(&mut frames).await,
                Ok(Frame::binary(m.clone())),
                "message {i}, compressed {compressed}"
            );
        }
        connection.close().await;
    }
}

/// The server ends TCP right after a complete frame (in the same write): the frame is
/// delivered before the end.
#[actix_rt::test]
async fn control_eof_right_after_a_frame() {
    let _serial = SERIAL.lock().await;
    let mut wire = frame_bytes(true, opcode::TEXT, b"last words");
    wire.extend(frame_bytes(true, opcode::BINARY, &payload(9, 9000)));
    let server =
        support::scripted_ws_server(vec![Step::Sleep(PAUSE), Step::Send(wire), Step::Close]);
    let (_connection, mut frames) = connect(&server, ConnectOptions::default()).await;
    assert_eq!(next(&mut frames).await, Ok(Frame::text("last words")));
    assert_eq!(next(&mut frames).await, Ok(Frame::binary(payload(9, 9000))));
    let reason = ending(&mut frames).await;
    assert!(reason.error().is_some(), "{reason:?}");
}

/// Large writes that the server takes slowly (flushes that return Pending part way, a write
/// buffer that grew past 64 KiB) go out whole and in order, with small ones after them.
#[actix_rt::test]
async fn control_large_writes_through_a_slow_reader() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(Duration::from_secs(1))]);
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, _frames) = connect(&server, options).await;
    let mut sent = Vec::new();
    for i in 0..6u8 {
        let big = payload(i, 300_000 + i as usize);
        sent.push(big.clone());
        connection
            .send_frame(Frame::binary(big))
            .await
            .expect("send big");
        let small = payload(100 + i, 10);
        sent.push(small.clone());
        connection
            .send_frame(Frame::binary(small))
            .await
            .expect("send small");
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got: Vec<Vec<u8>> = server
            .frames()
            .into_iter()
            .filter(|f| f.opcode == opcode::BINARY)
            .map(|f| f.payload)
            .collect();
        if got.len() >= sent.len() {
            assert!(got == sent, "frames differ or are out of order");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} frames",
            got.len()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    connection.close().await;
}

/// The inflated limit is exact where the first step's sizing changes: highly compressible
/// messages (tiny input, many steps) and ones at the 64 KiB guess ceiling.
#[actix_rt::test]
async fn control_inflated_limit_is_exact_across_step_sizes() {
    let _serial = SERIAL.lock().await;
    for limit in [258usize, 8 * 1024, 64 * 1024 + 258, 1 << 20, (3 << 20) + 1] {
        let at_limit = vec![b'a'; limit];
        let mut over = at_limit.clone();
        over.push(b'a');
        let mut deflater = ServerDeflater::new();
        let whole = deflater.compress(&at_limit);
        let past = deflater.compress(&over);
        let server = support::scripted_ws_server(vec![
            accepting_deflate(),
            Step::Send(compressed_frame(true, opcode::BINARY, &whole)),
            // An empty compressed message, then one past the limit.
            Step::Send(compressed_frame(true, opcode::TEXT, &[])),
            Step::Send(compressed_frame(true, opcode::BINARY, &past)),
            Step::WaitClose(WAIT),
            Step::Close,
        ]);
        let options = ConnectOptions::default().max_message_size(limit);
        let (_connection, mut frames) = connect(&server, options).await;
        assert_eq!(
            next(&mut frames).await,
            Ok(Frame::binary(at_limit.clone())),
            "limit {limit}"
        );
        assert_eq!(
            next(&mut frames).await,
            Ok(Frame::text("")),
            "limit {limit}"
        );
        let reason = ending(&mut frames).await;
        assert!(
            matches!(
                reason.error(),
                Some(Error::Protocol(ProtocolError::MessageTooLarge { size, max }))
                    if *size == limit as u64 + 1 && *max == limit
            ),
            "limit {limit}: {reason:?}"
        );
        let close = server
            .wait_frame(ClientFrame::is_close, WAIT)
            .await
            .expect("the client's close frame");
        assert_eq!(close.close_code, Some(1009), "limit {limit}");
    }
}
