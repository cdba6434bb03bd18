//! yawc, the compressed scenarios' baseline: `WebSocket::connect(url)` with permessage-deflate
//! set as close to minch's defaults as yawc allows (level 1, client window 15 bits, messages
//! under 64 bytes sent uncompressed; its zlib memory level is flate2's, 8, where minch uses 5),
//! used as a `Sink` and `Stream` of frames. Only text and binary frames are counted; yawc
//! answers pings itself.

use futures_util::{FutureExt, SinkExt, StreamExt};
use yawc::{CompressionLevel, Frame, OpCode, Options, TcpWebSocket, WebSocket};

use super::{EchoConn, Payload};

pub struct YawcConn {
    ws: TcpWebSocket,
}

/// The options the client offers: permessage-deflate with minch's defaults.
pub fn options() -> Options {
    Options::default()
        .with_compression_level(CompressionLevel::fast())
        .with_client_max_window_bits(15)
        .with_compression_threshold(64)
        .with_no_delay()
        .with_max_payload_read(64 << 20)
        .with_max_read_buffer(64 << 20)
}

fn frame_len(frame: Option<Frame>) -> Option<Result<usize, String>> {
    match frame {
        Some(frame) => match frame.opcode() {
            OpCode::Text | OpCode::Binary => Some(Ok(frame.payload().len())),
            OpCode::Close => Some(Err("the server closed".into())),
            _ => None,
        },
        None => Some(Err("the connection ended".into())),
    }
}

impl EchoConn for YawcConn {
    async fn connect(url: &str) -> Result<Self, String> {
        let url = url.parse().map_err(|error| format!("{error}"))?;
        let ws = WebSocket::connect(url)
            .with_options(options())
            .await
            .map_err(|error| error.to_string())?;
        Ok(YawcConn { ws })
    }

    async fn feed(&mut self, payload: &Payload) -> Result<(), String> {
        let frame = match payload {
            Payload::Binary(data) => Frame::binary(data.clone()),
            _ => Frame::text(payload.text().expect("a text payload")),
        };
        self.ws.feed(frame).await.map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|error| error.to_string())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        loop {
            if let Some(result) = frame_len(self.ws.next().await) {
                return result;
            }
        }
    }

    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        loop {
            match self.ws.next().now_or_never() {
                None => return None,
                Some(frame) => {
                    if let Some(result) = frame_len(frame) {
                        return Some(result);
                    }
                }
            }
        }
    }

    async fn close(mut self) {
        let _ = self.ws.close().await;
    }
}
