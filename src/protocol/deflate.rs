//! permessage-deflate's work on each message (RFC 7692 §7.2): compressing what the client sends,
//! inflating what the server sends under the message size limit.
//!
//! zlib state is big (tens to hundreds of KiB, depending on the window and memory level), so
//! neither side has any until its first compressed message, and a side without context takeover
//! drops it after every message.

use bytes::BytesMut;
use zlib_rs::{DeflateConfig, DeflateFlush, InflateFlush, Method, Status, Strategy};

use super::ProtocolError;
use crate::compression::Agreed;

/// What a sync flush ends with: RFC 7692 §7.2.1 has the sender remove it from every message
/// and §7.2.2 has the receiver append it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most output room added at once while compressing or inflating, so that buffers grow
/// with what is produced (and the inflated size is checked chunk by chunk) instead of being sized
/// for the worst case up front.
const STEP_MAX: usize = 1 << 20;
/// The least output room added at once.
const STEP_MIN: usize = 256;
/// How many times its compressed size a message is assumed to inflate to, for the first step's
/// room: JSON with context takeover inflates 5 to 10 times.
const INFLATE_RATIO_GUESS: usize = 8;
/// ... up to this much room: beyond, twice the input.
const GUESS_MAX: usize = 64 * 1024;
/// The output room zlib's fast inflate loop needs beyond what it writes (its longest match).
const FAST_INFLATE_ROOM: usize = 258;

/// Output room for a step that follows one of `previous` bytes: doubling, up to [`STEP_MAX`].
fn next_step(previous: usize) -> usize {
    (previous * 2).clamp(STEP_MIN, STEP_MAX)
}

/// Compressed output kept between messages beyond this is given back at once: a large message
/// should not leave its size behind on an idle connection.
const KEEP_OUTPUT: usize = 64 << 10;

/// Compresses the client's messages.
pub(crate) struct Compressor {
    config: DeflateConfig,
    /// Whether the client sends compressed at all: not when the server asked for a 256-byte
    /// window, which zlib cannot compress with (it would use 512 bytes).
    enabled: bool,
    no_context_takeover: bool,
    threshold: usize,
    /// The zlib state, from the first compressed message until the connection goes idle.
    state: Option<zlib_rs::Deflate>,
    /// The compressed payload of the message being encoded.
    output: Vec<u8>,
    /// Whether a message was compressed since the last [`release_if_idle`](Self::release_if_idle).
    busy: bool,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("enabled", &self.enabled)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("threshold", &self.threshold)
            .field("allocated", &self.state.is_some())
            .finish()
    }
}

impl Compressor {
    pub(crate) fn new(agreed: &Agreed) -> Self {
        Compressor {
            config: DeflateConfig {
                level: i32::from(agreed.level),
                method: Method::Deflated,
                // Negative: a raw deflate stream, with no zlib header or checksum.
                window_bits: -i32::from(agreed.client_window_bits.max(9)),
                mem_level: i32::from(agreed.memory_level),
                strategy: Strategy::Default,
            },
            enabled: agreed.client_window_bits >= 9,
            no_context_takeover: agreed.client_no_context_takeover,
            threshold: agreed.threshold,
            state: None,
            output: Vec::new(),
            busy: false,
        }
    }

    /// Compresses a message's payload if that is worth it; the caller then sends
    /// [`compressed`](Self::compressed) with RSV1 set, and calls [`written`](Self::written).
    pub(crate) fn compress(&mut self, payload: &[u8]) -> bool {
        if !self.enabled || payload.len() < self.threshold {
            return false;
        }
        self.output.clear();
        self.busy = true;
        if payload.is_empty() {
            // An empty message is a single empty stored block (RFC 7692 §7.2.3.6). zlib would
            // give nothing: a second sync flush without new input is a no-op.
            self.output.push(0x00);
            return true;
        }
        let config = self.config;
        let state = self
            .state
            .get_or_insert_with(|| zlib_rs::Deflate::new_with_config(config));

        let mut input = payload;
        // Text that is worth compressing shrinks several-fold: start small and double.
        let mut room = (payload.len() / 4).clamp(STEP_MIN, STEP_MAX);
        loop {
            let start = self.output.len();
            self.output.resize(start + room, 0);
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let result = state.compress(input, &mut self.output[start..], DeflateFlush::SyncFlush);
            let consumed = (state.total_in() - in_before) as usize;
            let produced = (state.total_out() - out_before) as usize;
            self.output.truncate(start + produced);
            input = &input[consumed..];
            if result.is_err() {
                // Not expected with a valid state and buffers; if it happens anyway, the message
                // goes out uncompressed and the next one starts afresh, which is always valid.
                log::warn!("minch: zlib failed to compress a message; sending it uncompressed");
                self.state = None;
                return false;
            }
            // zlib has flushed everything once it leaves output room unused (zlib.h, deflate()).
            if input.is_empty() && produced < room {
                break;
            }
            room = next_step(room);
        }
        debug_assert!(self.output.ends_with(&TAIL));
        self.output
            .truncate(self.output.len().saturating_sub(TAIL.len()));
        if self.no_context_takeover {
            // The next message must not refer back to this one. Resetting keeps the memory,
            // which is given back when the connection goes idle, as with context takeover.
            state.reset();
        }
        true
    }

