//! minch's simple API: `minch::connect` → `(Connection, Frames)`, used as a `Sink` and a
//! `Stream` of frames: `feed` queues a frame in the handle, `flush` hands every fed frame to the
//! connection as one message and resolves once they are written, and the next frame of the
//! `Frames` stream is the next echo.

use futures_util::{SinkExt, StreamExt};
use minch::{ConnectOptions, Connection, Frame, Frames};

use super::{EchoConn, Payload};

pub struct SimpleConn {
    connection: Connection,
    frames: Frames,
}

impl SimpleConn {
    /// The payload length of a data frame; `None` for the others (pongs), which are skipped.
    fn data_len(frame: Option<Frame>, frames: &Frames) -> Option<Result<usize, String>> {
        match frame {
            Some(Frame::Text(text)) => Some(Ok(text.len())),
            Some(Frame::Binary(data)) => Some(Ok(data.len())),
            Some(_) => None,
            None => Some(Err(match frames.end() {
                Some(reason) => format!("the connection ended: {reason}"),
                None => "the connection ended".to_owned(),
            })),
        }
    }
}

impl EchoConn for SimpleConn {
    async fn connect(url: &str) -> Result<Self, String> {
        let (connection, frames) = minch::connect(
            url,
            Vec::<(String, String)>::new(),
            ConnectOptions::default(),
        )
        .await
        .map_err(|error| error.to_string())?;
        Ok(SimpleConn { connection, frames })
    }

    async fn feed(&mut self, payload: &Payload) -> Result<(), String> {
        self.connection
            .feed(payload.minch_frame())
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.connection
            .flush()
            .await
            .map_err(|error| error.to_string())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        loop {
            let frame = self.frames.next().await;
            if let Some(result) = Self::data_len(frame, &self.frames) {
                return result;
            }
        }
    }

    fn try_recv(&mut self) -> Option<Result<usize, String>> {
        loop {
            match self.frames.try_receive_frame() {
                Ok(None) => return None,
                Ok(Some(Frame::Text(text))) => return Some(Ok(text.len())),
                Ok(Some(Frame::Binary(data))) => return Some(Ok(data.len())),
                Ok(Some(_)) => continue,
                Err(error) => return Some(Err(error.to_string())),
            }
        }
    }

    async fn close(self) {
        self.connection.close().await;
    }
}
