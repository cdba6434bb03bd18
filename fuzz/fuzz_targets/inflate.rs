//! permessage-deflate as the client sees it: the server's answer to a fuzzer-chosen offer,
//! then a server→client stream of (possibly compressed) frames inflated under a fuzzer-chosen
//! `max_message_size`.
//!
//! Input: 2 bytes choose the message limit, 2 bytes the offer, 1 byte the answer's length;
//! then the answer (a `Sec-WebSocket-Extensions` value), then the stream. Checks:
//! - no panic, no hang;
//! - negotiation: an accepted answer gives window bits of 8 to 15, no larger than offered;
//!   the decoder is built exactly when negotiation succeeds;
//! - no inflated message over `max_message_size` (the limit holds inside zlib's output too);
//! - the frames and the first error do not depend on where the reads end;
//! - every inflated data message the client then sends (compressed with the agreed
//!   parameters) inflates back to itself, as the server would read it.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use minch::{
    fuzz_api::{negotiate_deflate, ServerStream},
    Deflate, Frame, ProtocolError,
};

const MAX_FRAME_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let max_message_size = 1 + usize::from(u16::from_le_bytes([head[0], head[1]])) * 16;
    let offer = offer(head[2], head[3]);
    let answer_len = usize::from(head[4] % 128);
    if rest.len() < answer_len {
        return;
    }
    let (answer, stream) = rest.split_at(answer_len);
    let answer = [answer];

    let negotiated = negotiate_deflate(&offer, &answer);
    let decoder = ServerStream::with_deflate(MAX_FRAME_SIZE, max_message_size, &offer, &answer);
    assert_eq!(negotiated.is_ok(), decoder.is_ok());
    let Ok(Some(params)) = negotiated else {
        return;
    };
    let (client_bits, server_bits, _, _) = params;
    assert!((8..=15).contains(&client_bits) && client_bits <= offer.client_max_window_bits);
    assert!((8..=15).contains(&server_bits));
    if let Some(asked) = offer.server_max_window_bits {
        // An accepted answer names a window, no larger than the one asked for.
        assert!(
            server_bits <= asked,
            "the server's window is over the one asked for"
        );
    }
    if offer.server_no_context_takeover {
        assert!(
            params.3,
            "server_no_context_takeover asked for, but not agreed"
        );
    }

    let split = stream.len() / 3;
    let (frames, error) = decode(&offer, &answer, max_message_size, stream, &[stream.len()]);
    let (split_frames, split_error) =
        decode(&offer, &answer, max_message_size, stream, &[split, 1, 7]);
    assert_eq!(
        frames, split_frames,
        "the frames depend on the read boundaries"
    );
    assert_eq!(
        error, split_error,
        "the error depends on the read boundaries"
    );

    // What the client sends back, compressed with the agreed parameters, reads back the same.
    let mut client = ServerStream::with_deflate(MAX_FRAME_SIZE, max_message_size, &offer, &answer)
        .expect("negotiated above");
    let mut server = ServerStream::for_client_frames(MAX_FRAME_SIZE, usize::MAX, params);
    for frame in frames
        .iter()
        .filter(|f| matches!(f, Frame::Text(_) | Frame::Binary(_)))
    {
        let mut encoded = BytesMut::new();
        client.encode(frame.clone(), &mut encoded);
        let mut unmasked = BytesMut::from(&unmask(&encoded)[..]);
        let decoded = server
            .decode(&mut unmasked)
            .expect("the client's compressed frame inflates")
            .expect("a whole frame");
        assert_eq!(
            &decoded, frame,
            "the client's compression changed the message"
        );
    }
});

/// An offer from two bytes: every window size, context flag and threshold combination.
fn offer(a: u8, b: u8) -> Deflate {
    Deflate::default()
        .client_max_window_bits(9 + a % 7)
        .server_max_window_bits((a & 0x08 != 0).then_some(8 + (a >> 4) % 8))
        .client_no_context_takeover(b & 1 != 0)
        .server_no_context_takeover(b & 2 != 0)
        .memory_level(1 + (b >> 2) % 9)
        .threshold(usize::from(b >> 6) * 32)
}

/// Decodes `stream` with a fresh negotiated decoder, in reads of `read_sizes` (cycled, at
/// least 1 byte), until it yields nothing after each read; the frames and the first error.
fn decode(
    offer: &Deflate,
    answer: &[&[u8]],
    max_message_size: usize,
    mut stream: &[u8],
    read_sizes: &[usize],
) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut decoder = ServerStream::with_deflate(MAX_FRAME_SIZE, max_message_size, offer, answer)
        .expect("negotiated before");
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut sizes = read_sizes.iter().cycle();
    while !stream.is_empty() {
        let size = sizes.next().copied().unwrap_or(stream.len()).max(1);
        let (read, rest) = stream.split_at(size.min(stream.len()));
        stream = rest;
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Frame::Text(_) | Frame::Binary(_) = &frame {
                        let len = frame.payload().map_or(0, <[u8]>::len);
                        assert!(len <= max_message_size, "{len} bytes inflated");
                    }
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

/// A client frame as a server reads it: mask bit cleared, payload unmasked.
fn unmask(frame: &[u8]) -> Vec<u8> {
    let (len_len, len) = match frame[1] & 0x7f {
        126 => (2, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(&frame[2..10]);
            (8, u64::from_be_bytes(be) as usize)
        }
        short => (0, usize::from(short)),
    };
    let key_at = 2 + len_len;
    let key = [
        frame[key_at],
        frame[key_at + 1],
        frame[key_at + 2],
        frame[key_at + 3],
    ];
    let mut out = vec![frame[0], frame[1] & 0x7f];
    out.extend_from_slice(&frame[2..key_at]);
    let payload = &frame[key_at + 4..key_at + 4 + len];
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}
