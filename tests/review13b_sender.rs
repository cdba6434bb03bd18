//! Review 13b, cold: `FrameSender` (src/client/sender.rs and its wiring in src/client/mod.rs)
//! and the framing fix in src/framed.rs, against real peers on 127.0.0.1.
//!
//! Tests named `control_...` cover what the review checked and found right. The others failed
//! on the reviewed code (df8424f; all fixed since); each doc comment says what the user sees, why, and a suggested fix.
//!
//! The tests run one at a time (behind [`SERIAL`]): three of them measure the heap of the test's
//! thread (the client of an `actix_rt::test` runs on it; the peers run on threads of their
//! own), and one measures how long the client takes to answer. Every wait is bounded.

mod common;
mod support;

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{Event, Policy, Recorder};
use minch::{
    Client, ConnectOptions, ConnectRequest, Connection, DisconnectReason, Error, Frame,
    FrameSender, Frames, GetFrameSender, GetStats, ReceiveError, Reply, SendError, SendFrame,
    SendFrames, TrySendFrame,
};
use support::{
    close_frame, frame_bytes, live_bytes, opcode, text_frame, Handshake, RawEvent, Step,
};
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

/// Texts the scripted server received on connection `conn`.
fn texts_of(server: &support::ScriptedServer, conn: usize) -> Vec<String> {
    server
        .frames_of(conn)
        .into_iter()
        .filter(|frame| frame.opcode == opcode::TEXT)
        .filter_map(|frame| frame.text())
        .collect()
}

/// A client of `server` that never reconnects, with keepalive off (so that nothing but the test
/// wakes it), and a sender once connected.
async fn connected_client(
    request: ConnectRequest,
) -> (actix::Addr<Client<Recorder>>, common::Events, FrameSender) {
    let (handler, mut events) = Recorder::new(request);
    let handler = handler.policy(Policy::Stop);
    let addr = Client::start(handler);
    let sender = addr.send(GetFrameSender).await.unwrap();
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    (addr, events, sender)
}

fn quiet(url: String) -> ConnectRequest {
    ConnectRequest::new(url).options(ConnectOptions::default().ping_interval(None))
}

// =============================================================================================
// Bugs (these failed on the reviewed code; fixed)
// =============================================================================================

/// Was a bug: a sender used inside `handle_connect` (or by a producer thread that `handle_connect`
/// just told to start) is refused with `NotConnected`, although the connection is open and
/// `ctx.is_connected()` says so.
///
/// What the user sees: the natural "start streaming once connected" pattern loses its first
/// frames, or its producer gives up at once. (The crate's own tests/frame_sender.rs waits with
/// `wait_until(|| sender.is_connected())` after the `Connected` event: the same window.)
///
/// Why: `Lifecycle::opened` (src/client/lifecycle.rs:358) makes the phase `Open` and queues
/// `Action::Connected`; `Client::run` (src/client/mod.rs:332-352) opens the senders' queue with
/// `sync_sender_queue` only *after* `execute` of an action has returned, i.e. after
/// `handle_connect` has run. During `handle_connect` the queue is still closed, so
/// `SenderQueue::open` (src/client/sender.rs:164) answers `NotConnected`.
///
/// Suggested fix: open the queue as soon as the lifecycle is open, before callbacks run: call
/// `sync_sender_queue` in `on_open` right after `lifecycle.opened(..)` (and, generally, before
/// each `execute` as well as after it).
#[actix_rt::test]
async fn a_sender_is_refused_inside_handle_connect() {
    let _serial = SERIAL.lock().await;
    // The upgrade is answered late: the sender is handed to the handler before it.
    let server = support::scripted_ws_server(vec![
        Step::Handshake(Handshake::new().delay(Duration::from_millis(500))),
        Step::Sleep(WAIT),
    ]);
    let slot: Rc<RefCell<Option<FrameSender>>> = Rc::default();
    let result: Rc<RefCell<Option<Result<(), SendError>>>> = Rc::default();
    let (handler, mut events) = Recorder::new(quiet(server.url("/")));
    let handler = handler.policy(Policy::Stop).on_connect({
        let slot = slot.clone();
        let result = result.clone();
        move |_| {
            let sender = slot.borrow();
            let sender = sender.as_ref().expect("the sender was handed over before");
            *result.borrow_mut() = Some(sender.send(Frame::text("hello from handle_connect")));
            Reply::Continue
        }
    });
    let addr = Client::start(handler);
    *slot.borrow_mut() = Some(addr.send(GetFrameSender).await.unwrap());
    let connected = events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    assert!(
        matches!(
            connected,
            Event::Connected {
                connected: true,
                ..
            }
        ),
        "ctx.is_connected() inside handle_connect: {connected:?}"
    );
    assert_eq!(
        *result.borrow(),
        Some(Ok(())),
        "a send from handle_connect, with the connection open"
    );
    assert!(
        server
            .wait_frame(
                |frame| frame.text().as_deref() == Some("hello from handle_connect"),
                WAIT
            )
            .await
            .is_some(),
        "{:?}",
        server.events()
    );
}

