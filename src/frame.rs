//! WebSocket frames as the application sees them.
//!
//! A [`Frame`] is one whole message or one control frame: fragmented messages arrive reassembled,
//! and text arrives validated as UTF-8 ([`Utf8Bytes`]). Payloads are [`Bytes`], so cloning a frame
//! or slicing its payload does not copy.

use std::{fmt, ops::Deref, str};

use bytes::Bytes;

/// A WebSocket frame: a whole data message, or a control frame.
///
/// ```
/// use minch::{CloseCode, Frame};
///
/// let hello = Frame::text("hello");
/// assert_eq!(hello.as_text(), Some("hello"));
///
/// let bye = Frame::close(CloseCode::NORMAL, "bye");
/// assert!(bye.is_close());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text message; always valid UTF-8.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping. The client answers pings from the server by itself; handlers never see them.
    Ping(Bytes),
    /// A pong: the answer to a ping, or an unsolicited heartbeat.
    Pong(Bytes),
    /// A close frame, with a status code and reason unless the peer sent none (RFC 6455 §5.5.1).
    /// The client completes the close handshake by itself; handlers never see close frames.
    Close(Option<CloseFrame>),
}

impl Frame {
    /// A text frame.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Frame::Text(text.into())
    }

    /// A binary frame.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Frame::Binary(data.into())
    }

    /// A ping frame. Its payload must not exceed 125 bytes (RFC 6455 §5.5).
    pub fn ping(data: impl Into<Bytes>) -> Self {
        Frame::Ping(data.into())
    }

    /// A pong frame. Its payload must not exceed 125 bytes (RFC 6455 §5.5).
    pub fn pong(data: impl Into<Bytes>) -> Self {
        Frame::Pong(data.into())
    }

    /// A close frame with a status code and a reason (at most 123 bytes of UTF-8).
    pub fn close(code: impl Into<CloseCode>, reason: impl Into<String>) -> Self {
        Frame::Close(Some(CloseFrame::new(code, reason)))
    }

    /// The text of a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Frame::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The payload of any frame but a close frame, as bytes.
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Frame::Text(text) => Some(text.as_bytes()),
            Frame::Binary(data) | Frame::Ping(data) | Frame::Pong(data) => Some(data),
            Frame::Close(_) => None,
        }
    }

    /// Whether this is a close frame.
    pub fn is_close(&self) -> bool {
        matches!(self, Frame::Close(_))
    }

    /// Whether this is a control frame (ping, pong or close).
    pub fn is_control(&self) -> bool {
        matches!(self, Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_))
    }

    /// The number of payload bytes this frame puts on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Close(None) => 0,
            Frame::Close(Some(close)) => 2 + close.reason.len(),
            other => other.payload().map_or(0, <[u8]>::len),
        }
    }
}

/// The body of a close frame: a status code and a human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// Why the connection is closing.
    pub code: CloseCode,
    /// A reason for people to read; may be empty.
    pub reason: String,
}

impl CloseFrame {
    /// A close frame body.
    pub fn new(code: impl Into<CloseCode>, reason: impl Into<String>) -> Self {
        CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

impl CloseFrame {
    /// Code 1000 with no reason: what the client sends when it closes for no particular reason.
    pub(crate) fn normal() -> Self {
        CloseFrame::new(CloseCode::NORMAL, "")
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({:?})", self.code, self.reason)
        }
    }
}

/// A close status code (RFC 6455 §7.4).
///
/// Any `u16` converts into a `CloseCode`; [`CloseCode::is_sendable`] tells whether a code may be
/// put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: the peer sent a kind of data the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection dropped without a close frame. Never sent on the wire.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a message's data did not match its type (e.g. text that is not UTF-8).
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: a message violated the endpoint's policy.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected the server to negotiate an extension.
    pub const EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const AGAIN: CloseCode = CloseCode(1013);

    /// Whether an endpoint may send this code in a close frame (RFC 6455 §7.4.1–7.4.2):
    /// 1000–1003, 1007–1014 (IANA-registered), and 3000–4999 (libraries and applications).
    /// 1004–1006, 1015 and everything else are reserved or not allowed on the wire.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Bytes that are known to be valid UTF-8: the payload of a text frame.
///
/// It dereferences to `str`, and converts from `String`, `&'static str` and back into
/// [`Bytes`] without copying.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps bytes after checking that they are UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, str::Utf8Error> {
        str::from_utf8(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }

    /// Wraps bytes the caller has already validated as UTF-8.
    ///
    /// Crate-private: the public way in checks the bytes.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(str::from_utf8(&bytes).is_ok());
        Utf8Bytes(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or, crate-internally, has checked) UTF-8.
        unsafe { str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Utf8Bytes(Bytes::from(text))
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(text: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(text.as_bytes()))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(text: &String) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(text: Utf8Bytes) -> Self {
        text.0
    }
}

impl From<Utf8Bytes> for String {
    fn from(text: Utf8Bytes) -> Self {
        text.as_str().to_owned()
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_close_codes_follow_rfc_6455() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn utf8_bytes_rejects_invalid_utf8() {
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xff")).is_err());
        let ok = Utf8Bytes::try_from_bytes(Bytes::from_static("κόσμε".as_bytes())).unwrap();
        assert_eq!(ok, "κόσμε");
    }

    #[test]
    fn payload_len_counts_close_code_and_reason() {
        assert_eq!(Frame::close(1000, "bye").payload_len(), 5);
        assert_eq!(Frame::Close(None).payload_len(), 0);
        assert_eq!(Frame::text("abc").payload_len(), 3);
    }
}
