//! permessage-deflate (RFC 7692) against a scripted raw server that compresses and inflates with
//! zlib itself: the offer, strict checks of every answer, inflating what the server sends
//! (context kept or not, fragmented, between control frames), compressing what the client
//! sends, the size limit on inflated messages, and the protocol errors compression adds.
//!
//! Interop with real peers (Node `ws`, Python `websockets`) is in `compression_interop.rs`.

mod support;

use std::time::Duration;

use minch::{
    ConnectOptions, Connection, Deflate, DisconnectReason, Error, Frame, Frames, ProtocolError,
    ReceiveError,
};
use support::{close_frame, frame_bytes, opcode, ClientFrame, Handshake, RawFrame, Step};
use zlib_rs::{DeflateConfig, DeflateFlush, InflateFlush, Method, Strategy};

const WAIT: Duration = Duration::from_secs(10);
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

// ---------------------------------------------------------------------------------------------
// The server's side of the compression, done with zlib directly
// ---------------------------------------------------------------------------------------------

/// A server's compressor: messages compressed with a sync flush, tail removed (RFC 7692 §7.2.1).
struct ServerDeflater(zlib_rs::Deflate);

impl ServerDeflater {
    fn new(level: i32) -> Self {
        ServerDeflater(zlib_rs::Deflate::new_with_config(DeflateConfig {
            level,
            method: Method::Deflated,
            window_bits: -15,
            mem_level: 8,
            strategy: Strategy::Default,
        }))
    }

    /// One whole message.
    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = self.compress_part(data);
        out.truncate(out.len() - 4);
        out
    }

    /// One message of several parts, compressed one after the other: the tail is removed from
    /// the end of the message only.
    fn compress_parts(&mut self, parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = parts.iter().map(|part| self.compress_part(part)).collect();
        let last = out.last_mut().expect("a part");
        last.truncate(last.len() - 4);
        out
    }

    fn compress_part(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0; data.len() + data.len() / 8 + 1024];
        let (in_before, out_before) = (self.0.total_in(), self.0.total_out());
        self.0
            .compress(data, &mut out, DeflateFlush::SyncFlush)
            .expect("compress");
        assert_eq!((self.0.total_in() - in_before) as usize, data.len());
        out.truncate((self.0.total_out() - out_before) as usize);
        assert!(out.ends_with(&TAIL), "a sync flush ends with the tail");
        out
    }
}

/// A server's inflater for what the client sends.
struct ServerInflater(zlib_rs::Inflate);

impl ServerInflater {
    fn new() -> Self {
        ServerInflater(zlib_rs::Inflate::new(false, 15))
    }

    fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = vec![0; 64 << 20];
        let before = self.0.total_out();
        self.0
            .decompress(&input, &mut out, InflateFlush::SyncFlush)
            .expect("the client's compressed message inflates");
        out.truncate((self.0.total_out() - before) as usize);
        out
    }
}

/// A frame from the server with RSV1 set: the first frame of a compressed message.
fn compressed_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    RawFrame::new(op, payload.to_vec())
        .fin(fin)
        .rsv(0b100)
        .bytes()
}

/// `steps`, then: answer the client's close frame and end the connection.
fn answer_close(mut steps: Vec<Step>) -> Vec<Step> {
    steps.extend([
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1000), "")),
        Step::Close,
    ]);
    steps
}

fn accepting(answer: &str) -> Step {
    Step::Handshake(Handshake::new().header("Sec-WebSocket-Extensions", answer))
}

fn json(i: usize) -> String {
    format!(
        r#"{{"type":"ticker","product_id":"BTC-USD","sequence":{i},"price":"64123.{}","best_bid":"64123.10","best_ask":"64124.00","side":"buy","time":"2026-12-04T20:00:00.000000Z","trade_id":{}}}"#,
        i % 10,
        1_000_000 + i
    )
}

async fn connect(
    server: &support::ScriptedServer,
    options: ConnectOptions,
) -> Result<(Connection, Frames), Error> {
    minch::connect(server.url("/"), Vec::<(String, String)>::new(), options).await
}

async fn next(frames: &mut Frames) -> Frame {
    frames.receive_frame(WAIT).await.expect("a frame")
}

