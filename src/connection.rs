//! One open WebSocket connection: its transport, the close handshake's progress, and the
//! senders waiting to learn that their frames were written.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use actix::dev::{MessageResponse, OneshotSender};

use crate::{
    error::SendError,
    frame::{CloseFrame, Frame},
    protocol::{validate_outgoing, CodecError},
    transport::Transport,
};

/// Where the close handshake stands (RFC 6455 §7).
#[derive(Debug)]
pub(crate) enum Closing {
    /// No close frame sent or received.
    Open,
    /// We sent a close frame; waiting for the server's reply, then for it to drop TCP.
    Sent { reply_received: bool },
    /// The server sent a close frame and we echoed it; waiting for it to drop TCP.
    Received(Option<CloseFrame>),
}

/// The result of writing a frame: already handed to the socket, or still in the buffer.
pub(crate) enum Written {
    Flushed,
    Buffered,
}

pub(crate) struct Connection {
    pub(crate) transport: Transport,
    pub(crate) closing: Closing,
    /// The driver's task waker, so that writes made outside the driver can flush at once and
    /// still be finished by the driver if the socket is full.
    waker: Option<Waker>,
    /// Senders whose frames are in the write buffer, oldest first.
    deliveries: Waiters<Result<(), SendError>>,
    /// A write that failed outside the driver; the driver reports it.
    pub(crate) broken: Option<io::Error>,
    unflushed: bool,
}

impl Connection {
    pub(crate) fn new(transport: Transport) -> Self {
        Connection {
            transport,
            closing: Closing::Open,
            waker: None,
            deliveries: Waiters::default(),
            broken: None,
            unflushed: false,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.closing, Closing::Open)
    }

    /// Validates and encodes a frame into the write buffer.
    pub(crate) fn buffer(&mut self, frame: Frame) -> Result<(), SendError> {
        validate_outgoing(&frame).map_err(SendError::InvalidFrame)?;
        match Pin::new(&mut self.transport).write(frame) {
            Ok(()) => {
                self.unflushed = true;
                Ok(())
            }
            Err(CodecError::Protocol(error)) => Err(SendError::InvalidFrame(error)),
            Err(CodecError::Io(_)) => Err(SendError::ConnectionLost),
        }
    }

    /// Encodes a frame and tries to hand it to the socket right away.
    pub(crate) fn send(&mut self, frame: Frame) -> Result<Written, SendError> {
        self.buffer(frame)?;
        let Some(waker) = self.waker.clone() else {
            // The driver has not run yet; its first poll flushes.
            return Ok(Written::Buffered);
        };
        match self.poll_flush(&mut Context::from_waker(&waker)) {
            Poll::Ready(Ok(())) => Ok(Written::Flushed),
            Poll::Pending => Ok(Written::Buffered),
            Poll::Ready(Err(error)) => {
                self.broken = Some(error);
                waker.wake();
                Ok(Written::Buffered)
            }
        }
    }

    /// Flushes the write buffer; once it is empty every waiting sender learns its frame was
    /// written.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.unflushed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.transport).flush::<Frame>(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                self.deliveries.complete_all(Ok(()));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(CodecError::Io(error))) => Poll::Ready(Err(error)),
            Poll::Ready(Err(CodecError::Protocol(error))) => {
                Poll::Ready(Err(io::Error::other(error)))
            }
            Poll::Pending => Poll::Pending,
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

    /// A response for a sender whose frame is still in the buffer.
    pub(crate) fn pending_delivery(&self) -> Deferred<Result<(), SendError>> {
        Deferred::pending(&self.deliveries)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Frames still in the buffer were not written: their senders must hear so.
        self.deliveries.complete_all(Err(SendError::ConnectionLost));
    }
}

/// Response channels of messages that finish later (a frame written, the client stopped).
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
    pub(crate) fn complete_all(&self, value: T) {
        let mut waiting = self.0.borrow_mut();
        for sender in waiting.drain(..) {
            // The sender may have stopped waiting; that is its choice.
            let _ = sender.send(value.clone());
        }
    }
}

/// The answer to a message that may only be known later (a frame written, the client
/// stopped). Returned by the client's message handlers; awaiting the request gives the value.
pub struct Deferred<T>(DeferredState<T>);

enum DeferredState<T> {
    Ready(T),
    Pending(Waiters<T>),
}

impl<T> Deferred<T> {
    pub(crate) fn ready(value: T) -> Self {
        Deferred(DeferredState::Ready(value))
    }

    pub(crate) fn pending(waiters: &Waiters<T>) -> Self {
        Deferred(DeferredState::Pending(waiters.clone()))
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
        }
    }
}

impl<T> std::fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            DeferredState::Ready(_) => f.write_str("Deferred(ready)"),
            DeferredState::Pending(_) => f.write_str("Deferred(pending)"),
        }
    }
}
