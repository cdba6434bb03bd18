//! Incremental UTF-8 validation of text messages.
//!
//! RFC 6455 §8.1 says an endpoint must fail the connection as soon as it sees invalid UTF-8 in a
//! text message, and Autobahn (cases 6.4.1–6.4.4) checks that a client does so before the rest of
//! the message arrives. A text message reaches us in pieces (fragments, and partial reads of one
//! frame), and a code point may be cut between any two pieces. So the validator takes the pieces
//! in order, checks each as it arrives with std's fast `str::from_utf8`, and carries over the at
//! most 3 bytes of a code point cut off at the end of a piece.

use std::str;

use super::ProtocolError;

/// Checks that a sequence of byte chunks forms UTF-8 text, failing at the first chunk that
/// makes it invalid.
#[derive(Debug, Default)]
pub(super) struct Utf8Validator {
    /// The start of a code point the previous chunk ended in the middle of.
    carried: [u8; 4],
    /// How many bytes of `carried` are in use: 0 to 3.
    carried_len: usize,
}

impl Utf8Validator {
    /// Validates the next chunk of the text. A code point left incomplete at the end of the chunk
    /// is not an error yet: the next chunk may complete it.
    pub(super) fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.carried_len > 0 {
            // Complete the carried code point with the bytes it still needs, and no more, so the
            // rest of the chunk starts at a code point boundary.
            let needed = sequence_len(self.carried[0]) - self.carried_len;
            let taken = needed.min(chunk.len());
            self.carried[self.carried_len..self.carried_len + taken]
                .copy_from_slice(&chunk[..taken]);
            self.carried_len += taken;
            chunk = &chunk[taken..];
            match str::from_utf8(&self.carried[..self.carried_len]) {
                Ok(_) => self.carried_len = 0,
                // Still a valid prefix; the chunk ran out before the code point did.
                Err(error) if error.error_len().is_none() => return Ok(()),
                Err(_) => return Err(ProtocolError::InvalidUtf8),
            }
        }
        // Most text on the wire is ASCII: a word-at-a-time check is far cheaper than the
        // full validation on short messages.
        if chunk.is_ascii() {
            return Ok(());
        }
        match str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the chunk ends inside a code point that is valid so far.
            Err(error) if error.error_len().is_none() => {
                let tail = &chunk[error.valid_up_to()..];
                self.carried[..tail.len()].copy_from_slice(tail);
                self.carried_len = tail.len();
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }

    /// Ends the text: an unfinished code point at its end makes it invalid.
    pub(super) fn finish(&mut self) -> Result<(), ProtocolError> {
        if self.carried_len == 0 {
            Ok(())
        } else {
            Err(ProtocolError::InvalidUtf8)
        }
    }
}

/// The length of the UTF-8 sequence that `lead` starts. Only called on the first byte of a
/// carried, valid-so-far sequence, so `lead` is one of 0xC2..=0xF4.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(chunks: &[&[u8]]) -> Result<(), ProtocolError> {
        let mut validator = Utf8Validator::default();
        for chunk in chunks {
            validator.feed(chunk)?;
        }
        validator.finish()
    }

    const MIXED: &str = "aé€𝄞κόσμε z";

    #[test]
    fn accepts_text_split_at_every_point_into_two_and_three_chunks() {
        let bytes = MIXED.as_bytes();
        for first in 0..=bytes.len() {
            assert_eq!(validate(&[&bytes[..first], &bytes[first..]]), Ok(()));
            for second in first..=bytes.len() {
                let chunks = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                assert_eq!(validate(&chunks), Ok(()), "split at {first}, {second}");
            }
        }
    }

    #[test]
    fn accepts_a_four_byte_code_point_fed_one_byte_at_a_time() {
        let bytes = "𝄞".as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(validate(&chunks), Ok(()));
    }

    #[test]
    fn rejects_invalid_bytes_in_the_chunk_that_contains_them() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(
            validator.feed(b"\xf4\x90\x80\x80"),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn rejects_a_bad_continuation_of_a_carried_code_point() {
        // U+20AC is E2 82 AC; the carried E2 82 followed by 'A' can never become valid.
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"ok \xe2\x82"), Ok(()));
        assert_eq!(validator.feed(b"A"), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn rejects_surrogates_and_overlong_forms_split_across_chunks() {
        // ED A0 80 encodes a UTF-16 surrogate; E0 80 80 is an overlong encoding of U+0000.
        assert_eq!(
            validate(&[b"\xed", b"\xa0\x80"]),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            validate(&[b"\xe0", b"\x80", b"\x80"]),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(validate(&[b"\xf5"]), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn rejects_a_code_point_left_unfinished_at_the_end() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"abc\xf0\x9d"), Ok(()));
        assert_eq!(validator.feed(b"\x84"), Ok(()));
        assert_eq!(validator.finish(), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn accepts_empty_chunks_anywhere() {
        assert_eq!(validate(&[b"", b"\xc3", b"", b"\xa9", b""]), Ok(()));
        assert_eq!(validate(&[]), Ok(()));
    }
}