/// The connection's end as the simple API reports it.
async fn ending(frames: &mut Frames) -> DisconnectReason {
    loop {
        match frames.receive_frame(WAIT).await {
            Ok(_) => continue,
            Err(ReceiveError::Closed(reason)) => return reason,
            Err(other) => panic!("the connection did not end: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn offered_by_default_not_when_turned_off() {
    let server = support::scripted_ws_server(answer_close(vec![]));
    let (connection, _frames) = connect(&server, ConnectOptions::default()).await.unwrap();
    assert!(connection
        .response()
        .headers
        .get("sec-websocket-extensions")
        .is_none());
    let (off, _off_frames) = connect(&server, ConnectOptions::default().compression(None))
        .await
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0].to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; client_max_window_bits=15\r\n"
        ),
        "{}",
        requests[0]
    );
    assert!(
        !requests[1]
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{}",
        requests[1]
    );
    connection.close().await;
    off.close().await;
}

#[actix_rt::test]
async fn the_offer_carries_every_chosen_parameter() {
    let server = support::scripted_ws_server(answer_close(vec![]));
    let deflate = Deflate::default()
        .client_max_window_bits(9)
        .server_max_window_bits(Some(8))
        .client_no_context_takeover(true)
        .server_no_context_takeover(true);
    let (connection, _frames) = connect(&server, ConnectOptions::default().compression(deflate))
        .await
        .unwrap();
    assert!(server.requests()[0].contains(
        "permessage-deflate; client_max_window_bits=9; server_max_window_bits=8; \
         client_no_context_takeover; server_no_context_takeover\r\n"
    ));
    connection.close().await;
}

#[actix_rt::test]
async fn a_user_extensions_header_is_a_configuration_error() {
    let server = support::scripted_ws_server(answer_close(vec![]));
    let error = minch::connect(
        server.url("/"),
        vec![("Sec-WebSocket-Extensions", "permessage-deflate")],
        ConnectOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidHeader { name, .. } if name == "Sec-WebSocket-Extensions"),
        "{error:?}"
    );
    assert!(error.is_config());
    assert!(error.to_string().contains("ConnectOptions::compression"));
}

#[actix_rt::test]
async fn every_unacceptable_answer_fails_the_handshake_naming_the_parameter() {
    let cases = [
        ("x-custom", "x-custom"),
        (
            "permessage-deflate, permessage-deflate",
            "permessage-deflate",
        ),
        ("permessage-deflate; mystery", "mystery"),
        (
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=7",
            "server_max_window_bits",
        ),
        (
            "permessage-deflate; client_max_window_bits=16",
            "client_max_window_bits",
        ),
        (
            "permessage-deflate; client_max_window_bits",
            "client_max_window_bits",
        ),
        (
            "permessage-deflate; server_no_context_takeover=yes",
            "server_no_context_takeover",
        ),
    ];
    for (answer, parameter) in cases {
        let server = support::scripted_ws_server(answer_close(vec![accepting(answer)]));
        let error = connect(&server, ConnectOptions::default())
            .await
            .map(|_| ())
            .unwrap_err();
        match &error {
            Error::Extension {
                parameter: named, ..
            } => {
                assert_eq!(named, parameter, "{answer}")
            }
            other => panic!("{answer}: expected Error::Extension, got {other:?}"),
        }
        assert!(!error.is_config(), "a server's answer may change");
        assert!(error.to_string().contains(parameter), "{error}");
    }
}

#[actix_rt::test]
async fn an_extension_enabled_without_an_offer_fails_the_handshake() {
    let server = support::scripted_ws_server(answer_close(vec![accepting("permessage-deflate")]));
    let error = connect(&server, ConnectOptions::default().compression(None))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&error, Error::Extension { parameter, .. } if parameter == "permessage-deflate"),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What the server sends
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn inflates_what_the_server_sends_with_context_fragments_and_controls() {
    let mut deflater = ServerDeflater::new(6);
    let mut steps = vec![accepting("permessage-deflate")];
    // Three messages sharing the compression context: the later ones refer back to the first.
    let texts: Vec<String> = (0..3).map(json).collect();
    for text in &texts {
        steps.push(Step::Send(compressed_frame(
            true,
            opcode::TEXT,
            &deflater.compress(text.as_bytes()),
        )));
    }
    // An uncompressed message in between: RSV1 is per message.
    steps.push(Step::Send(frame_bytes(true, opcode::TEXT, b"plain")));
    // A compressed binary message.
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    steps.push(Step::Send(compressed_frame(
        true,
        opcode::BINARY,
        &deflater.compress(&binary),
    )));
    // A fragmented compressed text message with a ping between its fragments: RSV1 on the
    // first fragment only, the compressed bytes split anywhere.
    let long_text = json(7).repeat(50);
    let compressed = deflater.compress(long_text.as_bytes());
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    steps.push(Step::Send(compressed_frame(false, opcode::TEXT, a)));
    steps.push(Step::Send(frame_bytes(true, opcode::PING, b"between")));
    steps.push(Step::Send(frame_bytes(false, opcode::CONTINUATION, b)));
    steps.push(Step::Send(frame_bytes(true, opcode::CONTINUATION, c)));
    // An empty compressed message: a single 0x00 (RFC 7692 §7.2.3.6).
    steps.push(Step::Send(compressed_frame(true, opcode::TEXT, &[0x00])));
    let server = support::scripted_ws_server(answer_close(steps));

    let (connection, mut frames) = connect(&server, ConnectOptions::default()).await.unwrap();
    assert_eq!(
        connection
            .response()
            .headers
            .get("sec-websocket-extensions")
            .unwrap(),
        "permessage-deflate"
    );
    for text in &texts {
        assert_eq!(next(&mut frames).await.as_text(), Some(text.as_str()));
    }
    assert_eq!(next(&mut frames).await.as_text(), Some("plain"));
    assert_eq!(next(&mut frames).await, Frame::binary(binary));
    assert_eq!(next(&mut frames).await.as_text(), Some(long_text.as_str()));
    assert_eq!(next(&mut frames).await.as_text(), Some(""));
    // The ping between the fragments was answered, uncompressed.
    let pong = server
        .wait_frame(|f| f.opcode == opcode::PONG, WAIT)
        .await
        .expect("the pong");
    assert_eq!((pong.rsv, &pong.payload[..]), (0, &b"between"[..]));
    connection.close().await;
}

