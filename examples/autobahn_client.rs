//! The Autobahn|Testsuite client harness: runs every case of a fuzzing server against minch's
//! actor client, echoing each text and binary message back.
//!
//! ```sh
//! ../shared/autobahn/setup.sh                                   # once, as root
//! ../shared/autobahn/fuzzingserver.sh start target/autobahn     # all 517 cases, 12.*/13.* too
//! cargo run --release --example autobahn_client                 # ws://127.0.0.1:9001, agent "minch"
//! ../shared/autobahn/fuzzingserver.sh stop target/autobahn
//! python3 ../shared/autobahn/summarize.py target/autobahn
//! ```
//!
//! `.ci/run` does all of this and compares the results with `tests/autobahn/expected.json`.
//! Environment: `AUTOBAHN_URL` (default `ws://127.0.0.1:9001`), `AUTOBAHN_AGENT` (`minch`).

use std::time::{Duration, Instant};

use minch::{
    Client, ClientContext, ConnectRequest, DisconnectReason, Frame, MinchHandler, Reconnect, Reply,
    StopReason,
};
use tokio::sync::oneshot;

/// Connects once, echoes data frames, and reports the first text frame and the end.
struct CaseRunner {
    url: String,
    first_text: Option<String>,
    done: Option<oneshot::Sender<Option<String>>>,
}

impl MinchHandler for CaseRunner {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        match frame {
            Frame::Text(text) => {
                if self.first_text.is_none() {
                    self.first_text = Some(text.to_string());
                }
                Reply::Send(Frame::Text(text))
            }
            Frame::Binary(data) => Reply::Send(Frame::Binary(data)),
            _ => Reply::Continue,
        }
    }

    // Errors are expected in many cases (the suite sends invalid frames on purpose).
    fn handle_error(&mut self, error: minch::Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        log::debug!("case error: {error}");
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        log::debug!("case ended: {reason}");
        Reconnect::Stop
    }

    fn terminate(&mut self, _reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.first_text.take());
        }
    }
}

/// Runs one connection to `url` until the server ends it; returns the first text received.
async fn run(url: String, limit: Duration) -> Option<String> {
    let (done, finished) = oneshot::channel();
    let client = Client::start(CaseRunner {
        url,
        first_text: None,
        done: Some(done),
    });
    match actix_rt::time::timeout(limit, finished).await {
        Ok(result) => result.ok().flatten(),
        Err(_) => {
            eprintln!("  timed out; closing");
            let _ = client.send(minch::Close).await;
            None
        }
    }
}

#[actix_rt::main]
async fn main() {
    env_logger::init();
    let base = std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9001".into());
    let agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "minch".into());

    let count: u32 = run(format!("{base}/getCaseCount"), Duration::from_secs(10))
        .await
        .and_then(|text| text.trim().parse().ok())
        .expect("the fuzzing server did not report a case count: is it running?");
    println!("autobahn: {count} cases");

    let started = Instant::now();
    for case in 1..=count {
        let info = run(
            format!("{base}/getCaseInfo?case={case}"),
            Duration::from_secs(10),
        )
        .await;
        let id = info
            .as_deref()
            .and_then(|json| json.split("\"id\":").nth(1))
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or("?")
            .to_owned();
        let case_started = Instant::now();
        run(
            format!("{base}/runCase?case={case}&agent={agent}"),
            Duration::from_secs(60),
        )
        .await;
        println!(
            "case {case}/{count} ({id}) {:.2}s",
            case_started.elapsed().as_secs_f64()
        );
    }

    run(
        format!("{base}/updateReports?agent={agent}"),
        Duration::from_secs(60),
    )
    .await;
    println!(
        "autobahn: ran {count} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
