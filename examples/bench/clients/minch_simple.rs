//! minch's simple API: `minch::connect` → `(Connection, Frames)`; `send_frame` resolves once
//! the frame is written, `receive_frame` waits for the next one.

use std::time::Duration;

use minch::{ConnectOptions, Connection, Frame, Frames};

use super::{EchoConn, Payload};

pub struct SimpleConn {
    connection: Connection,
    frames: Frames,
}

const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let frame = match payload {
            Payload::Text(text) => Frame::text(*text),
            Payload::Binary(data) => Frame::Binary(data.clone()),
        };
        self.connection
            .send_frame(frame)
            .await
            .map_err(|error| error.to_string())
    }

    async fn flush(&mut self) -> Result<(), String> {
        // send_frame has written the frame already.
        Ok(())
    }

    async fn recv(&mut self) -> Result<usize, String> {
        loop {
            match self.frames.receive_frame(RECEIVE_TIMEOUT).await {
                Ok(Frame::Text(text)) => return Ok(text.len()),
                Ok(Frame::Binary(data)) => return Ok(data.len()),
                Ok(_) => continue,
                Err(error) => return Err(error.to_string()),
            }
        }
    }

    async fn close(self) {
        self.connection.close().await;
    }
}
