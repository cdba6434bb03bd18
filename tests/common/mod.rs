//! Shared test handlers for the actor-client tests: a [`Recorder`] that forwards every
//! callback into a channel of [`Event`]s, and [`Events`], which waits for them with bounds.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use minch::{
    ClientContext, ConnectRequest, DisconnectReason, Error, Frame, MinchHandler, Reconnect, Reply,
    Response, StopReason,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Reconnect delay used by tests that are not about the default backoff.
pub const FAST: Duration = Duration::from_millis(50);
/// Default bound for one wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// What happened inside a client, in order.
#[derive(Debug, Clone)]
pub enum Event {
    Init,
    /// `connect` ran; `attempt` is `ClientContext::attempt()` at that moment.
    Connect {
        attempt: u32,
    },
    /// `handle_connect` ran.
    Connected {
        status: u16,
        /// Response headers, names lowercase.
        headers: Vec<(String, String)>,
        subprotocol: Option<String>,
        connected: bool,
    },
    Frame(Frame),
    /// `handle_info` ran for a [`Cmd::Note`] or [`Cmd::Reply`].
    Info {
        note: String,
        connected: bool,
    },
    Error(Error),
    Disconnect {
        reason: DisconnectReason,
        attempt: u32,
    },
    Terminate(StopReason),
}

impl Event {
    pub fn is_connect(&self) -> bool {
        matches!(self, Event::Connect { .. })
    }

    pub fn is_connected(&self) -> bool {
        matches!(self, Event::Connected { .. })
    }

    pub fn is_disconnect(&self) -> bool {
        matches!(self, Event::Disconnect { .. })
    }

    pub fn is_terminate(&self) -> bool {
        matches!(self, Event::Terminate(_))
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Event::Frame(frame) => frame.as_text(),
            _ => None,
        }
    }

    pub fn is_text(&self, expected: &str) -> bool {
        self.text() == Some(expected)
    }

    /// The disconnect's reason and attempt.
    pub fn disconnect(&self) -> Option<(&DisconnectReason, u32)> {
        match self {
            Event::Disconnect { reason, attempt } => Some((reason, *attempt)),
            _ => None,
        }
    }

    /// The disconnect's error, if it was one.
    pub fn disconnect_error(&self) -> Option<&Error> {
        self.disconnect().and_then(|(reason, _)| reason.error())
    }
}

/// What `handle_info` is asked to do. Sent as `minch::Info(Cmd::...)`.
#[derive(Debug)]
pub enum Cmd {
    /// Record `Event::Info` and continue.
    Note(String),
    /// Record `Event::Info { note: "reply" }` and return this reply.
    Reply(Reply),
    /// Schedule the inner command with `ClientContext::send_info_after`.
    After(Duration, Box<Cmd>),
    /// Schedule the inner command, cancel it at once, and record
    /// `Event::Info { note: "cancelled: <what cancel returned>" }`.
    AfterThenCancel(Duration, Box<Cmd>),
    /// Call `ClientContext::stop` with this reason and continue.
    Stop(String),
}

/// What `handle_disconnect` decides.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    Reconnect(Duration),
    Stop,
}

type RequestFn = Box<dyn FnMut() -> ConnectRequest>;
type ConnectFn = Box<dyn FnMut(&Response) -> Reply>;
type FrameFn = Box<dyn FnMut(&Frame) -> Reply>;

/// A handler that records every callback and replies as configured.
pub struct Recorder {
    request: RequestFn,
    events: UnboundedSender<Event>,
    on_connect: ConnectFn,
    on_frame: FrameFn,
    policy: Policy,
    init_error: Option<String>,
}

impl Recorder {
    /// Connects to `request` on every attempt, reconnects after [`FAST`], replies `Continue`.
    pub fn new(request: impl Into<ConnectRequest>) -> (Recorder, Events) {
        let request: ConnectRequest = request.into();
        let (tx, rx) = unbounded_channel();
        let recorder = Recorder {
            request: Box::new(move || request.clone()),
            events: tx,
            on_connect: Box::new(|_| Reply::Continue),
            on_frame: Box::new(|_| Reply::Continue),
            policy: Policy::Reconnect(FAST),
            init_error: None,
        };
        (recorder, Events::new(rx))
    }

    pub fn on_connect(mut self, f: impl FnMut(&Response) -> Reply + 'static) -> Self {
        self.on_connect = Box::new(f);
        self
    }

    pub fn on_frame(mut self, f: impl FnMut(&Frame) -> Reply + 'static) -> Self {
        self.on_frame = Box::new(f);
        self
    }

    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn fail_init(mut self, message: &str) -> Self {
        self.init_error = Some(message.to_owned());
        self
    }

