//! One open WebSocket connection: its transport, the bounded outgoing buffer, the one pending
//! pong, and the senders waiting to learn that their frames were written.
//!
//! Two rules of RFC 6455 hold here by construction, whatever the lifecycle asks: nothing is
//! written after a close frame (§5.5.1), and pongs never pile up beyond the buffer limit
//! (§5.5.3: answering only the latest ping is enough).

use std::{
    cell::{Cell, RefCell, RefMut},
    collections::VecDeque,
    io,
    rc::{Rc, Weak},
    task::{Context, Poll, Waker},
    time::SystemTime,
};

use actix::dev::{MessageResponse, OneshotSender};
use bytes::Bytes;

use crate::{
    client::Link,
    error::SendError,
    frame::{CloseCode, CloseFrame, Frame},
    protocol::{validate_outgoing, CodecError},
    transport::Transport,
};

/// What became of a frame handed to [`Connection::send`].
pub(crate) enum Sent {
    /// In the write buffer; its sender hears when the buffer is flushed.
    Buffered,
    /// Held back because the write buffer is full; its sender hears once it is written.
    HeldBack(Slot),
}

/// Traffic counters of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) frames_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) frames_out: u64,
    pub(crate) bytes_out: u64,
    /// Frames accepted for sending and never written: set when the connection is retired.
    pub(crate) frames_unsent: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Counters) {
        self.frames_in += other.frames_in;
        self.bytes_in += other.bytes_in;
        self.frames_out += other.frames_out;
        self.bytes_out += other.bytes_out;
        self.frames_unsent += other.frames_unsent;
    }
}

/// A connection as the client holds it: the simple API's handles write into it directly, on the
/// same thread, through a [`Published`] weak reference.
pub(crate) type SharedConnection = Rc<RefCell<Connection>>;

/// Where a client shows its current connection to the simple API's handles. Weak: the
/// connection ends when the client drops it, whatever the handles do.
#[derive(Default)]
pub(crate) struct Published(RefCell<Weak<RefCell<Connection>>>);

impl Published {
    pub(crate) fn set(&self, conn: &SharedConnection) {
        *self.0.borrow_mut() = Rc::downgrade(conn);
    }

    pub(crate) fn get(&self) -> Option<SharedConnection> {
        self.0.borrow().upgrade()
    }
}

/// How far the frames given to [`Connection::send`] and [`Connection::send_close`] have got,
/// by number (the first is 1): what a simple API handle waits on. It outlives the connection,
/// so that a handle learns what became of its frames after the connection is gone.
#[derive(Default)]
pub(crate) struct Progress {
    accepted: Cell<u64>,
    /// Frames up to this number have been written to the socket.
    written: Cell<u64>,
    /// Frames from this number on were refused, and why: a close frame went ahead of them,
    /// the client's (`Closing`) or one failing the connection (`ConnectionLost`).
    refused: RefCell<Option<(u64, SendError)>>,
    /// The connection is gone: frames not written by then never will be.
    lost: Cell<bool>,
    /// Tasks waiting for frames to be written or for room in the buffer.
    waiting: RefCell<Vec<Waker>>,
    /// Tasks to wake once the connection is no longer borrowed (see [`ConnMut`]).
    due: RefCell<Vec<Waker>>,
    /// `due` is not empty: checked on every release of the connection, so kept cheap.
    any_due: Cell<bool>,
}

impl Progress {
    /// The number of the last frame accepted.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// Frames accepted and not written (yet, or ever).
    pub(crate) fn unwritten(&self) -> u64 {
        self.accepted.get() - self.written.get()
    }

    /// What became of frame `number`, once known.
    pub(crate) fn outcome(&self, number: u64) -> Option<Result<(), SendError>> {
        if let Some((_, refusal)) = self
            .refused
            .borrow()
            .as_ref()
            .filter(|(from, _)| number >= *from)
        {
            // Refused frames are the last ones accepted: none are after them.
            Some(Err(refusal.clone()))
        } else if self.written.get() >= number {
            Some(Ok(()))
        } else if self.lost.get() {
            Some(Err(SendError::ConnectionLost))
        } else {
            None
        }
    }

    /// Wakes `waker` at the next change: frames written or refused, the connection gone.
    pub(crate) fn wait(&self, waker: &Waker) {
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.iter().any(|waiting| waiting.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }

    /// Every waiting task is to be woken, once the connection's borrow ends.
    fn wake_all(&self) {
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.is_empty() {
            self.due.borrow_mut().append(&mut waiting);
            self.any_due.set(true);
        }
    }

    fn refuse_from(&self, number: u64, refusal: SendError) {
        let mut refused = self.refused.borrow_mut();
        if refused.is_none() {
            *refused = Some((number, refusal));
        }
    }

    /// Wakes the tasks made due. Never while the connection is borrowed: a waker may run code
    /// at once, and that code may use a handle.
    fn wake_due(&self) {
        self.any_due.set(false);
        let due = std::mem::take(&mut *self.due.borrow_mut());
        for waker in due {
            waker.wake();
        }
    }
}

/// The connection borrowed for writing. The tasks its progress made due are woken when the
/// borrow ends, so that a waker that runs code at once never finds the connection borrowed.
pub(crate) struct ConnMut<'a>(Option<RefMut<'a, Connection>>);

