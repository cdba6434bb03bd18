//! The receive queue of the simple and blocking APIs: received messages wait here until the
//! program takes them, up to [`ConnectOptions::max_queue`](crate::ConnectOptions::max_queue)
//! messages and [`max_queue_bytes`](crate::ConnectOptions::max_queue_bytes) of payload.
//!
//! At the limit the connection stops reading the socket, so the kernel's TCP window makes the
//! server wait; once the program has taken the queue down to half, the connection reads again.
//! The gap between the two marks keeps a reader that takes one message at a time from waking
//! the connection for every message.
//!
//! Reading also waits, briefly, for a program that was waiting for frames: when the connection
//! stops on its budget with more to read, having just woken a waiting async receiver, it reads
//! on once that receiver has taken what it was handed. Without that hand-over the connection,
//! woken again at once, would read a whole window of frames before the program's task ran
//! (actix's arbiter runs ready tasks ahead of the future given to `block_on`), and the program
//! and the server would take turns instead of working at the same time.
//!
//! One queue serves both APIs: the async receiver registers a waker, blocking receivers wait
//! on a condition variable, and the connection (on the actix thread) asks before each frame
//! whether it may read.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use crate::{frame::Frame, handler::DisconnectReason};

/// A bounded queue of received frames, then the reason the connection ended.
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// Blocking receivers wait here for a frame or the end.
    arrived: Condvar,
    /// The connection reads nothing: the queue is full (`State::full`), or a hand-over waits
    /// to be taken (`State::handing_over`). Kept outside the lock, so that the connection
    /// checks it per frame for the price of a load.
    paused: AtomicBool,
    /// `State::end` is set: checked by every send through the [`Sink`](futures_util::Sink).
    ended: AtomicBool,
    /// Frames the async receiver moved out in a batch and has not handed to the program yet:
    /// they still count against the limits. Only that receiver (one task) changes them.
    held_messages: AtomicUsize,
    held_bytes: AtomicUsize,
    /// Frames handed to the program so far: while reading is paused, proof that the program is
    /// still receiving. Changed by one receiver at a time (the async one, or a blocking one
    /// under the lock).
    taken: AtomicU64,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    /// Payload bytes of `frames`.
    bytes: usize,
    end: Option<DisconnectReason>,
    /// The async receiver waiting for a frame.
    receiver: Option<Waker>,
    /// The async receiver was woken for the frames queued and has not taken them yet.
    receiver_woken: bool,
    /// The queue reached a limit and has not been taken down to half yet.
    full: bool,
    /// The connection paused to let the woken receiver take its frames first.
    handing_over: bool,
    /// The connection waiting for room.
    reader: Option<Waker>,
    /// Blocking receivers waiting on `arrived`.
    sleepers: usize,
    /// Every receiver is gone: frames are dropped on arrival and reading never pauses.
    abandoned: bool,
}