/// Was a bug: once the client has sent its own close frame (a `SendFrame(Frame::Close)`, a handler's
/// `Reply::Close`, a `Frame::Close` through a sender), the sender still accepts frames:
/// `send` answers `Ok(())` and `is_connected()` says `true` for as long as the close handshake
/// lasts (up to `close_timeout`), while `GetStats` says `connected: false`. Every frame is
/// then refused later, one `handle_error(Send(Closing))` each. A producer that stops on the
/// first `Err` (the documented way: "refused at once while no connection is open") keeps
/// going, flooding `handle_error`, until the server answers the close. When the *server*
/// begins the close, the sender is refused at once (see the control below): the two cases
/// differ.
///
/// Why: the queue is opened and closed only by `sync_sender_queue`, which `Client::run` calls
/// after each executed action (src/client/mod.rs:347). A close frame the client sends goes
/// through `Client::route` -> `Lifecycle::close_sent` -> `begin_client_close`
/// (src/client/lifecycle.rs:392, 615), which moves the phase to `Closing` without queuing any
/// action: `run`'s loop executes nothing, so the queue is never synced until the connection is
/// dropped (`Action::Drop`).
///
/// Suggested fix: sync the queue in `route` when it started the close handshake (or call
/// `sync_sender_queue` once at the end of `run`, outside the action loop, as well as after
/// each action).
#[actix_rt::test]
async fn after_the_clients_own_close_frame_the_sender_still_accepts() {
    let _serial = SERIAL.lock().await;
    // A server that never answers the close frame: the handshake lasts `close_timeout`.
    let server = support::scripted_ws_server(vec![Step::Sleep(WAIT)]);
    let request = ConnectRequest::new(server.url("/")).options(
        ConnectOptions::default()
            .ping_interval(None)
            .close_timeout(Duration::from_secs(8)),
    );
    let (addr, mut events, sender) = connected_client(request).await;
    addr.send(SendFrame(Frame::Close(None)))
        .await
        .unwrap()
        .expect("the close frame was written");
    assert!(
        server
            .wait_frame(|frame| frame.is_close(), WAIT)
            .await
            .is_some(),
        "{:?}",
        server.events()
    );
    let stats = addr.send(GetStats).await.unwrap();
    assert!(!stats.connected, "the client says it is not connected");
    let sent = sender.send(Frame::text("after our close"));
    let connected = sender.is_connected();
    events.drain_now();
    assert!(
        sent.is_err() && !connected,
        "after the client's close frame went out: send gave {sent:?}, is_connected() {connected}"
    );
}

