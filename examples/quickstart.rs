//! Quickstart: a minch client talking to an echo server, through a server restart.
//!
//! ```sh
//! cargo run --example quickstart                       # offline: starts its own echo server
//! cargo run --example quickstart -- wss://echo.example  # or talk to a server of your choice
//! ```
//!
//! With no URL it starts an echo server in this process, sends a few frames, restarts the
//! server so that the client reconnects (watch the backoff in the log), sends again and exits.

use std::time::Duration;

use minch::{
    Client, ClientContext, ConnectRequest, DisconnectReason, Frame, MinchHandler, Reconnect, Reply,
    Response, SendFrame,
};
use tokio::sync::mpsc;

#[path = "support/echo_server.rs"]
mod echo_server;

/// Tells `main` what happened, so it can wait for it.
#[derive(Debug)]
enum Event {
    Connected,
    Echo(String),
    Disconnected(String),
}

struct Quickstart {
    url: String,
    events: mpsc::UnboundedSender<Event>,
}

impl MinchHandler for Quickstart {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(&mut self, _: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        log::info!("connected to {}", self.url);
        let _ = self.events.send(Event::Connected);
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        if let Some(text) = frame.as_text() {
            log::info!("received {text:?}");
            let _ = self.events.send(Event::Echo(text.to_owned()));
        }
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let delay = minch::backoff_duration(attempt, minch::BackoffOptions::default());
        log::warn!("disconnected ({reason}); attempt {attempt}, reconnecting in {delay:?}");
        let _ = self.events.send(Event::Disconnected(reason.to_string()));
        Reconnect::After(delay)
    }
}

async fn expect(events: &mut mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
    match actix_rt::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(event)) => event,
        _ => panic!("timed out waiting for {what}"),
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let (events_tx, mut events) = mpsc::unbounded_channel();

    if let Some(url) = std::env::args().nth(1) {
        // Talk to the given server: send one frame, print the answer, close.
        let client = Client::start(Quickstart {
            url,
            events: events_tx,
        });
        expect(&mut events, "the connection").await;
        client
            .send(SendFrame(Frame::text("hello from minch")))
            .await??;
        println!("{:?}", expect(&mut events, "an answer").await);
        client.send(minch::Close).await?;
        return Ok(());
    }

    let (address, server_handle) = echo_server::start(([127, 0, 0, 1], 0).into())?;

    let url = format!("ws://{address}/echo");
    let client = Client::start(Quickstart {
        url,
        events: events_tx,
    });
    let Event::Connected = expect(&mut events, "the connection").await else {
        panic!("expected to connect first");
    };
    for n in 1..=3 {
        client
            .send(SendFrame(Frame::text(format!("hello #{n}"))))
            .await??;
        if let Event::Echo(text) = expect(&mut events, "an echo").await {
            println!("echo: {text}");
        }
    }

    log::info!("restarting the server: the client will reconnect with backoff");
    server_handle.stop(false).await;
    loop {
        if let Event::Disconnected(reason) = expect(&mut events, "the disconnect").await {
            println!("disconnected: {reason}");
            break;
        }
    }
    // Let a couple of attempts fail so the backoff shows in the log, then come back.
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    let (_, server_handle) = echo_server::start(address)?;
    while !matches!(expect(&mut events, "the reconnect").await, Event::Connected) {}

    // The same address works after the reconnect.
    client.send(SendFrame(Frame::text("hello again"))).await??;
    println!("echo: {:?}", expect(&mut events, "an echo").await);

    client.send(minch::Close).await?;
    server_handle.stop(true).await;
    println!("quickstart: done");
    Ok(())
}
