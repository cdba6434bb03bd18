//! tokio-tungstenite: `connect_async(url)` with its defaults, and the `WebSocketStream` as a
//! sink and stream of `Message`s (tungstenite assembles fragmented messages itself).

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{Message, Utf8Bytes},
    MaybeTlsStream, WebSocketStream,
};

use super::{EchoConn, Payload};

pub struct TtConn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn message_len(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<Result<usize, String>> {
    match message {
        Some(Ok(Message::Text(text))) => Some(Ok(text.len())),
        Some(Ok(Message::Binary(data))) => Some(Ok(data.len())),
        Some(Ok(Message::Close(close))) => Some(Err(format!("the server closed: {close:?}"))),
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(Err(error.to_string())),
        None => Some(Err("the server closed the connection".into())),
    }
}

impl EchoConn for TtConn {
    async fn connect(url: &str) -> Result<Self, String> {
        let (ws, _response) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|error| error.to_string())?;
        Ok(TtConn { ws })
    }

    async fn feed(&mut self, payload: &Payload) -> Result<(), String> {
        let message = match payload {
            Payload::Text(text) => Message::Text(Utf8Bytes::from_static(text)),
            Payload::Binary(data) => Message::Binary(data.clone()),
            Payload::Ticks(ticks) => Message::Text(Utf8Bytes::from_static(ticks.next())),
        };
        self.ws
            .feed(message)
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|error| error.to_string())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        loop {
            if let Some(result) = message_len(self.ws.next().await) {
                return result;
            }
        }
    }

    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        loop {
            match self.ws.next().now_or_never() {
                None => return None,
                Some(message) => {
                    if let Some(result) = message_len(message) {
                        return Some(result);
                    }
                }
            }
        }
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