/// Was a bug: `send_all` runs the caller's iterator with the queue's lock held, and the client's own
/// thread takes that lock on every turn (`take_from_senders` in the driver and in the handlers
/// of `SendFrame`, `GetStats`, `Info`, `Close`...). A lazily produced batch (frames built or
/// read as the iterator goes, a `rx.iter().take(n)`, a big `map` that formats each frame)
/// blocks the client's arbiter thread for as long as the iterator runs: no reading, no
/// answering pings, no messages, no other actor on that arbiter. Here a 10-frame iterator that
/// takes 150 ms per frame keeps a `GetStats` waiting for about 1.4 s. An iterator that touches
/// the sender itself (`is_connected()`, `{sender:?}`, another `send`) deadlocks the std mutex.
///
/// Why: src/client/sender.rs:91 `state.frames.extend(frames)` with `state` the `MutexGuard`
/// from `self.queue.open()`; `SenderQueue::take` (sender.rs:175) locks the same mutex from the
/// client's thread.
///
/// Suggested fix: collect and validate the iterator into a local `Vec` before taking the lock
/// (reusing a thread-local or per-sender buffer if the allocation matters), then `append` it
/// under the lock. That also fixes the panic case below.
#[actix_rt::test]
async fn send_all_runs_the_callers_iterator_with_the_clients_lock_held() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(WAIT)]);
    let (addr, _events, sender) = connected_client(quiet(server.url("/"))).await;
    let started = Arc::new(AtomicBool::new(false));
    let producer = std::thread::spawn({
        let started = started.clone();
        move || {
            sender.send_all((0..10).map(|n| {
                started.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(150));
                Frame::text(format!("lazy {n}"))
            }))
        }
    });
    assert!(support::wait_until(WAIT, || started.load(Ordering::SeqCst)).await);
    let asked = Instant::now();
    let stats = actix_rt::time::timeout(WAIT, addr.send(GetStats))
        .await
        .expect("GetStats answered")
        .unwrap();
    let took = asked.elapsed();
    producer.join().unwrap().unwrap();
    assert!(
        support::wait_until(WAIT, || texts_of(&server, 0).len() == 10).await,
        "{:?}",
        texts_of(&server, 0)
    );
    assert!(
        took < Duration::from_millis(500),
        "GetStats (frames_out {}) took {took:?}: the client's thread waited for the caller's \
         iterator",
        stats.frames_out
    );
}

/// Was a bug: when the iterator given to `send_all` panics, the frames it yielded before the panic
/// stay in the queue, and the sender stalls: every later `send` is accepted (`Ok`) but nothing
/// goes out until some unrelated event runs the client (a frame from the server, a keepalive
/// ping, an `Addr` message); with keepalive off and a quiet server, never. When something does
/// run it, half the failed batch goes out first, although `send_all` never returned `Ok` (and
/// promises "if any frame may not be sent ... none is queued").
///
/// Why: src/client/sender.rs:91 `state.frames.extend(frames)` pushes into the shared queue
/// directly; the unwind skips the validation, the `truncate(before)` and the wake-up below it,
/// and `SenderQueue::lock` (sender.rs:155) deliberately ignores the poisoning ("the queue is
/// consistent whatever the panic": it holds a partial batch). The queue is then not empty, so
/// `send` (sender.rs:80, `if state.frames.len() == 1`) never wakes the driver again: the
/// wake-up is tied to the empty-to-not-empty step that the panicking `send_all` took without
/// waking.
///
/// Suggested fix: build the batch outside the lock (see the test above), or truncate back to
/// `before` with a drop guard while extending; and wake whenever the queue is not empty and no
/// wake-up is pending (a `woken` flag the driver clears in `take`) rather than on `len() == 1`.
#[actix_rt::test]
async fn a_panicking_send_all_iterator_stalls_the_sender_and_leaves_half_a_batch() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(WAIT)]);
    let (addr, _events, sender) = connected_client(quiet(server.url("/"))).await;
    let panicked = std::thread::spawn({
        let sender = sender.clone();
        move || {
            sender.send_all((0..3).map(|n| {
                if n == 2 {
                    panic!("the producer's iterator fails (deliberately, in a test)");
                }
                Frame::text(format!("half {n}"))
            }))
        }
    })
    .join();
    assert!(panicked.is_err(), "send_all did not return");
    assert_eq!(sender.send(Frame::text("after")), Ok(()));
    let went_out_on_its_own = support::wait_until(Duration::from_secs(2), || {
        texts_of(&server, 0).contains(&"after".to_owned())
    })
    .await;
    // Some other event runs the client: what was queued goes out then.
    addr.send(GetStats).await.unwrap();
    assert!(
        support::wait_until(WAIT, || texts_of(&server, 0).contains(&"after".to_owned())).await,
        "{:?}",
        server.events()
    );
    actix_rt::time::sleep(PAUSE).await;
    let texts = texts_of(&server, 0);
    assert!(
        went_out_on_its_own && texts == ["after"],
        "after a send_all whose iterator panicked: a later send went out on its own within 2 s: \
         {went_out_on_its_own}; the server received {texts:?} (expected only [\"after\"])"
    );
}

