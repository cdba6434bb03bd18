//! What can go wrong on the wire: the rules of RFC 6455 a server can break, the rules an outgoing
//! frame must keep, and the codec's error type that adds I/O failures to them.

use std::{error::Error, fmt, io};

use crate::frame::CloseCode;

/// A rule of RFC 6455 that a frame broke.
///
/// Most variants say how the server broke the protocol; the client fails the connection with
/// [`ProtocolError::close_code`] when it receives one (RFC 6455 §7.1.7). The `Outgoing*` variants
/// say why a frame the application asked to send cannot be put on the wire.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The server set RSV1, RSV2 or RSV3 although no extension giving them a meaning was
    /// negotiated (RFC 6455 §5.2).
    ReservedBits,
    /// The server used an opcode that RFC 6455 reserves for future use (3–7 and 0xB–0xF, §5.2).
    UnknownOpcode(u8),
    /// The server masked a frame; only clients mask (RFC 6455 §5.1).
    MaskedFrame,
    /// The server sent a ping, pong or close frame with a payload longer than 125 bytes
    /// (RFC 6455 §5.5). Holds the announced length.
    ControlFrameTooLong(usize),
    /// The server sent a ping, pong or close frame without FIN: control frames cannot be
    /// fragmented (RFC 6455 §5.5).
    FragmentedControlFrame,
    /// The server sent a continuation frame while no fragmented message was in progress
    /// (RFC 6455 §5.4).
    UnexpectedContinuation,
    /// The server started a new text or binary message before it finished the fragmented one in
    /// progress (RFC 6455 §5.4).
    ExpectedContinuation,
    /// The server sent a close status code that may not appear on the wire (RFC 6455 §7.4).
    InvalidCloseCode(u16),
    /// The server sent a close frame with a 1-byte payload: a close body is either empty or
    /// starts with a 2-byte status code (RFC 6455 §5.5.1).
    InvalidClosePayload,
    /// The server sent a text message that is not valid UTF-8 (RFC 6455 §5.6, §8.1).
    InvalidUtf8,
    /// The server sent a close reason that is not valid UTF-8 (RFC 6455 §5.5.1).
    InvalidCloseReasonUtf8,
    /// The server announced a frame longer than [`ConnectOptions::max_frame_size`](crate::ConnectOptions::max_frame_size).
    FrameTooLarge {
        /// The payload length the frame header announced.
        size: u64,
        /// The limit it exceeds.
        max: usize,
    },
    /// A message, counting the fragments so far and the one being announced, is longer than
    /// [`ConnectOptions::max_message_size`](crate::ConnectOptions::max_message_size).
    MessageTooLarge {
        /// The message length once the announced fragment is added.
        size: u64,
        /// The limit it exceeds.
        max: usize,
    },
    /// The server sent a 64-bit payload length with the most significant bit set (RFC 6455 §5.2).
    InvalidLength,
    /// With permessage-deflate negotiated, the server set RSV1 (compressed) on a control frame or
    /// a continuation frame: only a message's first frame carries it (RFC 7692 §6).
    MisplacedCompressedBit,
    /// A compressed message from the server does not inflate (RFC 7692 §6.2); holds zlib's
    /// description.
    InvalidCompressedData(&'static str),
    /// The application asked to send a ping, pong or close frame with more than 125 bytes of
    /// payload (RFC 6455 §5.5). Holds the payload length.
    OutgoingControlFrameTooLong(usize),
    /// The application asked to send a close code that may not appear on the wire
    /// (RFC 6455 §7.4), such as 1005 or 1006.
    OutgoingInvalidCloseCode(u16),
    /// The application asked to send a close reason longer than 123 bytes, which with the 2-byte
    /// code would exceed the 125-byte limit on control frames (RFC 6455 §5.5). Holds the reason's
    /// length in bytes.
    OutgoingCloseReasonTooLong(usize),
}