#[actix_rt::test]
async fn a_message_that_inflates_past_the_limit_fails_with_1009_at_the_limit() {
    // 100 MB of zeros: about 100 KB compressed, under the frame limit.
    let mut deflater = ServerDeflater::new(9);
    let zeros = vec![0u8; 1 << 20];
    let bomb = deflater.compress_parts(&[&zeros[..]; 100]).concat();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let limit = 1 << 20;
    let server = support::scripted_ws_server(vec![
        accepting("permessage-deflate"),
        Step::Send(compressed_frame(true, opcode::BINARY, &bomb)),
        Step::WaitClose(WAIT),
        Step::Send(close_frame(Some(1009), "")),
        Step::Close,
    ]);
    let options = ConnectOptions::default().max_message_size(limit);
    let (_connection, mut frames) = connect(&server, options).await.unwrap();
    let reason = ending(&mut frames).await;
    assert_eq!(
        reason.error().and_then(|e| match e {
            Error::Protocol(error) => Some(error.clone()),
            _ => None,
        }),
        Some(ProtocolError::MessageTooLarge {
            size: limit as u64 + 1,
            max: limit
        }),
        "{reason:?}"
    );
    let close = server
        .wait_frame(ClientFrame::is_close, WAIT)
        .await
        .expect("the client's close frame");
    assert_eq!(close.close_code, Some(1009));
}

#[actix_rt::test]
async fn a_fragmented_message_is_held_to_the_limit_across_fragments() {
    let mut deflater = ServerDeflater::new(6);
    let chunk: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let limit = 10_000;
    let parts = deflater.compress_parts(&[&chunk, &chunk, &chunk]);
    let [first, second, third] = &parts[..] else {
        unreachable!()
    };
    let server = support::scripted_ws_server(vec![
        accepting("permessage-deflate"),
        Step::Send(compressed_frame(false, opcode::BINARY, first)),
        Step::Send(frame_bytes(false, opcode::CONTINUATION, second)),
        Step::Send(frame_bytes(true, opcode::CONTINUATION, third)),
        Step::WaitClose(WAIT),
        Step::Close,
    ]);
    let options = ConnectOptions::default().max_message_size(limit);
    let (_connection, mut frames) = connect(&server, options).await.unwrap();
    let reason = ending(&mut frames).await;
    assert!(
        matches!(
            reason.error(),
            Some(Error::Protocol(ProtocolError::MessageTooLarge {
                max: 10_000,
                ..
            }))
        ),
        "{reason:?}"
    );
}

