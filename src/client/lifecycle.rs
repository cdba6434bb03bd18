//! The client's lifecycle as one state machine with no I/O in it: events in, actions out, time
//! as an argument.
//!
//! [`Lifecycle`] is told what happened — the actor started, an attempt succeeded or failed, a
//! close frame arrived, the socket ended, a timer fired, a callback asked to close or stop — and
//! answers with [`Action`]s for the actor to carry out, in order, through
//! [`next_action`](Lifecycle::next_action). Its one [`Phase`] enum holds the data that exists in
//! each phase: the connection itself lives inside `Open` and `Closing`, so when a connection ends
//! it leaves the machine in an [`Action::Drop`] and nothing of it can act on the next one.
//!
//! The connection type is a parameter so that tests can drive the machine at speed with a
//! stand-in (see the randomized test at the bottom of this file).

use std::{
    collections::VecDeque,
    io, mem,
    time::{Duration, Instant},
};

use crate::{
    error::{SendError, Timeout},
    frame::{CloseCode, CloseFrame},
    handler::{DisconnectReason, Reconnect, StopReason},
    Error, ProtocolError,
};

/// What the machine needs to know of a connection.
pub(crate) trait Link {
    /// Frames received so far: any frame after a keepalive ping proves the peer alive.
    fn frames_in(&self) -> u64;
}

/// The options of one connection that the lifecycle acts on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) close_timeout: Duration,
    /// Ping interval and pong timeout; `None` turns keepalive off.
    pub(crate) keepalive: Option<(Duration, Duration)>,
}

/// What the actor is to do next.
#[derive(Debug)]
pub(crate) enum Action<C> {
    /// Run `init`.
    Init,
    /// Run `connect` and start an attempt.
    Connect,
    /// Abandon the attempt under way.
    CancelConnect,
    /// Run `handle_connect`.
    Connected,
    /// Send a close frame behind any held-back data (the client closes to stop).
    SendClose(CloseFrame),
    /// Answer the server's close frame: ahead of held-back data, which is refused from now on.
    EchoClose(CloseCode),
    /// Send a keepalive ping with this payload.
    Ping([u8; 8]),
    /// RFC 6455 §7.1.7: send a close frame for the violation (unless one was sent already),
    /// flush what can be flushed, drop the connection.
    Fail {
        conn: C,
        error: ProtocolError,
        send_close: bool,
    },
    /// The connection is over: drop it.
    Drop(C),
    /// Run `handle_error`.
    ReportError(Error),
    /// Run `handle_disconnect` and hand its answer to [`Lifecycle::decided`].
    Disconnected {
        reason: DisconnectReason,
        attempt: u32,
    },
    /// End this run of the actor: the supervisor restarts it, and [`Lifecycle::started`] then
    /// waits the delay before the next attempt.
    Restart,
    /// The final stop: run `terminate`, then drop the handler.
    Terminate(StopReason),
}

/// Where the client is in its life.
#[derive(Debug)]
enum Phase<C> {
    /// `init` has not run.
    New,
    /// Restarted; the next attempt starts at `connect_at`.
    Waiting { connect_at: Instant },
    /// An attempt is under way.
    Connecting,
    /// Upgraded: frames flow both ways.
    Open {
        conn: C,
        keepalive: Option<Keepalive>,
    },
    /// A close frame went one way; waiting for the other side, at most until `deadline`.
    Closing {
        conn: C,
        by: Initiator,
        deadline: Instant,
        then: AfterClose,
    },
    /// The connection ended or the attempt failed; `handle_disconnect` is asked next.
    Ended { reason: DisconnectReason },
    /// `handle_disconnect` is deciding.
    Deciding { reason: DisconnectReason },
    /// The actor stops for the supervisor to restart it.
    Restarting { delay: Duration },
    /// The final stop: nothing happens any more.
    Stopped,
}

#[derive(Debug)]
enum Initiator {
    /// The client sent this close frame.
    Client(CloseFrame),
    /// The server sent this close frame, and the client answered it.
    Server(Option<CloseFrame>),
}

#[derive(Debug)]
enum AfterClose {
    Disconnect,
    Stop(StopReason),
}

/// Keepalive of one open connection: a ping every `interval`, whether or not the last one was
/// answered; the peer is dead if nothing at all arrives within `pong_timeout` of a ping.
#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    pong_timeout: Duration,
    next_ping: Instant,
    outstanding: Option<Ping>,
}

#[derive(Debug)]
struct Ping {
    payload: [u8; 8],
    sent_at: Instant,
    deadline: Instant,
    /// Frames received when the ping went out.
    frames_in_then: u64,
}

