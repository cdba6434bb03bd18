//! Review 22, cold: the two newest commits — 009da37 (FrameSender wiring, codec copies of
//! payloads left in large read buffers) and f310abe (`ConnectOptions::tcp_nodelay`) — against
//! real peers on 127.0.0.1.
//!
//! Every test here failed on the reviewed code (f310abe; all fixed since); each doc comment
//! says what the user sees, why, and a suggested fix. The tests run one at a time (behind [`SERIAL`]): they measure
//! the heap of the test's thread (the client of an `actix_rt::test` runs on it; the scripted
//! peers run on threads of their own). Every wait is bounded.

mod common;
mod support;

use std::{cell::RefCell, rc::Rc, time::Duration};

use common::{Event, Policy, Recorder};
use minch::{
    Client, CloseFrame, ConnectOptions, ConnectRequest, Connection, DisconnectReason, Error, Frame,
    FrameSender, Frames, GetFrameSender, ReceiveError, Reply, SendError,
};
use support::{close_frame, frame_bytes, live_bytes, opcode, text_frame, Handshake, Step};
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(10);
/// A pause long enough for the client to read what came before it on its own.
const PAUSE: Duration = Duration::from_millis(150);

static SERIAL: Mutex<()> = Mutex::const_new(());

// The heap each thread holds, counted (see `support::heap`).
#[global_allocator]
static ALLOCATOR: support::CountingAllocator = support::CountingAllocator;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

fn answer_close(mut steps: Vec<Step>) -> Vec<Step> {
    steps.extend([
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1000), "")),
        Step::Close,
    ]);
    steps
}

