//! A supervised client as a long-running service would write it: headers with a token that is
//! refreshed before every attempt, a welcome message in `handle_connect`, a periodic message
//! through `handle_info`, and its own reconnect policy in `handle_disconnect`.
//!
//! ```sh
//! cargo run --example supervised -- ws://127.0.0.1:4000/echo
//! ```
//!
//! With no URL it starts an embedded echo server. Stop it with Ctrl-C.

use std::time::Duration;

use minch::{
    backoff_duration, BackoffOptions, Client, ClientContext, ConnectOptions, ConnectRequest,
    DisconnectReason, Frame, MinchHandler, Reconnect, Reply, Response,
};

#[path = "support/echo_server.rs"]
mod echo_server;

/// What the client schedules for itself.
enum Tick {
    Produce,
}

struct Producer {
    url: String,
    sequence: u64,
}

impl MinchHandler for Producer {
    type Info = Tick;

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // The equivalent of `Process.send_after(self(), :produce, 5000)`.
        ctx.send_info_after(Duration::from_secs(1), Tick::Produce);
        Ok(())
    }

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        let token = format!("token-{}", self.sequence); // fetch a fresh token here
        let options = ConnectOptions::default().connect_timeout(Duration::from_secs(5));
        (
            self.url.clone(),
            vec![("authorization", format!("Bearer {token}"))],
            options,
        )
            .into()
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        log::info!("connected ({})", response.status);
        Reply::Send(Frame::text("welcome"))
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        log::info!("received {frame:?}");
        Reply::Continue
    }

    fn handle_info(&mut self, tick: Tick, ctx: &mut ClientContext<'_, Self>) -> Reply {
        match tick {
            Tick::Produce => {
                ctx.send_info_after(Duration::from_secs(1), Tick::Produce);
                if !ctx.is_connected() {
                    return Reply::Continue;
                }
                self.sequence += 1;
                Reply::Send(Frame::text(format!("message {}", self.sequence)))
            }
        }
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        // Give up after ten failures in a row; otherwise back off gently.
        if attempt > 10 {
            log::error!("giving up after {attempt} attempts: {reason}");
            return Reconnect::Stop;
        }
        let options = BackoffOptions::new(100, 10_000, 1.5);
        let delay = backoff_duration(attempt, options);
        log::warn!("disconnected: {reason}; reconnecting in {delay:?}");
        Reconnect::After(delay)
    }
}

#[actix_rt::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (url, _server) = echo_server::url_from_args_or_start()?;
    let _client = Client::start(Producer { url, sequence: 0 });
    actix_rt::signal::ctrl_c().await
}