/// Was a bug: a burst through a `FrameSender` leaves the client holding the burst's queue for good:
/// after 100 000 frames are on the wire, the client keeps about
/// `100 000 * size_of::<Frame>()` bytes (~3-5 MB; twice that after a second burst) until it
/// stops, across reconnects, while idle. The same burst as one `SendFrames` leaves nothing
/// (the control below). Ten thousand clients that each had one burst hold gigabytes — the
/// memory src/framed.rs takes pains not to hold for quiet connections.
///
/// Why: `SenderQueue::take` (src/client/sender.rs:183) swaps the queue's `Vec` with the
/// client's `from_senders`, and `take_from_senders` (src/client/mod.rs:901) puts the drained
/// `Vec` back into `from_senders` "kept for its allocation"; `set_open`/`stop`/`refuse` do the
/// same. Neither `Vec` is ever shrunk or dropped.
///
/// Suggested fix: keep the allocation only while it is small (say, under 1 024 frames):
/// after draining, `if frames.capacity() > KEEP { frames = Vec::new() }`, and the same for the
/// queue's buffer in `take`; or release both at the keepalive's `release_idle`.
#[actix_rt::test]
async fn a_burst_through_the_sender_keeps_its_queue_memory_for_good() {
    let _serial = SERIAL.lock().await;
    let (kept, burst) = burst_then_measure(true).await;
    assert!(
        kept < 256 * 1024,
        "after a burst of {burst} frames through a FrameSender (all on the wire), the client \
         still holds {kept} bytes (size_of::<Frame>() = {})",
        std::mem::size_of::<Frame>()
    );
}

const BURST: usize = 100_000;

/// Sends a burst of [`BURST`] one-byte frames (through a sender, or as one `SendFrames`), waits
/// until the server has read them all, and measures what the client still holds then.
async fn burst_then_measure(through_sender: bool) -> (i64, usize) {
    let server = support::scripted_ws_server(vec![
        Step::ReadFrames(BURST, WAIT),
        Step::Send(text_frame("all read")),
        Step::Sleep(WAIT),
    ]);
    let (addr, mut events, sender) = connected_client(quiet(server.url("/"))).await;
    // Whatever the first frames allocate for good (the encoder's state, the write buffer) is
    // allocated before the baseline.
    sender.send(Frame::binary(&b"w"[..])).unwrap();
    addr.send(GetStats).await.unwrap();
    actix_rt::time::sleep(PAUSE).await;
    let before = live_bytes();
    if through_sender {
        for _ in 0..BURST - 1 {
            sender.send(Frame::binary(&b"x"[..])).unwrap();
        }
    } else {
        let frames = vec![Frame::binary(&b"x"[..]); BURST - 1];
        addr.send(SendFrames(frames)).await.unwrap().unwrap();
    }
    events
        .wait_for("the server's word that it read them all", WAIT, |event| {
            event.is_text("all read")
        })
        .await;
    // The write buffer that grew for the burst is given back once flushed: wait for it.
    addr.send(GetStats).await.unwrap();
    actix_rt::time::sleep(PAUSE).await;
    events.drain_now();
    events.seen.clear();
    events.seen.shrink_to_fit();
    let kept = live_bytes() - before;
    drop(server);
    (kept, BURST)
}