impl ProtocolError {
    /// The status code to fail the connection with (RFC 6455 §7.4.1): 1007 for data that is not
    /// UTF-8 or does not inflate, 1009 for frames and messages over the limits, 1002 for every other violation.
    ///
    /// Errors about outgoing frames map to 1002 too: they break the same framing rules.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8
            | ProtocolError::InvalidCloseReasonUtf8
            | ProtocolError::InvalidCompressedData(_) => CloseCode::INVALID_DATA,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::TOO_BIG
            }
            _ => CloseCode::PROTOCOL,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBits => f.write_str(
                "the server sent a frame with reserved bits set but no extension was negotiated \
                 (RFC 6455 §5.2)",
            ),
            ProtocolError::UnknownOpcode(opcode) => write!(
                f,
                "the server sent a frame with reserved opcode {opcode:#x} (RFC 6455 §5.2)"
            ),
            ProtocolError::MaskedFrame => f.write_str(
                "the server sent a masked frame, but only clients mask frames (RFC 6455 §5.1)",
            ),
            ProtocolError::ControlFrameTooLong(len) => write!(
                f,
                "the server sent a control frame with a {len}-byte payload, but control frames \
                 carry at most 125 bytes (RFC 6455 §5.5)"
            ),
            ProtocolError::FragmentedControlFrame => f.write_str(
                "the server sent a control frame without FIN, but control frames must not be \
                 fragmented (RFC 6455 §5.5)",
            ),
            ProtocolError::UnexpectedContinuation => f.write_str(
                "the server sent a continuation frame with no fragmented message in progress \
                 (RFC 6455 §5.4)",
            ),
            ProtocolError::ExpectedContinuation => f.write_str(
                "the server started a new data message before finishing the fragmented one in \
                 progress (RFC 6455 §5.4)",
            ),
            ProtocolError::InvalidCloseCode(code) => write!(
                f,
                "the server sent close code {code}, which may not be sent on the wire \
                 (RFC 6455 §7.4)"
            ),
            ProtocolError::InvalidClosePayload => f.write_str(
                "the server sent a close frame with a 1-byte payload, but a close body is empty \
                 or starts with a 2-byte status code (RFC 6455 §5.5.1)",
            ),
            ProtocolError::InvalidUtf8 => f.write_str(
                "the server sent a text message that is not valid UTF-8 (RFC 6455 §8.1)",
            ),
            ProtocolError::InvalidCloseReasonUtf8 => f.write_str(
                "the server sent a close reason that is not valid UTF-8 (RFC 6455 §5.5.1)",
            ),
            ProtocolError::FrameTooLarge { size, max } => write!(
                f,
                "the server announced a {size}-byte frame, over the {max}-byte frame size limit"
            ),
            ProtocolError::MessageTooLarge { size, max } => write!(
                f,
                "the server sent a message of at least {size} bytes, over the {max}-byte \
                 message size limit"
            ),
            ProtocolError::InvalidLength => f.write_str(
                "the server sent a 64-bit payload length with the most significant bit set \
                 (RFC 6455 §5.2)",
            ),
            ProtocolError::MisplacedCompressedBit => f.write_str(
                "the server set RSV1 (compressed) on a control or continuation frame; \
                 permessage-deflate marks only a message's first frame (RFC 7692 §6)",
            ),
            ProtocolError::InvalidCompressedData(reason) => write!(
                f,
                "the server sent a compressed message that does not inflate ({reason}); \
                 if the server's compression is broken, turn it off with \
                 ConnectOptions::compression(None)"
            ),
            ProtocolError::OutgoingControlFrameTooLong(len) => write!(
                f,
                "cannot send a control frame with a {len}-byte payload: control frames carry at \
                 most 125 bytes (RFC 6455 §5.5)"
            ),
            ProtocolError::OutgoingInvalidCloseCode(code) => write!(
                f,
                "cannot send close code {code}: it may not be sent on the wire (RFC 6455 §7.4)"
            ),
            ProtocolError::OutgoingCloseReasonTooLong(len) => write!(
                f,
                "cannot send a {len}-byte close reason: with the 2-byte code a close payload \
                 carries at most 125 bytes, so the reason at most 123 (RFC 6455 §5.5)"
            ),
        }
    }
}

