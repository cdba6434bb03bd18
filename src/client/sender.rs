//! [`FrameSender`]: frames for a client from any thread, without a mailbox message per frame.
//!
//! Every message sent to an actix `Addr` costs two allocations (its envelope and its queue
//! node) and a pass through the mailbox; a program that streams frames spends more on that than
//! on the WebSocket itself. A `FrameSender` puts frames in a queue the client shares with it
//! (one lock, no allocation once the queue's buffer has grown), and wakes the client's driver
//! only when the queue goes from empty to not empty: one wake-up per burst.
//!
//! The queue only takes frames while a connection is open, so nothing sent for one
//! connection goes out on the next: when the connection stops being open, the client takes
//! what is left and reports each frame to `handle_error`, and the queue refuses frames until
//! the next connection opens.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    task::Waker,
};

use crate::{error::SendError, frame::Frame, protocol::validate_outgoing};

/// Sends frames to a [`Client`](crate::Client) from anywhere (any thread, no `.await`): the
/// fast path for a program that streams frames to its client.
///
/// Get one with [`GetFrameSender`]; clones share the client's queue. A sender stays valid
/// across reconnects, as the client's `Addr` does.
///
/// [`send`](Self::send) refuses a frame at once, with the reason, when the client is not
/// connected, has stopped, or the frame is invalid. The frames it accepts go out in the order
/// they were sent, and before whatever a message sent to the client's `Addr` after them does
/// (a [`SendFrame`](crate::SendFrame), a [`Close`](crate::Close), the handler's reply to an
/// [`Info`](crate::Info)); a frame sent after such a message, before the client took it, may go
/// first. An accepted frame is treated as a `SendFrame` sent with `do_send`: should the client
/// not write it after all (the close handshake
/// began, or the connection was lost first), it tells
/// [`handle_error`](crate::MinchHandler::handle_error) with
/// [`Error::Send`](crate::Error::Send), or counts it in
/// [`Stats::frames_unsent`](crate::Stats::frames_unsent) if it was lost with the connection
/// after it was accepted onto it. Nothing is dropped silently.
///
/// Frames wait in the queue only until the client's next turn on its thread; past
/// [`ConnectOptions::max_buffered_bytes`](crate::ConnectOptions::max_buffered_bytes) they are
/// held back by the connection, as with `SendFrame`. A program that may outrun the server
/// should watch [`Stats`](crate::Stats) or await a [`SendFrame`](crate::SendFrame) now and then.
///
/// ```no_run
/// use actix::Addr;
/// use minch::{Client, Frame, GetFrameSender, MinchHandler, SendError};
///
/// async fn stream_prices<H: MinchHandler>(client: &Addr<Client<H>>) -> Result<(), SendError> {
///     let sender = client.send(GetFrameSender).await.map_err(|_| SendError::Stopped)?;
///     // The sender can move to another thread; each send is a lock and a push.
///     std::thread::spawn(move || {
///         for price in 0..1_000 {
///             if let Err(error) = sender.send(Frame::text(format!("{{\"px\":{price}}}"))) {
///                 eprintln!("not sent: {error}");
///                 break;
///             }
///         }
///     });
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct FrameSender {
    queue: Arc<SenderQueue>,
}

impl FrameSender {
    /// Queues `frame` for the open connection. `Err` at once if the client is not connected
    /// ([`SendError::NotConnected`]), has stopped ([`SendError::Stopped`]) or the frame may not
    /// be sent ([`SendError::InvalidFrame`]).
    ///
    /// Sending [`Frame::Close`] starts the close handshake, as [`Reply::Close`](crate::Reply::Close)
    /// does: frames queued behind it before the client took it are refused and reported to
    /// `handle_error`, and once it took it, `send` answers `NotConnected` at once.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        let mut state = self.queue.open()?;
        state.frames.push(frame);
        if state.frames.len() == 1 {
            state.wake();
        }
        Ok(())
    }

    /// Queues several frames, in order, under one lock: cheaper than [`send`](Self::send) for
    /// each. If any frame may not be sent, or the client is not connected, none is queued.
    pub fn send_all(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), SendError> {
        // Gathered before the lock: the caller's iterator may be slow, panic, or use this
        // sender, none of which may happen while the client waits for the lock.
        let mut frames: Vec<Frame> = frames.into_iter().collect();
        if let Some(error) = frames
            .iter()
            .find_map(|frame| validate_outgoing(frame).err())
        {
            return Err(SendError::InvalidFrame(error));
        }
        let mut state = self.queue.open()?;
        let was_empty = state.frames.is_empty();
        state.frames.append(&mut frames);
        if was_empty && !state.frames.is_empty() {
            state.wake();
        }
        Ok(())
    }

    /// Whether the client has a connection open to take frames: what the next
    /// [`send`](Self::send) would find, unless the connection changes in between.
    pub fn is_connected(&self) -> bool {
        self.queue.lock().open
    }
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.queue.lock();
        f.debug_struct("FrameSender")
            .field("connected", &state.open)
            .field("stopped", &state.stopped)
            .field("queued", &state.frames.len())
            .finish()
    }
}

/// The queue the client shares with its senders.
#[derive(Default)]
pub(crate) struct SenderQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    frames: Vec<Frame>,
    /// A connection is open: frames are taken.
    open: bool,
    /// The client has stopped for good.
    stopped: bool,
    /// The current connection's driver.
    driver: Option<Waker>,
}

impl QueueState {
    fn wake(&self) {
        if let Some(driver) = &self.driver {
            driver.wake_by_ref();
        }
    }
}