    fn record(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

impl MinchHandler for Recorder {
    type Info = Cmd;

    fn init(
        &mut self,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.record(Event::Init);
        match &self.init_error {
            Some(message) => Err(message.clone().into()),
            None => Ok(()),
        }
    }

    fn connect(&mut self, ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.record(Event::Connect {
            attempt: ctx.attempt(),
        });
        (self.request)()
    }

    fn handle_connect(&mut self, response: &Response, ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Event::Connected {
            status: response.status.as_u16(),
            headers: response
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            subprotocol: response.subprotocol().map(str::to_owned),
            connected: ctx.is_connected(),
        });
        (self.on_connect)(response)
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let reply = (self.on_frame)(&frame);
        self.record(Event::Frame(frame));
        reply
    }

    fn handle_info(&mut self, info: Cmd, ctx: &mut ClientContext<'_, Self>) -> Reply {
        match info {
            Cmd::Note(note) => {
                self.record(Event::Info {
                    note,
                    connected: ctx.is_connected(),
                });
                Reply::Continue
            }
            Cmd::Reply(reply) => {
                self.record(Event::Info {
                    note: "reply".into(),
                    connected: ctx.is_connected(),
                });
                reply
            }
            Cmd::After(delay, cmd) => {
                ctx.send_info_after(delay, *cmd);
                Reply::Continue
            }
            Cmd::Stop(reason) => {
                ctx.stop(reason);
                Reply::Continue
            }
            Cmd::AfterThenCancel(delay, cmd) => {
                let handle = ctx.send_info_after(delay, *cmd);
                let cancelled = ctx.cancel(handle);
                self.record(Event::Info {
                    note: format!("cancelled: {cancelled}"),
                    connected: ctx.is_connected(),
                });
                Reply::Continue
            }
        }
    }

    fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        self.record(Event::Error(error));
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.record(Event::Disconnect {
            reason: reason.clone(),
            attempt,
        });
        match self.policy {
            Policy::Reconnect(delay) => Reconnect::After(delay),
            Policy::Stop => Reconnect::Stop,
        }
    }

    fn terminate(&mut self, reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        self.record(Event::Terminate(reason.clone()));
    }
}

/// A handler that keeps every default except `connect`/`handle_frame`, recording connect
/// calls, frames and terminate.
pub struct Defaults {
    request: ConnectRequest,
    events: UnboundedSender<Event>,
}

impl Defaults {
    pub fn new(request: impl Into<ConnectRequest>) -> (Defaults, Events) {
        let (tx, rx) = unbounded_channel();
        (
            Defaults {
                request: request.into(),
                events: tx,
            },
            Events::new(rx),
        )
    }
}

impl MinchHandler for Defaults {
    type Info = ();

    fn connect(&mut self, ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        let _ = self.events.send(Event::Connect {
            attempt: ctx.attempt(),
        });
        self.request.clone()
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.events.send(Event::Frame(frame));
        Reply::Continue
    }

    fn terminate(&mut self, reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        let _ = self.events.send(Event::Terminate(reason.clone()));
    }
}

/// The receiving end of a handler's events, with bounded waits. Every event taken from the
/// channel is kept in `seen`, so a test can check the history.
pub struct Events {
    rx: UnboundedReceiver<Event>,
    pub seen: Vec<Event>,
}

impl Events {
    fn new(rx: UnboundedReceiver<Event>) -> Self {
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next event, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        match actix_rt::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(event)) => {
                self.seen.push(event.clone());
                Some(event)
            }
            _ => None,
        }
    }

    /// Takes the events that are already in the channel, without waiting.
    pub fn drain_now(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.seen.push(event);
        }
    }

    /// Waits (at most `timeout`) for the next event matching `pred`, skipping others.
    /// Panics with the history on timeout.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(event) if pred(&event) => return event,
                Some(_) => {}
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; events so far:\n{}",
                    self.history()
                ),
            }
        }
    }

    /// Asserts that no event matching `pred` arrives within `window`.
    pub async fn assert_none(
        &mut self,
        what: &str,
        window: Duration,
        pred: impl Fn(&Event) -> bool,
    ) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left).await {
                Some(event) if pred(&event) => {
                    panic!(
                        "unexpected {what}: {event:?}; events so far:\n{}",
                        self.history()
                    )
                }
                Some(_) => {}
                None => return,
            }
        }
    }

    /// How many events seen so far match `pred`.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|event| pred(event)).count()
    }

    /// The events seen so far, one a line, large frames abbreviated.
    pub fn history(&self) -> String {
        let mut out = String::new();
        for event in &self.seen {
            match event {
                Event::Frame(Frame::Binary(data)) if data.len() > 64 => {
                    let _ = writeln!(out, "  Frame(Binary({} bytes))", data.len());
                }
                Event::Frame(Frame::Text(text)) if text.len() > 200 => {
                    let _ = writeln!(out, "  Frame(Text({} bytes))", text.len());
                }
                other => {
                    let _ = writeln!(out, "  {other:?}");
                }
            }
        }
        out
    }
}

/// A 127.0.0.1 port that nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}
