//! Found by a cold review of the lifecycle rewrite, each a defect a user could hit: handler
//! timers and the reconnect survive a supervisor restart whatever was cancelled before it; an
//! owed pong goes before the client's close frame; a late keepalive pong stays the client's.

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use minch::{
    Client, ClientContext, ConnectOptions, ConnectRequest, DisconnectReason, Frame, MinchHandler,
    Reconnect, Reply, Response, TimerId,
};
use support::{
    accept_upgrade_blocking, close_frame, decode_frame, frame_bytes, opcode, scripted_ws_server,
    scripted_ws_server_seq, text_frame, wait_until, RawEvent, Step,
};

const WAIT: Duration = Duration::from_secs(10);

/// A handler whose timer behaviour the test sets; it counts connects, infos and frames.
struct Timed {
    request: ConnectRequest,
    connects: Arc<AtomicUsize>,
    infos: Arc<AtomicUsize>,
    frames: Arc<Mutex<Vec<Frame>>>,
    /// A long timer set in `init`, cancelled in the first `handle_disconnect`.
    cancel_in_disconnect: bool,
    long_timer: Option<TimerId>,
    /// Short timers scheduled in the first `handle_disconnect`.
    timers_in_disconnect: usize,
    disconnects: usize,
    /// Reply to a text frame.
    on_text: Reply,
}

impl Timed {
    fn new(request: impl Into<ConnectRequest>) -> Timed {
        Timed {
            request: request.into(),
            connects: Arc::default(),
            infos: Arc::default(),
            frames: Arc::default(),
            cancel_in_disconnect: false,
            long_timer: None,
            timers_in_disconnect: 0,
            disconnects: 0,
            on_text: Reply::Continue,
        }
    }
}

impl MinchHandler for Timed {
    type Info = ();

    fn init(
        &mut self,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.cancel_in_disconnect {
            self.long_timer = Some(ctx.send_info_after(Duration::from_secs(3600), ()));
        }
        Ok(())
    }

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        self.connects.fetch_add(1, Ordering::SeqCst);
        self.request.clone()
    }

    fn handle_connect(&mut self, _: &Response, _: &mut ClientContext<'_, Self>) -> Reply {
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _: &mut ClientContext<'_, Self>) -> Reply {
        let is_text = matches!(frame, Frame::Text(_));
        self.frames.lock().unwrap().push(frame);
        if is_text {
            self.on_text.clone()
        } else {
            Reply::Continue
        }
    }

    fn handle_info(&mut self, _: (), _: &mut ClientContext<'_, Self>) -> Reply {
        self.infos.fetch_add(1, Ordering::SeqCst);
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        _: &DisconnectReason,
        _: u32,
        ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        self.disconnects += 1;
        if self.disconnects == 1 {
            if let Some(timer) = self.long_timer.take() {
                ctx.cancel(timer);
            }
            for _ in 0..self.timers_in_disconnect {
                ctx.send_info_after(Duration::from_millis(100), ());
            }
        }
        Reconnect::After(Duration::from_millis(50))
    }
}

fn no_keepalive() -> ConnectOptions {
    ConnectOptions::default()
        .ping_interval(None)
        .upgrade_timeout(Duration::from_secs(2))
}

// ---- timers across a restart ------------------------------------------------------------------

/// Bug: `ClientContext::cancel` called in `handle_disconnect` (right before the supervisor
/// restart) leaves a stale cancellation in actix's context; the restart resets actix's
/// `SpawnHandle` counter, so the stale cancellation removes whichever new future gets the same
/// handle — here the lifecycle's reconnect alarm. Consequence: a handler that cancels its
/// timer when the connection drops (e.g. a heartbeat set in `init`) never reconnects; the client
/// sits in "waiting to reconnect" forever and every send answers `NotConnected`.
#[actix_rt::test]
async fn cancelling_a_timer_in_handle_disconnect_does_not_stop_the_reconnect() {
    // 101, then FIN: every connection ends at once.
    let server = scripted_ws_server(vec![Step::Close]);
    let mut handler = Timed::new((
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default().upgrade_timeout(Duration::from_secs(2)),
    ));
    handler.cancel_in_disconnect = true;
    let connects = handler.connects.clone();
    let _addr = Client::start(handler);

    assert!(
        wait_until(WAIT, || connects.load(Ordering::SeqCst) >= 2).await,
        "no reconnect after handle_disconnect cancelled a timer and answered After(50 ms): \
         {} connect(s), server accepted {}",
        connects.load(Ordering::SeqCst),
        server.accepted()
    );
}

/// Bug: the same stale cancellation, from the client itself: at `Action::Restart` the client
/// stops the actor and then `rearm` cancels the close-handshake alarm (src/client/mod.rs
/// `rearm`, called by `run` after `Restart`). After the restart, handles count from 1 again
/// (handler timers first, then the reconnect alarm), and the one that gets the stale handle is
/// dropped. Consequence, depending only on how many `send_info_after` timers are pending: a
/// timer's `handle_info` never runs, or the client never reconnects.
#[actix_rt::test]
async fn timers_pending_at_a_reconnect_all_fire_and_the_client_reconnects() {
    // Each client has its own server: the first connection closes with a close frame, then
    // FIN; the second stays open.
    let mut clients = Vec::new();
    for timers in 0..6 {
        let server = scripted_ws_server_seq(vec![
            vec![
                Step::SendWithResponse(close_frame(Some(1000), "")),
                Step::WaitClose(Duration::from_secs(2)),
                Step::Close,
            ],
            vec![Step::Sleep(Duration::from_secs(8))],
        ]);
        let mut handler = Timed::new((
            server.url("/"),
            Vec::<(String, String)>::new(),
            no_keepalive(),
        ));
        handler.timers_in_disconnect = timers;
        let (connects, infos) = (handler.connects.clone(), handler.infos.clone());
        clients.push((timers, connects, infos, Client::start(handler), server));
    }

    let all_done = || {
        clients.iter().all(|(timers, connects, infos, _, _)| {
            connects.load(Ordering::SeqCst) >= 2 && infos.load(Ordering::SeqCst) == *timers
        })
    };
    let done = wait_until(Duration::from_secs(5), all_done).await;
    let summary: Vec<String> = clients
        .iter()
        .map(|(timers, connects, infos, _, _)| {
            format!(
                "{timers} timer(s): {} connect(s), {} info(s)",
                connects.load(Ordering::SeqCst),
                infos.load(Ordering::SeqCst)
            )
        })
        .collect();
    assert!(done, "timers lost or no reconnect: {summary:#?}");
}