impl SenderQueue {
    pub(crate) fn sender(self: &Arc<Self>) -> FrameSender {
        FrameSender {
            queue: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing that can panic runs with the lock held but a `Vec` growing (out of memory);
        // the queue is consistent whatever the panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state, if it takes frames now.
    fn open(&self) -> Result<MutexGuard<'_, QueueState>, SendError> {
        let state = self.lock();
        match (state.stopped, state.open) {
            (true, _) => Err(SendError::Stopped),
            (false, false) => Err(SendError::NotConnected),
            (false, true) => Ok(state),
        }
    }

    /// Moves the queued frames into `into` (empty), leaving the queue's buffer for the next
    /// ones, and remembers the driver to wake for them.
    pub(crate) fn take(&self, into: &mut Vec<Frame>, driver: Option<&Waker>) {
        let mut state = self.lock();
        if let Some(driver) = driver {
            if !state.driver.as_ref().is_some_and(|w| w.will_wake(driver)) {
                state.driver = Some(driver.clone());
            }
        }
        if !state.frames.is_empty() {
            std::mem::swap(&mut state.frames, into);
        }
    }

    /// Opens or closes the queue for frames; closing it hands over what it still holds, for
    /// the client to refuse.
    pub(crate) fn set_open(&self, open: bool, left: &mut Vec<Frame>) {
        let mut state = self.lock();
        if state.open == open {
            return;
        }
        state.open = open;
        if !open {
            state.driver = None;
            std::mem::swap(&mut state.frames, left);
        }
    }

    /// Closes the queue for good.
    pub(crate) fn stop(&self, left: &mut Vec<Frame>) {
        let mut state = self.lock();
        state.stopped = true;
        state.open = false;
        state.driver = None;
        std::mem::swap(&mut state.frames, left);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::Wake,
    };

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue_with_driver() -> (Arc<SenderQueue>, Arc<CountingWaker>, Waker) {
        let queue = Arc::new(SenderQueue::default());
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        queue.set_open(true, &mut Vec::new());
        queue.take(&mut Vec::new(), Some(&waker));
        (queue, count, waker)
    }

    #[test]
    fn refuses_before_a_connection_opens_and_after_the_stop() {
        let queue = Arc::new(SenderQueue::default());
        let sender = queue.sender();
        assert_eq!(sender.send(Frame::text("a")), Err(SendError::NotConnected));
        assert!(!sender.is_connected());
        queue.set_open(true, &mut Vec::new());
        assert!(sender.is_connected());
        assert_eq!(sender.send(Frame::text("b")), Ok(()));
        let mut left = Vec::new();
        queue.stop(&mut left);
        assert_eq!(left, vec![Frame::text("b")], "handed over at the stop");
        assert_eq!(sender.send(Frame::text("c")), Err(SendError::Stopped));
        queue.set_open(true, &mut Vec::new());
        assert_eq!(
            sender.send(Frame::text("d")),
            Err(SendError::Stopped),
            "stopped is for good"
        );
    }

    #[test]
    fn wakes_the_driver_once_per_burst() {
        let (queue, count, waker) = queue_with_driver();
        let sender = queue.sender();
        for n in 0..10 {
            sender.send(Frame::text(n.to_string())).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let mut taken = Vec::new();
        queue.take(&mut taken, Some(&waker));
        assert_eq!(taken.len(), 10);
        assert_eq!(taken[9], Frame::text("9"), "in order");
        sender
            .send_all([Frame::text("x"), Frame::text("y")])
            .unwrap();
        sender.send(Frame::text("z")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        sender.send_all([]).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "nothing queued, no wake");
    }

    #[test]
    fn an_invalid_frame_queues_nothing() {
        let (queue, _count, waker) = queue_with_driver();
        let sender = queue.sender();
        let too_long_ping = Frame::Ping(vec![0; 126].into());
        assert!(matches!(
            sender.send(too_long_ping.clone()),
            Err(SendError::InvalidFrame(_))
        ));
        assert!(matches!(
            sender.send_all([Frame::text("fine"), too_long_ping]),
            Err(SendError::InvalidFrame(_))
        ));
        let mut taken = Vec::new();
        queue.take(&mut taken, Some(&waker));
        assert!(taken.is_empty(), "{taken:?}");
    }

    #[test]
    fn closing_hands_over_what_is_queued_and_refuses_until_reopened() {
        let (queue, _count, _waker) = queue_with_driver();
        let sender = queue.sender();
        sender.send(Frame::text("1")).unwrap();
        sender.send(Frame::text("2")).unwrap();
        let mut left = Vec::new();
        queue.set_open(false, &mut left);
        assert_eq!(left, vec![Frame::text("1"), Frame::text("2")]);
        assert_eq!(sender.send(Frame::text("3")), Err(SendError::NotConnected));
        queue.set_open(true, &mut Vec::new());
        sender.send(Frame::text("4")).unwrap();
        let mut taken = Vec::new();
        queue.take(&mut taken, None);
        assert_eq!(
            taken,
            vec![Frame::text("4")],
            "nothing of the last connection"
        );
    }

    #[test]
    fn senders_on_other_threads_lose_nothing() {
        let (queue, _count, waker) = queue_with_driver();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sender = queue.sender();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        sender.send(Frame::text(format!("{t}.{n}"))).unwrap();
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut taken = Vec::new();
        while all.len() < 4000 {
            queue.take(&mut taken, Some(&waker));
            all.append(&mut taken);
            std::thread::yield_now();
        }
        for thread in threads {
            thread.join().unwrap();
        }
        for t in 0..4 {
            let mine: Vec<_> = all
                .iter()
                .filter_map(|frame| frame.as_text())
                .filter_map(|text| text.strip_prefix(&format!("{t}.")))
                .map(|n| n.parse::<usize>().unwrap())
                .collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "thread {t} in order");
        }
    }
}
