//! Encoding: the client's frames to masked bytes (RFC 6455 §5.2, §5.3), and the rules a frame
//! must keep before it may be sent.

use actix_codec::Encoder;
use bytes::BytesMut;

use super::{
    codec::Codec,
    header::{FrameHeader, OpCode, RSV1},
    mask::extend_masked,
    CodecError, ProtocolError,
};
use crate::frame::Frame;

/// The longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Checks that `frame` may be sent: control payloads of at most 125 bytes (so close reasons of at
/// most 123) and a close code allowed on the wire (RFC 6455 §5.5, §7.4).
///
/// The client calls this before handing a frame to the encoder, so that a bad frame from the
/// application is reported to it instead of reaching the server.
pub(crate) fn validate_outgoing(frame: &Frame) -> Result<(), ProtocolError> {
    match frame {
        Frame::Text(_) | Frame::Binary(_) | Frame::Close(None) => Ok(()),
        Frame::Ping(payload) | Frame::Pong(payload) => {
            if payload.len() > MAX_CONTROL_PAYLOAD {
                Err(ProtocolError::OutgoingControlFrameTooLong(payload.len()))
            } else {
                Ok(())
            }
        }
        Frame::Close(Some(close)) => {
            if !close.code.is_sendable() {
                Err(ProtocolError::OutgoingInvalidCloseCode(close.code.0))
            } else if 2 + close.reason.len() > MAX_CONTROL_PAYLOAD {
                Err(ProtocolError::OutgoingCloseReasonTooLong(
                    close.reason.len(),
                ))
            } else {
                Ok(())
            }
        }
    }
}

impl Encoder<Frame> for Codec {
    type Error = CodecError;

    /// Writes `frame` as one final, masked frame: the client never fragments what it sends.
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        debug_assert_eq!(validate_outgoing(&frame), Ok(()));
        let start = dst.len();
        let key = self.mask_keys.next();
        match &frame {
            Frame::Text(text) => self.write_data_frame(dst, OpCode::Text, text.as_bytes(), key),
            Frame::Binary(data) => self.write_data_frame(dst, OpCode::Binary, data, key),
            Frame::Ping(data) => write_masked_frame(dst, OpCode::Ping, 0, &[data], key),
            Frame::Pong(data) => write_masked_frame(dst, OpCode::Pong, 0, &[data], key),
            Frame::Close(None) => write_masked_frame(dst, OpCode::Close, 0, &[], key),
            Frame::Close(Some(close)) => {
                // The body is the code in network byte order, then the reason (RFC 6455 §5.5.1).
                let code = close.code.0.to_be_bytes();
                let parts = [&code[..], close.reason.as_bytes()];
                write_masked_frame(dst, OpCode::Close, 0, &parts, key);
            }
        }
        self.last_encoded_len = dst.len() - start;
        Ok(())
    }
}

impl Codec {
    /// Appends a text or binary message as one frame: compressed, with RSV1 set, when
    /// permessage-deflate was negotiated and the message is worth compressing (RFC 7692 §6).
    fn write_data_frame(
        &mut self,
        dst: &mut BytesMut,
        opcode: OpCode,
        payload: &[u8],
        key: [u8; 4],
    ) {
        if self.compressor.is_some() && self.write_compressed(dst, opcode, payload, key) {
            return;
        }
        write_masked_frame(dst, opcode, 0, &[payload], key);
    }

    /// Appends `payload` compressed if it is worth compressing; `false` (nothing written) if
    /// not. Out of line: the uncompressed path stays small.
    #[inline(never)]
    fn write_compressed(
        &mut self,
        dst: &mut BytesMut,
        opcode: OpCode,
        payload: &[u8],
        key: [u8; 4],
    ) -> bool {
        let Some(compressor) = &mut self.compressor else {
            return false;
        };
        if !compressor.compress(payload) {
            return false;
        }
        write_masked_frame(dst, opcode, RSV1, &[compressor.compressed()], key);
        compressor.written();
        true
    }
}

/// Appends a final frame whose payload is `parts` one after the other, masked with `key`, which
/// must be fresh (see [`MaskKeys`](super::mask::MaskKeys)).
// Inlined, so that each caller's `parts` (one slice, mostly) is known and the loop goes: left
// to the compiler, it was sometimes kept out of line, at ~30 instructions a frame.
#[inline]
fn write_masked_frame(dst: &mut BytesMut, opcode: OpCode, rsv: u8, parts: &[&[u8]], key: [u8; 4]) {
    let payload_len: usize = parts.iter().map(|part| part.len()).sum();
    let header = FrameHeader {
        fin: true,
        rsv,
        opcode,
        mask: Some(key),
        payload_len: payload_len as u64,
    };

    dst.reserve(header.encoded_len() + payload_len);
    header.write(dst);
    let mut offset = 0;
    for part in parts {
        extend_masked(dst, part, key, offset);
        offset += part.len();
    }
}

#[cfg(test)]
mod tests {
    use actix_codec::Decoder;
    use bytes::Bytes;

    use super::*;
    use crate::{
        frame::{CloseFrame, Utf8Bytes},
        protocol::Limits,
    };

    /// What a server does with a client frame: checks the mask bit, strips the key and unmasks
    /// the payload, giving the unmasked frame a client decoder accepts. Also returns the key.
    fn unmask_as_server(bytes: &[u8]) -> (Vec<u8>, [u8; 4]) {
        assert!(bytes[1] & 0x80 != 0, "client frames must be masked");
        let (length_len, payload_len) = match bytes[1] & 0x7F {
            126 => (2, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&bytes[2..10]);
                (8, u64::from_be_bytes(be) as usize)
            }
            short => (0, short as usize),
        };
        let key_at = 2 + length_len;
        let key = [
            bytes[key_at],
            bytes[key_at + 1],
            bytes[key_at + 2],
            bytes[key_at + 3],
        ];
        let payload = &bytes[key_at + 4..];
        assert_eq!(payload.len(), payload_len, "exactly one frame");

