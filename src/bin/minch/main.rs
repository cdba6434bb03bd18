//! `minch`: an interactive and scriptable WebSocket client, built on minch's actor client.
//!
//! ```sh
//! cargo run --features cli -- ws://127.0.0.1:4000/echo
//! ```
//!
//! The session is a [`MinchHandler`](minch::MinchHandler) run by [`Client`]: it prints what
//! arrives and decides about reconnects; stdin is read on a thread and sent through the
//! client's address. `minch --help` lists the options, the commands and the exit codes.

mod args;
mod commands;
mod exit;
mod input;
mod output;
mod session;

use clap::Parser;
use minch::{Client, Info};
use tokio::sync::{oneshot, watch};

use crate::{
    args::Args,
    exit::Exit,
    output::Printer,
    session::{Control, Session, Settings},
};

fn main() {
    // clap prints usage errors and exits with 2, as `Exit::Usage` does.
    let args = Args::parse();
    std::process::exit(run(args).code());
}

fn run(args: Args) -> Exit {
    let printer = Printer::new(&args);
    let request = match args.request() {
        Ok(request) => request,
        Err(message) => {
            printer.error(&message);
            return Exit::Usage;
        }
    };
    if args.insecure {
        printer.warning(
            "--insecure: the server's TLS certificate is not verified; anyone on the path can \
             read and change the traffic",
        );
    }
    let settings = Settings {
        request,
        sends: args.sends.clone(),
        reconnect: args.reconnect,
        show_control: args.show_control,
        count: args.count,
        timeout: args.timeout,
    };
    actix_rt::System::new().block_on(async move {
        let (connected_tx, connected) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        let client = Client::start(Session::new(
            settings,
            printer.clone(),
            connected_tx,
            done_tx,
        ));
        if !args.no_stdin {
            actix_rt::spawn(input::run(
                client.clone(),
                input::read_stdin(),
                connected,
                printer.clone(),
            ));
        }
        let interrupts = client.clone();
        actix_rt::spawn(async move {
            if actix_rt::signal::ctrl_c().await.is_ok() {
                // Closes the connection politely; a second Ctrl-C does not wait for that.
                interrupts.do_send(Info(Control::Interrupt));
                if actix_rt::signal::ctrl_c().await.is_ok() {
                    std::process::exit(Exit::Interrupted.code());
                }
            }
        });
        done.await.unwrap_or(Exit::Failed)
    })
}
