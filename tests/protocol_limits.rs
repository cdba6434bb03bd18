//! Size limits on what the server sends (RFC 6455 §10.4, close code 1009), checked from frame
//! headers before payloads are buffered, and the large-but-allowed cases that must still work.
//!
//! The tests here share the process's memory, and one of them measures it: they run one at a
//! time, behind [`SERIAL`].

mod support;

use std::time::{Duration, Instant};

use minch::{
    ConnectOptions, Connection, DisconnectReason, Error, Frame, Frames, ProtocolError, ReceiveError,
};
use tokio::sync::Mutex;

use support::{
    close_frame, frame_bytes, frame_header, opcode, ClientFrame, RawEvent, ScriptedServer, Step,
};

/// Bound for the waits of small cases.
const WAIT: Duration = Duration::from_secs(5);
/// Bound for the waits of the multi-megabyte cases (debug builds are slow).
const BIG_WAIT: Duration = Duration::from_secs(20);
/// Default `max_frame_size`.
const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Serialises the tests of this binary, so that the memory measurement sees only its own test.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The process's resident set size, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// `steps`, then: wait for the client's close frame, answer it with 1000 and drop TCP.
fn then_answer_close(mut steps: Vec<Step>) -> Vec<Step> {
    steps.push(Step::WaitClose(Duration::from_secs(60)));
    steps.push(Step::Send(close_frame(Some(1000), "")));
    steps.push(Step::Close);
    steps
}

async fn connect(server: &ScriptedServer, options: ConnectOptions) -> (Connection, Frames) {
    let connecting = minch::connect(server.url("/"), Vec::<(String, String)>::new(), options);
    actix_rt::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// Expects the connection to end with `expected` as the next thing `frames` reports, the
/// client's close frame (its only frame) to carry 1009, and the TCP connection to be dropped.
async fn expect_too_big(server: &ScriptedServer, frames: &mut Frames, expected: ProtocolError) {
    match frames.receive_frame(WAIT).await {
        Err(ReceiveError::Closed(DisconnectReason::Error(Error::Protocol(error)))) => {
            assert_eq!(error, expected)
        }
        other => panic!("expected the connection to fail with {expected:?}, got {other:?}"),
    }
    assert_eq!(expected.close_code(), 1009);
    let close = server
        .wait_frame(ClientFrame::is_close, WAIT)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no close frame from the client; events {:?}",
                server.events()
            )
        });
    assert_eq!(close.close_code, Some(1009), "{close:?}");
    assert!(close.masked);
    assert!(
        server
            .wait_event(|event| matches!(event, RawEvent::Eof { .. }), WAIT)
            .await
            .is_some(),
        "the client did not drop the connection"
    );
    assert_eq!(server.frames().len(), 1, "{:?}", server.frames());
}

#[actix_rt::test]
async fn a_header_announcing_2_pow_40_bytes_is_refused_at_once_without_allocating() {
    let _serial = SERIAL.lock().await;
    let before = resident_bytes();

    // Only the header and a few bytes of payload: the client must not wait for the rest.
    let mut bytes = frame_header(true, opcode::BINARY, 1 << 40);
    bytes.extend_from_slice(b"the first bytes of a terabyte");
    let server = support::scripted_ws_server(vec![Step::Send(bytes)]);
    let started = Instant::now();
    let (_connection, mut frames) = connect(&server, ConnectOptions::default()).await;
    expect_too_big(
        &server,
        &mut frames,
        ProtocolError::FrameTooLarge {
            size: 1 << 40,
            max: DEFAULT_MAX_FRAME,
        },
    )
    .await;
    let elapsed = started.elapsed();

    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "2^40-byte header: closed after {elapsed:?}; VmRSS {} KiB -> {} KiB",
        before / 1024,
        after / 1024
    );
    assert!(
        growth < 64 << 20,
        "resident memory grew by {} MiB",
        growth >> 20
    );
}