/// Borrows `conn` for writing.
pub(crate) fn write(conn: &SharedConnection) -> ConnMut<'_> {
    ConnMut(Some(conn.borrow_mut()))
}

impl<'a> ConnMut<'a> {
    pub(crate) fn from_ref_mut(conn: RefMut<'a, Connection>) -> Self {
        ConnMut(Some(conn))
    }
}

impl std::ops::Deref for ConnMut<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0.as_deref().expect("borrowed until dropped")
    }
}

impl std::ops::DerefMut for ConnMut<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0.as_deref_mut().expect("borrowed until dropped")
    }
}

impl Drop for ConnMut<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.0.take() else { return };
        if !conn.progress.any_due.get() {
            return;
        }
        let progress = conn.progress.clone();
        drop(conn);
        progress.wake_due();
    }
}

pub(crate) struct Connection {
    pub(crate) transport: Transport,
    /// Which of the client's attempts opened it: its driver polls this one only.
    pub(crate) generation: u64,
    pub(crate) connected_at: SystemTime,
    pub(crate) counters: Counters,
    /// A close frame is in the write buffer or the backlog: nothing may follow it.
    close_queued: bool,
    /// A close frame is in the write buffer: not even a pong may follow it. Until then pings
    /// are answered (RFC 6455 §5.5.2), ahead of a close that is held back.
    close_written: bool,
    /// The latest ping not answered yet, while the write buffer is over its limit.
    pending_pong: Option<Bytes>,
    /// The driver's task waker, for writes made where actix does not poll the driver next
    /// (timers, scheduled messages).
    waker: Option<Waker>,
    /// Senders whose frames are in the write buffer.
    deliveries: Waiters<Result<(), SendError>>,
    /// Frames held back while the write buffer is over its limit, in sending order.
    backlog: VecDeque<(Frame, Slot)>,
    /// Bytes put in the write buffer since it was last completely flushed (an upper bound of
    /// what it holds).
    buffered: usize,
    max_buffered: usize,
    progress: Rc<Progress>,
}

impl Connection {
    pub(crate) fn new(transport: Transport, generation: u64, max_buffered: usize) -> Self {
        Connection {
            transport,
            generation,
            connected_at: SystemTime::now(),
            counters: Counters::default(),
            close_queued: false,
            close_written: false,
            pending_pong: None,
            waker: None,
            deliveries: Waiters::default(),
            backlog: VecDeque::new(),
            buffered: 0,
            max_buffered,
            progress: Rc::default(),
        }
    }

    /// How far the frames sent on this connection have got.
    pub(crate) fn progress(&self) -> &Rc<Progress> {
        &self.progress
    }