impl Inbox {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::default(),
            arrived: Condvar::new(),
            paused: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            held_messages: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; a poisoned one still holds a consistent queue.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one received frame (the client queues a driver pass's frames with
    /// [`push_all`](Self::push_all)).
    pub(crate) fn push(&self, frame: Frame) {
        let bytes = frame.payload_len();
        self.push_all(&mut vec![frame], bytes);
    }

    /// Queues the frames the connection read in one pass (`bytes` of payload), in one go. The
    /// connection reads no more than [`room`](Self::room) allowed.
    pub(crate) fn push_all(&self, frames: &mut Vec<Frame>, bytes: usize) {
        let mut state = self.lock();
        if state.abandoned || state.end.is_some() {
            frames.clear();
            return;
        }
        state.bytes += bytes;
        state.frames.extend(frames.drain(..));
        let (messages, bytes) = self.queued(&state);
        if messages >= self.max_messages || bytes >= self.max_bytes {
            state.full = true;
            self.paused.store(true, Ordering::Release);
        }
        let receiver = state.receiver.take();
        state.receiver_woken |= receiver.is_some();
        if state.sleepers > 0 {
            self.arrived.notify_all();
        }
        drop(state);
        if let Some(waker) = receiver {
            waker.wake();
        }
    }

    /// The connection stopped on its budget with more to read: if the frames it queued last
    /// woke a waiting async receiver that has not taken them yet, reading pauses until it has,
    /// and `waker` is woken then. Returns whether reading paused.
    pub(crate) fn pause_for_hand_over(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if !state.receiver_woken || state.abandoned || state.end.is_some() {
            return false;
        }
        state.handing_over = true;
        self.paused.store(true, Ordering::Release);
        remember(&mut state.reader, waker);
        true
    }

    /// Ends a hand-over pause whatever the receiver does: the connection must read to see a
    /// pong or a close frame. No other hand-over pause follows until the receiver waits again.
    pub(crate) fn end_hand_over(&self) {
        let mut state = self.lock();
        let reader = self.hand_over_done(&mut state);
        drop(state);
        wake(reader);
    }

    /// How many messages and payload bytes the connection may read before the queue is full
    /// (it may read a message while under both; the last may take the bytes over); `None`
    /// while reading is paused, and then `waker` is woken once it may read again.
    pub(crate) fn room(&self, waker: &Waker) -> Option<(usize, usize)> {
        if !self.reading_allowed(waker) {
            return None;
        }
        let state = self.lock();
        if state.abandoned {
            return Some((usize::MAX, usize::MAX));
        }
        let (messages, bytes) = self.queued(&state);
        Some((
            self.max_messages.saturating_sub(messages).max(1),
            self.max_bytes.saturating_sub(bytes).max(1),
        ))
    }

    /// The connection has ended: receivers get `reason` once they have taken every frame.
    /// Only the first end counts.
    pub(crate) fn finish(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if state.end.is_some() {
            return;
        }
        state.end = Some(reason);
        self.ended.store(true, Ordering::Release);
        let receiver = state.receiver.take();
        self.arrived.notify_all();
        drop(state);
        if let Some(waker) = receiver {
            waker.wake();
        }
    }

    /// Whether the connection ended (frames may still wait to be taken).
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether the connection may read another frame. If not, `waker` is woken once it may.
    fn reading_allowed(&self, waker: &Waker) -> bool {
        if !self.paused.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.lock();
        // Resumed between the load and the lock: the waker would never be called.
        if !self.paused.load(Ordering::Acquire) {
            return true;
        }
        remember(&mut state.reader, waker);
        false
    }

    fn count_taken(&self) {
        let taken = self.taken.load(Ordering::Relaxed);
        self.taken.store(taken + 1, Ordering::Release);
    }

    /// Frames handed to the program so far.
    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether reading is paused for want of room.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Messages and payload bytes not yet handed to the program.
    fn queued(&self, state: &State) -> (usize, usize) {
        (
            state.frames.len() + self.held_messages.load(Ordering::Acquire),
            state.bytes + self.held_bytes.load(Ordering::Acquire),
        )
    }

    /// Lets the connection read again once the queue is down to half of both limits and no
    /// hand-over waits; returns the connection's waker, to be woken once the lock is released.
    #[must_use]
    fn resume_if_room(&self, state: &mut State) -> Option<Waker> {
        if !self.paused.load(Ordering::Relaxed) {
            return None;
        }
        if state.full {
            let (messages, bytes) = self.queued(state);
            state.full = messages > self.max_messages / 2 || bytes > self.max_bytes / 2;
        }
        if state.full || state.handing_over {
            return None;
        }
        self.paused.store(false, Ordering::Release);
        state.reader.take()
    }

    /// The woken receiver took its frames (or there were none left): the connection may read
    /// on, unless the queue is full.
    #[must_use]
    fn hand_over_done(&self, state: &mut State) -> Option<Waker> {
        state.receiver_woken = false;
        if !std::mem::take(&mut state.handing_over) {
            return None;
        }
        self.resume_if_room(state)
    }

    /// Takes the next frame; `Err` with the end once every frame was taken.
    fn take(&self, state: &mut State) -> Option<Result<Frame, DisconnectReason>> {
        match state.frames.pop_front() {
            Some(frame) => {
                state.bytes -= frame.payload_len();
                self.count_taken();
                wake(self.resume_if_room(state));
                Some(Ok(frame))
            }
            None => state.end.clone().map(Err),
        }
    }

    /// The async receiver: moves every queued frame into `batch` (which must be empty), one
    /// lock for many frames; each is to be reported with [`handed_over`](Self::handed_over)
    /// as the program takes it. `Err` with the end once every frame was taken.
    pub(crate) fn poll_refill(
        &self,
        batch: &mut VecDeque<Frame>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), DisconnectReason>> {
        debug_assert!(batch.is_empty());
        let mut state = self.lock();
        if !state.frames.is_empty() {
            self.held_messages.store(
                self.held_messages.load(Ordering::Relaxed) + state.frames.len(),
                Ordering::Release,
            );
            self.held_bytes.store(
                self.held_bytes.load(Ordering::Relaxed) + state.bytes,
                Ordering::Release,
            );
            state.bytes = 0;
            // The emptied batch's allocation becomes the queue's.
            std::mem::swap(&mut state.frames, batch);
            let reader = self.hand_over_done(&mut state);
            drop(state);
            wake(reader);
            return Poll::Ready(Ok(()));
        }
        let reader = self
            .hand_over_done(&mut state)
            .or_else(|| self.resume_if_room(&mut state));
        if let Some(end) = &state.end {
            let end = end.clone();
            drop(state);
            wake(reader);
            return Poll::Ready(Err(end));
        }
        // A caller that only looks (`try_receive_frame`) is not waiting: frames for it must
        // not make the connection wait for a take that may come much later.
        if !cx.waker().will_wake(Waker::noop()) {
            remember(&mut state.receiver, cx.waker());
        }
        drop(state);
        wake(reader);
        Poll::Pending
    }

    /// The async receiver handed one frame of its batch (of `bytes` payload) to the program.
    pub(crate) fn handed_over(&self, bytes: usize) {
        // Only the async receiver changes these: a load and a store, no read-modify-write.
        let messages = self.held_messages.load(Ordering::Relaxed);
        self.held_messages.store(messages - 1, Ordering::Release);
        let held_bytes = self.held_bytes.load(Ordering::Relaxed);
        self.held_bytes.store(held_bytes - bytes, Ordering::Release);
        self.count_taken();
        if self.paused.load(Ordering::Acquire) {
            let reader = self.resume_if_room(&mut self.lock());
            wake(reader);
        }
    }

    /// A blocking receiver: the next frame or the end, waiting at most `timeout`; `None` if
    /// nothing came in time.
    pub(crate) fn take_within(&self, timeout: Duration) -> Option<Result<Frame, DisconnectReason>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        loop {
            if let Some(taken) = self.take(&mut state) {
                return Some(taken);
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return None;
            }
            state.sleepers += 1;
            state = match self.arrived.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.sleepers -= 1;
        }
    }

