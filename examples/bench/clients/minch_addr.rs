//! minch's actor client driven from outside, through its address — the main path of a program
//! that owns a client: each message goes out with a fire-and-forget `do_send(SendFrame)`, and
//! `handle_frame` hands each echo to the program over a channel. The program runs the same
//! loop as the stream clients. `AddrConn<BATCH>` (`minch-addr-batch`) gathers the messages fed
//! between two flushes and sends them as one `do_send(SendFrames)`. `AddrConn<SENDER>`
//! (`minch-sender`) sends each with a [`FrameSender`] taken from the address, and
//! `AddrConn<SENDER_BATCH>` (`minch-sender-batch`) those fed between two flushes with one
//! `FrameSender::send_all`.

/// One `do_send(SendFrame)` per message.
pub const DO_SEND: u8 = 0;
/// One `do_send(SendFrames)` per flush.
pub const BATCH: u8 = 1;
/// One `FrameSender::send` per message.
pub const SENDER: u8 = 2;
/// One `FrameSender::send_all` per flush.
pub const SENDER_BATCH: u8 = 3;

use actix::Addr;
use minch::{
    Client, ClientContext, ConnectRequest, DisconnectReason, Frame, FrameSender, GetFrameSender,
    MinchHandler, Reconnect, Reply, Response, SendFrame, SendFrames,
};
use tokio::sync::mpsc;

use super::{EchoConn, Payload};

/// What the handler tells the program: connected, an echo's payload length, or the end.
enum Event {
    Connected,
    Echo(usize),
    Ended(String),
}

struct Forward {
    url: String,
    events: mpsc::UnboundedSender<Event>,
}

impl MinchHandler for Forward {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        let _ = self.events.send(Event::Connected);
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        if matches!(frame, Frame::Text(_) | Frame::Binary(_)) {
            let _ = self.events.send(Event::Echo(frame.payload_len()));
        }
        Reply::Continue
    }

    fn handle_error(&mut self, error: minch::Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        // A do_send refused on the spot: the run is broken, say so.
        let _ = self.events.send(Event::Ended(error.to_string()));
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = self.events.send(Event::Ended(reason.to_string()));
        Reconnect::Stop
    }
}

pub struct AddrConn<const MODE: u8> {
    client: Addr<Client<Forward>>,
    sender: FrameSender,
    events: mpsc::UnboundedReceiver<Event>,
    /// The batch being gathered (`BATCH` and `SENDER_BATCH` only).
    batch: Vec<Frame>,
}

impl<const MODE: u8> AddrConn<MODE> {
    fn on(event: Option<Event>) -> Option<Result<usize, String>> {
        match event {
            Some(Event::Echo(len)) => Some(Ok(len)),
            Some(Event::Ended(reason)) => Some(Err(reason)),
            Some(Event::Connected) => None,
            None => Some(Err("the client stopped".into())),
        }
    }
}

impl<const MODE: u8> EchoConn for AddrConn<MODE> {
    async fn connect(url: &str) -> Result<Self, String> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let client = Client::start(Forward {
            url: url.to_owned(),
            events: events_tx,
        });
        let sender = client
            .send(GetFrameSender)
            .await
            .map_err(|error| error.to_string())?;
        match events.recv().await {
            Some(Event::Connected) => Ok(AddrConn {
                client,
                sender,
                events,
                batch: Vec::new(),
            }),
            Some(Event::Ended(reason)) => Err(reason),
            _ => Err("the client stopped before connecting".into()),
        }
    }

    async fn feed(&mut self, payload: &Payload) -> Result<(), String> {
        let frame = payload.minch_frame();
        match MODE {
            DO_SEND => self.client.do_send(SendFrame(frame)),
            SENDER => return self.sender.send(frame).map_err(|error| error.to_string()),
            _ => self.batch.push(frame),
        }
        Ok(())
    }

    /// Unbatched, every send is written by the client on its own: nothing to flush.
    async fn flush(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        match MODE {
            BATCH => self
                .client
                .do_send(SendFrames(std::mem::take(&mut self.batch))),
            _ => {
                return self
                    .sender
                    .send_all(self.batch.drain(..))
                    .map_err(|error| error.to_string())
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        loop {
            if let Some(result) = Self::on(self.events.recv().await) {
                return result;
            }
        }
    }

    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    if let Some(result) = Self::on(Some(event)) {
                        return Some(result);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => return Self::on(None),
            }
        }
    }

    async fn close(self) {
        let _ = self.client.send(minch::Close).await;
    }
}
