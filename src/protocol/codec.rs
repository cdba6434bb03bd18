//! Decoding: server bytes to checked frames, with fragmented messages reassembled
//! (RFC 6455 §5.2–§5.6). The encoding half of [`Codec`] is in `encoder.rs`.

use actix_codec::Decoder;
use bytes::{Buf, BytesMut};

use super::{
    deflate::{Compressor, Decompressor},
    header::{FrameHeader, OpCode, RSV1},
    mask::MaskKeys,
    utf8::Utf8Validator,
    CodecError, Limits, ProtocolError,
};
use crate::{
    compression::Agreed,
    frame::{CloseCode, CloseFrame, Frame, Utf8Bytes},
};

/// The most read-buffer room reserved ahead of a frame's payload at once.
const RESERVE_STEP: usize = 1 << 20;
/// A received payload whose buffer has more than this room (and an eighth) beyond it is copied
/// out, so that the message does not hold the room: more than the 8 KiB reads that small
/// frames share, less than what a large frame's reservations leave.
const OVERSIZED_SLACK: usize = 64 * 1024;

/// Whether an allocation of `allocation` bytes is too large to be kept alive by `len` bytes of
/// it: more than an eighth and [`OVERSIZED_SLACK`] beyond them.
fn oversized(allocation: usize, len: usize) -> bool {
    allocation > len + len / 8 + OVERSIZED_SLACK
}

/// The client's WebSocket codec, for actix-codec's `Framed`: decodes what the server sends,
/// encodes (and masks) what the client sends.
#[derive(Debug)]
pub(crate) struct Codec {
    limits: Limits,
    /// The RSV bits (as in [`FrameHeader::rsv`]) that negotiated extensions give a meaning to:
    /// RSV1 with permessage-deflate (RFC 7692), on a message's first frame.
    allowed_rsv: u8,
    /// The frame whose header has been read (and removed from the buffer) but whose payload has
    /// not all arrived yet.
    incoming: Option<IncomingFrame>,
    /// The fragmented message being assembled, from its first frame until its final one.
    message: Option<FragmentedMessage>,
    /// Validates the text message in progress, across fragments and partial reads.
    utf8: Utf8Validator,
    /// Masking keys for the frames this client sends.
    pub(super) mask_keys: MaskKeys,
    /// Compresses what the client sends, with permessage-deflate negotiated.
    pub(super) compressor: Option<Compressor>,
    /// Inflates what the server sends compressed, with permessage-deflate negotiated.
    decompressor: Option<Decompressor>,
    /// How many bytes the last frame encoded took in the write buffer, header included
    /// (compressed, if it was).
    pub(super) last_encoded_len: usize,
    /// The read buffer's allocation, which every payload split off it keeps alive.
    read_allocation: ReadAllocation,
}

/// Where the read buffer's allocation ends and (about) where it starts. `BytesMut` shows only
/// the room from its first byte on, which shrinks as frames are taken from the front: a small
/// payload near the end of a 2 MiB allocation would look small. The end of the allocation
/// (first byte plus capacity) moves only when the buffer is reallocated, and a reallocated
/// buffer starts at its allocation's start, so watching the end after every change that may
/// reallocate gives the allocation's size (or a little less).
#[derive(Debug, Default, Clone, Copy)]
struct ReadAllocation {
    start: usize,
    end: usize,
}

impl ReadAllocation {
    /// Notes a reallocation of `buf`, if there was one since the last look.
    fn observe(&mut self, buf: &BytesMut) {
        let start = buf.as_ptr() as usize;
        let end = start + buf.capacity();
        if end != self.end {
            *self = ReadAllocation { start, end };
        }
    }

    /// Whether a payload of `len` bytes should be copied out rather than keep the allocation
    /// alive (see [`oversized`]).
    fn outsizes(&self, len: usize) -> bool {
        oversized(self.end - self.start, len)
    }
}

/// A frame whose header has been accepted, waiting for its payload.
#[derive(Debug, Clone, Copy)]
struct IncomingFrame {
    fin: bool,
    opcode: OpCode,
    /// The payload length, known to be within the limits.
    payload_len: usize,
    /// Whether the payload is (part of) a text message.
    is_text: bool,
    /// Whether the payload is (part of) a compressed message: text is then validated once
    /// inflated, not as it arrives.
    compressed: bool,
    /// How many payload bytes the UTF-8 validator has already seen, so none is validated twice.
    validated: usize,
}

/// The kind of a data message, which its first frame's opcode sets (RFC 6455 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

/// A data message whose final fragment has not arrived yet.
#[derive(Debug)]
struct FragmentedMessage {
    kind: DataKind,
    /// The payloads of the fragments so far (inflated, for a compressed message).
    data: BytesMut,
    /// Whether the message is compressed (its first frame had RSV1).
    compressed: bool,
}

