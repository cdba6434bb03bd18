//! Raw awc: the `Framed<BoxedSocket, ws::Codec>` that `ws(url).connect()` hands back, used as
//! a sink of `ws::Message` and a stream of `ws::Frame`. Continuation frames are assembled here,
//! as an awc user has to.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use actix_codec::Framed;
use awc::{
    ws::{Codec, Frame, Message},
    BoxedSocket,
};
use bytes::BytesMut;
use futures_util::{future::poll_fn, FutureExt, SinkExt, Stream};

use super::{EchoConn, Payload};

/// Big enough for the bulk scenario's 1 MiB messages (awc's default is 64 KiB).
const MAX_FRAME_SIZE: usize = 16 << 20;

thread_local! {
    /// One client for all connections. awc's default connector pools at most 100
    /// connections and an upgraded WebSocket keeps its slot, so the 101st would wait:
    /// `limit(0)` lifts that for the fanout.
    static CLIENT: awc::Client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .finish();
}

pub struct AwcConn {
    framed: Framed<BoxedSocket, Codec>,
    /// The fragmented message being assembled.
    message: BytesMut,
}

impl AwcConn {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, String>> {
        // awc does not re-export the continuation item type; actix-ws does (the same type).
        use actix_ws::Item;
        loop {
            let frame = match ready!(Pin::new(&mut self.framed).poll_next(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => return Poll::Ready(Err(error.to_string())),
                None => return Poll::Ready(Err("the server closed the connection".into())),
            };
            match frame {
                Frame::Text(data) | Frame::Binary(data) => return Poll::Ready(Ok(data.len())),
                Frame::Continuation(Item::FirstText(data) | Item::FirstBinary(data)) => {
                    self.message.clear();
                    self.message.extend_from_slice(&data);
                }
                Frame::Continuation(Item::Continue(data)) => self.message.extend_from_slice(&data),
                Frame::Continuation(Item::Last(data)) => {
                    self.message.extend_from_slice(&data);
                    let message = self.message.split().freeze();
                    return Poll::Ready(Ok(message.len()));
                }
                Frame::Close(reason) => {
                    return Poll::Ready(Err(format!("the server closed: {reason:?}")))
                }
                Frame::Ping(_) | Frame::Pong(_) => {}
            }
        }
    }
}

impl EchoConn for AwcConn {
    async fn connect(url: &str) -> Result<Self, String> {
        let request = CLIENT.with(|client| client.ws(url).max_frame_size(MAX_FRAME_SIZE));
        let (_response, framed) = request.connect().await.map_err(|error| error.to_string())?;
        Ok(AwcConn {
            framed,
            message: BytesMut::new(),
        })
    }

    async fn feed(&mut self, payload: &Payload) -> Result<(), String> {
        let message = match payload {
            Payload::Text(text) => Message::Text((*text).into()),
            Payload::Binary(data) => Message::Binary(data.clone()),
            Payload::Ticks(ticks) => Message::Text(ticks.next().into()),
        };
        self.framed
            .feed(message)
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.framed.flush().await.map_err(|error| error.to_string())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        poll_fn(|cx| self.poll_message(cx)).now_or_never()
    }

    async fn close(mut self) {
        let _ = self.framed.send(Message::Close(None)).await;
    }
}
