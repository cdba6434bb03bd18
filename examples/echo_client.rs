//! The basic client: a handler that sends a greeting when connected and prints what it receives.
//!
//! ```sh
//! cargo run --example echo_client -- ws://127.0.0.1:4000/echo
//! ```
//!
//! With no URL it starts an embedded echo server. Stop it with Ctrl-C.

use minch::{Client, ClientContext, ConnectRequest, Frame, MinchHandler, Reply, Response};

#[path = "support/echo_server.rs"]
mod echo_server;

struct EchoClient {
    url: String,
    received: usize,
}

impl MinchHandler for EchoClient {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        println!("connected to {}", self.url);
        Reply::Send(Frame::text("hello"))
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.received += 1;
        println!("frame #{}: {frame:?}", self.received);
        Reply::Continue
    }
}

#[actix_rt::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let (url, _server) = echo_server::url_from_args_or_start()?;
    let _client = Client::start(EchoClient { url, received: 0 });
    actix_rt::signal::ctrl_c().await
}
