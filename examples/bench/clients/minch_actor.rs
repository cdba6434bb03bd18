//! minch's actor client, used as its documentation shows: a [`MinchHandler`] started with
//! [`Client::start`]. The driver hands the handler the job as an [`Info`] message and sends the
//! first window of messages with [`SendFrame`] to the client's address; from then on
//! `handle_frame` counts each echo and replies with the next message ([`Reply::Send`]) until the
//! job is done, and reports the result over a channel.

use std::{collections::VecDeque, time::Instant};

use minch::{
    Client, ClientContext, ConnectRequest, DisconnectReason, Frame, Info, MinchHandler, Reconnect,
    Reply, Response, SendFrame,
};
use tokio::sync::mpsc;

use super::{
    FanoutEvent, FanoutParams, FanoutProgress, FanoutResult, Job, JobResult, Payload, Tally,
};
use crate::sys;

enum Event {
    Connected,
    Done(JobResult),
    Failed(String),
}

struct Bench {
    url: String,
    events: mpsc::UnboundedSender<Event>,
    job: Option<Running>,
}

struct Running {
    payload: Payload,
    total: usize,
    sent: usize,
    record_latency: bool,
    sent_at: VecDeque<Instant>,
    tally: Tally,
}

fn frame_for(payload: &Payload) -> Frame {
    payload.minch_frame()
}

impl MinchHandler for Bench {
    type Info = Job;

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        let _ = self.events.send(Event::Connected);
        Reply::Continue
    }

    fn handle_info(&mut self, job: Job, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let first_window = job.window.min(job.total());
        let now = Instant::now();
        self.job = Some(Running {
            payload: job.payload.clone(),
            total: job.total(),
            // The driver sends the first window.
            sent: first_window,
            record_latency: job.record_latency,
            // Send times of the first window are not known here; they fall in the warm-up.
            sent_at: if job.record_latency {
                std::iter::repeat_n(now, first_window).collect()
            } else {
                VecDeque::new()
            },
            tally: Tally::new(&job),
        });
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let Some(job) = &mut self.job else {
            return Reply::Continue;
        };
        job.tally
            .reply(frame.payload_len(), job.sent_at.pop_front());
        let reply = if job.sent < job.total {
            job.sent += 1;
            if job.record_latency {
                job.sent_at.push_back(Instant::now());
            }
            Reply::Send(frame_for(&job.payload))
        } else {
            Reply::Continue
        };
        if job.tally.done() {
            let job = self.job.take().unwrap();
            let _ = self.events.send(Event::Done(job.tally.finish()));
        }
        reply
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = self.events.send(Event::Failed(reason.to_string()));
        Reconnect::Stop
    }
}

pub async fn run_job(url: &str, job: &Job) -> Result<JobResult, String> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = Client::start(Bench {
        url: url.to_owned(),
        events: events_tx,
        job: None,
    });
    match events.recv().await {
        Some(Event::Connected) => {}
        Some(Event::Failed(error)) => return Err(error),
        _ => return Err("the client stopped before connecting".into()),
    }
    client
        .send(Info(job.clone()))
        .await
        .map_err(|error| error.to_string())?;
    for _ in 0..job.window.min(job.total()) {
        client
            .send(SendFrame(frame_for(&job.payload)))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
    }
    let result = match events.recv().await {
        Some(Event::Done(result)) => Ok(result),
        Some(Event::Failed(error)) => Err(error),
        _ => Err("the client stopped before the job was done".into()),
    };
    let _ = client.send(minch::Close).await;
    result
}

/// The fanout's handler: echoes `echoes` messages after connecting, then stays idle.
struct Fanout {
    url: String,
    events: mpsc::UnboundedSender<FanoutEvent>,
    payload: Payload,
    left: usize,
    /// Echoed or failed has been reported.
    reported: bool,
}

impl MinchHandler for Fanout {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.url.as_str().into()
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        let _ = self.events.send(FanoutEvent::Connected);
        if self.left == 0 {
            self.reported = true;
            let _ = self.events.send(FanoutEvent::Echoed);
            return Reply::Continue;
        }
        Reply::Send(self.payload.minch_frame())
    }

    fn handle_frame(&mut self, _frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.left = self.left.saturating_sub(1);
        if self.left > 0 {
            return Reply::Send(self.payload.minch_frame());
        }
        if !self.reported {
            self.reported = true;
            let _ = self.events.send(FanoutEvent::Echoed);
        }
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        _attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        if !self.reported {
            self.reported = true;
            let _ = self.events.send(FanoutEvent::Failed(reason.to_string()));
        }
        Reconnect::Stop
    }
}

pub async fn fanout(url: &str, params: &FanoutParams) -> Result<FanoutResult, String> {
    let base_rss_kib = sys::status_kib("VmRSS");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut progress = FanoutProgress::new(params.conns);
    let mut clients = Vec::with_capacity(params.conns);
    let mut in_flight = 0;
    while !progress.finished() {
        while in_flight < params.concurrency && clients.len() < params.conns {
            clients.push(Client::start(Fanout {
                url: url.to_owned(),
                events: events_tx.clone(),
                payload: params.payload.clone(),
                left: params.echoes,
                reported: false,
            }));
            in_flight += 1;
        }
        match events.recv().await {
            Some(event) => {
                if !matches!(event, FanoutEvent::Connected) {
                    in_flight -= 1;
                }
                progress.on(event);
            }
            None => break,
        }
    }
    let result = progress.result(base_rss_kib).await;
    // The clients stay up until the process exits.
    std::mem::forget(clients);
    result
}