async fn simple_connect(
    server: &support::ScriptedServer,
    options: ConnectOptions,
) -> (Connection, Frames) {
    let connecting = minch::connect(server.url("/"), Vec::<(String, String)>::new(), options);
    actix_rt::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

async fn simple_next(frames: &mut Frames) -> Result<Frame, String> {
    match frames.receive_frame(WAIT).await {
        Ok(frame) => Ok(frame),
        Err(ReceiveError::Closed(reason)) => Err(format!("the connection ended: {reason:?}")),
        Err(other) => Err(format!("no frame: {other:?}")),
    }
}

async fn simple_ending(frames: &mut Frames) -> DisconnectReason {
    loop {
        match frames.receive_frame(WAIT).await {
            Ok(_) => continue,
            Err(ReceiveError::Closed(reason)) => return reason,
            Err(other) => panic!("the connection did not end: {other:?}"),
        }
    }
}

/// A large binary frame whose first 8 KiB arrive alone and whose rest arrives in one write,
/// with `tail` (whole frames) right behind it; the client keeps what follows the large frame
/// and drops the large one. `expected`: the frames the tail makes. Returns the heap the kept
/// frames hold.
async fn held_by_what_follows_a_large_frame(
    big_len: usize,
    tail: &[u8],
    expected: &[Frame],
) -> i64 {
    let big = frame_bytes(true, opcode::BINARY, &payload(7, big_len));
    let mut rest = big[8192..].to_vec();
    rest.extend_from_slice(tail);
    let server = support::scripted_ws_server(answer_close(vec![
        // Nothing goes with the 101: the first read is the socket's.
        Step::Sleep(PAUSE),
        Step::Send(big[..8192].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(rest),
    ]));
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, mut frames) = simple_connect(&server, options).await;
    let first = simple_next(&mut frames).await.expect("the large frame");
    assert_eq!(
        first,
        Frame::binary(payload(7, big_len)),
        "the large frame is whole"
    );
    drop(first);
    let mut kept = Vec::new();
    for _ in expected {
        kept.push(
            simple_next(&mut frames)
                .await
                .expect("a frame after the large one"),
        );
    }
    assert_eq!(kept, expected, "the frames behind the large one");
    // The connection is gone, with its buffers; only the program's frames are left.
    connection.close().await;
    let _ = simple_ending(&mut frames).await;
    drop(frames);
    actix_rt::time::sleep(PAUSE).await;
    let with_frames = live_bytes();
    drop(kept);
    let held = with_frames - live_bytes();
    drop(server);
    held
}

// =============================================================================================
// Bugs
// =============================================================================================

/// A small message kept after a large one still holds the large one's whole read buffer (here
/// about 2 MiB for a 4-byte message), although CHANGES.md says this is fixed ("a small message
/// kept after a large one held the large one's whole read buffer").
///
/// What the user sees: a program that keeps small messages (a cache, the last update) after an
/// occasional large one holds megabytes per such message, depending on where TCP cut the reads.
///
/// Why: the fix in `complete_data_frame` (src/protocol/codec.rs:318) decides whether to copy
/// from `src.capacity()`, which is the room from the *payload's start* to the end of the
/// allocation, not the allocation's size. A small frame that arrived in the same read as the
/// end of a large one sits near the end of the large one's allocation: the room after it is
/// small, so it is `split_to`'d out of the multi-megabyte allocation without a copy. The large
/// frame's 1 MiB reservation steps make the allocation ~2 MiB (bytes doubles a unique buffer),
/// so any large frame whose end leaves under 64 KiB of that room behind the next frames pins it.
///
/// Suggested fix: decide from the allocation, not the view: e.g. remember in the codec (or in
/// `Framed`) the capacity of the read buffer's allocation when it was made/grown, and copy a
/// payload whenever that allocation is much larger than the payload; or, once a large frame is
/// complete, move the bytes behind it into a fresh buffer before decoding on.
#[actix_rt::test]
async fn a_small_message_right_behind_a_large_one_keeps_its_whole_read_buffer() {
    let _serial = SERIAL.lock().await;
    // The read buffer grows to 2 × (8 KiB + 1 MiB) = 2 113 536 bytes; this frame ends 33 KiB
    // before its end, and a 4-byte text frame follows it in the same write.
    const P: usize = 2_080_000;
    let tail = frame_bytes(true, opcode::TEXT, b"tail");
    let held = held_by_what_follows_a_large_frame(P, &tail, &[Frame::text("tail")]).await;
    assert!(
        held < 64 * 1024,
        "a kept 4-byte message received right after a {P}-byte one holds {held} bytes of heap"
    );
}

/// An unsolicited pong that arrives right behind a large message holds the large message's
/// whole read buffer (here about 2 MiB for a 4-byte pong), however much room is left after it:
/// the commit copies data payloads out of large read buffers, but not control frames.
///
/// What the user sees: a program that keeps the pongs it is handed (the simple API and
/// `handle_frame` hand over pongs that do not answer the client's own pings: heartbeats from
/// the server, say, logged or kept for their timestamps) holds megabytes per pong that came in
/// the same read as the end of a large message — although the large message itself was copied
/// out of that buffer precisely so that nothing would pin it.
///
/// Why: `complete_frame` (src/protocol/codec.rs:285-286) takes ping and pong payloads with
/// `src.split_to(len).freeze()`, whatever the buffer's size; only `complete_data_frame`
/// (codec.rs:318) checks for an oversized buffer.
///
/// Suggested fix: copy control payloads (at most 125 bytes) always — `Bytes::copy_from_slice`
/// costs less than the check.
#[actix_rt::test]
async fn a_pong_right_behind_a_large_message_keeps_its_whole_read_buffer() {
    let _serial = SERIAL.lock().await;
    // Over one reservation step: the read buffer doubles to ~2 MiB, and the large payload is
    // copied out of it (its buffer is over 1/8 larger than it).
    const P: usize = 1_200_000;
    let tail = frame_bytes(true, opcode::PONG, b"beat");
    let held = held_by_what_follows_a_large_frame(P, &tail, &[Frame::pong(&b"beat"[..])]).await;
    assert!(
        held < 64 * 1024,
        "a kept 4-byte pong received right after a {P}-byte message holds {held} bytes of heap"
    );
}

/// A frame a `FrameSender` queued, refused because `handle_connect` answered `Reply::Close`,
/// reaches `handle_error` only after the next `handle_frame` (or, if the server sends nothing,
/// up to `close_timeout` later), although 009da37 says "refusals reach handle_error before the
/// next callback".
///
/// What the user sees: the handler learns that its frame was not sent only after it has been
/// handed frames the server sent later (and a handler that reacts to them — "the server
/// answered, so my request went out" — is misled); with a quiet server the report waits for the
/// server's close or the close timer.
///
/// Why: `route` (src/client/mod.rs:806) closes the senders' queue itself when it starts the
/// close handshake and pushes the refusals onto `unheard`, but ignores `sync_sender_queue`'s
/// answer; when `route` runs inside `execute` (a reply from `handle_connect` or `handle_error`),
/// `run`'s own syncs after the action and after the loop (mod.rs:354, 359) then find the queue
/// already closed and return `false`, so `report_unheard` is not called and nothing is scheduled
/// to call it. The next `run` reports them; but the driver's `handle_frame` (mod.rs:743) is
/// called directly, before any `run`.
///
/// Suggested fix: in `run`, report whenever `unheard` is not empty after an action (and after
/// the loop), instead of relying on `sync_sender_queue`'s return value; or have `route` return
/// whether it refused frames and report at its callers.
#[actix_rt::test]
async fn a_refusal_from_a_close_in_handle_connect_waits_behind_the_next_frame() {
    let _serial = SERIAL.lock().await;
    // The upgrade is answered late, so that the sender is handed to the handler before it.
    let server = support::scripted_ws_server(vec![
        Step::Handshake(Handshake::new().delay(Duration::from_millis(300))),
        Step::Sleep(Duration::from_millis(300)),
        Step::Send(text_frame("hello")),
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1000), "")),
        Step::Close,
    ]);
    let slot: Rc<RefCell<Option<FrameSender>>> = Rc::default();
    let queued: Rc<RefCell<Option<Result<(), SendError>>>> = Rc::default();
    let request =
        ConnectRequest::new(server.url("/")).options(ConnectOptions::default().ping_interval(None));
    let (handler, mut events) = Recorder::new(request);
    let handler = handler.policy(Policy::Stop).on_connect({
        let slot = slot.clone();
        let queued = queued.clone();
        move |_| {
            let sender = slot.borrow();
            let sender = sender.as_ref().expect("the sender was handed over before");
            *queued.borrow_mut() = Some(sender.send(Frame::text("queued")));
            Reply::Close(CloseFrame::new(1000, "done"))
        }
    });
    let addr = Client::start(handler);
    *slot.borrow_mut() = Some(addr.send(GetFrameSender).await.unwrap());
    events
        .wait_for("the end", WAIT, |event| {
            matches!(event, Event::Disconnect { .. } | Event::Terminate(_))
        })
        .await;
    assert_eq!(
        *queued.borrow(),
        Some(Ok(())),
        "the sender took the frame inside handle_connect"
    );
    let refusal = events
        .seen
        .iter()
        .position(|event| matches!(event, Event::Error(Error::Send(_))));
    let hello = events
        .seen
        .iter()
        .position(|event| matches!(event, Event::Frame(frame) if frame.as_text() == Some("hello")));
    assert!(
        refusal.is_some(),
        "the refused frame reached handle_error:\n{}",
        events.history()
    );
    assert!(
        hello.is_none() || refusal < hello,
        "the refusal reached handle_error after a later handle_frame:\n{}",
        events.history()
    );
    assert!(
        server
            .frames()
            .iter()
            .all(|frame| frame.text().as_deref() != Some("queued")),
        "nothing after the close frame"
    );
}