impl Codec {
    /// A codec enforcing `limits` on what the server sends, with no extensions negotiated.
    pub(crate) fn new(limits: Limits) -> Codec {
        Codec {
            limits,
            allowed_rsv: 0,
            incoming: None,
            message: None,
            utf8: Utf8Validator::default(),
            mask_keys: MaskKeys::default(),
            compressor: None,
            decompressor: None,
            last_encoded_len: 0,
            read_allocation: ReadAllocation::default(),
        }
    }

    /// Takes a payload of `len` bytes from the front of `src`: split off without a copy,
    /// unless that would keep alive a read buffer much larger than it (one grown for a large
    /// frame) for as long as the program keeps the frame.
    // Inlined: out of line, the call cost ~35 instructions per message (callgrind, pipeline).
    #[inline(always)]
    fn take_payload(&self, src: &mut BytesMut, len: usize) -> bytes::Bytes {
        if self.read_allocation.outsizes(len) {
            let payload = bytes::Bytes::copy_from_slice(&src[..len]);
            src.advance(len);
            payload
        } else {
            src.split_to(len).freeze()
        }
    }

    /// How many bytes the last frame encoded took in the write buffer: what the write-buffer
    /// limit counts, exact whether or not the frame was compressed.
    pub(crate) fn last_encoded_len(&self) -> usize {
        self.last_encoded_len
    }

    /// A frame header has been read and its payload has not all arrived.
    pub(crate) fn awaits_payload(&self) -> bool {
        self.incoming.is_some()
    }

    /// Gives back compression memory not used since the last call: the connection calls this
    /// at every keepalive ping, so a connection that stopped sending holds no compressor after
    /// two ping intervals, nor an inflater if the server keeps no context.
    pub(crate) fn release_idle_compression(&mut self) {
        if let Some(compressor) = &mut self.compressor {
            compressor.release_if_idle();
        }
        if let Some(decompressor) = &mut self.decompressor {
            decompressor.release_if_idle();
        }
    }

    /// A codec enforcing `limits`, with permessage-deflate as `deflate` says if the server
    /// accepted it.
    pub(crate) fn with_compression(limits: Limits, deflate: Option<Agreed>) -> Codec {
        let mut codec = Codec::new(limits);
        if let Some(agreed) = deflate {
            codec.allowed_rsv = RSV1;
            codec.compressor = Some(Compressor::new(&agreed));
            codec.decompressor = Some(Decompressor::new(&agreed));
        }
        codec
    }

    /// Reads and checks the next frame header, removing it from `src`. `None` means the header
    /// has not all arrived yet.
    fn next_header(&mut self, src: &mut BytesMut) -> Result<Option<IncomingFrame>, ProtocolError> {
        let Some((header, header_len)) = FrameHeader::parse(src)? else {
            return Ok(None);
        };
        self.check_header(&header)?;
        // `check_header` bounded the length by `max_frame_size`, a `usize`.
        let payload_len = header.payload_len as usize;

        // `check_header` allowed RSV1 on a text or binary frame only.
        let compressed = header.rsv & RSV1 != 0;
        let (is_text, compressed) = match header.opcode {
            OpCode::Text => {
                self.start_message(DataKind::Text, header.fin, compressed);
                (true, compressed)
            }
            OpCode::Binary => {
                self.start_message(DataKind::Binary, header.fin, compressed);
                (false, compressed)
            }
            // A continuation frame carries more of the message in progress (RFC 6455 §5.4).
            OpCode::Continuation => match &self.message {
                Some(message) => (message.kind == DataKind::Text, message.compressed),
                None => (false, false),
            },
            OpCode::Close | OpCode::Ping | OpCode::Pong => (false, false),
        };

        src.advance(header_len);
        Ok(Some(IncomingFrame {
            fin: header.fin,
            opcode: header.opcode,
            payload_len,
            is_text,
            compressed,
            validated: 0,
        }))
    }

    /// Sets up for a new data message whose first frame has just been accepted.
    fn start_message(&mut self, kind: DataKind, fin: bool, compressed: bool) {
        if kind == DataKind::Text {
            self.utf8 = Utf8Validator::default();
        }
        if !fin {
            let data = BytesMut::new();
            self.message = Some(FragmentedMessage {
                kind,
                data,
                compressed,
            });
        }
    }

