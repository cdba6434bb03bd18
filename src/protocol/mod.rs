//! The WebSocket wire protocol in the client role (RFC 6455 §5): bytes from the server become
//! [`Frame`](crate::frame::Frame)s, and frames from the application become masked bytes.
//!
//! Framing is where a WebSocket client is strict or lax, so it lives on its own here. Every rule a
//! server can break is checked as early as the bytes allow and reported as a [`ProtocolError`]
//! that names the rule and gives the close code to fail the connection with (RFC 6455 §7.1.7).
//! Code above this module only ever sees whole, checked messages: fragments reassembled, text
//! validated as UTF-8, control frames (which may arrive between fragments) handed over as they
//! come.
//!
//! The role is fixed: frames we send are masked with a fresh random key, frames we receive must
//! not be masked (RFC 6455 §5.1, §5.3).
//!
//! The codec plugs into actix-codec: `Codec` implements its `Decoder` and `Encoder`, so the
//! connection wraps its upgraded I/O stream as `Framed::new(io, Codec::new(limits))` and reads and
//! writes `Frame`s. The decoder checks [`Limits`] against frame headers before buffering
//! payloads, and reserves read-buffer room for the rest of a large frame so that `Framed` reads it
//! in large chunks.
//!
//! Submodules: `header` reads and writes frame headers, `codec` decodes and assembles messages,
//! `encoder` encodes and checks outgoing frames, `utf8` validates text incrementally, `mask`
//! masks payloads, `error` holds the errors.

mod codec;
mod deflate;
mod encoder;
mod error;
mod header;
mod mask;
#[cfg(test)]
mod properties;
mod utf8;

pub(crate) use codec::Codec;
pub(crate) use encoder::validate_outgoing;
pub(crate) use error::CodecError;
pub use error::ProtocolError;

/// Size limits on what the server may send, checked before anything is buffered: the codec's
/// view of [`ConnectOptions::max_frame_size`](crate::ConnectOptions::max_frame_size) and
/// [`max_message_size`](crate::ConnectOptions::max_message_size), which is where users set them.
///
/// A frame or message over a limit fails the connection with close code 1009 (message too big,
/// RFC 6455 §7.4.1); RFC 6455 §10.4 leaves the limits to the implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The longest payload a single frame may announce, in bytes. Default: 16 MiB.
    pub max_frame_size: usize,
    /// The longest message, counting all its fragments, in bytes. Default: 64 MiB.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
        }
    }
}