    /// The compressed payload of the last message [`compress`](Self::compress) took.
    pub(crate) fn compressed(&self) -> &[u8] {
        &self.output
    }

    /// Called once the compressed payload has been written out: a large one's buffer is given
    /// back at once.
    pub(crate) fn written(&mut self) {
        if self.output.capacity() > KEEP_OUTPUT {
            self.output = Vec::new();
        }
    }

    /// Gives back the zlib state and the output buffer if no message was compressed since the
    /// last call. Always safe: a compressor that starts afresh only refers back less, and the
    /// server's inflater cannot tell (as with `client_no_context_takeover`).
    pub(crate) fn release_if_idle(&mut self) {
        if !std::mem::take(&mut self.busy) {
            self.state = None;
            self.output = Vec::new();
        }
    }

    /// Whether zlib state is allocated (for tests and memory accounting).
    #[cfg(test)]
    pub(crate) fn is_allocated(&self) -> bool {
        self.state.is_some()
    }
}

/// Inflates the server's compressed messages.
pub(crate) struct Decompressor {
    window_bits: u8,
    no_context_takeover: bool,
    /// The zlib state, from the first compressed message on; without context takeover, until
    /// the connection goes idle.
    state: Option<zlib_rs::Inflate>,
    /// Whether the message being inflated ended its deflate stream with a final block.
    stream_ended: bool,
    /// Compressed bytes of the message being inflated, so far.
    message_input: usize,
    /// Whether a message was inflated since the last [`release_if_idle`](Self::release_if_idle).
    busy: bool,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("window_bits", &self.window_bits)
            .field("no_context_takeover", &self.no_context_takeover)
            .field("allocated", &self.state.is_some())
            .finish()
    }
}

impl Decompressor {
    pub(crate) fn new(agreed: &Agreed) -> Self {
        Decompressor {
            // A zlib-based server asked for a 256-byte window compresses with 512 bytes.
            window_bits: agreed.server_window_bits.max(9),
            no_context_takeover: agreed.server_no_context_takeover,
            state: None,
            stream_ended: false,
            message_input: 0,
            busy: false,
        }
    }

