//! The strict protocol layer against a scripted raw server: every rule of RFC 6455 a server can
//! break fails the connection with the right close code (1002, 1007), the handler hears about it
//! (`handle_error`, then `handle_disconnect`), and the valid corner cases (pings between
//! fragments, close echo, fragmented messages, a frame in the same write as the 101) work.
//!
//! Most cases run the actor client with a probe handler that forwards every callback through a
//! channel; a few use the simple API (`minch::connect`) where that is shorter.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use actix::Addr;
use minch::{
    Client, ClientContext, CloseFrame, ConnectOptions, ConnectRequest, Connection,
    DisconnectReason, Error, Frame, Frames, MinchHandler, ProtocolError, ReceiveError, Reconnect,
    Reply, Response, StopReason,
};
use tokio::sync::mpsc;

use support::{
    close_frame, frame_bytes, masked_frame_bytes, opcode, text_frame, ClientFrame, RawEvent,
    RawFrame, ScriptedServer, Step,
};

/// Bound for every single wait in this file.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// A probe handler for the actor client
// ---------------------------------------------------------------------------------------------

/// Every callback the probe sees, in order.
#[derive(Debug)]
enum Event {
    Connected,
    Frame(Frame),
    Error(Error),
    Disconnected(DisconnectReason, u32),
    Terminated(StopReason),
}

/// Connects once to `url`, forwards every callback, never reconnects.
struct Probe {
    url: String,
    options: ConnectOptions,
    events: mpsc::UnboundedSender<Event>,
}

impl MinchHandler for Probe {
    type Info = ();

    fn connect(&mut self, _ctx: &mut ClientContext<'_, Self>) -> ConnectRequest {
        ConnectRequest::new(self.url.clone()).options(self.options.clone())
    }

    fn handle_connect(
        &mut self,
        _response: &Response,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reply {
        let _ = self.events.send(Event::Connected);
        Reply::Continue
    }

    fn handle_frame(&mut self, frame: Frame, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.events.send(Event::Frame(frame));
        Reply::Continue
    }

    fn handle_error(&mut self, error: Error, _ctx: &mut ClientContext<'_, Self>) -> Reply {
        let _ = self.events.send(Event::Error(error));
        Reply::Continue
    }

    fn handle_disconnect(
        &mut self,
        reason: &DisconnectReason,
        attempt: u32,
        _ctx: &mut ClientContext<'_, Self>,
    ) -> Reconnect {
        let _ = self
            .events
            .send(Event::Disconnected(reason.clone(), attempt));
        Reconnect::Stop
    }

    fn terminate(&mut self, reason: &StopReason, _ctx: &mut ClientContext<'_, Self>) {
        let _ = self.events.send(Event::Terminated(reason.clone()));
    }
}

/// A running probe: its address (kept so the client lives) and its events.
struct Probed {
    _addr: Addr<Client<Probe>>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Probed {
    fn start(url: String, options: ConnectOptions) -> Probed {
        let (tx, events) = mpsc::unbounded_channel();
        let addr = Client::start(Probe {
            url,
            options,
            events: tx,
        });
        Probed {
            _addr: addr,
            events,
        }
    }

    /// The next event, waiting at most [`WAIT`].
    async fn next(&mut self, waiting_for: &str) -> Event {
        match actix_rt::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the probe's channel closed while waiting for {waiting_for}"),
            Err(_) => panic!("no event within {WAIT:?} while waiting for {waiting_for}"),
        }
    }

    async fn expect_connected(&mut self) {
        match self.next("handle_connect").await {
            Event::Connected => {}
            other => panic!("expected handle_connect first, got {other:?}"),
        }
    }