    /// Every receiver is gone: nobody can take the frames, so they are dropped, and the
    /// connection reads freely (a close handshake must not wait behind them).
    pub(crate) fn abandon(&self) {
        let mut state = self.lock();
        state.abandoned = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
        self.held_messages.store(0, Ordering::Release);
        self.held_bytes.store(0, Ordering::Release);
        state.full = false;
        state.handing_over = false;
        self.paused.store(false, Ordering::Release);
        let reader = state.reader.take();
        drop(state);
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// Keeps `waker` in `slot`, unless the one there wakes the same task.
fn remember(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(kept) if kept.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The receiving end of an [`Inbox`]: dropping it abandons the queue.
pub(crate) struct Receiver(pub(crate) Arc<Inbox>);

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl std::ops::Deref for Receiver {
    type Target = Inbox;

    fn deref(&self) -> &Inbox {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    //! The queue driven directly, at speed: random pushes (only while reading is allowed, as
    //! the connection does), takes, ends and abandonment, against these invariants:
    //!
    //! 1. Frames are taken in the order they were pushed, each once, none lost (until the
    //!    receiver abandons the queue), and the end comes after every frame.
    //! 2. Reading is paused exactly from the push that reaches a limit until a take brings
    //!    the queue to half of both limits (or the end of receiving); so the queue never holds
    //!    more than `max_messages` frames, nor more than `max_bytes` plus one frame.
    //! 3. The connection, told to wait, is woken when reading resumes: never left waiting
    //!    while reading is allowed.
    //! 4. A hand-over pause happens only when the frames queued last woke a waiting async
    //!    receiver that has not taken them, and lasts until it has (or the queue is
    //!    abandoned); reading stays paused after it only while the queue is full.

    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::Wake,
    };

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::{frame::CloseFrame, handler::DisconnectReason};

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(usize),
        Take,
        /// The connection stopped on its budget and offers to wait for the receiver.
        HandOver,
        /// The client ends a hand-over pause (a keepalive tick, a close).
        EndHandOver,
        Finish,
        Abandon,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0usize..40).prop_map(Step::Push),
            5 => Just(Step::Take),
            2 => Just(Step::HandOver),
            1 => Just(Step::EndHandOver),
            1 => Just(Step::Finish),
            1 => Just(Step::Abandon),
        ]
    }