    /// Inflates `input`, a fragment of a compressed message, appending to `message`, which must
    /// not grow past `limit` bytes: it stops as soon as it would, with `MessageTooLarge`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        message: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        self.message_input += input.len();
        self.busy = true;
        if self.stream_ended {
            // What follows a final block is not part of the stream: zlib-based receivers stop
            // there too (RFC 7692 §7.2.3.4 even appends a byte after one).
            return Ok(());
        }
        let window_bits = self.window_bits;
        let state = self
            .state
            .get_or_insert_with(|| zlib_rs::Inflate::new(false, window_bits));
        let mut input = input;
        // Room for what text typically inflates to in one step, with the 258 bytes past it
        // that zlib's fast loop needs: fewer calls, and fewer in its slow byte-at-a-time path.
        // Large inputs are not assumed to inflate as much (the room is zero-filled).
        let guess = (input.len() * INFLATE_RATIO_GUESS)
            .min(GUESS_MAX)
            .max(input.len() * 2);
        let mut room = (guess + FAST_INFLATE_ROOM).clamp(STEP_MIN, STEP_MAX);
        loop {
            // One byte past the limit is room enough to prove the message is too large.
            let room_left = limit.saturating_add(1) - message.len().min(limit);
            let step = room.min(room_left);
            let start = message.len();
            message.resize(start + step, 0);
            let (in_before, out_before) = (state.total_in(), state.total_out());
            let result = state.decompress(input, &mut message[start..], InflateFlush::SyncFlush);
            let consumed = (state.total_in() - in_before) as usize;
            let produced = (state.total_out() - out_before) as usize;
            message.truncate(start + produced);
            input = &input[consumed..];
            if message.len() > limit {
                return Err(ProtocolError::MessageTooLarge {
                    size: message.len() as u64,
                    max: limit,
                });
            }
            match result {
                Err(error) => {
                    self.state = None;
                    return Err(ProtocolError::InvalidCompressedData(error.as_str()));
                }
                // The server ended its deflate stream with a final block (RFC 7692 §7.2.3.4):
                // the next message starts a new stream.
                Ok(Status::StreamEnd) => {
                    self.state = None;
                    self.stream_ended = true;
                    return Ok(());
                }
                // All input taken, and output room left over: nothing is pending.
                Ok(_) if input.is_empty() && produced < step => return Ok(()),
                Ok(_) if consumed == 0 && produced == 0 => {
                    // No progress with input and room left: zlib needs nothing more from us,
                    // so the input cannot be inflated.
                    self.state = None;
                    return Err(ProtocolError::InvalidCompressedData(
                        "the compressed data does not advance",
                    ));
                }
                Ok(_) => room = next_step(room),
            }
        }
    }

    /// Ends a compressed message: appends the tail the server removed and inflates what it
    /// flushes; without context takeover, the state starts afresh for the next message.
    pub(crate) fn finish_message(
        &mut self,
        message: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let stream_ended = std::mem::take(&mut self.stream_ended);
        // An empty compressed payload carries no block to end (RFC 7692 §7.2.3.6 sends 0x00
        // for an empty message): the tail would start a block the next message cannot finish.
        if !stream_ended && std::mem::take(&mut self.message_input) > 0 {
            self.inflate(&TAIL, message, limit)?;
        }
        self.message_input = 0;
        if self.no_context_takeover {
            if let Some(state) = &mut self.state {
                state.reset(false);
            }
        }
        Ok(())
    }

    /// Gives back the zlib state if the server keeps no context and no message was inflated
    /// since the last call. With context takeover the state holds the server's window, which
    /// later messages may refer to, so it stays.
    pub(crate) fn release_if_idle(&mut self) {
        if !std::mem::take(&mut self.busy) && self.no_context_takeover {
            self.state = None;
        }
    }

    /// Whether zlib state is allocated (for tests and memory accounting).
    #[cfg(test)]
    pub(crate) fn is_allocated(&self) -> bool {
        self.state.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed() -> Agreed {
        Agreed {
            client_window_bits: 15,
            server_window_bits: 15,
            client_no_context_takeover: false,
            server_no_context_takeover: false,
            memory_level: 5,
            level: 1,
            threshold: 0,
        }
    }

    /// The server's view: what the client's compressor produced, inflated by a decompressor
    /// with the same parameters (both sides of one connection share them).
    fn round_trip(agreed: Agreed, messages: &[&[u8]]) {
        let mut compressor = Compressor::new(&agreed);
        let mut peer = Decompressor::new(&Agreed {
            server_window_bits: agreed.client_window_bits,
            server_no_context_takeover: agreed.client_no_context_takeover,
            ..agreed
        });
        for message in messages {
            assert!(compressor.compress(message));
            let mut out = BytesMut::new();
            peer.inflate(compressor.compressed(), &mut out, usize::MAX)
                .unwrap();
            peer.finish_message(&mut out, usize::MAX).unwrap();
            assert_eq!(&out[..], *message);
            assert!(
                compressor.is_allocated(),
                "kept between messages, reset if need be"
            );
        }
    }

    #[test]
    fn compresses_and_inflates_with_and_without_context() {
        let json = br#"{"symbol":"BTC-USD","bid":"64123.5","ask":"64124.0","size":"0.25"}"#;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let messages: [&[u8]; 5] = [json, json, b"", &big, json];
        for client_no_context_takeover in [false, true] {
            for bits in [9, 12, 15] {
                round_trip(
                    Agreed {
                        client_window_bits: bits,
                        client_no_context_takeover,
                        ..agreed()
                    },
                    &messages,
                );
            }
        }
    }

    #[test]
    fn context_takeover_makes_repeats_cheaper() {
        let json = br#"{"symbol":"BTC-USD","bid":"64123.5","ask":"64124.0","size":"0.25"}"#;
        let mut with = Compressor::new(&agreed());
        let mut without = Compressor::new(&Agreed {
            client_no_context_takeover: true,
            ..agreed()
        });
        assert!(with.compress(json) && with.compress(json));
        assert!(without.compress(json) && without.compress(json));
        assert!(with.compressed().len() * 3 < without.compressed().len());
    }

    #[test]
    fn a_256_byte_window_or_a_short_message_goes_out_uncompressed() {
        let mut narrow = Compressor::new(&Agreed {
            client_window_bits: 8,
            ..agreed()
        });
        assert!(!narrow.compress(&[b'a'; 1000]));
        let mut thresholded = Compressor::new(&Agreed {
            threshold: 10,
            ..agreed()
        });
        assert!(!thresholded.compress(b"123456789"));
        assert!(!thresholded.is_allocated());
        assert!(thresholded.compress(b"1234567890"));
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        // 10 MB of zeros compress to about 10 KB at level 9.
        let mut compressor = Compressor::new(&Agreed {
            level: 9,
            ..agreed()
        });
        assert!(compressor.compress(&vec![0; 10_000_000]));
        let bomb = compressor.compressed().to_vec();
        assert!(bomb.len() < 20_000);

        for limit in [0, 1, 4096, 1_000_000] {
            let mut decompressor = Decompressor::new(&agreed());
            let mut out = BytesMut::new();
            let error = decompressor
                .inflate(&bomb, &mut out, limit)
                .and_then(|()| decompressor.finish_message(&mut out, limit))
                .unwrap_err();
            assert_eq!(
                error,
                ProtocolError::MessageTooLarge {
                    size: limit as u64 + 1,
                    max: limit
                }
            );
            // Memory grew to the limit, not to the 10 MB message.
            assert!(
                out.capacity() <= 2 * (limit + 1) + STEP_MAX,
                "{}",
                out.capacity()
            );
        }
        let mut decompressor = Decompressor::new(&agreed());
        let mut out = BytesMut::new();
        decompressor.inflate(&bomb, &mut out, 10_000_000).unwrap();
        decompressor.finish_message(&mut out, 10_000_000).unwrap();
        assert_eq!(out.len(), 10_000_000);
    }

    #[test]
    fn garbage_is_invalid_compressed_data() {
        let mut decompressor = Decompressor::new(&agreed());
        let mut out = BytesMut::new();
        // BTYPE 11 is reserved (RFC 1951 §3.2.3).
        let error = decompressor
            .inflate(&[0xff, 0xff, 0xff], &mut out, 1000)
            .unwrap_err();
        assert!(matches!(error, ProtocolError::InvalidCompressedData(_)));
        assert_eq!(error.close_code(), crate::frame::CloseCode(1007));
    }

    #[test]
    fn a_final_block_ends_the_stream_and_the_next_message_starts_a_new_one() {
        // "a" as a fixed-Huffman block with BFINAL set, then the same again: each message is a
        // whole deflate stream, as a server without a sync flush might send.
        let finished = [0x4b, 0x04, 0x00];
        let mut decompressor = Decompressor::new(&agreed());
        for _ in 0..2 {
            let mut out = BytesMut::new();
            decompressor.inflate(&finished, &mut out, 100).unwrap();
            decompressor.finish_message(&mut out, 100).unwrap();
            assert_eq!(&out[..], b"a");
        }
        // RFC 7692 §7.2.3.4's example: "Hello" in a final block, then a 0x00 byte, which is
        // ignored, as is anything after the final block in later fragments.
        let hello = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        let mut out = BytesMut::new();
        decompressor.inflate(&hello, &mut out, 100).unwrap();
        decompressor.inflate(b"more", &mut out, 100).unwrap();
        decompressor.finish_message(&mut out, 100).unwrap();
        assert_eq!(&out[..], b"Hello");
        let mut out = BytesMut::new();
        decompressor.inflate(&finished, &mut out, 100).unwrap();
        decompressor.finish_message(&mut out, 100).unwrap();
        assert_eq!(&out[..], b"a");
    }

    #[test]
    fn an_empty_compressed_payload_is_an_empty_message_and_leaves_the_stream_intact() {
        let mut compressor = Compressor::new(&agreed());
        let mut decompressor = Decompressor::new(&agreed());
        let mut out = BytesMut::new();
        decompressor.inflate(&[], &mut out, 100).unwrap();
        decompressor.finish_message(&mut out, 100).unwrap();
        assert!(out.is_empty());
        assert!(compressor.compress(b"after the empty one"));
        let mut out = BytesMut::new();
        decompressor
            .inflate(compressor.compressed(), &mut out, 100)
            .unwrap();
        decompressor.finish_message(&mut out, 100).unwrap();
        assert_eq!(&out[..], b"after the empty one");
    }

    #[test]
    fn buffers_follow_the_output_not_the_input() {
        // A 32 MiB message of zeros compresses to about 32 KiB: the compressor's buffer follows
        // that, and is given back once written if it grew large anyway.
        let mut compressor = Compressor::new(&agreed());
        assert!(compressor.compress(&vec![0; 32 << 20]));
        assert!(compressor.output.capacity() < 4 * compressor.compressed().len() + STEP_MAX);
        compressor.written();
        assert!(compressor.output.capacity() <= KEEP_OUTPUT);
        let noise: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(compressor.compress(&noise));
        compressor.written();
        assert_eq!(
            compressor.output.capacity(),
            0,
            "over KEEP_OUTPUT: given back"
        );
        // A small message inflates into a small buffer.
        let mut decompressor = Decompressor::new(&agreed());
        assert!(compressor.compress(&[b'x'; 100]));
        let mut out = BytesMut::new();
        decompressor
            .inflate(compressor.compressed(), &mut out, usize::MAX)
            .unwrap();
        decompressor.finish_message(&mut out, usize::MAX).unwrap();
        assert_eq!(out.len(), 100);
        assert!(out.capacity() <= 1024, "{}", out.capacity());
    }

    #[test]
    fn an_idle_compressor_is_released_and_the_stream_stays_valid() {
        let agreed = agreed();
        let mut compressor = Compressor::new(&agreed);
        let mut peer = Decompressor::new(&agreed);
        let mut check = |compressor: &Compressor, expected: &[u8]| {
            let mut out = BytesMut::new();
            peer.inflate(compressor.compressed(), &mut out, usize::MAX)
                .unwrap();
            peer.finish_message(&mut out, usize::MAX).unwrap();
            assert_eq!(&out[..], expected);
        };
        assert!(compressor.compress(b"hello hello hello"));
        check(&compressor, b"hello hello hello");
        compressor.release_if_idle();
        assert!(compressor.is_allocated(), "busy since the last check");
        compressor.release_if_idle();
        assert!(!compressor.is_allocated(), "idle for a whole period");
        // The server's inflater keeps its context; the fresh compressor's output still inflates.
        assert!(compressor.compress(b"hello again"));
        check(&compressor, b"hello again");
    }

    #[test]
    fn without_context_takeover_state_is_reset_per_message_and_released_when_idle() {
        let mut compressor = Compressor::new(&Agreed {
            client_no_context_takeover: true,
            ..agreed()
        });
        let mut decompressor = Decompressor::new(&Agreed {
            server_no_context_takeover: true,
            ..agreed()
        });
        assert!(compressor.compress(b"hello hello hello"));
        let mut out = BytesMut::new();
        decompressor
            .inflate(compressor.compressed(), &mut out, 100)
            .unwrap();
        decompressor.finish_message(&mut out, 100).unwrap();
        assert_eq!(&out[..], b"hello hello hello");
        // A second message on its own, by a fresh inflater: nothing refers back.
        assert!(compressor.compress(b"hello hello hello"));
        let mut alone = Decompressor::new(&agreed());
        let mut out = BytesMut::new();
        alone
            .inflate(compressor.compressed(), &mut out, 100)
            .unwrap();
        alone.finish_message(&mut out, 100).unwrap();
        assert_eq!(&out[..], b"hello hello hello");

        decompressor.release_if_idle();
        assert!(decompressor.is_allocated(), "busy since the last check");
        decompressor.release_if_idle();
        assert!(!decompressor.is_allocated(), "idle for a whole period");
        // With context takeover the inflater holds the server's window: never released.
        let mut keeping = Decompressor::new(&agreed());
        keeping
            .inflate(&[0x4a, 0x04, 0x00], &mut BytesMut::new(), 100)
            .unwrap();
        keeping.release_if_idle();
        keeping.release_if_idle();
        assert!(keeping.is_allocated());
    }
}