#[actix_rt::test]
async fn compression_bits_in_the_wrong_place_or_bad_data_fail_the_connection() {
    let mut deflater = ServerDeflater::new(6);
    let compressed = deflater.compress(b"hello hello hello");
    let cases: Vec<(&str, Vec<Step>, ProtocolError, u16)> = vec![
        (
            "RSV1 on a continuation",
            vec![
                Step::Send(compressed_frame(false, opcode::TEXT, &compressed)),
                Step::Send(
                    RawFrame::new(opcode::CONTINUATION, b"x".to_vec())
                        .rsv(0b100)
                        .bytes(),
                ),
            ],
            ProtocolError::MisplacedCompressedBit,
            1002,
        ),
        (
            "RSV1 on a ping",
            vec![Step::Send(compressed_frame(true, opcode::PING, b"p"))],
            ProtocolError::MisplacedCompressedBit,
            1002,
        ),
        (
            "RSV2",
            vec![Step::Send(
                RawFrame::new(opcode::TEXT, b"x".to_vec())
                    .rsv(0b010)
                    .bytes(),
            )],
            ProtocolError::ReservedBits,
            1002,
        ),
        (
            "data that does not inflate",
            vec![Step::Send(compressed_frame(
                true,
                opcode::TEXT,
                &[0xff, 0xff],
            ))],
            ProtocolError::InvalidCompressedData("invalid block type"),
            1007,
        ),
        (
            "inflated text that is not UTF-8",
            vec![Step::Send(compressed_frame(
                true,
                opcode::TEXT,
                &ServerDeflater::new(6).compress(&[b'a', 0xff, b'b']),
            ))],
            ProtocolError::InvalidUtf8,
            1007,
        ),
    ];
    for (case, sends, expected, code) in cases {
        let mut steps = vec![accepting("permessage-deflate")];
        steps.extend(sends);
        steps.extend([Step::WaitClose(WAIT), Step::Close]);
        let server = support::scripted_ws_server(steps);
        let (_connection, mut frames) = connect(&server, ConnectOptions::default()).await.unwrap();
        let reason = ending(&mut frames).await;
        match (reason.error(), &expected) {
            (
                Some(Error::Protocol(ProtocolError::InvalidCompressedData(_))),
                ProtocolError::InvalidCompressedData(_),
            ) => {}
            (Some(Error::Protocol(error)), _) => assert_eq!(error, &expected, "{case}"),
            _ => panic!("{case}: {reason:?}"),
        }
        let close = server
            .wait_frame(ClientFrame::is_close, WAIT)
            .await
            .unwrap_or_else(|| panic!("{case}: no close frame"));
        assert_eq!(close.close_code, Some(code), "{case}");
    }
}