    /// Everything that can be wrong with a header that parsed: bits the role or the extensions
    /// forbid, control frame rules, limits, and the order of fragments.
    fn check_header(&self, header: &FrameHeader) -> Result<(), ProtocolError> {
        // One test on the common path: most frames set no RSV bit.
        if header.rsv != 0 {
            self.check_rsv(header)?;
        }
        if header.mask.is_some() {
            return Err(ProtocolError::MaskedFrame);
        }
        if header.opcode.is_control() {
            if header.payload_len > 125 {
                let len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
                return Err(ProtocolError::ControlFrameTooLong(len));
            }
            if !header.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            // Control frames stand outside any message (RFC 6455 §5.4), so nothing more applies.
            return Ok(());
        }

        // Checked from the header alone, before any of the payload is buffered.
        if header.payload_len > self.limits.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge {
                size: header.payload_len,
                max: self.limits.max_frame_size,
            });
        }
        let message_so_far = match (header.opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            // A compressed message's size is known only once inflated: the decompressor
            // checks it, chunk by chunk. Its frames are bounded here.
            (OpCode::Continuation, Some(message)) if message.compressed => {
                return self.check_compressed_frame(header, message.data.len());
            }
            (OpCode::Continuation, Some(message)) => message.data.len() as u64,
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (_, None) if header.rsv & RSV1 != 0 => return self.check_compressed_frame(header, 0),
            (_, None) => 0,
        };
        let message_size = message_so_far + header.payload_len;
        if message_size > self.limits.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge {
                size: message_size,
                max: self.limits.max_message_size,
            });
        }
        Ok(())
    }

    /// A compressed frame is buffered whole before it is inflated, so it too is bounded from
    /// its header, by what is left of `max_message_size` (`inflated_so_far` is the message's
    /// inflated size before this frame). Deflate makes data at most a few bytes per 16 KiB
    /// longer (stored blocks); an eighth more, plus 1 KiB per frame for flush markers, is
    /// allowed. A longer frame cannot inflate within the limit unless its compressor pads
    /// on purpose, so it fails with 1009 before its payload is read.
    fn check_compressed_frame(
        &self,
        header: &FrameHeader,
        inflated_so_far: usize,
    ) -> Result<(), ProtocolError> {
        let left = self.limits.max_message_size.saturating_sub(inflated_so_far) as u64;
        let bound = left.saturating_add(left / 8).saturating_add(1024);
        if header.payload_len > bound {
            return Err(ProtocolError::MessageTooLarge {
                size: (inflated_so_far as u64).saturating_add(header.payload_len),
                max: self.limits.max_message_size,
            });
        }
        Ok(())
    }

    /// RSV bits are allowed only as a negotiated extension defines them: RSV1 on a compressed
    /// message's first frame (RFC 6455 §5.2, RFC 7692 §6).
    #[cold]
    fn check_rsv(&self, header: &FrameHeader) -> Result<(), ProtocolError> {
        if header.rsv & !self.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        if !matches!(header.opcode, OpCode::Text | OpCode::Binary) {
            return Err(ProtocolError::MisplacedCompressedBit);
        }
        Ok(())
    }

    /// Turns a frame whose payload is at the start of `src` into what the decoder yields:
    /// a frame, or `None` for a fragment that only extends the message in progress.
    fn complete_frame(
        &mut self,
        incoming: IncomingFrame,
        src: &mut BytesMut,
    ) -> Result<Option<Frame>, ProtocolError> {
        let len = incoming.payload_len;
        match incoming.opcode {
            OpCode::Ping => Ok(Some(Frame::Ping(self.take_payload(src, len)))),
            OpCode::Pong => Ok(Some(Frame::Pong(self.take_payload(src, len)))),
            OpCode::Close => {
                let close = parse_close_payload(&src[..len])?;
                src.advance(len);
                Ok(Some(Frame::Close(close)))
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation if incoming.compressed => {
                self.complete_compressed_frame(incoming, src)
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if incoming.is_text {
                    self.utf8.feed(&src[incoming.validated..len])?;
                    if incoming.fin {
                        self.utf8.finish()?;
                    }
                }
                self.complete_data_frame(incoming, src)
            }
        }
    }

    /// Hands over a whole message, or adds a fragment to the message in progress.
    fn complete_data_frame(
        &mut self,
        incoming: IncomingFrame,
        src: &mut BytesMut,
    ) -> Result<Option<Frame>, ProtocolError> {
        let len = incoming.payload_len;
        let Some(mut message) = self.message.take() else {
            // An unfragmented message: its payload leaves the read buffer without a copy, unless
            // the buffer grew well past it (for this frame or an earlier one).
            let payload = self.take_payload(src, len);
            return Ok(Some(if incoming.is_text {
                Frame::Text(Utf8Bytes::from_validated(payload))
            } else {
                Frame::Binary(payload)
            }));
        };

        // Appending grows the buffer geometrically, so assembly is linear in the message size.
        message.data.extend_from_slice(&src[..len]);
        src.advance(len);
        if !incoming.fin {
            self.message = Some(message);
            return Ok(None);
        }
        // Assembly grew the buffer geometrically: a kept message should not keep that room.
        let payload = if oversized(message.data.capacity(), message.data.len()) {
            bytes::Bytes::copy_from_slice(&message.data)
        } else {
            message.data.freeze()
        };
        Ok(Some(match message.kind {
            DataKind::Text => Frame::Text(Utf8Bytes::from_validated(payload)),
            DataKind::Binary => Frame::Binary(payload),
        }))
    }
}