#[actix_rt::test]
async fn a_frame_over_max_frame_size_fails_with_1009() {
    let _serial = SERIAL.lock().await;
    // A frame of exactly the limit passes; one of twice the limit fails.
    let server = support::scripted_ws_server(vec![
        Step::Send(frame_bytes(true, opcode::BINARY, &[7; 1024])),
        Step::Send(frame_bytes(true, opcode::BINARY, &[8; 2048])),
    ]);
    let options = ConnectOptions::default().max_frame_size(1024);
    let (_connection, mut frames) = connect(&server, options).await;

    let first = frames.receive_frame(WAIT).await.expect("the 1 KiB frame");
    assert_eq!(first, Frame::binary(vec![7u8; 1024]));
    expect_too_big(
        &server,
        &mut frames,
        ProtocolError::FrameTooLarge {
            size: 2048,
            max: 1024,
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_message_over_max_message_size_fails_with_1009() {
    let _serial = SERIAL.lock().await;
    // Three 2 KiB fragments: the third takes the message to 6 KiB, over 4 KiB.
    let fragments = [
        frame_bytes(false, opcode::TEXT, &[b'a'; 2048]),
        frame_bytes(false, opcode::CONTINUATION, &[b'b'; 2048]),
        frame_bytes(true, opcode::CONTINUATION, &[b'c'; 2048]),
    ]
    .concat();
    let server = support::scripted_ws_server(vec![Step::Send(fragments)]);
    let options = ConnectOptions::default().max_message_size(4096);
    let (_connection, mut frames) = connect(&server, options).await;

    expect_too_big(
        &server,
        &mut frames,
        ProtocolError::MessageTooLarge {
            size: 6144,
            max: 4096,
        },
    )
    .await;
}

#[actix_rt::test]
async fn a_frame_of_the_default_max_frame_size_is_accepted() {
    let _serial = SERIAL.lock().await;
    let payload: Vec<u8> = (0..DEFAULT_MAX_FRAME)
        .map(|index| (index % 251) as u8)
        .collect();
    let server = support::scripted_ws_server(then_answer_close(vec![Step::Send(frame_bytes(
        true,
        opcode::BINARY,
        &payload,
    ))]));
    let (connection, mut frames) = connect(&server, ConnectOptions::default()).await;

    let started = Instant::now();
    let frame = frames
        .receive_frame(BIG_WAIT)
        .await
        .expect("the 16 MiB frame");
    eprintln!("16 MiB frame received in {:?}", started.elapsed());
    match frame {
        Frame::Binary(data) => {
            assert_eq!(data.len(), DEFAULT_MAX_FRAME);
            assert!(data[..] == payload[..], "the payload differs");
        }
        other => panic!(
            "expected a binary frame, got another kind of {} bytes",
            other.payload_len()
        ),
    }
    assert!(server.frames().is_empty(), "{:?}", server.frames());

    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close");
    let close = server.frames();
    assert_eq!(close.len(), 1);
    assert_eq!(close[0].close_code, Some(1000));
}

#[actix_rt::test]
async fn one_byte_over_the_default_max_frame_size_fails_with_1009() {
    let _serial = SERIAL.lock().await;
    let header = frame_header(true, opcode::BINARY, DEFAULT_MAX_FRAME as u64 + 1);
    let server = support::scripted_ws_server(vec![Step::Send(header)]);
    let (_connection, mut frames) = connect(&server, ConnectOptions::default()).await;
    expect_too_big(
        &server,
        &mut frames,
        ProtocolError::FrameTooLarge {
            size: DEFAULT_MAX_FRAME as u64 + 1,
            max: DEFAULT_MAX_FRAME,
        },
    )
    .await;
}

#[actix_rt::test]
async fn sixty_five_thousand_fragments_assemble_into_one_message() {
    let _serial = SERIAL.lock().await;
    const FRAGMENTS: usize = 65_536;
    const FRAGMENT_LEN: usize = 64;
    // Fragment `i` is filled with `i % 256`, so order and completeness can be checked.
    let mut stream = Vec::with_capacity(FRAGMENTS * (2 + FRAGMENT_LEN));
    for index in 0..FRAGMENTS {
        let op = if index == 0 {
            opcode::BINARY
        } else {
            opcode::CONTINUATION
        };
        let fin = index == FRAGMENTS - 1;
        stream.extend_from_slice(&frame_bytes(fin, op, &[index as u8; FRAGMENT_LEN]));
    }
    let server = support::scripted_ws_server(then_answer_close(vec![Step::Send(stream)]));
    let (connection, mut frames) = connect(&server, ConnectOptions::default()).await;

    let started = Instant::now();
    let frame = frames
        .receive_frame(BIG_WAIT)
        .await
        .expect("the 4 MiB message");
    eprintln!("65 536 fragments assembled in {:?}", started.elapsed());
    let data = match frame {
        Frame::Binary(data) => data,
        other => panic!(
            "expected a binary message, got another kind of {} bytes",
            other.payload_len()
        ),
    };
    assert_eq!(data.len(), FRAGMENTS * FRAGMENT_LEN);
    for (index, chunk) in data.chunks(FRAGMENT_LEN).enumerate() {
        assert!(
            chunk.iter().all(|&byte| byte == index as u8),
            "fragment {index} is out of place"
        );
    }
    assert!(matches!(
        frames.receive_frame(Duration::from_millis(200)).await,
        Err(ReceiveError::Timeout)
    ));
    assert!(server.frames().is_empty(), "{:?}", server.frames());
    actix_rt::time::timeout(WAIT, connection.close())
        .await
        .expect("close");
}
