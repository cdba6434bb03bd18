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
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    error::{SendError, Timeout},
    frame::{CloseCode, CloseFrame},
    handler::{DisconnectReason, Reconnect, StopReason},
    Error, ProtocolError,
};

/// Why `init` failed: the handler's error, kept whole for [`StopReason::InitFailed`].
pub(crate) type InitError = Arc<dyn std::error::Error + Send + Sync>;

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
    /// The final stop: run `terminate`, then drop the handler. `ended` is how the connection
    /// the stop closed ended, if it closed one.
    Terminate {
        reason: StopReason,
        ended: Option<DisconnectReason>,
    },
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
    deadline: Instant,
    /// Frames received when the ping went out.
    frames_in_then: u64,
    /// Frames the program had taken from the receive queue then (or when the deadline was
    /// last moved).
    taken_then: u64,
}

/// What the client knows of its receive queue (the simple and blocking APIs) when its timer
/// fires.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reading {
    /// The queue is full: the client is not reading the socket.
    pub(crate) paused: bool,
    /// Frames the program has taken from the queue so far.
    pub(crate) taken: u64,
}

/// How many unanswered keepalive pings, before the latest, are remembered.
const EARLIER_PINGS: usize = 4;

/// The client's lifecycle. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Lifecycle<C> {
    phase: Phase<C>,
    /// Failures since the last successful upgrade.
    attempt: u32,
    settings: Settings,
    /// The connection's latest keepalive ping: its pong is the client's business, whenever it
    /// comes (after other frames, or once the connection is closing).
    last_ping: Option<([u8; 8], Instant)>,
    /// Earlier keepalive pings of the connection left unanswered when a newer one went out: a
    /// late pong to one of them is the client's too (RFC 6455 §5.5.3 lets a peer answer only
    /// the latest ping, or all of them, late).
    earlier_pings: [Option<[u8; 8]>; EARLIER_PINGS],
    last_rtt: Option<Duration>,
    actions: VecDeque<Action<C>>,
    /// An event may have moved [`poll_timeout`](Self::poll_timeout) earlier. (A pong only moves
    /// it later; a timer that fires early finds nothing due and is set again.)
    timer_moved: bool,
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
            last_ping: None,
            earlier_pings: [None; EARLIER_PINGS],
            last_rtt: None,
            actions: VecDeque::new(),
            timer_moved: false,
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

    /// Whether [`next_action`](Self::next_action) has something, or the timer is to be set
    /// again.
    pub(crate) fn has_work(&self) -> bool {
        self.timer_moved || !self.actions.is_empty() || matches!(self.phase, Phase::Ended { .. })
    }

    /// Whether an event may have moved the timer since the last call.
    pub(crate) fn take_timer_moved(&mut self) -> bool {
        std::mem::take(&mut self.timer_moved)
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

    /// The server's close frame has arrived: whatever it sends after it is to be ignored
    /// (RFC 6455 §5.5.1).
    pub(crate) fn server_closed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                by: Initiator::Server(_),
                ..
            }
        )
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
    #[cfg(test)]
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
        self.timer_moved = true;
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
    pub(crate) fn init_done(&mut self, result: Result<(), InitError>) {
        self.timer_moved = true;
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
        self.timer_moved = true;
        if !matches!(self.phase, Phase::Connecting) {
            self.actions.push_back(Action::Drop(conn));
            return;
        }
        self.attempt = 0;
        self.settings = settings;
        self.last_ping = None;
        self.earlier_pings = [None; EARLIER_PINGS];
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
        self.timer_moved = true;
        if matches!(self.phase, Phase::Connecting) {
            self.phase = Phase::Ended {
                reason: DisconnectReason::Error(error),
            };
        }
    }

    /// The client wrote a close frame (a [`Reply::Close`](crate::Reply::Close) or a
    /// [`SendFrame`](crate::SendFrame) of one): the close handshake begins.
    pub(crate) fn close_sent(&mut self, close: CloseFrame, now: Instant) {
        self.timer_moved = true;
        self.begin_client_close(close, AfterClose::Disconnect, now);
    }

    /// A callback or a message asked for the final stop. With a connection open, the client
    /// closes it first (code 1000) and stops once the handshake is over.
    pub(crate) fn stop_requested(&mut self, reason: StopReason, now: Instant) {
        self.timer_moved = true;
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
        self.timer_moved = true;
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
        self.timer_moved = true;
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
        self.timer_moved = true;
        self.end_connection(Some(Error::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the TCP connection without a close frame (1006)",
        ))));
    }

    /// The connection broke: reset, broken pipe, a failed write.
    pub(crate) fn lost(&mut self, error: Error) {
        self.timer_moved = true;
        self.end_connection(Some(error));
    }

    /// The server broke the protocol: RFC 6455 §7.1.7, fail the connection.
    pub(crate) fn violation(&mut self, error: ProtocolError) {
        self.timer_moved = true;
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
        match self.last_ping {
            Some((ping, sent_at)) if ping == payload && self.conn().is_some() => {
                self.last_rtt = Some(now.saturating_duration_since(sent_at));
                self.last_ping = None;
                if let Phase::Open {
                    keepalive: Some(keepalive),
                    ..
                } = &mut self.phase
                {
                    keepalive.outstanding = None;
                }
                true
            }
            _ if self.conn().is_some() => {
                match self
                    .earlier_pings
                    .iter_mut()
                    .find(|earlier| earlier.is_some_and(|ping| ping == payload))
                {
                    // Late: no round trip to learn from it, but no frame for the program
                    // either.
                    Some(earlier) => {
                        *earlier = None;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    /// The clock reached [`poll_timeout`](Self::poll_timeout) (or later). `payload` is used if a
    /// keepalive ping is due. While `reading` is paused (the receive queue is full) no pong can
    /// be read: the pong timeout then measures the program, which must take a frame within it.
    pub(crate) fn timeout(&mut self, now: Instant, payload: [u8; 8], reading: Reading) {
        self.timer_moved = true;
        match &mut self.phase {
            Phase::Waiting { connect_at } if now >= *connect_at => self.connect(),
            Phase::Open {
                conn,
                keepalive: Some(keepalive),
            } => {
                let frames_in = conn.frames_in();
                if let Some(ping) = &mut keepalive.outstanding {
                    if frames_in != ping.frames_in_then {
                        // Something arrived since the ping: the peer is alive.
                        keepalive.outstanding = None;
                    } else if now >= ping.deadline && reading.taken != ping.taken_then {
                        // The program is taking frames from a queue that was (or is) too full
                        // to read behind: reading resumes once it has taken enough, and the
                        // pong is read then. Give it another pong timeout.
                        ping.deadline = deadline_after(now, keepalive.pong_timeout);
                        ping.taken_then = reading.taken;
                    } else if now >= ping.deadline {
                        let kind = if reading.paused {
                            log::debug!(
                                "minch: the receive queue stayed full past the pong timeout"
                            );
                            Timeout::ReceiveQueueFull
                        } else {
                            log::debug!("minch: nothing arrived within the pong timeout");
                            Timeout::Pong
                        };
                        self.end_connection(Some(Error::Timeout(kind)));
                        return;
                    }
                }
                if now >= keepalive.next_ping {
                    keepalive.next_ping = deadline_after(now, keepalive.interval);
                    // While a ping is unanswered and nothing arrived, another one would not
                    // tell more: its deadline stands.
                    if keepalive.outstanding.is_none() {
                        keepalive.outstanding = Some(Ping {
                            deadline: deadline_after(now, keepalive.pong_timeout),
                            frames_in_then: frames_in,
                            taken_then: reading.taken,
                        });
                        if let Some((unanswered, _)) = self.last_ping.replace((payload, now)) {
                            self.earlier_pings.rotate_right(1);
                            self.earlier_pings[0] = Some(unanswered);
                        }
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
            AfterClose::Stop(stop) => self.terminate_after(stop, Some(reason)),
        }
    }

    /// The final stop. Whatever the phase held goes first.
    fn terminate(&mut self, reason: StopReason) {
        self.terminate_after(reason, None);
    }

    fn terminate_after(&mut self, reason: StopReason, ended: Option<DisconnectReason>) {
        match mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Open { conn, .. } | Phase::Closing { conn, .. } => {
                self.actions.push_back(Action::Drop(conn))
            }
            Phase::Connecting => self.actions.push_back(Action::CancelConnect),
            _ => {}
        }
        self.actions.push_back(Action::Terminate { reason, ended });
    }
}

/// `now + delay`, or a moment too far off to matter when that does not fit in an `Instant`.
pub(crate) fn deadline_after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    //! The lifecycle driven at speed: a randomized test (every event in every phase, with a
    //! handler answering at random) checks the invariants of the client module's docs, and a few
    //! fixed scenarios pin down defects of the first release.

    use proptest::prelude::*;

    use super::*;

    struct FakeConn {
        id: u32,
        frames_in: u64,
    }

    impl Link for FakeConn {
        fn frames_in(&self) -> u64 {
            self.frames_in
        }
    }

    const CLOSE_TIMEOUT: Duration = Duration::from_millis(50);

    /// Something that can happen to a client.
    #[derive(Debug, Clone)]
    enum Step {
        /// Time passes; the lifecycle's timer fires on the way whenever it is due.
        Advance(u16),
        /// The attempt under way succeeds (keepalive on or off) or fails.
        Open {
            keepalive: bool,
        },
        OpenFails,
        CloseReceived(Option<u16>),
        Eof,
        Lost,
        Violation,
        /// Any frame arrives.
        FrameIn,
        /// The pong to the outstanding keepalive ping arrives.
        Pong,
        /// A callback replies `Reply::Close`, or a `SendFrame(Close)` arrives.
        ClientClose,
        /// A callback or a `Close` message asks for the final stop.
        Stop,
        /// The receive queue fills (the client stops reading) or drains.
        ReadingPaused(bool),
        /// The program takes a frame from the receive queue.
        Taken,
    }

    /// What a callback answers.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Continue,
        Close,
        Stop,
    }

    #[derive(Debug, Clone)]
    struct Scenario {
        init_fails: bool,
        steps: Vec<Step>,
        /// `handle_connect` and `handle_error` answers, in turn.
        answers: Vec<Answer>,
        /// `handle_disconnect` answers, in turn: `Some(ms)` reconnects after that delay.
        decisions: Vec<Option<u16>>,
        ping_interval_ms: u16,
        pong_timeout_ms: u16,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u16..120).prop_map(Step::Advance),
            3 => any::<bool>().prop_map(|keepalive| Step::Open { keepalive }),
            1 => Just(Step::OpenFails),
            1 => proptest::option::of(prop_oneof![Just(1000u16), Just(1001), Just(4000)])
                .prop_map(Step::CloseReceived),
            1 => Just(Step::Eof),
            1 => Just(Step::Lost),
            1 => Just(Step::Violation),
            2 => Just(Step::FrameIn),
            2 => Just(Step::Pong),
            1 => Just(Step::ClientClose),
            1 => Just(Step::Stop),
            1 => any::<bool>().prop_map(Step::ReadingPaused),
            1 => Just(Step::Taken),
        ]
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        let answer = prop_oneof![
            4 => Just(Answer::Continue),
            1 => Just(Answer::Close),
            1 => Just(Answer::Stop),
        ];
        let decision = prop_oneof![4 => (0u16..80).prop_map(Some), 1 => Just(None)];
        (
            proptest::bool::weighted(0.05),
            proptest::collection::vec(step(), 0..60),
            proptest::collection::vec(answer, 0..8),
            proptest::collection::vec(decision, 0..8),
            1u16..40,
            1u16..40,
        )
            .prop_map(
                |(init_fails, steps, answers, decisions, ping, pong)| Scenario {
                    init_fails,
                    steps,
                    answers,
                    decisions,
                    ping_interval_ms: ping,
                    pong_timeout_ms: pong,
                },
            )
    }

    /// What the actor did, with the time.
    #[derive(Debug, Clone)]
    enum Did {
        Init,
        Connect,
        Connected,
        Ping,
        SendClose,
        Dropped(u32),
        ReportError,
        Disconnected(DisconnectReason, u32),
        Decided(Reconnect),
        Terminate,
    }

    /// Plays the actor: carries out actions, answers callbacks from the scenario, restarts at
    /// once when asked (as the supervisor does), and keeps a trace.
    struct Sim {
        machine: Lifecycle<FakeConn>,
        start: Instant,
        now: Instant,
        trace: Vec<(Duration, Did)>,
        answers: std::vec::IntoIter<Answer>,
        decisions: std::vec::IntoIter<Option<u16>>,
        next_conn: u32,
        ping_payload: Option<[u8; 8]>,
        reading: Reading,
        settings: Settings,
        init_fails: bool,
    }

    impl Sim {
        fn new(scenario: &Scenario) -> Sim {
            let start = Instant::now();
            Sim {
                machine: Lifecycle::new(),
                start,
                now: start,
                trace: Vec::new(),
                answers: scenario.answers.clone().into_iter(),
                decisions: scenario.decisions.clone().into_iter(),
                next_conn: 0,
                ping_payload: None,
                reading: Reading::default(),
                settings: Settings {
                    close_timeout: CLOSE_TIMEOUT,
                    keepalive: Some((
                        Duration::from_millis(scenario.ping_interval_ms.into()),
                        Duration::from_millis(scenario.pong_timeout_ms.into()),
                    )),
                },
                init_fails: scenario.init_fails,
            }
        }

        fn record(&mut self, did: Did) {
            self.trace.push((self.now - self.start, did));
        }

        fn answer(&mut self) {
            match self.answers.next().unwrap_or(Answer::Continue) {
                Answer::Continue => {}
                Answer::Close => {
                    if self.machine.sendable().is_ok() {
                        self.machine
                            .close_sent(CloseFrame::new(4001, "bye"), self.now);
                    }
                }
                Answer::Stop => self
                    .machine
                    .stop_requested(StopReason::Requested("answer".into()), self.now),
            }
        }

        fn run(&mut self) {
            for _ in 0..1000 {
                let Some(action) = self.machine.next_action() else {
                    return;
                };
                match action {
                    Action::Init => {
                        self.record(Did::Init);
                        let result = if self.init_fails {
                            let error: Box<dyn std::error::Error + Send + Sync> = "no".into();
                            Err(InitError::from(error))
                        } else {
                            Ok(())
                        };
                        self.machine.init_done(result);
                    }
                    Action::Connect => self.record(Did::Connect),
                    Action::CancelConnect => {}
                    Action::Connected => {
                        self.record(Did::Connected);
                        self.answer();
                    }
                    Action::SendClose(_) | Action::EchoClose(_) => self.record(Did::SendClose),
                    Action::Ping(payload) => {
                        self.ping_payload = Some(payload);
                        self.record(Did::Ping);
                    }
                    Action::Fail { conn, .. } | Action::Drop(conn) => {
                        self.record(Did::Dropped(conn.id))
                    }
                    Action::ReportError(_) => {
                        self.record(Did::ReportError);
                        self.answer();
                    }
                    Action::Disconnected { reason, attempt } => {
                        self.record(Did::Disconnected(reason, attempt));
                        let decision = match self.decisions.next().unwrap_or(Some(10)) {
                            Some(ms) => Reconnect::After(Duration::from_millis(ms.into())),
                            None => Reconnect::Stop,
                        };
                        self.record(Did::Decided(decision));
                        self.machine.decided(decision);
                    }
                    Action::Restart => self.machine.started(self.now),
                    Action::Terminate { .. } => self.record(Did::Terminate),
                }
            }
            panic!("the lifecycle asked for more than 1000 actions in a row");
        }

        /// Lets `by` pass, firing the timer whenever it is due; a timer that fires must move
        /// the machine on.
        fn advance(&mut self, by: Duration) {
            let until = self.now + by;
            for _ in 0..10_000 {
                match self.machine.poll_timeout() {
                    Some(due) if due <= until => {
                        self.now = self.now.max(due);
                        let phase = self.machine.phase_name();
                        self.machine.timeout(self.now, rand::random(), self.reading);
                        self.run();
                        // A deadline still due now is only fine in another phase (a
                        // reconnect after no delay); the same phase would fire forever.
                        if let Some(next) = self.machine.poll_timeout() {
                            let moved = next > self.now || self.machine.phase_name() != phase;
                            assert!(moved, "a timer fired without moving on ({phase})");
                        }
                    }
                    _ => {
                        self.now = until;
                        return;
                    }
                }
            }
            panic!("the timer fired 10 000 times within {by:?}");
        }

        fn apply(&mut self, step: &Step) {
            let now = self.now;
            match step {
                Step::Advance(ms) => self.advance(Duration::from_millis((*ms).into())),
                Step::Open { keepalive } => {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let mut settings = self.settings;
                    if !keepalive {
                        settings.keepalive = None;
                    }
                    // A connection that arrives when no attempt is under way is dropped at
                    // once (the actor only hands over the current attempt's, but the machine
                    // must not keep a stray one either).
                    self.machine
                        .opened(FakeConn { id, frames_in: 0 }, settings, now);
                }
                Step::OpenFails => self.machine.open_failed(Error::Timeout(Timeout::Upgrade)),
                Step::CloseReceived(code) => self
                    .machine
                    .close_received(code.map(|code| CloseFrame::new(code, "")), now),
                Step::Eof => self.machine.eof(),
                Step::Lost => self
                    .machine
                    .lost(Error::io(io::ErrorKind::ConnectionReset.into())),
                Step::Violation => self.machine.violation(ProtocolError::UnknownOpcode(3)),
                Step::FrameIn => {
                    if let Some(conn) = self.machine.conn_mut() {
                        conn.frames_in += 1;
                    }
                }
                Step::ReadingPaused(paused) => self.reading.paused = *paused,
                Step::Taken => self.reading.taken += 1,
                Step::Pong => {
                    if let Some(payload) = self.ping_payload {
                        if let Some(conn) = self.machine.conn_mut() {
                            conn.frames_in += 1;
                        }
                        self.machine.pong(&payload, now);
                    }
                }
                Step::ClientClose => {
                    if self.machine.sendable().is_ok() {
                        self.machine.close_sent(CloseFrame::normal(), now);
                    }
                }
                Step::Stop => self
                    .machine
                    .stop_requested(StopReason::Requested("step".into()), now),
            }
            self.run();
        }

        /// Plays the scenario, then stops the client and lets time run until it has.
        fn play(scenario: &Scenario) -> Sim {
            let mut sim = Sim::new(scenario);
            sim.machine.started(sim.now);
            sim.run();
            for step in &scenario.steps {
                sim.apply(step);
            }
            let stop_asked = sim.trace.len();
            sim.apply(&Step::Stop);
            sim.advance(CLOSE_TIMEOUT * 2);
            assert!(
                sim.machine.is_stopped(),
                "not stopped after a stop and the close timeout"
            );
            // Nothing moves a stopped client.
            let trace_then = sim.trace.len();
            let mut stray = Sim::new(scenario);
            std::mem::swap(&mut stray.machine, &mut sim.machine);
            for step in &scenario.steps {
                stray.apply(step);
                stray.machine.started(stray.now);
                stray.machine.init_done(Ok(()));
                stray.machine.decided(Reconnect::After(Duration::ZERO));
                stray.run();
            }
            // A connection handed over after the stop is dropped at once; nothing else happens.
            let acted: Vec<_> = stray
                .trace
                .iter()
                .filter(|(_, did)| !matches!(did, Did::Dropped(_)))
                .collect();
            assert!(acted.is_empty(), "a stopped client acted: {acted:?}");
            assert!(stray.machine.conn().is_none());
            assert!(stop_asked <= trace_then);
            sim
        }
    }

    /// The invariants of the client module's docs that the lifecycle is answerable for.
    fn check(scenario: &Scenario, sim: &Sim) {
        let trace = &sim.trace;
        let count = |pred: fn(&Did) -> bool| trace.iter().filter(|(_, did)| pred(did)).count();

        // 1. init once, first; terminate exactly once, last.
        assert_eq!(count(|did| matches!(did, Did::Init)), 1, "init runs once");
        assert!(matches!(trace.first(), Some((_, Did::Init))));
        assert_eq!(
            count(|did| matches!(did, Did::Terminate)),
            1,
            "terminate runs once"
        );
        // After terminate, only connections that arrive too late are dropped.
        let terminated = trace
            .iter()
            .position(|(_, did)| matches!(did, Did::Terminate));
        let after = &trace[terminated.expect("terminated") + 1..];
        assert!(
            after.iter().all(|(_, did)| matches!(did, Did::Dropped(_))),
            "after terminate: {after:?}"
        );
        if scenario.init_fails {
            let acted = trace
                .iter()
                .filter(|(_, did)| !matches!(did, Did::Dropped(_)));
            assert_eq!(acted.count(), 2, "a failed init goes straight to terminate");
        }

        // Every connection handed over is dropped exactly once.
        let mut dropped = vec![0u32; sim.next_conn as usize];
        for (_, did) in trace {
            if let Did::Dropped(id) = did {
                dropped[*id as usize] += 1;
            }
        }
        assert!(
            dropped.iter().all(|&n| n == 1),
            "drops per connection: {dropped:?}"
        );

        // 2. attempts counted since the last upgrade; attempts spaced by the delay.
        let mut failures = 0;
        let mut earliest_connect: Option<Duration> = None;
        for (at, did) in trace {
            match did {
                Did::Connected => failures = 0,
                Did::Disconnected(_, attempt) => {
                    failures += 1;
                    assert_eq!(
                        *attempt, failures,
                        "attempt counts failures since the upgrade"
                    );
                }
                Did::Decided(Reconnect::After(delay)) => earliest_connect = Some(*at + *delay),
                Did::Connect => {
                    if let Some(earliest) = earliest_connect.take() {
                        assert!(*at >= earliest, "connected at {at:?}, before {earliest:?}");
                    }
                }
                _ => {}
            }
        }

        // handle_connect/handle_disconnect pair up: one disconnect per connect.
        let connects = count(|did| matches!(did, Did::Connect));
        let disconnects = count(|did| matches!(did, Did::Disconnected(..)));
        assert!(
            disconnects <= connects,
            "{disconnects} disconnects for {connects} attempts"
        );

        // Timeout reasons only where their timers could have run out.
        for (at, did) in trace {
            if let Did::Disconnected(DisconnectReason::Error(Error::Timeout(kind)), _) = did {
                match kind {
                    Timeout::Pong | Timeout::ReceiveQueueFull => {
                        assert!(*at >= Duration::from_millis(1))
                    }
                    Timeout::Close => assert!(*at >= CLOSE_TIMEOUT),
                    other => assert_eq!(*other, Timeout::Upgrade),
                }
            }
        }

        // Keepalive: pings of one connection at least the interval apart.
        let interval = Duration::from_millis(scenario.ping_interval_ms.into());
        let mut last_ping: Option<Duration> = None;
        for (at, did) in trace {
            match did {
                Did::Ping => {
                    if let Some(last) = last_ping {
                        assert!(*at >= last + interval, "pings at {last:?} and {at:?}");
                    }
                    last_ping = Some(*at);
                }
                Did::Connected => last_ping = None,
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("MINCH_LIFECYCLE_MODEL_CASES")
                .ok()
                .and_then(|cases| cases.parse().ok())
                .unwrap_or(5_000),
            ..ProptestConfig::default()
        })]

        /// Every event in every phase keeps the invariants.
        #[test]
        fn random_lifecycles_keep_the_invariants(scenario in scenario()) {
            let sim = Sim::play(&scenario);
            check(&scenario, &sim);
        }
    }

    fn open_scenario() -> Sim {
        let scenario = Scenario {
            init_fails: false,
            steps: Vec::new(),
            answers: Vec::new(),
            decisions: Vec::new(),
            ping_interval_ms: 20,
            pong_timeout_ms: 20,
        };
        let mut sim = Sim::new(&scenario);
        sim.machine.started(sim.now);
        sim.run();
        sim.apply(&Step::Open { keepalive: true });
        sim
    }

    /// First release: `Reply::Stop` from `handle_error` after a protocol violation was followed
    /// by `handle_disconnect` and a reconnect.
    #[test]
    fn a_stop_from_handle_error_after_a_violation_is_final() {
        let mut sim = open_scenario();
        sim.answers = vec![Answer::Stop].into_iter();
        sim.apply(&Step::Violation);
        let dids: Vec<_> = sim.trace.iter().map(|(_, did)| did.clone()).collect();
        assert!(
            matches!(
                dids.as_slice(),
                [
                    Did::Init,
                    Did::Connect,
                    Did::Connected,
                    Did::Dropped(0),
                    Did::ReportError,
                    Did::Terminate
                ]
            ),
            "{dids:?}"
        );
        assert!(sim.machine.is_stopped());
    }

    /// First release: the pending ping was kept until its pong timeout ran out, so pings went
    /// every `ping_interval + pong_timeout`.
    #[test]
    fn keepalive_pings_every_interval_when_pongs_come() {
        let mut sim = open_scenario();
        for _ in 0..10 {
            sim.advance(Duration::from_millis(20));
            sim.apply(&Step::Pong);
        }
        let pings: Vec<_> = sim
            .trace
            .iter()
            .filter(|(_, did)| matches!(did, Did::Ping))
            .map(|(at, _)| at.as_millis())
            .collect();
        assert_eq!(pings, [20, 40, 60, 80, 100, 120, 140, 160, 180, 200]);
        assert!(sim.machine.is_open());
    }

    #[test]
    fn a_silent_peer_fails_the_pong_timeout_after_the_ping() {
        let mut sim = open_scenario();
        sim.advance(Duration::from_millis(39));
        assert!(sim.machine.is_open());
        sim.advance(Duration::from_millis(1));
        let last = sim.trace.iter().rev().find_map(|(at, did)| match did {
            Did::Disconnected(reason, _) => Some((*at, reason.clone())),
            _ => None,
        });
        let (at, reason) = last.expect("disconnected");
        assert_eq!(at, Duration::from_millis(40));
        assert_eq!(reason.error().and_then(Error::timeout), Some(Timeout::Pong));
    }

    /// First release: a close the server never answered was reported as a clean close.
    #[test]
    fn an_unanswered_client_close_is_a_close_timeout() {
        let mut sim = open_scenario();
        sim.apply(&Step::ClientClose);
        sim.advance(CLOSE_TIMEOUT);
        let reason = sim.trace.iter().find_map(|(_, did)| match did {
            Did::Disconnected(reason, _) => Some(reason.clone()),
            _ => None,
        });
        let reason = reason.expect("disconnected");
        assert_eq!(
            reason.error().and_then(Error::timeout),
            Some(Timeout::Close)
        );
    }

    #[test]
    fn an_answered_client_close_is_client_closed() {
        let mut sim = open_scenario();
        sim.apply(&Step::ClientClose);
        sim.apply(&Step::CloseReceived(Some(1000)));
        let reason = sim.trace.iter().find_map(|(_, did)| match did {
            Did::Disconnected(reason, _) => Some(reason.clone()),
            _ => None,
        });
        assert!(
            matches!(reason, Some(DisconnectReason::ClientClosed(_))),
            "{reason:?}"
        );
    }

    #[test]
    fn a_reconnect_waits_the_delay_after_the_restart() {
        let mut sim = open_scenario();
        sim.decisions = vec![Some(30)].into_iter();
        sim.apply(&Step::Eof);
        assert_eq!(sim.machine.phase_name(), "waiting to reconnect");
        sim.advance(Duration::from_millis(29));
        assert_eq!(sim.machine.phase_name(), "waiting to reconnect");
        sim.advance(Duration::from_millis(1));
        assert!(sim.machine.is_connecting());
    }

    #[test]
    fn an_enormous_delay_does_not_overflow() {
        let mut sim = open_scenario();
        sim.machine.eof();
        sim.machine.next_action();
        sim.machine.next_action();
        sim.machine.decided(Reconnect::After(Duration::MAX));
        sim.machine.started(sim.now);
        assert!(sim.machine.poll_timeout().is_some());
    }
}