    /// Every event up to and including `terminate`.
    async fn until_terminated(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let event = self.next("terminate").await;
            let done = matches!(event, Event::Terminated(_));
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Asserts that no event arrives for a short while.
    async fn expect_quiet(&mut self) {
        if let Ok(Some(event)) = actix_rt::time::timeout(QUIET, self.events.recv()).await {
            panic!("expected no more events, got {event:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------

fn server(steps: Vec<Step>) -> ScriptedServer {
    support::scripted_ws_server(steps)
}

/// `steps`, then: wait for the client's close frame, answer it with 1000 and drop TCP, so that
/// a graceful close by the client completes at once.
fn then_answer_close(mut steps: Vec<Step>) -> Vec<Step> {
    steps.push(Step::WaitClose(Duration::from_secs(60)));
    steps.push(Step::Send(close_frame(Some(1000), "")));
    steps.push(Step::Close);
    steps
}

/// Waits for the client's close frame and checks its code; then checks that the client dropped
/// the TCP connection and sent nothing but that close frame.
async fn expect_client_close(server: &ScriptedServer, code: u16, context: &str) -> ClientFrame {
    let close = server
        .wait_frame(ClientFrame::is_close, WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "{context}: the client sent no close frame within {WAIT:?}; events: {:?}",
                server.events()
            )
        });
    assert_eq!(
        close.close_code,
        Some(code),
        "{context}: close code, frame {close:?}"
    );
    assert!(close.masked, "{context}: the close frame is not masked");
    assert!(
        !close.close_reason.is_empty() && close.close_reason.len() <= 123,
        "{context}: the close reason should name the broken rule in at most 123 bytes: {:?}",
        close.close_reason
    );
    let dropped = server
        .wait_event(|event| matches!(event, RawEvent::Eof { .. }), WAIT)
        .await;
    assert!(
        dropped.is_some(),
        "{context}: the client did not drop the TCP connection within {WAIT:?} after its close frame"
    );
    let frames = server.frames();
    assert_eq!(
        frames.len(),
        1,
        "{context}: only the close frame expected, got {frames:?}"
    );
    close
}

/// Runs `steps` against the actor client and checks the whole failure: close `code` on the wire
/// and a dropped connection, `handle_error(Protocol(expected))`, then
/// `handle_disconnect(Error(Protocol(expected)), 1)`, then `terminate`, and nothing else.
async fn assert_violation(steps: Vec<Step>, expected: ProtocolError, code: u16) {
    let context = format!("{expected:?}");
    assert_eq!(
        expected.close_code(),
        code,
        "{context}: close_code() mapping"
    );
    let server = server(steps);
    let mut probe = Probed::start(server.url("/"), ConnectOptions::default());
    probe.expect_connected().await;
    let close = expect_client_close(&server, code, &context).await;
    assert!(
        expected.to_string().starts_with(&close.close_reason),
        "{context}: close reason {:?} is not the error's message {:?}",
        close.close_reason,
        expected.to_string()
    );

    let events = probe.until_terminated().await;
    match events.as_slice() {
        [Event::Error(Error::Protocol(error)), Event::Disconnected(DisconnectReason::Error(Error::Protocol(reason)), 1), Event::Terminated(StopReason::Disconnected(_))] =>
        {
            assert_eq!(error, &expected, "{context}: handle_error");
            assert_eq!(reason, &expected, "{context}: handle_disconnect");
        }
        other => panic!(
            "{context}: expected handle_error(Protocol), handle_disconnect(Error(Protocol), 1), \
             terminate; got {other:?}"
        ),
    }
}

/// Connects with the simple API.
async fn connect_simple(server: &ScriptedServer) -> (Connection, Frames) {
    let connecting = minch::connect(
        server.url("/"),
        Vec::<(String, String)>::new(),
        ConnectOptions::default(),
    );
    actix_rt::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

// ---------------------------------------------------------------------------------------------
// Framing violations: 1002
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn reserved_bits_fail_with_1002() {
    for rsv in [0b100, 0b010, 0b001, 0b111] {
        let frame = RawFrame::new(opcode::TEXT, "hi").rsv(rsv).bytes();
        assert_violation(vec![Step::Send(frame)], ProtocolError::ReservedBits, 1002).await;
    }
}

#[actix_rt::test]
async fn unknown_opcodes_fail_with_1002() {
    for op in [0x3, 0xB] {
        let frame = frame_bytes(true, op, b"");
        assert_violation(
            vec![Step::Send(frame)],
            ProtocolError::UnknownOpcode(op),
            1002,
        )
        .await;
    }
}

#[actix_rt::test]
async fn a_masked_server_frame_fails_with_1002() {
    let frame = masked_frame_bytes(true, opcode::TEXT, b"hello", [0x11, 0x22, 0x33, 0x44]);
    assert_violation(vec![Step::Send(frame)], ProtocolError::MaskedFrame, 1002).await;
}

#[actix_rt::test]
async fn a_control_frame_with_126_bytes_fails_with_1002() {
    let frame = frame_bytes(true, opcode::PING, &[b'x'; 126]);
    assert_violation(
        vec![Step::Send(frame)],
        ProtocolError::ControlFrameTooLong(126),
        1002,
    )
    .await;
}

#[actix_rt::test]
async fn a_fragmented_ping_fails_with_1002() {
    let steps = vec![
        Step::Send(frame_bytes(false, opcode::PING, b"pi")),
        Step::Send(frame_bytes(true, opcode::CONTINUATION, b"ng")),
    ];
    assert_violation(steps, ProtocolError::FragmentedControlFrame, 1002).await;
}

#[actix_rt::test]
async fn an_unsolicited_continuation_fails_with_1002() {
    let frame = frame_bytes(true, opcode::CONTINUATION, b"orphan");
    assert_violation(
        vec![Step::Send(frame)],
        ProtocolError::UnexpectedContinuation,
        1002,
    )
    .await;
}

#[actix_rt::test]
async fn a_new_message_inside_a_fragmented_one_fails_with_1002() {
    for second in [opcode::TEXT, opcode::BINARY] {
        let steps = vec![
            Step::Send(frame_bytes(false, opcode::TEXT, b"first, ")),
            Step::Send(frame_bytes(true, second, b"second")),
        ];
        assert_violation(steps, ProtocolError::ExpectedContinuation, 1002).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8: 1007, as early as the bytes prove it
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn invalid_utf8_in_a_text_frame_fails_with_1007() {
    let frame = frame_bytes(true, opcode::TEXT, b"valid, then \xc3\x28");
    assert_violation(vec![Step::Send(frame)], ProtocolError::InvalidUtf8, 1007).await;
}

#[actix_rt::test]
async fn invalid_utf8_across_fragments_fails_before_the_final_fragment() {
    // U+20AC is E2 82 AC: the first fragment ends after E2, the second brings 82 and then 'A',
    // which can never continue the code point. The final fragment is never sent.
    let steps = vec![
        Step::Send(frame_bytes(false, opcode::TEXT, b"price: 5\xe2")),
        Step::Send(frame_bytes(false, opcode::CONTINUATION, b"\x82A and more")),
    ];
    assert_violation(steps, ProtocolError::InvalidUtf8, 1007).await;
}

#[actix_rt::test]
async fn invalid_utf8_in_a_partly_arrived_frame_fails_before_the_frame_completes() {
    // One text frame announcing the whole payload; only its start arrives, a few bytes at a
    // time, up to and including F4 90 (above U+10FFFF). The rest is never sent.
    let payload = [
        "κόσμε".as_bytes(),
        b"\xf4\x90\x80\x80",
        b"-edited, and a long tail that never comes",
    ]
    .concat();
    let frame = frame_bytes(true, opcode::TEXT, &payload);
    let header_len = 2;
    let sent = header_len + "κόσμε".len() + 2;
    let steps = vec![Step::SendChunked {
        bytes: frame[..sent].to_vec(),
        chunk: 3,
        delay: Duration::from_millis(20),
    }];
    assert_violation(steps, ProtocolError::InvalidUtf8, 1007).await;
}

// ---------------------------------------------------------------------------------------------
// Close frames from the server
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn close_frames_with_invalid_codes_fail_with_1002() {
    for code in [
        1005, 1006, 1015, 999, 2000, 5000, 0, 1004, 1016, 2999, 65535,
    ] {
        let frame = close_frame(Some(code), "");
        assert_violation(
            vec![Step::Send(frame)],
            ProtocolError::InvalidCloseCode(code),
            1002,
        )
        .await;
    }
}

#[actix_rt::test]
async fn a_close_frame_with_a_one_byte_payload_fails_with_1002() {
    let frame = frame_bytes(true, opcode::CLOSE, &[0x03]);
    assert_violation(
        vec![Step::Send(frame)],
        ProtocolError::InvalidClosePayload,
        1002,
    )
    .await;
}

#[actix_rt::test]
async fn a_close_reason_that_is_not_utf8_fails_with_1007() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye \xff\xfe");
    let frame = frame_bytes(true, opcode::CLOSE, &payload);
    assert_violation(
        vec![Step::Send(frame)],
        ProtocolError::InvalidCloseReasonUtf8,
        1007,
    )
    .await;
}

#[actix_rt::test]
async fn a_valid_close_is_echoed_with_its_code() {
    let server = server(vec![
        Step::Send(close_frame(Some(4001), "bye")),
        Step::WaitClose(WAIT),
        Step::Close,
    ]);
    let mut probe = Probed::start(server.url("/"), ConnectOptions::default());
    probe.expect_connected().await;

    let echo = server
        .wait_frame(ClientFrame::is_close, WAIT)
        .await
        .expect("the client did not echo the close frame");
    assert_eq!(echo.close_code, Some(4001), "echo {echo:?}");
    assert!(echo.masked);

    let events = probe.until_terminated().await;
    match events.as_slice() {
        [Event::Disconnected(DisconnectReason::ServerClosed(Some(close)), 1), Event::Terminated(_)] =>
        {
            assert_eq!(close, &CloseFrame::new(4001, "bye"));
        }
        other => panic!("expected handle_disconnect(ServerClosed(4001, \"bye\")), got {other:?}"),
    }
    assert_eq!(server.frames().len(), 1, "frames: {:?}", server.frames());
}

// ---------------------------------------------------------------------------------------------
// Valid streams
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_ping_between_fragments_is_answered_and_the_message_arrives_once() {
    // The server waits for the pong before it sends the final fragment: the pong must come while
    // the message is still incomplete.
    let server = server(vec![
        Step::Send(frame_bytes(false, opcode::TEXT, b"Hello, ")),
        Step::Send(frame_bytes(true, opcode::PING, b"p1")),
        Step::ReadFrames(1, WAIT),
        Step::Send(frame_bytes(true, opcode::CONTINUATION, b"world")),
    ]);
    let mut probe = Probed::start(server.url("/"), ConnectOptions::default());
    probe.expect_connected().await;

    match probe.next("the reassembled text").await {
        Event::Frame(Frame::Text(text)) => assert_eq!(text, "Hello, world"),
        other => panic!("expected the text message, got {other:?}"),
    }
    probe.expect_quiet().await;

    let frames = server.frames();
    assert_eq!(frames.len(), 1, "only the pong expected: {frames:?}");
    assert_eq!(frames[0].opcode, opcode::PONG);
    assert_eq!(frames[0].payload, b"p1");
    assert!(frames[0].masked && frames[0].fin);
    let step_timeouts: Vec<RawEvent> = server
        .events()
        .into_iter()
        .filter(|event| matches!(event, RawEvent::StepTimeout { .. }))
        .collect();
    assert!(
        step_timeouts.is_empty(),
        "the pong did not arrive before the final fragment: {step_timeouts:?}"
    );
}

#[actix_rt::test]
async fn a_message_in_three_fragments_arrives_whole() {
    // "Grüße" with 'ü' (C3 BC) cut between the first two fragments; then a binary message.
    let text = "Grüße, fragmented";
    let bytes = text.as_bytes();
    let server = server(then_answer_close(vec![
        Step::Send(frame_bytes(false, opcode::TEXT, &bytes[..3])),
        Step::Send(frame_bytes(false, opcode::CONTINUATION, &bytes[3..9])),
        Step::Send(frame_bytes(true, opcode::CONTINUATION, &bytes[9..])),
        Step::Send(frame_bytes(false, opcode::BINARY, &[1, 2])),
        Step::Send(frame_bytes(false, opcode::CONTINUATION, &[])),
        Step::Send(frame_bytes(true, opcode::CONTINUATION, &[3])),
    ]));
    let (connection, mut frames) = connect_simple(&server).await;

    let first = frames.receive_frame(WAIT).await.expect("the text message");
    assert_eq!(first.as_text(), Some(text));
    let second = frames
        .receive_frame(WAIT)
        .await
        .expect("the binary message");
    assert_eq!(second, Frame::binary(vec![1u8, 2, 3]));
    assert!(matches!(
        frames.receive_frame(QUIET).await,
        Err(ReceiveError::Timeout)
    ));
    assert!(server.frames().is_empty(), "{:?}", server.frames());
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close");
}

#[actix_rt::test]
async fn a_frame_in_the_same_write_as_the_101_is_delivered() {
    let early = [
        text_frame("early bird"),
        frame_bytes(true, opcode::BINARY, b"\x00\xff"),
    ]
    .concat();
    let server = server(then_answer_close(vec![Step::SendWithResponse(early)]));
    let (connection, mut frames) = connect_simple(&server).await;

    let first = frames.receive_frame(WAIT).await.expect("the first frame");
    assert_eq!(first.as_text(), Some("early bird"));
    let second = frames.receive_frame(WAIT).await.expect("the second frame");
    assert_eq!(second, Frame::binary(&b"\x00\xff"[..]));
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close");
}

#[actix_rt::test]
async fn every_client_frame_is_masked_with_a_fresh_key() {
    let server = server(then_answer_close(vec![]));
    let (connection, mut frames) = connect_simple(&server).await;

    let mut sent = Vec::new();
    for index in 0..12 {
        let frame = match index % 4 {
            0 => Frame::text(format!("message {index}")),
            1 => Frame::binary(vec![index as u8; 40 + index]),
            2 => Frame::ping(format!("ping {index}").into_bytes()),
            _ => Frame::pong(Vec::new()),
        };
        connection
            .send_frame(frame.clone())
            .await
            .unwrap_or_else(|error| panic!("sending frame {index}: {error}"));
        sent.push(frame);
    }
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close");
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::ClientClosed(close))) => {
            assert_eq!(close.code, 1000)
        }
        other => panic!("expected the client's close, got {other:?}"),
    }

    let received = server.frames();
    assert_eq!(received.len(), sent.len() + 1, "{received:?}");
    for (frame, expected) in received.iter().zip(&sent) {
        let (op, payload): (u8, &[u8]) = match expected {
            Frame::Text(text) => (opcode::TEXT, text.as_bytes()),
            Frame::Binary(data) => (opcode::BINARY, data),
            Frame::Ping(data) => (opcode::PING, data),
            Frame::Pong(data) => (opcode::PONG, data),
            Frame::Close(_) => unreachable!(),
        };
        assert_eq!(frame.opcode, op, "{frame:?}");
        assert_eq!(frame.payload, payload, "unmasked payload of {frame:?}");
        assert!(frame.fin && frame.rsv == 0, "{frame:?}");
    }
    let close = received.last().unwrap();
    assert!(
        close.is_close() && close.close_code == Some(1000),
        "{close:?}"
    );

    for frame in &received {
        assert!(frame.masked, "unmasked client frame: {frame:?}");
    }
    let keys: HashSet<[u8; 4]> = received
        .iter()
        .map(|frame| frame.mask.expect("a masking key"))
        .collect();
    // 13 random 32-bit keys collide with probability below 1e-7.
    assert_eq!(
        keys.len(),
        received.len(),
        "masking keys repeat: {:?}",
        received.iter().map(|frame| frame.mask).collect::<Vec<_>>()
    );
}

/// The scripted server's handshake answer (the `sha1` and `base64` crates) for the sample key
/// of RFC 6455 §1.3.
#[test]
fn the_scripted_servers_accept_value_is_rfc_6455s() {
    assert_eq!(
        support::sec_websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}
