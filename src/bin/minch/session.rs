//! The handler that [`Client`](minch::Client) runs for the command line: it prints what
//! arrives, sends `--send` on every connection, counts frames, and decides when to reconnect
//! and with which exit code to stop.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use minch::{
    reconnect_delay, BackoffOptions, ClientContext, CloseFrame, ConnectRequest, DisconnectReason,
    Error, Frame, MinchHandler, Reconnect, Reply, Response, StopReason,
};
use tokio::sync::{oneshot, watch};

use crate::{
    exit::Exit,
    output::{shown_url, Printer},
};

/// At most this many `/ping`s wait for their pong: enough for a person typing.
const PINGS_REMEMBERED: usize = 16;

/// What the input task and the timers tell the session.
#[derive(Debug)]
pub enum Control {
    /// `/ping`: sent by the session, so that it can time the pong.
    Ping(Vec<u8>),
    /// `/close`: close with this frame, then exit.
    Close(CloseFrame),
    /// stdin ended and every line read was sent.
    EndOfInput,
    /// `--timeout` elapsed.
    Timeout,
    /// Ctrl-C.
    Interrupt,
}

/// How the session is set up, from the command line.
#[derive(Debug)]
pub struct Settings {
    pub request: ConnectRequest,
    pub sends: Vec<String>,
    pub reconnect: bool,
    pub show_control: bool,
    pub count: Option<u64>,
    pub timeout: Option<Duration>,
}

/// The command line's [`MinchHandler`].
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    printer: Printer,
    /// Data frames received, over all connections.
    received: u64,
    /// Set by whatever ends the session on purpose: the exit code. The first cause wins.
    ending: Option<Exit>,
    /// `/ping` payloads waiting for their pong, and when they were sent.
    pings: VecDeque<(Vec<u8>, Instant)>,
    /// Whether a connection is open (upgraded): what ends is a connection, not an attempt.
    open: bool,
    /// Connection attempts started.
    attempts: u64,
    /// Tells the input task whether frames can be sent now.
    connected: watch::Sender<bool>,
    /// Tells `main` the exit code, at the final stop.
    done: Option<oneshot::Sender<Exit>>,
}

impl Session {
    pub fn new(
        settings: Settings,
        printer: Printer,
        connected: watch::Sender<bool>,
        done: oneshot::Sender<Exit>,
    ) -> Self {
        Session {
            settings,
            printer,
            received: 0,
            ending: None,
            pings: VecDeque::new(),
            open: false,
            attempts: 0,
            connected,
            done: Some(done),
        }
    }

    fn end(&mut self, exit: Exit, why: &str) -> Reply {
        self.ending.get_or_insert(exit);
        Reply::stop(why)
    }

    /// Whether `--count` or `--timeout` still has something to wait for.
    fn waiting_for_frames(&self) -> bool {
        self.settings.timeout.is_some() || self.settings.count.is_some()
    }

    fn pong(&mut self, payload: &[u8]) {
        let at = self.pings.iter().position(|(sent, _)| sent == payload);
        if let Some((_, sent_at)) = at.and_then(|at| self.pings.remove(at)) {
            self.printer
                .status(&format!("pong after {}", millis(sent_at.elapsed())));
        }
    }
}