    /// What `simple::Frames` does: a batch at a time from the queue, handed over one by one.
    fn take_async(
        inbox: &Inbox,
        batch: &mut VecDeque<Frame>,
        receiver: &Waker,
    ) -> Option<Result<Frame, DisconnectReason>> {
        if batch.is_empty() {
            let mut cx = Context::from_waker(receiver);
            match inbox.poll_refill(batch, &mut cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(end)) => return Some(Err(end)),
                Poll::Pending => return None,
            }
        }
        let frame = batch.pop_front()?;
        inbox.handed_over(frame.payload_len());
        Some(Ok(frame))
    }

    fn frame(number: u32, len: usize) -> Frame {
        let mut payload = number.to_be_bytes().to_vec();
        payload.resize(len.max(4), 0);
        Frame::Binary(Bytes::from(payload))
    }

    fn number(frame: &Frame) -> u32 {
        match frame {
            Frame::Binary(payload) => u32::from_be_bytes(payload[..4].try_into().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_queue_keeps_order_bounds_and_wakes(
            max_messages in 1usize..8,
            max_bytes in 1usize..120,
            async_receiver in any::<bool>(),
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let inbox = Inbox::new(max_messages, max_bytes);
            let mut batch = VecDeque::new();
            let reader = Arc::new(CountingWaker::default());
            let reader_waker = Waker::from(reader.clone());
            let receiver = Arc::new(CountingWaker::default());
            let receiver_waker = Waker::from(receiver.clone());
            // The async receiver waits (registered, not woken since); was woken by a push and
            // has not taken the queue since; the connection paused for it.
            let (mut receiver_waiting, mut receiver_woken, mut handing_over) = (false, false, false);
            let mut pushed = 0u32;
            let mut expected = VecDeque::new();
            let (mut finished, mut abandoned, mut ended_seen) = (false, false, false);
            let mut reader_waiting = false;
            let mut max_frame = 0;
            for step in steps {
                match step {
                    Step::Push(len) => {
                        let wakes = reader.0.load(Ordering::SeqCst);
                        if !inbox.reading_allowed(&reader_waker) {
                            reader_waiting = true;
                            prop_assert_eq!(reader.0.load(Ordering::SeqCst), wakes);
                            continue;
                        }
                        reader_waiting = false;
                        let frame = frame(pushed, len);
                        max_frame = max_frame.max(frame.payload_len());
                        let wakes_before = receiver.0.load(Ordering::SeqCst);
                        inbox.push(frame);
                        if receiver_waiting && !finished && !abandoned {
                            prop_assert_eq!(receiver.0.load(Ordering::SeqCst), wakes_before + 1);
                            receiver_waiting = false;
                            receiver_woken = true;
                        }
                        if !finished && !abandoned {
                            expected.push_back(pushed);
                        }
                        pushed += 1;
                    }
                    Step::Take => {
                        let wakes = reader.0.load(Ordering::SeqCst);
                        let was_paused = inbox.is_paused();
                        let refills = async_receiver && batch.is_empty();
                        let taken = if async_receiver {
                            take_async(&inbox, &mut batch, &receiver_waker)
                        } else {
                            inbox.take_within(Duration::ZERO)
                        };
                        if refills {
                            // Whatever the queue held is the receiver's now.
                            receiver_woken = false;
                            let was_handing_over = std::mem::take(&mut handing_over);
                            if was_handing_over && !inbox.is_paused() && reader_waiting {
                                prop_assert_eq!(reader.0.load(Ordering::SeqCst), wakes + 1);
                                reader_waiting = false;
                            }
                            receiver_waiting = taken.is_none();
                        }
                        match taken {
                            Some(Ok(frame)) => {
                                prop_assert!(!abandoned);
                                prop_assert_eq!(Some(number(&frame)), expected.pop_front());
                            }
                            Some(Err(_)) => {
                                prop_assert!(finished && expected.is_empty());
                                ended_seen = true;
                            }
                            None => prop_assert!(expected.is_empty() && (!finished || abandoned)),
                        }
                        if was_paused && !inbox.is_paused() && reader_waiting {
                            prop_assert_eq!(reader.0.load(Ordering::SeqCst), wakes + 1);
                            reader_waiting = false;
                        }
                    }
                    Step::HandOver => {
                        let paused = inbox.pause_for_hand_over(&reader_waker);
                        prop_assert_eq!(paused, receiver_woken && !finished && !abandoned);
                        if paused {
                            prop_assert!(inbox.is_paused());
                            handing_over = true;
                            reader_waiting = true;
                        }
                    }
                    Step::EndHandOver => {
                        let wakes = reader.0.load(Ordering::SeqCst);
                        inbox.end_hand_over();
                        receiver_woken = false;
                        if std::mem::take(&mut handing_over)
                            && !inbox.is_paused()
                            && reader_waiting
                        {
                            prop_assert_eq!(reader.0.load(Ordering::SeqCst), wakes + 1);
                            reader_waiting = false;
                        }
                    }
                    Step::Finish => {
                        inbox.finish(DisconnectReason::ServerClosed(Some(CloseFrame::normal())));
                        finished = true;
                    }
                    Step::Abandon => {
                        let wakes = reader.0.load(Ordering::SeqCst);
                        inbox.abandon();
                        abandoned = true;
                        handing_over = false;
                        expected.clear();
                        batch.clear();
                        prop_assert!(!inbox.is_paused());
                        if reader_waiting {
                            prop_assert_eq!(reader.0.load(Ordering::SeqCst), wakes + 1);
                            reader_waiting = false;
                        }
                    }
                }
                let state = inbox.lock();
                prop_assert_eq!(
                    state.bytes,
                    state.frames.iter().map(Frame::payload_len).sum::<usize>()
                );
                let (messages, bytes) = inbox.queued(&state);
                if !abandoned {
                    prop_assert_eq!(messages, state.frames.len() + batch.len());
                    prop_assert_eq!(
                        bytes,
                        state.bytes + batch.iter().map(Frame::payload_len).sum::<usize>()
                    );
                }
                prop_assert!(messages <= max_messages);
                prop_assert!(bytes < max_bytes + max_frame.max(1));
                let over = messages >= max_messages || bytes >= max_bytes;
                if over && !abandoned {
                    prop_assert!(inbox.is_paused() || finished);
                }
                if handing_over {
                    prop_assert!(inbox.is_paused());
                }
                if !over && !handing_over && !state.full {
                    prop_assert!(!inbox.is_paused());
                }
                if !inbox.is_paused() {
                    prop_assert!(!reader_waiting || reader.0.load(Ordering::SeqCst) > 0);
                }
                drop(state);
            }
            let _ = ended_seen;
        }
    }

    #[test]
    fn a_blocking_receiver_wakes_for_a_frame_from_another_thread() {
        let inbox = Inbox::new(4, 1 << 20);
        let pusher = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                inbox.push(Frame::text("late"));
            })
        };
        let taken = inbox.take_within(Duration::from_secs(10));
        pusher.join().unwrap();
        assert!(matches!(taken, Some(Ok(Frame::Text(text))) if text == "late"));
    }

    #[test]
    fn the_end_comes_after_every_frame_and_stays() {
        let inbox = Inbox::new(4, 1 << 20);
        inbox.push(Frame::text("a"));
        inbox.finish(DisconnectReason::ServerClosed(None));
        inbox.finish(DisconnectReason::ClientClosed(CloseFrame::normal()));
        assert!(matches!(inbox.take_within(Duration::ZERO), Some(Ok(_))));
        for _ in 0..2 {
            assert!(matches!(
                inbox.take_within(Duration::ZERO),
                Some(Err(DisconnectReason::ServerClosed(None)))
            ));
        }
    }
}