impl Error for ProtocolError {}

/// Why the codec stopped: the server broke the protocol, or the connection's I/O failed.
///
/// actix-codec's `Framed` needs a decoder error that I/O errors convert into; the client takes
/// it apart again to tell a protocol failure (answered with a close frame) from a dead connection.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// A frame broke a rule of RFC 6455.
    Protocol(ProtocolError),
    /// Reading from or writing to the connection failed.
    Io(io::Error),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Protocol(error) => error.fmt(f),
            CodecError::Io(error) => write!(f, "I/O error: {error}"),
        }
    }
}

impl Error for CodecError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CodecError::Protocol(error) => Some(error),
            CodecError::Io(error) => Some(error),
        }
    }
}

impl From<io::Error> for CodecError {
    fn from(error: io::Error) -> Self {
        CodecError::Io(error)
    }
}

impl From<ProtocolError> for CodecError {
    fn from(error: ProtocolError) -> Self {
        CodecError::Protocol(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_rfc_6455_section_7_4_1() {
        let table = [
            (ProtocolError::ReservedBits, 1002),
            (ProtocolError::UnknownOpcode(3), 1002),
            (ProtocolError::MaskedFrame, 1002),
            (ProtocolError::ControlFrameTooLong(126), 1002),
            (ProtocolError::FragmentedControlFrame, 1002),
            (ProtocolError::UnexpectedContinuation, 1002),
            (ProtocolError::ExpectedContinuation, 1002),
            (ProtocolError::InvalidCloseCode(1005), 1002),
            (ProtocolError::InvalidClosePayload, 1002),
            (ProtocolError::InvalidLength, 1002),
            (ProtocolError::InvalidUtf8, 1007),
            (ProtocolError::InvalidCloseReasonUtf8, 1007),
            (ProtocolError::FrameTooLarge { size: 10, max: 5 }, 1009),
            (ProtocolError::MessageTooLarge { size: 10, max: 5 }, 1009),
            (ProtocolError::OutgoingControlFrameTooLong(126), 1002),
            (ProtocolError::OutgoingInvalidCloseCode(1006), 1002),
            (ProtocolError::OutgoingCloseReasonTooLong(124), 1002),
        ];
        for (error, code) in table {
            assert_eq!(error.close_code(), CloseCode(code), "{error:?}");
        }
    }

    #[test]
    fn messages_name_the_rule_that_was_broken() {
        assert_eq!(
            ProtocolError::ReservedBits.to_string(),
            "the server sent a frame with reserved bits set but no extension was negotiated \
             (RFC 6455 §5.2)"
        );
        assert!(ProtocolError::UnknownOpcode(0xB)
            .to_string()
            .contains("opcode 0xb"));
        let too_large = ProtocolError::FrameTooLarge {
            size: 1 << 40,
            max: 16,
        };
        assert!(too_large.to_string().contains("1099511627776-byte frame"));
        assert!(ProtocolError::OutgoingInvalidCloseCode(1005)
            .to_string()
            .starts_with("cannot send close code 1005"));
    }

    #[test]
    fn codec_error_wraps_both_causes() {
        let protocol = CodecError::from(ProtocolError::MaskedFrame);
        assert!(matches!(
            protocol,
            CodecError::Protocol(ProtocolError::MaskedFrame)
        ));
        assert_eq!(protocol.to_string(), ProtocolError::MaskedFrame.to_string());

        let io = CodecError::from(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        assert!(matches!(io, CodecError::Io(_)));
        assert_eq!(io.to_string(), "I/O error: gone");
        assert!(io.source().is_some());
    }
}
