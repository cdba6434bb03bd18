//! stdin: read on a thread of its own (reading blocks), carried out on the actix thread,
//! where each line becomes a frame sent through the client's address.

use std::{
    io::{self, BufRead},
    time::Duration,
};

use actix::Addr;
use minch::{Client, Frame, GetStats, Info, SendError, SendFrame, Stats};
use tokio::sync::{mpsc, watch};

use crate::{
    commands::{self, Command},
    output::{hex_preview, Printer},
    session::{millis, Control, Session},
};

/// Lines read ahead of the connection: a bounded channel, so that a large file piped in is
/// read at the pace it is sent.
const LINES_AHEAD: usize = 64;

/// A line of stdin, or why it cannot be used.
type Line = Result<String, String>;

/// Starts the thread that reads stdin; the channel ends with stdin.
pub fn read_stdin() -> mpsc::Receiver<Line> {
    let (lines, receiver) = mpsc::channel(LINES_AHEAD);
    std::thread::Builder::new()
        .name("minch-stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut stdin = stdin.lock();
            let mut buffer = Vec::new();
            for number in 1.. {
                buffer.clear();
                let line = match stdin.read_until(b'\n', &mut buffer) {
                    Ok(0) => break,
                    Ok(_) => {
                        if buffer.ends_with(b"\n") {
                            buffer.pop();
                            if buffer.ends_with(b"\r") {
                                buffer.pop();
                            }
                        }
                        // Text frames must be UTF-8; replacing bytes would send something else.
                        String::from_utf8(buffer.clone()).map_err(|_| {
                            format!("line {number} of stdin is not UTF-8; not sent (use /binary)")
                        })
                    }
                    Err(error) => {
                        // Taken as the end of input: the session closes as at end of file.
                        let _ = lines.blocking_send(Err(format!("reading stdin: {error}")));
                        break;
                    }
                };
                if lines.blocking_send(line).is_err() {
                    break;
                }
            }
        })
        .expect("start the stdin thread");
    receiver
}

/// Sends what `lines` asks for through `client`, then tells the session that the input has
/// ended. Returns early once the client has stopped.
pub async fn run(
    client: Addr<Client<Session>>,
    mut lines: mpsc::Receiver<Line>,
    mut connected: watch::Receiver<bool>,
    printer: Printer,
) {
    while let Some(line) = lines.recv().await {
        let command = match line.and_then(|line| commands::parse(&line)) {
            Ok(command) => command,
            Err(message) => {
                printer.error(&message);
                continue;
            }
        };
        let going_on = match command {
            Command::Help => {
                printer.info(commands::HELP);
                true
            }
            Command::Stats => match client.send(GetStats).await {
                Ok(stats) => {
                    printer.info(&describe(&stats));
                    true
                }
                Err(_) => false,
            },
            Command::Text(text) => {
                let what = text.clone();
                send(&client, &mut connected, &printer, Frame::text(text), &what).await
            }
            Command::Binary(data) => {
                let what = format!("[binary {} bytes] {}", data.len(), hex_preview(&data));
                send(
                    &client,
                    &mut connected,
                    &printer,
                    Frame::binary(data),
                    &what,
                )
                .await
            }
            Command::Ping(payload) => {
                connected.wait_for(|up| *up).await.is_ok()
                    && client.send(Info(Control::Ping(payload))).await.is_ok()
            }
            Command::Close(close) => {
                // Nothing more is read: the session ends with this close.
                let _ = client.send(Info(Control::Close(close))).await;
                return;
            }
        };
        if !going_on {
            return;
        }
    }
    // After the --send frames, which go out as soon as the connection is up.
    if connected.wait_for(|up| *up).await.is_ok() {
        let _ = client.send(Info(Control::EndOfInput)).await;
    }
}

/// Sends `frame` once the client is connected, waiting through reconnects. Returns false
/// once the client has stopped.
async fn send(
    client: &Addr<Client<Session>>,
    connected: &mut watch::Receiver<bool>,
    printer: &Printer,
    frame: Frame,
    what: &str,
) -> bool {
    loop {
        if connected.wait_for(|up| *up).await.is_err() {
            return false;
        }
        match client.send(SendFrame(frame.clone())).await {
            Ok(Ok(())) => {
                printer.sent(what);
                return true;
            }
            // Not written, so it is safe to send it again on the next connection (a closing
            // one is about to end). The pause keeps this from spinning while the session
            // learns of the disconnect.
            Ok(Err(SendError::NotConnected | SendError::ConnectionLost | SendError::Closing)) => {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(SendError::Stopped)) | Err(_) => return false,
            Ok(Err(error)) => {
                printer.error(&format!("not sent: {error}"));
                return true;
            }
        }
    }
}

/// `/stats`, for people.
fn describe(stats: &Stats) -> String {
    let connected = match stats.connected_since {
        Some(since) if stats.connected => {
            let elapsed = since.elapsed().unwrap_or_default();
            format!("yes, for {}", crate::session::seconds(elapsed))
        }
        _ if stats.connected => "yes".to_owned(),
        _ => format!("no (attempt {})", stats.attempt),
    };
    let rtt = stats
        .last_ping_rtt
        .map_or_else(|| "none yet".to_owned(), millis);
    format!(
        "connected: {connected}\n\
         reconnects: {}\n\
         received: {} frames, {} bytes\n\
         sent: {} frames, {} bytes\n\
         last keepalive round trip: {rtt}",
        stats.reconnects, stats.frames_in, stats.bytes_in, stats.frames_out, stats.bytes_out
    )
}