        let mut unmasked = vec![bytes[0], bytes[1] & 0x7F];
        unmasked.extend_from_slice(&bytes[2..key_at]);
        unmasked.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        (unmasked, key)
    }

    fn encode(frame: Frame) -> BytesMut {
        let mut dst = BytesMut::new();
        Codec::new(Limits::default())
            .encode(frame, &mut dst)
            .unwrap();
        dst
    }

    fn round_trip(frame: Frame) -> Frame {
        let (unmasked, _) = unmask_as_server(&encode(frame));
        let mut buf = BytesMut::from(&unmasked[..]);
        let decoded = Codec::new(Limits::default()).decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        decoded.expect("a whole frame")
    }

    #[test]
    fn every_frame_kind_survives_a_round_trip() {
        let frames = [
            Frame::text("hello, κόσμε"),
            Frame::text(""),
            Frame::binary(vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Frame::ping(&b"are you there?"[..]),
            Frame::pong(Bytes::new()),
            Frame::Close(None),
            Frame::close(1000, ""),
            Frame::close(4001, "going away, with a reason"),
        ];
        for frame in frames {
            assert_eq!(round_trip(frame.clone()), frame);
        }
    }

    #[test]
    fn writes_the_expected_opcode_with_fin_set() {
        let cases = [
            (Frame::text("a"), 0x81),
            (Frame::binary(&b"a"[..]), 0x82),
            (Frame::Close(None), 0x88),
            (Frame::ping(&b"a"[..]), 0x89),
            (Frame::pong(&b"a"[..]), 0x8A),
        ];
        for (frame, first_byte) in cases {
            assert_eq!(encode(frame)[0], first_byte);
        }
    }

    #[test]
    fn uses_the_shortest_length_form() {
        for (len, length_byte, header_len) in [
            (0, 0, 6),
            (125, 125, 6),
            (126, 126, 8),
            (0xFFFF, 126, 8),
            (0x1_0000, 127, 14),
        ] {
            let encoded = encode(Frame::binary(vec![b'z'; len]));
            assert_eq!(encoded[1], 0x80 | length_byte, "{len}");
            assert_eq!(encoded.len(), header_len + len);
            let (unmasked, _) = unmask_as_server(&encoded);
            assert!(unmasked[header_len - 4..].iter().all(|&byte| byte == b'z'));
        }
    }

    #[test]
    fn a_close_frame_carries_the_code_in_network_byte_order() {
        let (unmasked, _) = unmask_as_server(&encode(Frame::close(1001, "bye")));
        assert_eq!(unmasked, [0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        let (empty, _) = unmask_as_server(&encode(Frame::Close(None)));
        assert_eq!(empty, [0x88, 0]);
    }

    #[test]
    fn every_frame_gets_a_fresh_mask() {
        let keys: Vec<[u8; 4]> = (0..8)
            .map(|_| unmask_as_server(&encode(Frame::text("same"))).1)
            .collect();
        // Eight equal random keys would happen once in 2^224 runs.
        assert!(keys.iter().any(|key| *key != keys[0]), "{keys:?}");
    }

    #[test]
    fn appends_to_what_is_already_buffered() {
        let mut codec = Codec::new(Limits::default());
        let mut dst = BytesMut::new();
        codec.encode(Frame::text("one"), &mut dst).unwrap();
        let first_len = dst.len();
        codec.encode(Frame::text("two"), &mut dst).unwrap();
        let (second, _) = unmask_as_server(&dst[first_len..]);
        assert_eq!(second, [0x81, 3, b't', b'w', b'o']);
    }

    #[test]
    fn validate_outgoing_enforces_control_frame_rules() {
        let ok = [
            Frame::text("x".repeat(1000)),
            Frame::binary(vec![0; 1000]),
            Frame::ping(vec![0; 125]),
            Frame::pong(vec![0; 125]),
            Frame::Close(None),
            Frame::close(1000, ""),
            Frame::close(4999, "r".repeat(123)),
        ];
        for frame in ok {
            assert_eq!(validate_outgoing(&frame), Ok(()), "{frame:?}");
        }

        let rejected = [
            (
                Frame::ping(vec![0; 126]),
                ProtocolError::OutgoingControlFrameTooLong(126),
            ),
            (
                Frame::pong(vec![0; 200]),
                ProtocolError::OutgoingControlFrameTooLong(200),
            ),
            (
                Frame::close(1000, "r".repeat(124)),
                ProtocolError::OutgoingCloseReasonTooLong(124),
            ),
        ];
        for (frame, error) in rejected {
            assert_eq!(validate_outgoing(&frame), Err(error));
        }

        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let frame = Frame::Close(Some(CloseFrame::new(code, "")));
            assert_eq!(
                validate_outgoing(&frame),
                Err(ProtocolError::OutgoingInvalidCloseCode(code))
            );
        }
    }

    #[test]
    fn text_payload_bytes_are_unchanged_after_unmasking() {
        let text = Utf8Bytes::from("Ünïcödé ✓ 𝄞");
        let (unmasked, _) = unmask_as_server(&encode(Frame::Text(text.clone())));
        assert_eq!(&unmasked[2..], text.as_bytes());
    }
}
