//! minch's blocking API (`minch::blocking`), in the shape it is made for: **one producer thread,
//! one consumer thread** sharing a connection.
//!
//! `blocking::connect` opens the connection (it runs on minch's own background thread); the
//! producer sends with `Connection::send_frames`, as many messages at once as the window has
//! credits for, and blocks until they are written; the consumer takes echoes with
//! `Frames::receive_frame`: it blocks for one, then takes whatever else is ready without
//! waiting (`Duration::ZERO`), and hands the credits for all of them back to the producer at
//! once (a `Mutex` + `Condvar` credit counter), so that at most `window` messages are in flight.
//! rtt is the same with a window of one. Both threads are plain std threads: the bench's actix
//! runtime only awaits the result (a oneshot), so it does not block.
//!
//! The fanout opens its connections from `concurrency` worker threads, each connecting, echoing
//! with `send_frame` / `receive_frame`, and moving on to the next connection; the connections
//! stay open, idle, until the process exits. Its KiB per connection includes what those threads
//! leave behind (cached stacks, malloc arenas), not only the connections.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use minch::{blocking, ConnectOptions, Frame, ReceiveError};
use tokio::sync::{mpsc, oneshot};

use super::{
    FanoutEvent, FanoutParams, FanoutProgress, FanoutResult, Job, JobResult, Payload, Tally,
};
use crate::sys;

/// How long a blocked consumer waits before it looks whether the job was given up.
const POLL: Duration = Duration::from_millis(100);
/// How long a fanout echo may take.
const FANOUT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The fanout's worker threads only connect and echo.
const WORKER_STACK: usize = 256 << 10;

fn frame_for(payload: &Payload) -> Frame {
    payload.minch_frame()
}

fn connect(url: &str) -> Result<(blocking::Connection, blocking::Frames), String> {
    blocking::connect(
        url,
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    )
    .map_err(|error| error.to_string())
}

/// What the producer and the consumer share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when credits come back or the job stops.
    credits_returned: Condvar,
}

struct State {
    /// Messages the producer may still send: `window` minus those in flight.
    credits: usize,
    /// When each message in flight was sent, oldest first (only if the job records latency).
    sent_at: VecDeque<Instant>,
    /// Why the job stopped early: a thread failed, or the bench gave up on it (timeout).
    stopped: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops both threads (the first reason wins).
    fn stop(&self, reason: String) {
        self.lock().stopped.get_or_insert(reason);
        self.credits_returned.notify_all();
    }

    fn stopped(&self) -> Option<String> {
        self.lock().stopped.clone()
    }
}

/// Stops the threads when the bench drops the job's future (its timeout), so they do not run on.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop("the bench gave up on the job".into());
    }
}

pub async fn run_job(url: &str, job: &Job) -> Result<JobResult, String> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            credits: job.window.min(job.total()),
            sent_at: VecDeque::new(),
            stopped: None,
        }),
        credits_returned: Condvar::new(),
    });
    let _stop_on_drop = StopOnDrop(shared.clone());
    let (done_tx, done) = oneshot::channel();
    let (url, job) = (url.to_owned(), job.clone());
    thread::Builder::new()
        .name("bench-consumer".into())
        .spawn(move || {
            let _ = done_tx.send(run_threads(&url, &job, &shared));
        })
        .map_err(|error| format!("could not start the consumer thread: {error}"))?;
    done.await
        .unwrap_or_else(|_| Err("the consumer thread panicked".into()))
}

/// On the consumer thread: connects, starts the producer, consumes, closes.
fn run_threads(url: &str, job: &Job, shared: &Shared) -> Result<JobResult, String> {
    let (connection, frames) = connect(url)?;
    let result = thread::scope(|scope| {
        let producer = thread::Builder::new()
            .name("bench-producer".into())
            .spawn_scoped(scope, || produce(&connection, job, shared))
            .map_err(|error| format!("could not start the producer thread: {error}"))?;
        let result = consume(&frames, job, shared);
        if let Err(error) = &result {
            shared.stop(error.clone());
        }
        if producer.join().is_err() {
            return Err("the producer thread panicked".into());
        }
        result
    });
    connection.close();
    result
}