#[actix_rt::test]
async fn rsv1_without_compression_negotiated_stays_a_protocol_error() {
    let server = support::scripted_ws_server(vec![
        Step::Send(compressed_frame(true, opcode::TEXT, b"x")),
        Step::WaitClose(WAIT),
        Step::Close,
    ]);
    let (_connection, mut frames) = connect(&server, ConnectOptions::default()).await.unwrap();
    let reason = ending(&mut frames).await;
    assert!(
        matches!(
            reason.error(),
            Some(Error::Protocol(ProtocolError::ReservedBits))
        ),
        "{reason:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What the client sends
// ---------------------------------------------------------------------------------------------

/// Sends `messages` (and a ping) on a connection whose server answered `answer`, and returns
/// the data frames the server received.
async fn client_frames(answer: &str, deflate: Deflate, messages: &[Frame]) -> Vec<ClientFrame> {
    let server = support::scripted_ws_server(answer_close(vec![accepting(answer)]));
    let options = ConnectOptions::default().compression(deflate);
    let (connection, _frames) = connect(&server, options).await.unwrap();
    for message in messages {
        connection.send_frame(message.clone()).await.unwrap();
    }
    connection.send_frame(Frame::ping(&b"p"[..])).await.unwrap();
    let ping = server
        .wait_frame(|f| f.opcode == opcode::PING, WAIT)
        .await
        .expect("the ping");
    assert_eq!(ping.rsv, 0, "control frames are never compressed");
    connection.close().await;
    server
        .frames()
        .into_iter()
        .filter(|f| f.opcode == opcode::TEXT || f.opcode == opcode::BINARY)
        .collect()
}

#[actix_rt::test]
async fn compresses_what_it_sends_keeping_the_context() {
    let messages: Vec<Frame> = (0..20)
        .map(|i| Frame::text(json(i)))
        .chain([Frame::binary(vec![7u8; 100_000]), Frame::text("short")])
        .collect();
    let frames = client_frames("permessage-deflate", Deflate::default(), &messages).await;
    assert_eq!(frames.len(), messages.len());
    let mut inflater = ServerInflater::new();
    let mut wire = 0;
    let mut plain = 0;
    for (frame, message) in frames.iter().zip(&messages) {
        assert!(frame.fin);
        let payload = match message {
            Frame::Text(text) => text.as_bytes().to_vec(),
            Frame::Binary(data) => data.to_vec(),
            _ => unreachable!(),
        };
        if payload.len() < Deflate::default().threshold {
            assert_eq!(frame.rsv, 0, "a short message goes out as it is");
            assert_eq!(frame.payload, payload);
            continue;
        }
        assert_eq!(frame.rsv, 0b100, "RSV1 marks a compressed message");
        assert_eq!(inflater.inflate(&frame.payload), payload);
        wire += frame.payload.len();
        plain += payload.len();
    }
    // Repetitive JSON and a run of sevens compress well.
    assert!(wire * 20 < plain, "{wire} bytes on the wire for {plain}");
}

#[actix_rt::test]
async fn without_client_context_takeover_every_message_stands_alone() {
    // The server asks for it; the client must comply even though it did not offer it.
    let messages: Vec<Frame> = (0..5).map(|i| Frame::text(json(i))).collect();
    let frames = client_frames(
        "permessage-deflate; client_no_context_takeover",
        Deflate::default(),
        &messages,
    )
    .await;
    for (frame, message) in frames.iter().zip(&messages) {
        assert_eq!(frame.rsv, 0b100);
        // A fresh inflater for every message: no reference to an earlier one.
        let inflated = ServerInflater::new().inflate(&frame.payload);
        assert_eq!(
            Some(inflated.as_slice()),
            message.as_text().map(str::as_bytes)
        );
    }
}

#[actix_rt::test]
async fn a_server_asking_for_a_256_byte_window_gets_uncompressed_messages() {
    let messages = vec![Frame::text(json(1)), Frame::text(json(2))];
    let frames = client_frames(
        "permessage-deflate; client_max_window_bits=8",
        Deflate::default(),
        &messages,
    )
    .await;
    assert_eq!(frames.len(), 2);
    for (frame, message) in frames.iter().zip(&messages) {
        assert_eq!(frame.rsv, 0);
        assert_eq!(
            Some(frame.payload.as_slice()),
            message.as_text().map(str::as_bytes)
        );
    }
}

#[actix_rt::test]
async fn threshold_zero_compresses_even_the_empty_message() {
    let messages = vec![Frame::text(""), Frame::binary(vec![1u8])];
    let frames = client_frames(
        "permessage-deflate",
        Deflate::default().threshold(0),
        &messages,
    )
    .await;
    let mut inflater = ServerInflater::new();
    assert_eq!(frames[0].rsv, 0b100);
    assert_eq!(frames[0].payload, [0x00]);
    assert_eq!(inflater.inflate(&frames[0].payload), b"");
    assert_eq!(frames[1].rsv, 0b100);
    assert_eq!(inflater.inflate(&frames[1].payload), [1]);
}

#[actix_rt::test]
async fn invalid_settings_fail_before_connecting() {
    let server = support::scripted_ws_server(answer_close(vec![]));
    for deflate in [
        Deflate::default().client_max_window_bits(8),
        Deflate::default().server_max_window_bits(Some(16)),
        Deflate::default().memory_level(0),
        Deflate::default().level(10),
    ] {
        let error = connect(
            &server,
            ConnectOptions::default().compression(deflate.clone()),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidOptions(message) if message.contains("compression")),
            "{deflate:?}: {error:?}"
        );
    }
    assert_eq!(server.accepted(), 0);
}

#[actix_rt::test]
async fn after_an_idle_keepalive_period_the_client_compresses_afresh_and_stays_readable() {
    let server = support::scripted_ws_server(answer_close(vec![accepting("permessage-deflate")]));
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(40)))
        .pong_timeout(Duration::from_secs(30));
    let (connection, _frames) = connect(&server, options).await.unwrap();
    let first = json(1);
    connection
        .send_frame(Frame::text(first.clone()))
        .await
        .unwrap();
    // Three keepalive pings: the compressor is idle for whole periods and is given back.
    for _ in 0..3 {
        assert!(
            server
                .wait_frame(|f| f.opcode == opcode::PING, WAIT)
                .await
                .is_some(),
            "a keepalive ping"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let second = json(2);
    connection
        .send_frame(Frame::text(second.clone()))
        .await
        .unwrap();
    connection.close().await;
    // One inflater for the whole connection, as the server keeps its context.
    let mut inflater = ServerInflater::new();
    let texts: Vec<Vec<u8>> = server
        .frames()
        .iter()
        .filter(|f| f.opcode == opcode::TEXT)
        .map(|f| {
            assert_eq!(f.rsv, 0b100);
            inflater.inflate(&f.payload)
        })
        .collect();
    assert_eq!(texts, [first.into_bytes(), second.into_bytes()]);
}