impl Codec {
    /// Inflates a frame of a compressed message onto the message so far, and hands over the
    /// message if the frame is its last. The inflated size is held to `max_message_size` as it
    /// grows, and inflated text is validated as it comes.
    // Kept out of line: inflating costs far more than the call, and inlined it would weigh on
    // the uncompressed path's code.
    #[inline(never)]
    fn complete_compressed_frame(
        &mut self,
        incoming: IncomingFrame,
        src: &mut BytesMut,
    ) -> Result<Option<Frame>, ProtocolError> {
        // RSV1 is allowed only when a decompressor exists.
        let Some(decompressor) = self.decompressor.as_mut() else {
            return Err(ProtocolError::ReservedBits);
        };
        let limit = self.limits.max_message_size;
        let mut data = match self.message.take() {
            Some(message) => message.data,
            None => BytesMut::new(),
        };
        let validated = data.len();
        decompressor.inflate(&src[..incoming.payload_len], &mut data, limit)?;
        src.advance(incoming.payload_len);
        if incoming.fin {
            decompressor.finish_message(&mut data, limit)?;
        }
        if incoming.is_text {
            self.utf8.feed(&data[validated..])?;
            if incoming.fin {
                self.utf8.finish()?;
            }
        }
        let kind = if incoming.is_text {
            DataKind::Text
        } else {
            DataKind::Binary
        };
        if !incoming.fin {
            self.message = Some(FragmentedMessage {
                kind,
                data,
                compressed: true,
            });
            return Ok(None);
        }
        // The buffer grew in steps ahead of the output; a message the program keeps should
        // not keep that room too.
        let payload = if data.capacity() > data.len() + data.len() / 8 + 64 {
            bytes::Bytes::copy_from_slice(&data)
        } else {
            data.freeze()
        };
        Ok(Some(match kind {
            DataKind::Text => Frame::Text(Utf8Bytes::from_validated(payload)),
            DataKind::Binary => Frame::Binary(payload),
        }))
    }
}

/// Reads a close frame's body (RFC 6455 §5.5.1): nothing, or a status code and a UTF-8 reason.
fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [high, low, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*high, *low]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReasonUtf8)?;
            Ok(Some(CloseFrame::new(code, reason)))
        }
    }
}