    /// Whether a close frame has been queued: nothing more may be sent.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_queued
    }

    /// Whether new frames would be held back.
    pub(crate) fn is_full(&self) -> bool {
        !self.backlog.is_empty() || self.buffered >= self.max_buffered
    }

    /// Sends a frame: into the write buffer, or (over the buffer limit) held back in order
    /// until the buffer drains. The driver flushes the buffer at the end of its poll, which
    /// actix runs right after the mailbox: frames sent in one burst go out in one write.
    ///
    /// Close frames go through [`send_close`](Self::send_close).
    pub(crate) fn send(&mut self, frame: Frame) -> Result<Sent, SendError> {
        if self.close_queued {
            return Err(SendError::Closing);
        }
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        self.buffer_or_hold_back(frame)
    }

    /// Sends a close frame after the frames sent before it (held back or not), and after the
    /// pong still owed; nothing goes after it.
    pub(crate) fn send_close(&mut self, close: CloseFrame) -> Result<Sent, SendError> {
        if self.close_queued {
            return Err(SendError::Closing);
        }
        let frame = Frame::Close(Some(close));
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        self.write_owed_pong();
        self.close_queued = true;
        // Whoever waits for room learns that no more frames may come.
        self.progress.wake_all();
        self.buffer_or_hold_back(frame)
    }

    fn buffer_or_hold_back(&mut self, frame: Frame) -> Result<Sent, SendError> {
        let sent = if self.is_full() {
            let slot = Slot::default();
            self.backlog.push_back((frame, slot.clone()));
            Sent::HeldBack(slot)
        } else {
            self.encode(frame)?;
            Sent::Buffered
        };
        self.progress.accepted.set(self.progress.accepted.get() + 1);
        Ok(sent)
    }

    /// Puts a keepalive ping in the write buffer ahead of any held-back data (RFC 6455 §5.4
    /// lets control frames go between the frames of a message).
    pub(crate) fn send_ping(&mut self, payload: Bytes) {
        // Keepalive runs on a quiet connection's clock: a good moment to give memory back.
        self.transport.release_idle();
        if !self.close_queued {
            let _ = self.encode(Frame::Ping(payload));
        }
    }

    /// Answers a ping, ahead of held-back data (RFC 6455 §5.5.3: as soon as practical). Pongs
    /// count against the buffer limit; over it, only the latest ping waits for its answer
    /// (§5.5.3 allows answering just the latest), so a peer that pings without reading cannot
    /// grow the write buffer.
    pub(crate) fn answer_ping(&mut self, payload: Bytes) {
        if self.close_written {
            return;
        }
        if self.pending_pong.is_none() && self.buffered < self.max_buffered {
            let _ = self.encode(Frame::Pong(payload));
        } else {
            self.pending_pong = Some(payload);
        }
    }

    /// Writes the pong still owed, if any.
    fn write_owed_pong(&mut self) {
        if let Some(payload) = self.pending_pong.take() {
            let _ = self.encode(Frame::Pong(payload));
        }
    }

    /// Puts a close frame in the write buffer ahead of any held-back data, which is refused
    /// with `refusal` (RFC 6455 §5.5.1: nothing is sent after a close frame). A pong still
    /// owed goes first.
    pub(crate) fn close_now(&mut self, close: CloseFrame, refusal: SendError) {
        if self.close_queued {
            return;
        }
        self.write_owed_pong();
        let _ = self.encode(Frame::Close(Some(close)));
        self.close_queued = true;
        if !self.backlog.is_empty() {
            let first_held_back = self.progress.accepted.get() + 1 - self.backlog.len() as u64;
            self.progress.refuse_from(first_held_back, refusal.clone());
        }
        // Whoever waits for room learns that no more frames may come.
        self.progress.wake_all();
        for (_, slot) in self.backlog.drain(..) {
            if let Some(sender) = slot.0.borrow_mut().take() {
                let _ = sender.send(Err(refusal.clone()));
            }
        }
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame, unless one went already, ahead
    /// of held-back data; then one flush, as far as the socket takes it without waiting. The
    /// caller drops the connection next.
    pub(crate) fn fail(&mut self, close: Option<CloseFrame>) {
        if let Some(close) = close {
            self.close_now(close, SendError::ConnectionLost);
        }
        let _ = self.poll_flush(&mut Context::from_waker(Waker::noop()));
    }

    /// Answers the server's close frame, echoing its code.
    pub(crate) fn echo_close(&mut self, code: CloseCode) {
        self.close_now(CloseFrame::new(code, ""), SendError::Closing);
    }

    fn encode(&mut self, frame: Frame) -> Result<(), SendError> {
        let payload = frame.payload_len();
        self.close_written |= matches!(frame, Frame::Close(_));
        match self.transport.write(frame) {
            Ok(()) => {
                self.buffered += self.transport.codec_ref().last_encoded_len();
                self.counters.frames_out += 1;
                self.counters.bytes_out += payload as u64;
                Ok(())
            }
            Err(CodecError::Protocol(error)) => Err(SendError::InvalidFrame(error)),
            Err(CodecError::Io(_)) => Err(SendError::ConnectionLost),
        }
    }

    /// Flushes the write buffer, then moves held-back frames into it while there is room. Every
    /// sender learns its frame was written once the buffer holding it is flushed.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // A pong is owed only while no close frame is queued: closing writes it first.
            if self.buffered < self.max_buffered {
                self.write_owed_pong();
            }
            if self.buffered > 0 {
                match self.transport.flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.buffered = 0;
                        self.deliveries.complete_all(Ok(()));
                        // Every frame accepted and not held back was in the buffer.
                        let held_back = self.backlog.len() as u64;
                        let mut written = self.progress.accepted.get() - held_back;
                        // Frames refused by a close that went ahead of them are in neither.
                        if let Some((first_refused, _)) = &*self.progress.refused.borrow() {
                            written = written.min(first_refused - 1);
                        }
                        self.progress.written.set(written);
                        self.progress.wake_all();
                        if self.pending_pong.is_some() {
                            continue;
                        }
                    }
                    Poll::Ready(Err(CodecError::Io(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(Err(CodecError::Protocol(error))) => {
                        return Poll::Ready(Err(io::Error::other(error)))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.backlog.is_empty() {
                return Poll::Ready(Ok(()));
            }
            while self.buffered < self.max_buffered {
                let Some((frame, slot)) = self.backlog.pop_front() else {
                    break;
                };
                if matches!(frame, Frame::Close(_)) {
                    self.write_owed_pong();
                }
                let result = self.encode(frame);
                if result.is_err() {
                    // Numbered frames are written in order: after a gap, none can be vouched for.
                    let number = self.progress.accepted.get() - self.backlog.len() as u64;
                    self.progress.refuse_from(number, SendError::ConnectionLost);
                    self.progress.wake_all();
                }
                let waiting = slot.0.borrow_mut().take();
                match (result, waiting) {
                    (Ok(()), Some(sender)) => self.deliveries.push(sender),
                    (Err(error), Some(sender)) => {
                        let _ = sender.send(Err(error));
                    }
                    (_, None) => {}
                }
            }
        }
    }

    pub(crate) fn remember_waker(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Wakes the driver, for work started outside it (timers, scheduled messages).
    pub(crate) fn wake_driver(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// The response for a sender whose frame is buffered or held back.
    pub(crate) fn deferred(&self, sent: Sent) -> Deferred<Result<(), SendError>> {
        match sent {
            Sent::Buffered => Deferred(DeferredState::Pending(self.deliveries.clone())),
            Sent::HeldBack(slot) => Deferred(DeferredState::Slot(slot)),
        }
    }
}

impl Link for SharedConnection {
    fn frames_in(&self) -> u64 {
        self.borrow().counters.frames_in
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The driver of this connection is to see that it is gone, and end.
        self.wake_driver();
        // Frames not yet written never will be: their senders must hear so.
        self.deliveries.complete_all(Err(SendError::ConnectionLost));
        self.progress.lost.set(true);
        self.progress.wake_all();
        // Dropped, the connection is borrowed no more.
        self.progress.wake_due();
        for (_, slot) in self.backlog.drain(..) {
            if let Some(sender) = slot.0.borrow_mut().take() {
                let _ = sender.send(Err(SendError::ConnectionLost));
            }
        }
    }
}

/// Response channels of messages that finish later (frames written, the client stopped).
pub(crate) struct Waiters<T>(Rc<RefCell<VecDeque<OneshotSender<T>>>>);

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters(Rc::default())
    }
}

impl<T> Clone for Waiters<T> {
    fn clone(&self) -> Self {
        Waiters(self.0.clone())
    }
}

impl<T: Clone> Waiters<T> {
    fn push(&self, sender: OneshotSender<T>) {
        self.0.borrow_mut().push_back(sender);
    }

    pub(crate) fn complete_all(&self, value: T) {
        let mut waiting = self.0.borrow_mut();
        for sender in waiting.drain(..) {
            // The sender may have stopped waiting; that is its choice.
            let _ = sender.send(value.clone());
        }
    }
}

/// The response channel of one held-back frame, filled in when the message is answered.
pub(crate) struct Slot<T = Result<(), SendError>>(Rc<RefCell<Option<OneshotSender<T>>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Rc::default())
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

/// The answer to a message that may only be known later (a frame written, the client
/// stopped). Returned by the client's message handlers; awaiting the request gives the value.
///
/// `pub` only because actix's `Handler::Result` of a public impl must be: the module is private
/// and the type is not re-exported, so users cannot name it (and need not: `addr.send(..)`
/// resolves to the message's own result type), and nothing of it is theirs to use.
pub struct Deferred<T>(DeferredState<T>);

enum DeferredState<T> {
    Ready(T),
    Pending(Waiters<T>),
    Slot(Slot<T>),
}

impl<T> Deferred<T> {
    pub(crate) fn ready(value: T) -> Self {
        Deferred(DeferredState::Ready(value))
    }

    pub(crate) fn pending(waiters: &Waiters<T>) -> Self {
        Deferred(DeferredState::Pending(waiters.clone()))
    }
}

impl Deferred<Result<(), SendError>> {
    /// The failure, if the frame was refused at once.
    pub(crate) fn refused(&self) -> Option<&SendError> {
        match &self.0 {
            DeferredState::Ready(Err(error)) => Some(error),
            _ => None,
        }
    }
}

impl<A, M, T> MessageResponse<A, M> for Deferred<T>
where
    A: actix::Actor,
    M: actix::Message<Result = T>,
    T: 'static,
{
    fn handle(self, _ctx: &mut A::Context, tx: Option<OneshotSender<T>>) {
        let Some(tx) = tx else { return };
        match self.0 {
            DeferredState::Ready(value) => {
                let _ = tx.send(value);
            }
            DeferredState::Pending(waiters) => waiters.0.borrow_mut().push_back(tx),
            DeferredState::Slot(slot) => *slot.0.borrow_mut() = Some(tx),
        }
    }
}

impl<T> std::fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            DeferredState::Ready(_) => f.write_str("Deferred(ready)"),
            DeferredState::Pending(_) | DeferredState::Slot(_) => f.write_str("Deferred(pending)"),
        }
    }
}