impl MinchHandler for Session {
    type Info = Control;

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // A handler timer survives reconnects: the limit is for the whole session.
        if let Some(timeout) = self.settings.timeout {
            ctx.send_info_after(timeout, Control::Timeout);
        }
        Ok(())
    }

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.attempts += 1;
        let request = &self.settings.request;
        self.printer.status(&format!(
            "{} to {}",
            if self.attempts == 1 {
                "connecting"
            } else {
                "reconnecting"
            },
            shown_url(&request.url),
        ));
        if !request.headers.is_empty() {
            let names: Vec<&str> = request
                .headers
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            self.printer.detail(&format!(
                "request headers (values hidden): {}",
                names.join(", ")
            ));
        }
        request.clone()
    }

    fn handle_connect(&mut self, response: &Response, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        // By its place among those offered, not its text: some subprotocols carry a token
        // (Kubernetes' `base64url.bearer.authorization.k8s.io.<token>`).
        let offered = &self.settings.request.options.subprotocols;
        let subprotocol = response
            .subprotocol()
            .and_then(|chosen| offered.iter().position(|p| p == chosen))
            .map(|at| format!(", subprotocol #{} of the {} offered", at + 1, offered.len()))
            .unwrap_or_default();
        self.printer.status(&format!(
            "connected to {} (HTTP {}{subprotocol})",
            shown_url(&self.settings.request.url),
            response.status.as_u16()
        ));
        let names: Vec<&str> = response.headers.keys().map(|name| name.as_str()).collect();
        self.printer
            .detail(&format!("response headers: {}", names.join(", ")));
        self.open = true;
        let _ = self.connected.send(true);
        // Replied here rather than sent from outside, so that they go before anything else on
        // each new connection: a subscription is renewed after every reconnect.
        let frames: Vec<Frame> = self
            .settings
            .sends
            .iter()
            .map(|text| {
                self.printer.sent(text);
                Frame::text(text.clone())
            })
            .collect();
        if frames.is_empty() {
            Reply::Continue
        } else {
            Reply::SendAll(frames)
        }
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        match &frame {
            // Frames that arrive after --count was reached (in the same read, or during the
            // close handshake) are not the script's: it asked for that many.
            Frame::Text(_) | Frame::Binary(_)
                if self
                    .settings
                    .count
                    .is_some_and(|count| self.received >= count) => {}
            Frame::Text(_) | Frame::Binary(_) => {
                self.printer.frame(&frame);
                self.received += 1;
                if self.settings.count == Some(self.received) {
                    return self.end(Exit::Done, "--count reached");
                }
            }
            Frame::Pong(payload) => {
                if self.settings.show_control {
                    self.printer.frame(&frame);
                }
                self.pong(payload);
            }
            // Pings are answered and close frames handled by the client: they never get here.
            _ => {}
        }
        Reply::Continue
    }

    fn handle_info(&mut self, control: Control, ctx: &mut ClientContext<'_, Self>) -> Reply {
        match control {
            Control::Ping(payload) => {
                if self.pings.len() == PINGS_REMEMBERED {
                    self.pings.pop_front();
                }
                self.pings.push_back((payload.clone(), Instant::now()));
                self.printer
                    .sent(&format!("ping {}", String::from_utf8_lossy(&payload)));
                Reply::Send(Frame::ping(payload))
            }
            Control::Close(close) => {
                self.ending.get_or_insert(Exit::Done);
                if ctx.is_connected() {
                    Reply::Close(close)
                } else {
                    Reply::stop("closed")
                }
            }
            Control::EndOfInput if self.waiting_for_frames() => {
                self.printer
                    .detail("end of input; waiting for --count or --timeout");
                Reply::Continue
            }
            Control::EndOfInput => self.end(Exit::Done, "end of input"),
            Control::Timeout => {
                let seconds = self.settings.timeout.unwrap_or_default().as_secs_f64();
                self.printer.status(&format!(
                    "--timeout: {seconds} s elapsed ({} data frames received)",
                    self.received
                ));
                self.end(Exit::Timeout, "--timeout")
            }
            Control::Interrupt => self.end(Exit::Interrupted, "interrupted"),
        }
    }

    fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        // A protocol error is reported by handle_disconnect, which follows it.
        if !matches!(error, Error::Protocol(_)) {
            self.printer.error(&error.to_string());
        }
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = self.connected.send(false);
        let ended = if std::mem::take(&mut self.open) {
            "disconnected"
        } else {
            "attempt failed"
        };
        if let DisconnectReason::ServerClosed(close) = reason {
            if self.settings.show_control {
                self.printer.close_frame(close.as_ref());
            }
        }
        if self.ending.is_some() {
            self.printer.status(&format!("{ended}: {reason}"));
            return Reconnect::Stop;
        }
        let mut exit = Exit::of(reason);
        if exit == Exit::Usage {
            self.printer.error(&reason.to_string());
            self.ending = Some(exit);
            return Reconnect::Stop;
        }
        if self.settings.reconnect {
            // As the library's default: at least what a 429 or 503 asked for in Retry-After.
            let delay = reconnect_delay(reason.error(), attempt, BackoffOptions::default());
            self.printer.status(&format!("{ended}: {reason}"));
            self.printer.status(&format!(
                "reconnecting in {} (attempt {attempt})",
                seconds(delay)
            ));
            return Reconnect::After(delay);
        }
        let count_missing = self
            .settings
            .count
            .is_some_and(|count| self.received < count);
        if exit == Exit::Done && count_missing {
            exit = Exit::Failed;
            self.printer.error(&format!(
                "{reason}, after {} of {} frames (--count)",
                self.received,
                self.settings.count.unwrap_or_default()
            ));
        } else if exit == Exit::Done {
            self.printer.status(&format!("{ended}: {reason}"));
        } else {
            self.printer.error(&reason.to_string());
        }
        self.ending = Some(exit);
        Reconnect::Stop
    }

    fn terminate(&mut self, reason: &StopReason, ctx: &mut ClientContext<'_, Self>) {
        let _ = self.connected.send(false);
        let exit = self.ending.unwrap_or(match reason {
            StopReason::Disconnected(reason) => Exit::of(reason),
            StopReason::InitFailed(_) => Exit::Failed,
            _ => Exit::Done,
        });
        if let Some(ended) = ctx.ended() {
            if let DisconnectReason::ServerClosed(close) = ended {
                if self.settings.show_control {
                    self.printer.close_frame(close.as_ref());
                }
            }
            self.printer.status(&format!("closed: {ended}"));
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(exit);
        }
    }
}

/// A delay for people: `200 ms`, `1.8 s`.
pub fn seconds(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{} ms", delay.as_millis())
    } else {
        format!("{:.1} s", delay.as_secs_f64())
    }
}

/// A round trip for people: `0.42 ms`.
pub fn millis(delay: Duration) -> String {
    format!("{:.2} ms", delay.as_secs_f64() * 1000.0)
}
