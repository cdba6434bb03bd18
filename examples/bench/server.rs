//! The echo server: tokio-tungstenite on a current-thread tokio runtime, in its own process.
//!
//! - Text and binary messages are echoed. Replies are fed into tungstenite's write buffer and
//!   flushed once no further message is ready, so a pipelining client gets batched writes.
//! - The text message [`FRAG_REQUEST`] is answered with a 4 MiB binary message as 65 536
//!   fragments of 64 bytes, written as prepared bytes straight to the socket (after a flush), so
//!   the server spends next to nothing on it and the client's decoder is what is measured.
//! - It accepts with a backlog of 4 096 (the usual `somaxconn`), prints `LISTENING <port>` once
//!   ready, and exits when its standard input closes, i.e. when the bench that started it exits.

use std::{io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

/// The text message that asks for a fragmented message.
pub const FRAG_REQUEST: &str = "frag4m";
/// The size of the fragmented message, and of each of its fragments.
pub const FRAG_MESSAGE_LEN: usize = 4 << 20;
const FRAG_FRAGMENT_LEN: usize = 64;

pub fn run(port: u16) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(port))
}

async fn serve(port: u16) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(4096)?;
    println!("LISTENING {}", listener.local_addr()?.port());
    use std::io::Write;
    std::io::stdout().flush()?;

    // Exit with the parent: it holds our stdin.
    tokio::spawn(async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });

    let fragmented = Bytes::from(fragmented_message());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, fragmented.clone()));
            }
            Err(error) => {
                // EMFILE and friends: wait for connections to go away instead of spinning.
                eprintln!("bench server: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The wire bytes of a 4 MiB binary message in 64-byte fragments, as a server sends them
/// (unmasked): a binary frame without FIN, continuations, and a final continuation with FIN.
fn fragmented_message() -> Vec<u8> {
    let fragments = FRAG_MESSAGE_LEN / FRAG_FRAGMENT_LEN;
    let mut wire = Vec::with_capacity(fragments * (2 + FRAG_FRAGMENT_LEN));
    for index in 0..fragments {
        let opcode = if index == 0 { 0x2 } else { 0x0 };
        let fin = if index == fragments - 1 { 0x80 } else { 0 };
        wire.push(fin | opcode);
        wire.push(FRAG_FRAGMENT_LEN as u8);
        wire.extend((0..FRAG_FRAGMENT_LEN).map(|i| (index + i) as u8));
    }
    wire
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connection(stream: TcpStream, fragmented: Bytes) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(16 << 20));
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            _ => return,
        };
        if on_message(&mut ws, message, &fragmented).await.is_err() {
            return;
        }
        // Echo whatever else is already readable before flushing.
        loop {
            match ws.next().now_or_never() {
                None => break,
                Some(Some(Ok(message))) => {
                    if on_message(&mut ws, message, &fragmented).await.is_err() {
                        return;
                    }
                }
                Some(_) => return,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn on_message(ws: &mut Ws, message: Message, fragmented: &Bytes) -> Result<(), ()> {
    match message {
        Message::Text(text) if text.as_str() == FRAG_REQUEST => {
            ws.flush().await.map_err(drop)?;
            ws.get_mut().write_all(fragmented).await.map_err(drop)
        }
        Message::Text(_) | Message::Binary(_) => ws.feed(message).await.map_err(drop),
        // tungstenite queues pongs and close replies itself; the flush sends them.
        _ => Ok(()),
    }
}
