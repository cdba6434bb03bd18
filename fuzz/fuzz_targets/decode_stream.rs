//! The server→client byte stream through the client's decoder and message assembly, with
//! fuzzer-chosen limits and read boundaries.
//!
//! Input: 4 bytes choose the limits, 1 byte the number of read sizes, 2 bytes each read size;
//! the rest is the stream. Checks:
//! - no panic, no hang;
//! - memory: the read buffer never grows far past what was fed plus one reserve step;
//! - every accepted frame within the limits, every close code one a peer may send;
//! - the frames (and the first error) do not depend on where the reads end;
//! - every accepted message re-encodes as unmasked server frames (fragmented to fit
//!   `max_frame_size`) that decode to the same frames;
//! - every accepted frame the client may send survives the client's masked encoding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use minch::{fuzz_api::ServerStream, Frame, ProtocolError};

/// The decoder's `RESERVE_STEP`: the most room it reserves ahead of a payload at once.
const RESERVE_STEP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((limits, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_frame_size = pick_limit(limits[0], limits[1], 125);
    let max_message_size = pick_limit(limits[2], limits[3], 1);
    let Some((&reads, rest)) = rest.split_first() else {
        return;
    };
    let reads = usize::from(reads % 16);
    if rest.len() < 2 * reads {
        return;
    }
    let (read_sizes, stream) = rest.split_at(2 * reads);
    let read_sizes: Vec<usize> = read_sizes
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % 4096)
        .collect();

    let (frames, error) = decode_in_reads(max_frame_size, max_message_size, stream, &read_sizes);
    let (whole_frames, whole_error) =
        decode_in_reads(max_frame_size, max_message_size, stream, &[]);
    assert_eq!(
        frames, whole_frames,
        "the frames depend on the read boundaries"
    );
    assert_eq!(
        error, whole_error,
        "the error depends on the read boundaries"
    );

    // What was accepted, written again the way a server may write it, decodes the same.
    let mut again = Vec::new();
    for frame in &frames {
        write_server_frame(frame, max_frame_size, &mut again);
    }
    let (decoded, error) = decode_in_reads(max_frame_size, max_message_size, &again, &[]);
    assert_eq!(error, None, "re-encoded frames were refused");
    assert_eq!(decoded, frames, "re-encoded frames decode differently");

    // And the client's own encoding of them, unmasked as a server does.
    let mut client = ServerStream::new(max_frame_size, max_message_size);
    for frame in &frames {
        if minch::fuzz_api::validate_outgoing(frame).is_err() || payload_len(frame) > max_frame_size
        {
            continue;
        }
        let mut encoded = BytesMut::new();
        client.encode(frame.clone(), &mut encoded);
        let unmasked = unmask(&encoded);
        let (decoded, error) = decode_in_reads(max_frame_size, max_message_size, &unmasked, &[]);
        assert_eq!(
            error, None,
            "the client's encoding of {frame:?} was refused"
        );
        assert_eq!(
            decoded,
            [frame.clone()],
            "the client's encoding changed the frame"
        );
    }
});

/// A limit from two bytes: often small (down to `min`), sometimes up to 16 MiB.
fn pick_limit(kind: u8, value: u8, min: usize) -> usize {
    let value = usize::from(value);
    match kind % 4 {
        0 => min + value,
        1 => min + value * 64,
        2 => min + value * 4096,
        _ => (min + value) << 16,
    }
}

/// Feeds `stream` to a fresh decoder in reads of `read_sizes` (cycled; 0 reads one byte;
/// none: all at once), calling `decode` until it yields nothing after each read. Returns the
/// frames and the first error.
fn decode_in_reads(
    max_frame_size: usize,
    max_message_size: usize,
    mut stream: &[u8],
    read_sizes: &[usize],
) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut decoder = ServerStream::new(max_frame_size, max_message_size);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut sizes = read_sizes.iter().cycle();
    while !stream.is_empty() {
        let size = match sizes.next() {
            Some(size) => (*size).max(1),
            None => stream.len(),
        };
        let (read, rest) = stream.split_at(size.min(stream.len()));
        stream = rest;
        buf.extend_from_slice(read);
        fed += read.len();
        loop {
            let result = decoder.decode(&mut buf);
            let bound = 2 * (fed + RESERVE_STEP.min(max_frame_size)) + 4096;
            assert!(
                buf.capacity() <= bound,
                "read buffer of {} bytes after {fed} bytes fed (limit {max_frame_size})",
                buf.capacity()
            );
            match result {
                Ok(Some(frame)) => {
                    check_limits(&frame, max_frame_size, max_message_size);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.as_bytes().len(),
        Frame::Binary(data) | Frame::Ping(data) | Frame::Pong(data) => data.len(),
        Frame::Close(None) => 0,
        Frame::Close(Some(close)) => 2 + close.reason.len(),
    }
}

/// What every accepted frame must satisfy: the limits, and for a close frame a code a peer
/// may send (RFC 6455 §7.4: 1000–1003, 1007–1014 as registered, 3000–4999).
fn check_limits(frame: &Frame, max_frame_size: usize, max_message_size: usize) {
    if let Frame::Close(Some(close)) = frame {
        assert!(
            matches!(close.code.0, 1000..=1003 | 1007..=1014 | 3000..=4999),
            "close code {} accepted",
            close.code.0
        );
    }
    let len = payload_len(frame);
    match frame {
        Frame::Text(_) | Frame::Binary(_) => assert!(len <= max_message_size, "{len} bytes"),
        _ => assert!(
            len <= 125 && len <= max_frame_size,
            "control frame of {len} bytes"
        ),
    }
}

/// Appends `frame` as a server writes it: unmasked, data fragmented to fit `max_frame_size`.
fn write_server_frame(frame: &Frame, max_frame_size: usize, out: &mut Vec<u8>) {
    let (opcode, payload): (u8, Vec<u8>) = match frame {
        Frame::Text(text) => (0x1, text.as_bytes().to_vec()),
        Frame::Binary(data) => (0x2, data.to_vec()),
        Frame::Ping(data) => (0x9, data.to_vec()),
        Frame::Pong(data) => (0xA, data.to_vec()),
        Frame::Close(None) => (0x8, Vec::new()),
        Frame::Close(Some(close)) => {
            let mut payload = close.code.0.to_be_bytes().to_vec();
            payload.extend_from_slice(close.reason.as_bytes());
            (0x8, payload)
        }
    };
    if opcode & 0x8 != 0 || payload.len() <= max_frame_size {
        write_header(true, opcode, payload.len(), out);
        out.extend_from_slice(&payload);
        return;
    }
    let fragments: Vec<&[u8]> = payload.chunks(max_frame_size).collect();
    for (i, fragment) in fragments.iter().enumerate() {
        let opcode = if i == 0 { opcode } else { 0x0 };
        write_header(i + 1 == fragments.len(), opcode, fragment.len(), out);
        out.extend_from_slice(fragment);
    }
}

fn write_header(fin: bool, opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// A masked client frame as the server reads it: mask bit cleared, key removed, payload
/// unmasked.
fn unmask(frame: &[u8]) -> Vec<u8> {
    assert!(frame[1] & 0x80 != 0, "a client frame must be masked");
    let length_len = match frame[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let key_at = 2 + length_len;
    let key = &frame[key_at..key_at + 4];
    let mut out = vec![frame[0], frame[1] & 0x7F];
    out.extend_from_slice(&frame[2..key_at]);
    let payload = frame[key_at + 4..].iter().enumerate();
    out.extend(payload.map(|(i, byte)| byte ^ key[i % 4]));
    out
}
