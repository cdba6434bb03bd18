//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around crate-private code.
//!
//! Compiled only with `--cfg fuzzing` (which cargo-fuzz sets); not part of the API, no
//! stability promised.

use actix_codec::{Decoder, Encoder};
use bytes::BytesMut;

use crate::{
    http::{HeaderMap, StatusCode},
    protocol::{self, CodecError, Limits},
    ConnectRequest, Error, Frame, ProtocolError, Response,
};

/// The client's frame decoder and message assembler, as the connection uses it.
#[derive(Debug)]
pub struct ServerStream(protocol::Codec);

impl ServerStream {
    /// A decoder enforcing these limits (`ConnectOptions::max_frame_size` and
    /// `max_message_size`).
    pub fn new(max_frame_size: usize, max_message_size: usize) -> Self {
        ServerStream(protocol::Codec::new(Limits {
            max_frame_size,
            max_message_size,
        }))
    }

    /// One call of the codec's `Decoder::decode`: the next whole message or control frame,
    /// `None` until more bytes arrive, or the protocol error that fails the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.0.decode(src) {
            Ok(frame) => Ok(frame),
            Err(CodecError::Protocol(error)) => Err(error),
            Err(CodecError::Io(error)) => panic!("the decoder made up an I/O error: {error}"),
        }
    }

    /// Encodes `frame` as the client sends it (one final, masked frame), appending to `dst`.
    pub fn encode(&mut self, frame: Frame, dst: &mut BytesMut) {
        self.0.encode(frame, dst).expect("encoding cannot fail");
    }
}

/// Whether the client may send `frame` (`validate_outgoing`).
pub fn validate_outgoing(frame: &Frame) -> Result<(), ProtocolError> {
    protocol::validate_outgoing(frame)
}

/// The client's checks of the server's answer to the upgrade, on a parsed status and header
/// map: a status other than 101 is a rejection (awc reports it, and `open` maps it to
/// `Error::Rejected`), then the subprotocol and extension negotiation `open` checks.
///
/// awc itself checks `Upgrade`, `Connection` and `Sec-WebSocket-Accept` before minch sees the
/// response; the fuzz target checks those with its own model.
pub fn check_handshake_response(
    status: StatusCode,
    headers: HeaderMap,
    offered_subprotocols: &[String],
) -> Result<Response, Error> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Rejected {
            status,
            response: Box::new(crate::error::Rejection::received(
                HeaderMap::new(),
                bytes::Bytes::new(),
                false,
            )),
        });
    }
    let response = Response { status, headers };
    // Compression not offered: any extension in the answer is one not offered.
    crate::transport::check_negotiation(&response, offered_subprotocols, None)?;
    Ok(response)
}

/// A refused upgrade as minch reports it, from the response `bytes` arriving in reads of the
/// given sizes and then the end of the stream: headers, body kept (at most 64 KiB) and
/// whether it is complete. `None` if the head does not parse.
pub fn rejection_from_reads(
    status: StatusCode,
    bytes: &[u8],
    reads: &[usize],
) -> Option<(HeaderMap, bytes::Bytes, bool)> {
    crate::connector::rejection_from_reads(status, bytes, reads)
}

/// Everything `open` checks before any I/O: the options, the URL and the headers.
pub fn validate_request(request: &ConnectRequest) -> Result<(), Error> {
    request.options.validate()?;
    crate::transport::parse_url(&request.url)?;
    crate::transport::parse_headers(&request.headers)?;
    Ok(())
}

/// The parameters both sides keep to after permessage-deflate negotiation, as plain numbers:
/// `(client window bits, server window bits, client no context takeover, server no context
/// takeover)`.
pub type DeflateParams = (u8, u8, bool, bool);

/// The client's check of a server's `Sec-WebSocket-Extensions` answer (all its header lines)
/// to the offer `deflate` makes: the agreed parameters, `None` if declined, or the error that
/// fails the handshake.
pub fn negotiate_deflate(
    deflate: &crate::Deflate,
    answer: &[&[u8]],
) -> Result<Option<DeflateParams>, Error> {
    deflate.accept(answer).map(|agreed| {
        agreed.map(|a| {
            (
                a.client_window_bits,
                a.server_window_bits,
                a.client_no_context_takeover,
                a.server_no_context_takeover,
            )
        })
    })
}

impl ServerStream {
    /// A decoder as [`new`](Self::new), with permessage-deflate as negotiated from `deflate`'s
    /// offer and the server's `answer`; the error if the answer fails the handshake.
    pub fn with_deflate(
        max_frame_size: usize,
        max_message_size: usize,
        deflate: &crate::Deflate,
        answer: &[&[u8]],
    ) -> Result<Self, Error> {
        let agreed = deflate.accept(answer)?;
        let limits = Limits {
            max_frame_size,
            max_message_size,
        };
        Ok(ServerStream(protocol::Codec::with_compression(
            limits, agreed,
        )))
    }
}

impl ServerStream {
    /// A decoder for the frames the client sends, once unmasked, on a connection that agreed
    /// `params`: it inflates with the client's window and context rules, as a server does.
    pub fn for_client_frames(
        max_frame_size: usize,
        max_message_size: usize,
        params: DeflateParams,
    ) -> Self {
        let (client_window_bits, _, client_no_context_takeover, _) = params;
        let agreed = crate::compression::Agreed {
            client_window_bits,
            server_window_bits: client_window_bits.max(8),
            client_no_context_takeover,
            server_no_context_takeover: client_no_context_takeover,
            memory_level: 5,
            level: 1,
            threshold: 0,
        };
        let limits = Limits {
            max_frame_size,
            max_message_size,
        };
        ServerStream(protocol::Codec::with_compression(limits, Some(agreed)))
    }
}