/// Was a bug (framing, src/framed.rs + src/protocol/codec.rs): a message of more than 1 MiB
/// (`RESERVE_STEP`) received in parts is still handed over in an allocation of about twice its
/// size, which the program holds for as long as it keeps the message: here 1 200 000 bytes
/// held in ~2.1 MB. The fix in a79c48b ("a large message received in parts no longer holds
/// twice its size") covers only messages up to `RESERVE_STEP`; its test uses 900 000 bytes.
///
/// Why: the codec reserves the rest of the frame a step of at most 1 MiB at a time
/// (src/protocol/codec.rs:438 `src.reserve((payload_len - src.len()).min(RESERVE_STEP))`).
/// The second step finds the buffer unique but too small, and bytes' `BytesMut::reserve` on a
/// unique shared buffer then allocates `max(2 * capacity, needed)` (bytes 1.12
/// `reserve_inner`): the capacity doubles to ~2 MiB. `complete_frame` `split_to`s the payload
/// out of that buffer and freezes it without the copy the compressed path makes when the
/// buffer has more than an eighth of spare room (codec.rs:383).
///
/// Suggested fix: in the codec, once a frame's payload is complete, copy it out
/// (`Bytes::copy_from_slice`) when the buffer's capacity before the split is well over the
/// payload's size, as the compressed path does; or grow the buffer for a large frame with an
/// exact allocation (a fresh `BytesMut::with_capacity(len + step)` and a copy) rather than
/// `reserve`.
#[actix_rt::test]
async fn a_message_over_one_mib_received_in_parts_holds_about_twice_its_size() {
    let _serial = SERIAL.lock().await;
    const P: usize = 1_200_000;
    let big = frame_bytes(true, opcode::BINARY, &payload(5, P));
    let server = support::scripted_ws_server(answer_close(vec![
        Step::Sleep(PAUSE),
        Step::Send(big[..8192].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(big[8192..].to_vec()),
    ]));
    let options = ConnectOptions::default().ping_interval(None);
    let (connection, mut frames) = simple_connect(&server, options).await;
    let message = simple_next(&mut frames).await.expect("the large frame");
    assert_eq!(
        message,
        Frame::binary(payload(5, P)),
        "the message is whole"
    );
    connection.close().await;
    let _ = simple_ending(&mut frames).await;
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

// =============================================================================================
// Controls (these pass: checked and found right)
// =============================================================================================

/// The same burst as one `SendFrames` leaves nothing behind once on the wire: the memory the
/// test above finds is the sender's queue, not the connection's.
#[actix_rt::test]
async fn control_the_same_burst_as_send_frames_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let (kept, burst) = burst_then_measure(false).await;
    assert!(
        kept < 256 * 1024,
        "after a SendFrames of {burst} frames the client still holds {kept} bytes"
    );
}

/// A sender asked for while the connection is already open (its queue made then, after the
/// driver's first turns) wakes the driver: with keepalive off and a server that sends nothing,
/// the frame goes out on its own, with no other event. (actix polls every spawned future on
/// each turn of the actor, so the driver registers its waker right after `GetFrameSender`.)
#[actix_rt::test]
async fn control_a_sender_made_while_open_wakes_the_driver() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(WAIT)]);
    let (handler, mut events) = Recorder::new(quiet(server.url("/")));
    let addr = Client::start(handler.policy(Policy::Stop));
    events
        .wait_for("the upgrade", WAIT, Event::is_connected)
        .await;
    actix_rt::time::sleep(PAUSE).await;
    let sender = addr.send(GetFrameSender).await.unwrap();
    assert!(sender.is_connected());
    // From another thread, after the client went idle again.
    actix_rt::time::sleep(PAUSE).await;
    std::thread::spawn(move || {
        sender.send(Frame::text("one")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        sender.send(Frame::text("two")).unwrap();
    })
    .join()
    .unwrap();
    assert!(
        support::wait_until(WAIT, || texts_of(&server, 0) == ["one", "two"]).await,
        "{:?}",
        server.events()
    );
}