/// Makes room in `src` for `wanted` more bytes of a frame's payload, when it is nearly full: so
/// that `Framed` reads the frame in large chunks rather than 8 KiB at a time. The room is what is
/// wanted, but at most what has arrived so far or [`RESERVE_STEP`], whichever is more: a header
/// announcing a frame within the limits (which may be huge) costs at most one step before its
/// payload comes, and the copies as the buffer grows add up to less than the frame. Allocated
/// here at its size, not with `reserve`, which doubles the allocation: a 1.2 MB frame would sit
/// in 2 MiB, and be copied out again once whole so as not to pin the rest.
fn make_room(src: &mut BytesMut, wanted: usize) {
    const NEARLY_FULL: usize = 8 * 1024;
    if src.capacity() - src.len() >= wanted.min(NEARLY_FULL) {
        return;
    }
    let room = wanted.min(src.len().max(RESERVE_STEP));
    let mut grown = BytesMut::with_capacity(src.len() + room);
    grown.extend_from_slice(src);
    *src = grown;
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        // `Framed` may have grown the buffer for a read since the last call.
        self.read_allocation.observe(src);
        // Loops over frames that only extend a fragmented message: returning `None` while whole
        // frames are still buffered would make `Framed` wait for bytes that may never come.
        loop {
            let mut incoming = match self.incoming.take() {
                Some(incoming) => incoming,
                None => match self.next_header(src)? {
                    Some(incoming) => incoming,
                    None => return Ok(None),
                },
            };

            if src.len() < incoming.payload_len {
                // Fail fast on invalid text (RFC 6455 §8.1) instead of waiting for the whole
                // frame, validating only the bytes that are new since the last call.
                if incoming.is_text && !incoming.compressed {
                    self.utf8.feed(&src[incoming.validated..])?;
                    incoming.validated = src.len();
                }
                make_room(src, incoming.payload_len - src.len());
                self.read_allocation.observe(src);
                self.incoming = Some(incoming);
                return Ok(None);
            }

            if let Some(frame) = self.complete_frame(incoming, src)? {
                return Ok(Some(frame));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONTINUATION: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    /// An unmasked frame as a server sends it, with the shortest length encoding.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(len as u8),
            len @ 126..=0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    fn close_payload(code: u16, reason: &str) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        payload
    }

    fn codec() -> Codec {
        Codec::new(Limits::default())
    }

    /// Calls `decode` until it yields nothing more.
    fn drain(codec: &mut Codec, buf: &mut BytesMut) -> Result<Vec<Frame>, ProtocolError> {
        let mut frames = Vec::new();
        loop {
            match codec.decode(buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return Ok(frames),
                Err(CodecError::Protocol(error)) => return Err(error),
                Err(CodecError::Io(error)) => panic!("unexpected I/O error: {error}"),
            }
        }
    }

    /// Decodes `bytes` delivered all at once with `limits`.
    fn decode_with(limits: Limits, bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let frames = drain(&mut Codec::new(limits), &mut buf)?;
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(frames)
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        decode_with(Limits::default(), bytes)
    }

    fn decode_one(bytes: &[u8]) -> Result<Frame, ProtocolError> {
        let mut frames = decode_all(bytes)?;
        assert_eq!(frames.len(), 1, "{frames:?}");
        Ok(frames.remove(0))
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    // Valid frames of every kind.

    #[test]
    fn decodes_every_valid_frame_kind() {
        let cases = [
            (server_frame(true, TEXT, b"hello"), Frame::text("hello")),
            (server_frame(true, TEXT, b""), Frame::text("")),
            (
                server_frame(true, BINARY, &[0, 1, 255]),
                Frame::binary(&[0, 1, 255][..]),
            ),
            (
                server_frame(true, PING, b"ping?"),
                Frame::ping(&b"ping?"[..]),
            ),
            (server_frame(true, PONG, b""), Frame::pong(Bytes::new())),
            (server_frame(true, CLOSE, b""), Frame::Close(None)),
            (
                server_frame(true, CLOSE, &close_payload(1000, "bye")),
                Frame::close(1000, "bye"),
            ),
            (
                server_frame(true, CLOSE, &close_payload(4000, "")),
                Frame::close(4000, ""),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_one(&bytes), Ok(expected));
        }
    }

    #[test]
    fn decodes_7_16_and_64_bit_lengths() {
        for len in [0, 125, 126, 127, 0xFFFF, 0x1_0000, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = decode_one(&server_frame(true, BINARY, &payload)).unwrap();
            assert_eq!(frame, Frame::binary(payload), "{len}");
        }
    }

    #[test]
    fn accepts_a_64_bit_length_that_is_not_minimal() {
        let mut bytes = vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(b"abc");
        assert_eq!(decode_one(&bytes), Ok(Frame::binary(&b"abc"[..])));
    }

    #[test]
    fn a_whole_message_is_split_off_the_read_buffer_without_copying() {
        let mut buf = BytesMut::from(&server_frame(true, BINARY, &[7; 1000])[..]);
        let payload_address = buf[4..].as_ptr();
        let frame = codec().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.payload().unwrap().as_ptr(), payload_address);
    }

    // Rejection rules.

    #[test]
    fn rejects_reserved_bits() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let bytes = [0x80 | rsv | TEXT, 0];
            assert_eq!(decode_all(&bytes), Err(ProtocolError::ReservedBits));
        }
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let bytes = [0x80 | opcode, 0];
            assert_eq!(
                decode_all(&bytes),
                Err(ProtocolError::UnknownOpcode(opcode))
            );
        }
    }

    #[test]
    fn rejects_masked_frames() {
        let bytes = [0x81, 0x80 | 2, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        assert_eq!(decode_all(&bytes), Err(ProtocolError::MaskedFrame));
    }

    #[test]
    fn rejects_control_frames_over_125_bytes() {
        for opcode in [PING, PONG, CLOSE] {
            let bytes = server_frame(true, opcode, &[b'x'; 126]);
            assert_eq!(
                decode_all(&bytes),
                Err(ProtocolError::ControlFrameTooLong(126))
            );
        }
        let ping_125 = server_frame(true, PING, &[b'x'; 125]);
        assert_eq!(decode_one(&ping_125), Ok(Frame::ping(vec![b'x'; 125])));
    }

    #[test]
    fn rejects_fragmented_control_frames() {
        for opcode in [PING, PONG, CLOSE] {
            let bytes = server_frame(false, opcode, b"");
            assert_eq!(
                decode_all(&bytes),
                Err(ProtocolError::FragmentedControlFrame)
            );
        }
    }

    #[test]
    fn rejects_a_continuation_with_no_message_in_progress() {
        let bytes = server_frame(true, CONTINUATION, b"orphan");
        assert_eq!(
            decode_all(&bytes),
            Err(ProtocolError::UnexpectedContinuation)
        );
        // Also once a fragmented message has been completed.
        let after_message = concat(&[
            server_frame(false, TEXT, b"a"),
            server_frame(true, CONTINUATION, b"b"),
            server_frame(false, CONTINUATION, b"c"),
        ]);
        assert_eq!(
            decode_all(&after_message),
            Err(ProtocolError::UnexpectedContinuation)
        );
    }

    #[test]
    fn rejects_a_new_message_while_one_is_in_progress() {
        for opcode in [TEXT, BINARY] {
            let bytes = concat(&[
                server_frame(false, BINARY, b"first"),
                server_frame(true, opcode, b"second"),
            ]);
            assert_eq!(decode_all(&bytes), Err(ProtocolError::ExpectedContinuation));
        }
    }

    #[test]
    fn rejects_a_64_bit_length_with_the_top_bit_set() {
        let bytes = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_all(&bytes), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn rejects_a_one_byte_close_payload() {
        let bytes = server_frame(true, CLOSE, &[0x03]);
        assert_eq!(decode_all(&bytes), Err(ProtocolError::InvalidClosePayload));
    }

    #[test]
    fn validates_close_codes() {
        let table = [
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1008, true),
            (1009, true),
            (1010, true),
            (1011, true),
            (1012, true),
            (1013, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2000, false),
            (2999, false),
            (3000, true),
            (3999, true),
            (4000, true),
            (4999, true),
            (5000, false),
            (65535, false),
        ];
        for (code, valid) in table {
            let decoded = decode_all(&server_frame(true, CLOSE, &close_payload(code, "")));
            let expected = if valid {
                Ok(vec![Frame::close(code, "")])
            } else {
                Err(ProtocolError::InvalidCloseCode(code))
            };
            assert_eq!(decoded, expected, "close code {code}");
        }
    }

    #[test]
    fn rejects_a_close_reason_that_is_not_utf8() {
        let mut payload = close_payload(1000, "");
        payload.extend_from_slice(b"bad \xff");
        let bytes = server_frame(true, CLOSE, &payload);
        assert_eq!(
            decode_all(&bytes),
            Err(ProtocolError::InvalidCloseReasonUtf8)
        );
    }

    #[test]
    fn rejects_text_that_is_not_utf8() {
        let invalid: [&[u8]; 4] = [b"\xff", b"ab\xc3(", b"\xed\xa0\x80", b"truncated \xe2\x82"];
        for payload in invalid {
            let bytes = server_frame(true, TEXT, payload);
            assert_eq!(
                decode_all(&bytes),
                Err(ProtocolError::InvalidUtf8),
                "{payload:?}"
            );
        }
        // The same bytes are fine in a binary message.
        assert!(decode_all(&server_frame(true, BINARY, b"\xff")).is_ok());
    }

    // Limits.

    #[test]
    fn rejects_a_huge_frame_from_its_header_without_buffering_it() {
        // A header announcing 2^40 bytes, and a few bytes of payload.
        let mut bytes = vec![0x82, 127, 0, 0, 0x01, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"some payload");
        let mut buf = BytesMut::from(&bytes[..]);
        let result = codec().decode(&mut buf);
        assert!(matches!(
            result,
            Err(CodecError::Protocol(ProtocolError::FrameTooLarge {
                size: 0x100_0000_0000,
                max: 0x100_0000,
            }))
        ));
        assert!(buf.capacity() < 4096, "capacity {}", buf.capacity());
    }

    #[test]
    fn rejects_a_frame_just_over_the_frame_limit() {
        let limits = Limits {
            max_frame_size: 10,
            max_message_size: 100,
        };
        assert!(decode_with(limits, &server_frame(true, BINARY, &[0; 10])).is_ok());
        assert_eq!(
            decode_with(limits, &server_frame(true, BINARY, &[0; 11])),
            Err(ProtocolError::FrameTooLarge { size: 11, max: 10 })
        );
    }

    #[test]
    fn rejects_a_message_over_the_limit_as_soon_as_the_fragment_header_arrives() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
        };
        let mut codec = Codec::new(limits);
        let mut buf = BytesMut::from(&server_frame(false, BINARY, &[1; 100])[..]);
        assert_eq!(drain(&mut codec, &mut buf), Ok(vec![]));
        // Only the next fragment's header: announcing 100 more bytes breaks the limit.
        buf.extend_from_slice(&[CONTINUATION, 100]);
        assert_eq!(
            drain(&mut codec, &mut buf),
            Err(ProtocolError::MessageTooLarge {
                size: 200,
                max: 150
            })
        );
    }

    #[test]
    fn the_message_limit_applies_to_unfragmented_messages() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 50,
        };
        assert_eq!(
            decode_with(limits, &server_frame(true, TEXT, &[b'a'; 51])),
            Err(ProtocolError::MessageTooLarge { size: 51, max: 50 })
        );
    }

    #[test]
    fn a_huge_announced_frame_reserves_one_step_only() {
        let mut codec = Codec::new(Limits {
            max_frame_size: usize::MAX,
            max_message_size: usize::MAX,
        });
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(
            buf.capacity() <= 2 * RESERVE_STEP,
            "capacity {}",
            buf.capacity()
        );
    }

    /// A compressed frame's header is held to what is left of the message limit, plus an
    /// eighth and 1 KiB: at the bound it is awaited, one byte over it fails at once.
    #[test]
    fn a_compressed_frame_header_is_bounded_by_the_message_limit() {
        let agreed = crate::Deflate::default()
            .accept(&[b"permessage-deflate"])
            .unwrap();
        let header = |len: u64| {
            let mut header = vec![0x80 | 0x40 | TEXT, 127];
            header.extend_from_slice(&len.to_be_bytes());
            BytesMut::from(&header[..])
        };
        for (max_message_size, bound) in [(4096, 4096 + 512 + 1024), (0, 1024), (1, 1025)] {
            let limits = Limits {
                max_frame_size: 1 << 30,
                max_message_size,
            };
            let mut at_bound = Codec::with_compression(limits, agreed);
            assert_eq!(drain(&mut at_bound, &mut header(bound)), Ok(vec![]));
            let mut over = Codec::with_compression(limits, agreed);
            assert_eq!(
                drain(&mut over, &mut header(bound + 1)),
                Err(ProtocolError::MessageTooLarge {
                    size: bound + 1,
                    max: max_message_size
                })
            );
        }
        // The largest limit does not overflow the bound.
        let mut unbounded = Codec::with_compression(
            Limits {
                max_frame_size: usize::MAX,
                max_message_size: usize::MAX,
            },
            agreed,
        );
        assert_eq!(drain(&mut unbounded, &mut header(1 << 62)), Ok(vec![]));
    }

    /// Fed as `Framed` feeds it (into the room the codec made), a frame over one step ends in
    /// an allocation of about its size, so the message is handed over without a copy, and the
    /// room never runs far ahead of what has arrived.
    #[test]
    fn a_big_frame_in_parts_ends_in_an_allocation_of_its_size() {
        for len in [RESERVE_STEP + 200_000, 5 * RESERVE_STEP + 3, 300_000] {
            let bytes = server_frame(true, BINARY, &vec![7; len]);
            let mut codec = codec();
            let mut buf = BytesMut::new();
            let mut fed = 0;
            let frame = loop {
                if let Some(frame) = codec.decode(&mut buf).unwrap() {
                    break frame;
                }
                let spare = buf.capacity() - buf.len();
                assert!(
                    spare <= fed.max(RESERVE_STEP) + 8 * 1024,
                    "{spare} bytes of room after {fed} of {len}"
                );
                let chunk = spare.clamp(1, 65_536).min(bytes.len() - fed);
                buf.extend_from_slice(&bytes[fed..fed + chunk]);
                fed += chunk;
            };
            assert_eq!(frame.payload_len(), len);
            assert!(
                !codec.read_allocation.outsizes(len),
                "a {len}-byte frame in a {}-byte allocation",
                codec.read_allocation.end - codec.read_allocation.start
            );
        }
    }

    #[test]
    fn reserves_room_for_the_rest_of_a_big_frame() {
        let bytes = server_frame(true, BINARY, &[5; 1 << 20]);
        let mut buf = BytesMut::from(&bytes[..100]);
        assert!(matches!(codec().decode(&mut buf), Ok(None)));
        assert!(buf.capacity() >= 1 << 20, "capacity {}", buf.capacity());
    }

    // Fragmentation.

    #[test]
    fn assembles_fragmented_text_with_a_code_point_split_across_fragments() {
        let text = "Grüße, 世界 𝄞!";
        let bytes = text.as_bytes();
        // Split inside 'ü', inside '世' and inside '𝄞'.
        let (cut1, cut2, cut3) = (3, 10, 18);
        assert!(!text.is_char_boundary(cut1) && !text.is_char_boundary(cut2));
        assert!(!text.is_char_boundary(cut3));
        let stream = concat(&[
            server_frame(false, TEXT, &bytes[..cut1]),
            server_frame(false, CONTINUATION, &bytes[cut1..cut2]),
            server_frame(false, CONTINUATION, &bytes[cut2..cut3]),
            server_frame(true, CONTINUATION, &bytes[cut3..]),
        ]);
        assert_eq!(decode_one(&stream), Ok(Frame::text(text)));
    }

    #[test]
    fn assembles_fragmented_binary_including_empty_fragments() {
        let stream = concat(&[
            server_frame(false, BINARY, b""),
            server_frame(false, CONTINUATION, b"ab"),
            server_frame(false, CONTINUATION, b""),
            server_frame(true, CONTINUATION, b"c"),
        ]);
        assert_eq!(decode_one(&stream), Ok(Frame::binary(&b"abc"[..])));
    }

    #[test]
    fn yields_control_frames_between_fragments() {
        let stream = concat(&[
            server_frame(false, TEXT, b"frag"),
            server_frame(true, PING, b"p"),
            server_frame(false, CONTINUATION, b"men"),
            server_frame(true, PONG, b""),
            server_frame(true, CONTINUATION, b"ted"),
        ]);
        assert_eq!(
            decode_all(&stream),
            Ok(vec![
                Frame::ping(&b"p"[..]),
                Frame::pong(Bytes::new()),
                Frame::text("fragmented"),
            ])
        );
    }

    #[test]
    fn detects_invalid_utf8_in_a_middle_fragment_before_the_final_one() {
        let mut codec = codec();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&server_frame(false, TEXT, "κό".as_bytes()));
        assert_eq!(drain(&mut codec, &mut buf), Ok(vec![]));
        buf.extend_from_slice(&server_frame(false, CONTINUATION, b"\xce\xbb\xff"));
        assert_eq!(drain(&mut codec, &mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn detects_a_code_point_left_unfinished_by_the_final_fragment() {
        let stream = concat(&[
            server_frame(false, TEXT, b"ok \xe2\x82"),
            server_frame(true, CONTINUATION, b""),
        ]);
        assert_eq!(decode_all(&stream), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn detects_invalid_utf8_in_a_partly_arrived_frame() {
        // Autobahn 6.4.3: valid text, then an invalid sequence, then more text, in one frame
        // whose bytes arrive in three parts. The error must come with the second part.
        let parts: [&[u8]; 3] = ["κόσμε".as_bytes(), b"\xf4\x90\x80\x80", b"-edited"];
        let frame = server_frame(true, TEXT, &parts.concat());
        let header_len = 2;
        let mut codec = codec();
        let mut buf = BytesMut::from(&frame[..header_len + parts[0].len()]);
        assert_eq!(drain(&mut codec, &mut buf), Ok(vec![]));
        buf.extend_from_slice(parts[1]);
        assert_eq!(drain(&mut codec, &mut buf), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn detects_invalid_utf8_in_a_frame_arriving_byte_by_byte() {
        // Autobahn 6.4.4: the same, one byte at a time; F4 90 is already impossible.
        let payload = [b"\xce\xba".as_slice(), b"\xf4\x90\x80\x80", b"-edited"].concat();
        let frame = server_frame(true, TEXT, &payload);
        let mut codec = codec();
        let mut buf = BytesMut::new();
        let fails_at = 2 + 2 + 2; // header, "κ", then F4 90
        for (index, byte) in frame.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let result = drain(&mut codec, &mut buf);
            if index + 1 < fails_at {
                assert_eq!(result, Ok(vec![]), "after {} bytes", index + 1);
            } else {
                assert_eq!(result, Err(ProtocolError::InvalidUtf8));
                return;
            }
        }
        unreachable!("the invalid sequence was not detected");
    }

    #[test]
    fn an_incomplete_code_point_at_the_end_of_a_partial_frame_is_not_an_error() {
        let frame = server_frame(true, TEXT, "price: 5€, ok".as_bytes());
        let euro_middle = frame.iter().position(|&byte| byte == 0xE2).unwrap() + 2;
        let mut codec = codec();
        let mut buf = BytesMut::from(&frame[..euro_middle]);
        assert_eq!(drain(&mut codec, &mut buf), Ok(vec![]));
        buf.extend_from_slice(&frame[euro_middle..]);
        assert_eq!(
            drain(&mut codec, &mut buf),
            Ok(vec![Frame::text("price: 5€, ok")])
        );
    }

    #[test]
    fn assembles_65536_small_fragments() {
        let fragments = 65_536;
        let fragment = [0xAB; 64];
        let mut stream = BytesMut::with_capacity(fragments * (2 + fragment.len()));
        stream.extend_from_slice(&server_frame(false, BINARY, &fragment));
        for index in 1..fragments {
            let fin = index == fragments - 1;
            stream.extend_from_slice(&server_frame(fin, CONTINUATION, &fragment));
        }
        let mut codec = codec();
        let frames = drain(&mut codec, &mut stream).unwrap();
        assert_eq!(frames.len(), 1);
        let payload = frames[0].payload().unwrap();
        assert_eq!(payload.len(), fragments * fragment.len());
        assert!(payload.iter().all(|&byte| byte == 0xAB));
        assert!(stream.is_empty());
    }

    // Arbitrary splits of a stream.

    /// Several frames of every kind, lengths in the 7- and 16-bit forms, fragments with split
    /// code points and control frames between them.
    fn mixed_stream() -> (Vec<u8>, Vec<Frame>) {
        let long_text = "é".repeat(100); // 200 bytes: a 16-bit length
        let stream = concat(&[
            server_frame(true, TEXT, b"hi"),
            server_frame(true, BINARY, &[0; 300]),
            server_frame(false, TEXT, b"\xf0\x9d"),
            server_frame(true, PING, b"beat"),
            server_frame(false, CONTINUATION, b"\x84\x9e and "),
            server_frame(true, CONTINUATION, long_text.as_bytes()),
            server_frame(true, PONG, b""),
            server_frame(true, TEXT, b""),
            server_frame(true, CLOSE, &close_payload(1001, "gone")),
        ]);
        let frames = vec![
            Frame::text("hi"),
            Frame::binary(vec![0; 300]),
            Frame::ping(&b"beat"[..]),
            Frame::text(format!("𝄞 and {long_text}")),
            Frame::pong(Bytes::new()),
            Frame::text(""),
            Frame::close(1001, "gone"),
        ];
        (stream, frames)
    }

    #[test]
    fn decodes_a_stream_fed_one_byte_at_a_time() {
        let (stream, expected) = mixed_stream();
        let mut codec = codec();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in &stream {
            buf.extend_from_slice(&[*byte]);
            frames.extend(drain(&mut codec, &mut buf).unwrap());
        }
        assert_eq!(frames, expected);
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_a_stream_split_in_two_at_every_byte() {
        let (stream, expected) = mixed_stream();
        for split in 0..=stream.len() {
            let mut codec = codec();
            let mut buf = BytesMut::from(&stream[..split]);
            let mut frames = drain(&mut codec, &mut buf).unwrap();
            buf.extend_from_slice(&stream[split..]);
            frames.extend(drain(&mut codec, &mut buf).unwrap());
            assert_eq!(frames, expected, "split at {split}");
            assert!(buf.is_empty());
        }
    }
}