// ---- nothing after a close frame ------------------------------------------------------------------

/// Bug: a pong owed for a ping read in the same pass as a frame whose reply closes is written
/// *after* the close frame: `Connection::poll_flush` encodes `pending_pong` without looking at
/// `close_queued` (only `close_now`, the echo path, puts the pong first). Consequence: the
/// client sends a frame after its close (RFC 6455 §5.5.1), which strict servers treat as a
/// protocol error (e.g. tungstenite: "Received a frame after closing"), and the module's own
/// promise "nothing is written after a close frame" is broken.
#[actix_rt::test]
async fn a_pong_owed_when_the_client_closes_goes_before_its_close_frame() {
    // A ping and a text frame arrive together, right after the 101; the text's reply closes.
    let mut first = frame_bytes(true, opcode::PING, b"are you there");
    first.extend_from_slice(&text_frame("please close"));
    let server = scripted_ws_server(vec![
        Step::SendWithResponse(first),
        Step::WaitClose(Duration::from_secs(2)),
        Step::Sleep(Duration::from_millis(200)),
        Step::Send(close_frame(Some(4000), "")),
        Step::Sleep(Duration::from_millis(200)),
        Step::Close,
    ]);
    let mut handler = Timed::new((
        server.url("/"),
        Vec::<(String, String)>::new(),
        no_keepalive(),
    ));
    handler.on_text = Reply::close(4000, "bye");
    let _addr = Client::start(handler);

    let closed = wait_until(WAIT, || {
        server
            .log()
            .count(|event| matches!(event, RawEvent::Frame { frame, .. } if frame.is_close()))
            == 1
    })
    .await;
    assert!(closed, "the client sent no close: {:?}", server.events());
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let frames: Vec<_> = server
        .events()
        .into_iter()
        .filter_map(|event| match event {
            RawEvent::Frame { conn: 0, frame } => Some(frame),
            _ => None,
        })
        .collect();
    let close_at = frames.iter().position(|frame| frame.is_close()).unwrap();
    assert_eq!(
        close_at,
        frames.len() - 1,
        "frames written after the close frame: {:?}",
        frames
            .iter()
            .map(|f| (f.opcode, f.text()))
            .collect::<Vec<_>>()
    );
}

// ---- keepalive pongs ------------------------------------------------------------------------------

/// A raw server that accepts one connection, waits for the client's keepalive ping, sends a
/// text frame, waits for the client's close frame, then answers the ping (the pong was in
/// flight when the client closed) and the close.
fn late_pong_server() -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let Some(mut buf) = accept_upgrade_blocking(&mut stream) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut ping = None;
        loop {
            while let Ok(Some((frame, used))) = decode_frame(&buf) {
                buf.drain(..used);
                match frame.opcode {
                    opcode::PING if ping.is_none() => {
                        ping = Some(frame.payload.clone());
                        let _ = stream.write_all(&text_frame("close now"));
                    }
                    opcode::CLOSE => {
                        let pong = frame_bytes(true, opcode::PONG, ping.as_deref().unwrap_or(b""));
                        let _ = stream.write_all(&pong);
                        thread::sleep(Duration::from_millis(50));
                        let _ = stream.write_all(&close_frame(Some(1000), ""));
                        thread::sleep(Duration::from_millis(200));
                        return;
                    }
                    _ => {}
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    (url, handle)
}

/// Bug: the answer to a keepalive ping is recognised only while the connection is `Open`
/// (`Lifecycle::pong`); once the client has started closing, the keepalive pong still in
/// flight goes to `handle_frame`. README promises `handle_frame` sees "pongs other than
/// keepalive ones". Consequence: a handler that closes (or is told to `Close`) shortly after a
/// keepalive ping receives a stray `Frame::Pong` with the client's random 8-byte payload, which
/// handlers that match their own ping ids treat as unexpected.
#[actix_rt::test]
async fn a_keepalive_pong_arriving_while_closing_is_not_handed_to_handle_frame() {
    let (url, server) = late_pong_server();
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_secs(5))
        .upgrade_timeout(Duration::from_secs(2));
    let mut handler = Timed::new((url, Vec::<(String, String)>::new(), options));
    handler.on_text = Reply::close(1000, "done");
    let frames = handler.frames.clone();
    let _addr = Client::start(handler);

    assert!(wait_until(WAIT, || server.is_finished()).await);
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let frames = frames.lock().unwrap().clone();
    assert!(
        matches!(frames.as_slice(), [Frame::Text(_)]),
        "handle_frame saw more than the text frame: {frames:?}"
    );
}