/// When the server begins the close, the sender is refused at once (`NotConnected`), as
/// promised.
#[actix_rt::test]
async fn control_after_the_servers_close_frame_the_sender_is_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![
        Step::Sleep(PAUSE),
        Step::Send(close_frame(Some(1000), "bye")),
        Step::Sleep(WAIT),
    ]);
    let (_addr, mut events, sender) = connected_client(quiet(server.url("/"))).await;
    assert!(
        server
            .wait_frame(|frame| frame.is_close(), WAIT)
            .await
            .is_some(),
        "the client echoed the close"
    );
    assert!(!sender.is_connected());
    assert_eq!(
        sender.send(Frame::text("late")),
        Err(SendError::NotConnected)
    );
    events
        .assert_none("handle_error", PAUSE, |event| {
            matches!(event, Event::Error(_))
        })
        .await;
}

/// Frames a sender queued while the connection was open, and still in the queue when it
/// stopped being open (queued by the handler between the driver's take and the server's close
/// frame, read in the same pass), go to `handle_error` and never out: neither after the close
/// frame on that connection nor on the next one.
#[actix_rt::test]
async fn control_frames_left_at_the_end_go_to_handle_error_not_to_the_next_connection() {
    let _serial = SERIAL.lock().await;
    let mut first = text_frame("go");
    first.extend_from_slice(&close_frame(Some(1000), "bye"));
    let server = support::scripted_ws_server_seq(vec![
        vec![
            Step::Sleep(PAUSE),
            Step::Send(first),
            Step::WaitClose(WAIT),
            Step::Close,
        ],
        vec![Step::Sleep(WAIT)],
    ]);
    let slot: Rc<RefCell<Option<FrameSender>>> = Rc::default();
    let (handler, mut events) = Recorder::new(quiet(server.url("/")));
    let handler = handler
        .policy(Policy::Reconnect(Duration::from_millis(20)))
        .on_frame({
            let slot = slot.clone();
            move |frame| {
                if frame.as_text() == Some("go") {
                    if let Some(sender) = slot.borrow().as_ref() {
                        sender.send(Frame::text("queued in handle_frame")).unwrap();
                    }
                }
                Reply::Continue
            }
        });
    let addr = Client::start(handler);
    *slot.borrow_mut() = Some(addr.send(GetFrameSender).await.unwrap());
    events
        .wait_for(
            "handle_error for the frame left in the queue",
            WAIT,
            |event| matches!(event, Event::Error(Error::Send(_))),
        )
        .await;
    events
        .wait_for("the second upgrade", WAIT, Event::is_connected)
        .await;
    let sender = slot.borrow().clone().unwrap();
    assert!(support::wait_until(WAIT, || sender.is_connected()).await);
    sender.send(Frame::text("second")).unwrap();
    assert!(support::wait_until(WAIT, || texts_of(&server, 1) == ["second"]).await);
    assert!(texts_of(&server, 0).is_empty(), "{:?}", server.frames_of(0));
    assert_eq!(
        events.count(|event| matches!(event, Event::Error(_))),
        1,
        "{}",
        events.history()
    );
}