/// The client's lifecycle. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Lifecycle<C> {
    phase: Phase<C>,
    /// Failures since the last successful upgrade.
    attempt: u32,
    settings: Settings,
    last_rtt: Option<Duration>,
    actions: VecDeque<Action<C>>,
}

impl<C: Link> Lifecycle<C> {
    pub(crate) fn new() -> Self {
        Lifecycle {
            phase: Phase::New,
            attempt: 0,
            settings: Settings {
                close_timeout: Duration::from_secs(5),
                keepalive: None,
            },
            last_rtt: None,
            actions: VecDeque::new(),
        }
    }

    // ---- getters ------------------------------------------------------------------------------

    /// The next thing to do. An ended connection is reported only once the actions queued
    /// before it are done, so that a stop asked for meanwhile (say, by `handle_error`) wins.
    pub(crate) fn next_action(&mut self) -> Option<Action<C>> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if !matches!(self.phase, Phase::Ended { .. }) {
            return None;
        }
        let Phase::Ended { reason } = mem::replace(&mut self.phase, Phase::Stopped) else {
            return None;
        };
        self.attempt = self.attempt.saturating_add(1);
        self.phase = Phase::Deciding {
            reason: reason.clone(),
        };
        Some(Action::Disconnected {
            reason,
            attempt: self.attempt,
        })
    }

    /// Whether [`next_action`](Self::next_action) has something.
    pub(crate) fn has_work(&self) -> bool {
        !self.actions.is_empty() || matches!(self.phase, Phase::Ended { .. })
    }

    /// When [`timeout`](Self::timeout) is to be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Waiting { connect_at } => Some(*connect_at),
            Phase::Open {
                keepalive: Some(keepalive),
                ..
            } => Some(match &keepalive.outstanding {
                Some(ping) => ping.deadline.min(keepalive.next_ping),
                None => keepalive.next_ping,
            }),
            Phase::Closing { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    pub(crate) fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.phase, Phase::Connecting)
    }

    /// The connection, while there is one (open or closing).
    pub(crate) fn conn(&self) -> Option<&C> {
        match &self.phase {
            Phase::Open { conn, .. } | Phase::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The connection, while there is one (open or closing).
    pub(crate) fn conn_mut(&mut self) -> Option<&mut C> {
        match &mut self.phase {
            Phase::Open { conn, .. } | Phase::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The connection, if frames may be sent on it; otherwise why not.
    pub(crate) fn sendable(&mut self) -> Result<&mut C, SendError> {
        match &mut self.phase {
            Phase::Open { conn, .. } => Ok(conn),
            Phase::Closing { .. } => Err(SendError::Closing),
            Phase::Stopped => Err(SendError::Stopped),
            _ => Err(SendError::NotConnected),
        }
    }

    pub(crate) fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::New => "new",
            Phase::Waiting { .. } => "waiting to reconnect",
            Phase::Connecting => "connecting",
            Phase::Open { .. } => "open",
            Phase::Closing { .. } => "closing",
            Phase::Ended { .. } | Phase::Deciding { .. } => "disconnected",
            Phase::Restarting { .. } => "restarting",
            Phase::Stopped => "stopped",
        }
    }

    // ---- events from the actor and the handler ----------------------------------------------

    /// The actor started: for the first time (run `init`), or after a restart (wait the delay).
    pub(crate) fn started(&mut self, now: Instant) {
        match self.phase {
            Phase::New => self.actions.push_back(Action::Init),
            Phase::Restarting { delay } => {
                self.phase = Phase::Waiting {
                    connect_at: deadline_after(now, delay),
                }
            }
            _ => {}
        }
    }

    /// `init` returned.
    pub(crate) fn init_done(&mut self, result: Result<(), String>) {
        if !matches!(self.phase, Phase::New) {
            return;
        }
        match result {
            Ok(()) => self.connect(),
            Err(error) => self.terminate(StopReason::InitFailed(error)),
        }
    }

    /// The upgrade succeeded. A connection that comes too late (the client stopped meanwhile)
    /// is dropped at once.
    pub(crate) fn opened(&mut self, conn: C, settings: Settings, now: Instant) {
        if !matches!(self.phase, Phase::Connecting) {
            self.actions.push_back(Action::Drop(conn));
            return;
        }
        self.attempt = 0;
        self.settings = settings;
        let keepalive = settings
            .keepalive
            .map(|(interval, pong_timeout)| Keepalive {
                interval,
                pong_timeout,
                next_ping: deadline_after(now, interval),
                outstanding: None,
            });
        self.phase = Phase::Open { conn, keepalive };
        self.actions.push_back(Action::Connected);
    }

    /// The attempt failed.
    pub(crate) fn open_failed(&mut self, error: Error) {
        if matches!(self.phase, Phase::Connecting) {
            self.phase = Phase::Ended {
                reason: DisconnectReason::Error(error),
            };
        }
    }

    /// The client wrote a close frame (a [`Reply::Close`](crate::Reply::Close) or a
    /// [`SendFrame`](crate::SendFrame) of one): the close handshake begins.
    pub(crate) fn close_sent(&mut self, close: CloseFrame, now: Instant) {
        self.begin_client_close(close, AfterClose::Disconnect, now);
    }

    /// A callback or a message asked for the final stop. With a connection open, the client
    /// closes it first (code 1000) and stops once the handshake is over.
    pub(crate) fn stop_requested(&mut self, reason: StopReason, now: Instant) {
        match &mut self.phase {
            Phase::Open { .. } => {
                let close = CloseFrame::normal();
                self.actions.push_back(Action::SendClose(close.clone()));
                self.begin_client_close(close, AfterClose::Stop(reason), now);
            }
            Phase::Closing { then, .. } => {
                // The first stop asked for is the one `terminate` hears of.
                if matches!(then, AfterClose::Disconnect) {
                    *then = AfterClose::Stop(reason);
                }
            }
            Phase::Stopped => {}
            _ => self.terminate(reason),
        }
    }

    /// `handle_disconnect` decided.
    pub(crate) fn decided(&mut self, decision: Reconnect) {
        let Phase::Deciding { .. } = self.phase else {
            return;
        };
        let Phase::Deciding { reason } = mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        match decision {
            Reconnect::After(delay) => {
                self.phase = Phase::Restarting { delay };
                self.actions.push_back(Action::Restart);
            }
            Reconnect::Stop => self.terminate(StopReason::Disconnected(reason)),
        }
    }

    // ---- events from the connection ---------------------------------------------------------

    /// A close frame arrived.
    pub(crate) fn close_received(&mut self, close: Option<CloseFrame>, now: Instant) {
        match &self.phase {
            Phase::Open { .. } => {
                // RFC 6455 §5.5.1: echo the status code, 1000 when the server sent none. Then
                // the server closes TCP (§7.1.1), bounded by the close timer.
                let code = close.as_ref().map_or(CloseCode::NORMAL, |close| close.code);
                self.actions.push_back(Action::EchoClose(code));
                let Phase::Open { conn, .. } = mem::replace(&mut self.phase, Phase::Stopped) else {
                    return;
                };
                self.phase = Phase::Closing {
                    conn,
                    by: Initiator::Server(close),
                    deadline: deadline_after(now, self.settings.close_timeout),
                    then: AfterClose::Disconnect,
                };
            }
            // The server answered our close: the handshake is complete. As in Minch, the reply
            // ends the wait; holding on for the server's FIN as well would cost a second with
            // servers that wait for the client to go first (actix-web does).
            Phase::Closing {
                by: Initiator::Client(_),
                ..
            } => self.end_connection(None),
            _ => {}
        }
    }

    /// The server closed TCP. RFC 6455 §7.1.1: after the close handshake the server closes
    /// first; before it, this is an abnormal closure (1006).
    pub(crate) fn eof(&mut self) {
        self.end_connection(Some(Error::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the TCP connection without a close frame (1006)",
        ))));
    }

    /// The connection broke: reset, broken pipe, a failed write.
    pub(crate) fn lost(&mut self, error: Error) {
        self.end_connection(Some(error));
    }

    /// The server broke the protocol: RFC 6455 §7.1.7, fail the connection.
    pub(crate) fn violation(&mut self, error: ProtocolError) {
        let (conn, then, send_close) = match mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Open { conn, .. } => (conn, AfterClose::Disconnect, true),
            Phase::Closing { conn, then, .. } => (conn, then, false),
            other => {
                self.phase = other;
                return;
            }
        };
        self.actions.push_back(Action::Fail {
            conn,
            error: error.clone(),
            send_close,
        });
        let error = Error::Protocol(error);
        self.actions.push_back(Action::ReportError(error.clone()));
        self.after_connection(DisconnectReason::Error(error), then);
    }

    /// A pong arrived. Whether it answers the keepalive ping (and is the client's business,
    /// not the handler's).
    pub(crate) fn pong(&mut self, payload: &[u8], now: Instant) -> bool {
        let Phase::Open {
            keepalive: Some(keepalive),
            ..
        } = &mut self.phase
        else {
            return false;
        };
        match &keepalive.outstanding {
            Some(ping) if ping.payload == payload => {
                self.last_rtt = Some(now.saturating_duration_since(ping.sent_at));
                keepalive.outstanding = None;
                true
            }
            _ => false,
        }
    }

    /// The clock reached [`poll_timeout`](Self::poll_timeout) (or later). `payload` is used if a
    /// keepalive ping is due.
    pub(crate) fn timeout(&mut self, now: Instant, payload: [u8; 8]) {
        match &mut self.phase {
            Phase::Waiting { connect_at } if now >= *connect_at => self.connect(),
            Phase::Open {
                conn,
                keepalive: Some(keepalive),
            } => {
                let frames_in = conn.frames_in();
                if let Some(ping) = &keepalive.outstanding {
                    if frames_in != ping.frames_in_then {
                        // Something arrived since the ping: the peer is alive.
                        keepalive.outstanding = None;
                    } else if now >= ping.deadline {
                        log::debug!("minch: nothing arrived within the pong timeout");
                        self.end_connection(Some(Error::Timeout(Timeout::Pong)));
                        return;
                    }
                }
                if now >= keepalive.next_ping {
                    keepalive.next_ping = deadline_after(now, keepalive.interval);
                    // While a ping is unanswered and nothing arrived, another one would not
                    // tell more: its deadline stands.
                    if keepalive.outstanding.is_none() {
                        keepalive.outstanding = Some(Ping {
                            payload,
                            sent_at: now,
                            deadline: deadline_after(now, keepalive.pong_timeout),
                            frames_in_then: frames_in,
                        });
                        self.actions.push_back(Action::Ping(payload));
                    }
                }
            }
            Phase::Closing { deadline, by, .. } if now >= *deadline => {
                log::debug!("minch: close handshake timed out; dropping the connection");
                let reason = match by {
                    // The server never answered our close frame.
                    Initiator::Client(_) => Some(Error::Timeout(Timeout::Close)),
                    // Both close frames went; only the server's FIN is missing.
                    Initiator::Server(_) => None,
                };
                self.end_connection(reason);
            }
            _ => {}
        }
    }

    // ---- transitions --------------------------------------------------------------------------

    fn connect(&mut self) {
        self.phase = Phase::Connecting;
        self.actions.push_back(Action::Connect);
    }

    fn begin_client_close(&mut self, close: CloseFrame, then: AfterClose, now: Instant) {
        if !matches!(self.phase, Phase::Open { .. }) {
            return;
        }
        let Phase::Open { conn, .. } = mem::replace(&mut self.phase, Phase::Stopped) else {
            return;
        };
        self.phase = Phase::Closing {
            conn,
            by: Initiator::Client(close),
            deadline: deadline_after(now, self.settings.close_timeout),
            then,
        };
    }

    /// The connection is over. `error` is what ended it, or `None` if the close handshake did;
    /// once a close frame went either way, the handshake's outcome is the reason, as long as
    /// the error does not say the handshake itself failed.
    fn end_connection(&mut self, error: Option<Error>) {
        let (conn, reason, then) = match mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Open { conn, .. } => {
                let error = error.unwrap_or_else(|| Error::io(io::ErrorKind::Other.into()));
                (conn, DisconnectReason::Error(error), AfterClose::Disconnect)
            }
            Phase::Closing { conn, by, then, .. } => {
                let reason = match (by, error) {
                    (_, Some(error @ Error::Timeout(Timeout::Close))) => {
                        DisconnectReason::Error(error)
                    }
                    (Initiator::Client(close), _) => DisconnectReason::ClientClosed(close),
                    (Initiator::Server(close), _) => DisconnectReason::ServerClosed(close),
                };
                (conn, reason, then)
            }
            other => {
                self.phase = other;
                return;
            }
        };
        self.actions.push_back(Action::Drop(conn));
        self.after_connection(reason, then);
    }

    fn after_connection(&mut self, reason: DisconnectReason, then: AfterClose) {
        match then {
            AfterClose::Disconnect => self.phase = Phase::Ended { reason },
            AfterClose::Stop(stop) => self.terminate(stop),
        }
    }

    /// The final stop. Whatever the phase held goes first.
    fn terminate(&mut self, reason: StopReason) {
        match mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Open { conn, .. } | Phase::Closing { conn, .. } => {
                self.actions.push_back(Action::Drop(conn))
            }
            Phase::Connecting => self.actions.push_back(Action::CancelConnect),
            _ => {}
        }
        self.actions.push_back(Action::Terminate(reason));
    }
}

/// `now + delay`, or a moment too far off to matter when that does not fit in an `Instant`.
fn deadline_after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
