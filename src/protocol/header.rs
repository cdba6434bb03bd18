//! The frame header (RFC 6455 §5.2): FIN, the RSV bits, the opcode, the mask and the payload
//! length, read from and written to bytes.
//!
//! This layer only knows the wire format. Whether a header is acceptable (RSV bits without an
//! extension, a masked frame from a server, size limits, control frame rules) depends on the role,
//! the negotiated extensions and the message in progress, so the codec decides that.

use bytes::BytesMut;

use super::ProtocolError;

/// What a frame carries (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpCode {
    /// The next fragment of the message in progress.
    Continuation,
    /// The first (or only) frame of a text message.
    Text,
    /// The first (or only) frame of a binary message.
    Binary,
    /// A close frame.
    Close,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    /// Reads the opcode nibble; the values RFC 6455 reserves are errors.
    fn from_bits(bits: u8) -> Result<OpCode, ProtocolError> {
        match bits {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            reserved => Err(ProtocolError::UnknownOpcode(reserved)),
        }
    }

    /// The opcode nibble.
    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode, which RFC 6455 §5.5 restricts (opcodes with the high
    /// bit set).
    pub(super) fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// RSV1 as [`FrameHeader::rsv`] holds it: permessage-deflate's "compressed" bit (RFC 7692 §6).
pub(super) const RSV1: u8 = 0b100;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameHeader {
    /// Whether this is the final frame of its message.
    pub(super) fin: bool,
    /// RSV1, RSV2 and RSV3 as the low three bits (RSV1 is 0b100), for extensions to interpret:
    /// permessage-deflate (RFC 7692) sets RSV1 on the first frame of a compressed message.
    pub(super) rsv: u8,
    /// What the frame carries.
    pub(super) opcode: OpCode,
    /// The masking key, present on (and only on) frames a client sends.
    pub(super) mask: Option<[u8; 4]>,
    /// The payload length.
    pub(super) payload_len: u64,
}

impl FrameHeader {
    /// Reads a header from the start of `buf`.
    ///
    /// Returns the header and its length in bytes, or `None` if `buf` does not hold a whole header
    /// yet. Errors are reported as soon as the bytes that prove them have arrived.
    ///
    /// A length that is not minimally encoded (§5.2 says it "MUST" be) is accepted: it is
    /// unambiguous, and rejecting it would only break interoperability with lax servers.
    pub(super) fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (first, second) = match buf {
            [first, second, ..] => (*first, *second),
            _ => return Ok(None),
        };
        let fin = first & 0x80 != 0;
        let rsv = (first >> 4) & 0b111;
        let opcode = OpCode::from_bits(first & 0x0F)?;
        let masked = second & 0x80 != 0;

        let (payload_len, mut len) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(bytes);
                    let payload_len = u64::from_be_bytes(be);
                    if payload_len >> 63 != 0 {
                        return Err(ProtocolError::InvalidLength);
                    }
                    (payload_len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };

        let mask = if masked {
            match buf.get(len..len + 4) {
                Some(key) => {
                    len += 4;
                    Some([key[0], key[1], key[2], key[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };

        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, len)))
    }

    /// How many bytes [`FrameHeader::write`] puts out.
    pub(super) fn encoded_len(&self) -> usize {
        let length_len = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        let mask_len = if self.mask.is_some() { 4 } else { 0 };
        2 + length_len + mask_len
    }

    /// Appends the header to `dst`, with the length in its shortest form (RFC 6455 §5.2).
    pub(super) fn write(&self, dst: &mut BytesMut) {
        // Assembled on the stack and appended at once: one capacity check instead of one a field.
        let mut bytes = [0u8; MAX_HEADER_LEN];
        let fin_bit = if self.fin { 0x80 } else { 0 };
        bytes[0] = fin_bit | (self.rsv & 0b111) << 4 | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            // The match guarantees each cast is lossless.
            len @ 0..=125 => {
                bytes[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                bytes[1] = mask_bit | 126;
                bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                bytes[1] = mask_bit | 127;
                bytes[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            bytes[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        dst.extend_from_slice(&bytes[..len]);
    }
}

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte key.
const MAX_HEADER_LEN: usize = 14;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes)
    }

    fn header(opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    #[test]
    fn parses_each_length_form() {
        let short = parse(&[0x81, 5]).unwrap().unwrap();
        assert_eq!(short, (header(OpCode::Text, 5, None), 2));

        let medium = parse(&[0x82, 126, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!(medium, (header(OpCode::Binary, 256, None), 4));

        let long = parse(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!(long, (header(OpCode::Binary, 1 << 32, None), 10));
    }

    #[test]
    fn parses_fin_rsv_and_mask() {
        let (parsed, len) = parse(&[0x40 | 0x01, 0x80 | 3, 1, 2, 3, 4])
            .unwrap()
            .unwrap();
        assert_eq!(len, 6);
        assert!(!parsed.fin);
        assert_eq!(parsed.rsv, RSV1);
        assert_eq!(parsed.opcode, OpCode::Text);
        assert_eq!(parsed.mask, Some([1, 2, 3, 4]));
        assert_eq!(parsed.payload_len, 3);
    }

    #[test]
    fn waits_for_the_whole_header() {
        let full = [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9];
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Ok(None), "{end} bytes");
        }
        assert!(parse(&full).unwrap().is_some());
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse(&[0x80 | opcode, 0]),
                Err(ProtocolError::UnknownOpcode(opcode))
            );
        }
    }

    #[test]
    fn rejects_a_64_bit_length_with_the_top_bit_set() {
        let bytes = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&bytes), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn writes_the_shortest_length_form() {
        for (payload_len, expected_len) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (0xFFFF, 4),
            (0x1_0000, 10),
            (1 << 40, 10),
        ] {
            let written = header(OpCode::Binary, payload_len, None);
            let mut buf = BytesMut::new();
            written.write(&mut buf);
            assert_eq!(buf.len(), expected_len, "{payload_len}");
            assert_eq!(written.encoded_len(), expected_len);
            assert_eq!(parse(&buf), Ok(Some((written, expected_len))));
        }
    }

    #[test]
    fn round_trips_every_opcode_with_a_mask() {
        let opcodes = [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ];
        for opcode in opcodes {
            let written = FrameHeader {
                fin: false,
                rsv: RSV1,
                ..header(opcode, 300, Some([9, 8, 7, 6]))
            };
            let mut buf = BytesMut::new();
            written.write(&mut buf);
            assert_eq!(buf.len(), written.encoded_len());
            assert_eq!(parse(&buf), Ok(Some((written, 8))));
        }
    }

    #[test]
    fn knows_which_opcodes_are_control() {
        assert!(OpCode::Close.is_control());
        assert!(OpCode::Ping.is_control());
        assert!(OpCode::Pong.is_control());
        assert!(!OpCode::Continuation.is_control());
        assert!(!OpCode::Text.is_control());
        assert!(!OpCode::Binary.is_control());
    }
}