/// Frames sent before `SendFrames`, `TrySendFrame` and `SendFrame` go before them, and nothing
/// follows a close frame a sender queued: the text behind it is refused to `handle_error`.
#[actix_rt::test]
async fn control_order_with_addr_messages_and_nothing_after_a_close() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(WAIT)]);
    let (addr, mut events, sender) = connected_client(quiet(server.url("/"))).await;
    sender.send(Frame::text("1")).unwrap();
    addr.send(SendFrames(vec![Frame::text("2"), Frame::text("3")]))
        .await
        .unwrap()
        .unwrap();
    sender
        .send_all([Frame::text("4"), Frame::text("5")])
        .unwrap();
    addr.send(TrySendFrame(Frame::text("6")))
        .await
        .unwrap()
        .unwrap();
    sender.send(Frame::text("7")).unwrap();
    sender.send(Frame::Close(None)).unwrap();
    sender.send(Frame::text("8")).unwrap();
    let after = addr.send(SendFrame(Frame::text("9"))).await.unwrap();
    assert_eq!(after, Err(SendError::Closing));
    events
        .wait_for(
            "handle_error for the text behind the close",
            WAIT,
            |event| matches!(event, Event::Error(Error::Send(SendError::Closing))),
        )
        .await;
    assert!(
        server
            .wait_frame(|frame| frame.is_close(), WAIT)
            .await
            .is_some(),
        "{:?}",
        server.events()
    );
    actix_rt::time::sleep(PAUSE).await;
    let frames = server.frames_of(0);
    let close_at = frames.iter().position(|frame| frame.is_close()).unwrap();
    assert_eq!(close_at, frames.len() - 1, "nothing after the close frame");
    assert_eq!(texts_of(&server, 0), ["1", "2", "3", "4", "5", "6", "7"]);
}

/// A sender left over from a client that stopped answers `Stopped`, and one whose client is
/// gone altogether (every address dropped, the actor dropped) does too; `send_all` and
/// `is_connected` agree.
#[actix_rt::test]
async fn control_a_sender_outliving_its_client_hears_stopped() {
    let _serial = SERIAL.lock().await;
    let server = support::scripted_ws_server(vec![Step::Sleep(PAUSE), Step::Reset]);
    let (addr, mut events, sender) = connected_client(quiet(server.url("/"))).await;
    events.wait_for("the end", WAIT, Event::is_terminate).await;
    drop(addr);
    actix_rt::time::sleep(PAUSE).await;
    assert_eq!(sender.send(Frame::text("x")), Err(SendError::Stopped));
    assert_eq!(sender.send_all([Frame::text("y")]), Err(SendError::Stopped));
    assert!(!sender.is_connected());
    assert!(server.events().iter().all(
        |event| !matches!(event, RawEvent::Frame { frame, .. } if frame.opcode == opcode::TEXT)
    ));
}

/// Framing: a large message that arrives a byte at a time near its end and with the next
/// frames' headers cut at every boundary comes out whole and in order, with nothing taken for
/// the end of the stream.
#[actix_rt::test]
async fn control_a_large_frame_in_odd_pieces_comes_out_whole() {
    let _serial = SERIAL.lock().await;
    const P: usize = 1_100_000;
    let mut wire = frame_bytes(true, opcode::BINARY, &payload(7, P));
    wire.extend_from_slice(&frame_bytes(true, opcode::TEXT, b"after"));
    wire.extend_from_slice(&frame_bytes(true, opcode::BINARY, &payload(8, 70_000)));
    let end = P + 10;
    let mut steps = vec![
        Step::Sleep(PAUSE),
        Step::Send(wire[..1].to_vec()),
        Step::Sleep(PAUSE),
        Step::Send(wire[1..end - 3].to_vec()),
        Step::Sleep(PAUSE),
    ];
    // The last bytes of the payload, then the next header, a byte at a time.
    for byte in &wire[end - 3..end + 3] {
        steps.push(Step::Send(vec![*byte]));
        steps.push(Step::Sleep(Duration::from_millis(30)));
    }
    steps.push(Step::SendChunked {
        bytes: wire[end + 3..].to_vec(),
        chunk: 1000,
        delay: Duration::from_millis(1),
    });
    let server = support::scripted_ws_server(answer_close(steps));
    let (connection, mut frames) = simple_connect(&server, ConnectOptions::default()).await;
    assert_eq!(
        simple_next(&mut frames).await.unwrap(),
        Frame::binary(payload(7, P))
    );
    assert_eq!(
        simple_next(&mut frames).await.unwrap(),
        Frame::text("after")
    );
    assert_eq!(
        simple_next(&mut frames).await.unwrap(),
        Frame::binary(payload(8, 70_000))
    );
    connection.close().await;
    let reason = simple_ending(&mut frames).await;
    assert!(
        matches!(reason, DisconnectReason::ClientClosed(_)),
        "{reason:?}"
    );
}