/// Sends `total` messages, as many at once as there are credits.
fn produce(connection: &blocking::Connection, job: &Job, shared: &Shared) {
    let frame = frame_for(&job.payload);
    let total = job.total();
    let mut sent = 0;
    while sent < total {
        let count = {
            let mut state = shared.lock();
            while state.credits == 0 && state.stopped.is_none() {
                state = shared
                    .credits_returned
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stopped.is_some() {
                return;
            }
            let count = state.credits.min(total - sent);
            state.credits -= count;
            if job.record_latency {
                let now = Instant::now();
                state.sent_at.extend(std::iter::repeat_n(now, count));
            }
            count
        };
        let batch = match &job.payload {
            // A new message each time.
            Payload::Ticks(_) => (0..count).map(|_| frame_for(&job.payload)).collect(),
            _ => std::iter::repeat_n(frame.clone(), count).collect(),
        };
        if let Err(error) = connection.send_frames(batch) {
            shared.stop(format!("send_frames: {error}"));
            return;
        }
        sent += count;
    }
}

/// Receives `total` echoes, handing the credits back in bulk.
fn consume(frames: &blocking::Frames, job: &Job, shared: &Shared) -> Result<JobResult, String> {
    let total = job.total();
    let mut tally = Tally::new(job);
    let mut lens = Vec::with_capacity(job.window.min(total));
    let mut sent_at = Vec::with_capacity(if job.record_latency { job.window } else { 0 });
    while tally.received < total {
        // Block for one echo, then take what else is ready: the credits go back together.
        lens.clear();
        lens.push(next_data(frames, true, shared)?.expect("a blocking receive"));
        while tally.received + lens.len() < total {
            match next_data(frames, false, shared)? {
                Some(len) => lens.push(len),
                None => break,
            }
        }
        {
            let mut state = shared.lock();
            state.credits += lens.len();
            if job.record_latency {
                sent_at.clear();
                let count = lens.len().min(state.sent_at.len());
                sent_at.extend(state.sent_at.drain(..count));
            }
        }
        shared.credits_returned.notify_one();
        for (at, &len) in lens.iter().enumerate() {
            tally.reply(len, sent_at.get(at).copied());
        }
    }
    Ok(tally.finish())
}

/// The payload length of the next data message (pongs are skipped). With `wait`, blocks until
/// one comes, looking every [`POLL`] whether the job was stopped; without, `None` at once if
/// nothing is ready.
fn next_data(
    frames: &blocking::Frames,
    wait: bool,
    shared: &Shared,
) -> Result<Option<usize>, String> {
    loop {
        match frames.receive_frame(if wait { POLL } else { Duration::ZERO }) {
            Ok(Frame::Text(text)) => return Ok(Some(text.len())),
            Ok(Frame::Binary(data)) => return Ok(Some(data.len())),
            Ok(_) => {}
            Err(ReceiveError::Timeout) if !wait => return Ok(None),
            Err(ReceiveError::Timeout) => {
                if let Some(reason) = shared.stopped() {
                    return Err(reason);
                }
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// Opens `conns` connections from `concurrency` worker threads; each worker connects, echoes
/// `echoes` messages, keeps the connection and takes the next one.
pub async fn fanout(url: &str, params: &FanoutParams) -> Result<FanoutResult, String> {
    let base_rss_kib = sys::status_kib("VmRSS");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let next = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::with_capacity(params.conns)));
    let (conns, echoes) = (params.conns, params.echoes);
    let mut progress = FanoutProgress::new(conns);
    for worker in 0..params.concurrency.clamp(1, conns.max(1)) {
        let (events, next, held, url, payload) = (
            events_tx.clone(),
            next.clone(),
            held.clone(),
            url.to_owned(),
            params.payload.clone(),
        );
        thread::Builder::new()
            .name(format!("bench-fanout-{worker}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < conns {
                    let event = match connect_and_echo(&url, echoes, &payload, &events) {
                        Ok(connection) => {
                            held.lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .push(connection);
                            FanoutEvent::Echoed
                        }
                        Err(error) => FanoutEvent::Failed(error),
                    };
                    let _ = events.send(event);
                }
            })
            .map_err(|error| format!("could not start a fanout thread: {error}"))?;
    }
    drop(events_tx);
    while !progress.finished() {
        match events.recv().await {
            Some(event) => progress.on(event),
            None => break,
        }
    }
    let result = progress.result(base_rss_kib).await;
    // The connections stay up until the process exits.
    std::mem::forget(held);
    result
}

fn connect_and_echo(
    url: &str,
    echoes: usize,
    payload: &Payload,
    events: &mpsc::UnboundedSender<FanoutEvent>,
) -> Result<(blocking::Connection, blocking::Frames), String> {
    let (connection, frames) = connect(url)?;
    let _ = events.send(FanoutEvent::Connected);
    for _ in 0..echoes {
        connection
            .send_frame(payload.minch_frame())
            .map_err(|error| error.to_string())?;
        loop {
            match frames.receive_frame(FANOUT_RECEIVE_TIMEOUT) {
                Ok(Frame::Text(_) | Frame::Binary(_)) => break,
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    Ok((connection, frames))
}
