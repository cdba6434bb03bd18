//! Masking of client frames (RFC 6455 §5.3).
//!
//! Every frame a client sends is XORed with a 4-byte key, so that a hostile page cannot make the
//! bytes on the wire look like another protocol to a proxy in between (RFC 6455 §10.3). The mask
//! is applied while copying the payload into the write buffer, 8 bytes at a time.

use bytes::BytesMut;

/// Appends `payload` to `dst`, masked with `key`.
///
/// `offset` is where `payload` starts within the frame's payload, so that a payload written in
/// several parts (a close code, then its reason) is masked as one: byte `i` of the frame's payload
/// is XORed with `key[i % 4]`.
pub(super) fn extend_masked(dst: &mut BytesMut, payload: &[u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    // The key repeated over 8 bytes; XOR works byte by byte, so the byte order of the words does
    // not matter as long as data and key use the same one.
    let key_word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);

    // Zero-filling the room first keeps this free of `unsafe`; it costs little next to the copy.
    let start = dst.len();
    dst.resize(start + payload.len(), 0);
    let mut out = dst[start..].chunks_exact_mut(8);
    let mut input = payload.chunks_exact(8);
    for (out, input) in (&mut out).zip(&mut input) {
        let mut word = [0; 8];
        word.copy_from_slice(input);
        out.copy_from_slice(&(u64::from_ne_bytes(word) ^ key_word).to_ne_bytes());
    }
    // Whole words keep the key aligned (8 is a multiple of 4), so the tail starts at key[0].
    let tail = out.into_remainder().iter_mut().zip(input.remainder());
    for (index, (out, input)) in tail.enumerate() {
        *out = input ^ key[index % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masking as RFC 6455 §5.3 defines it, one byte at a time.
    fn mask_bytewise(payload: &[u8], key: [u8; 4], offset: usize) -> Vec<u8> {
        let masked = payload.iter().enumerate();
        masked
            .map(|(i, byte)| byte ^ key[(offset + i) % 4])
            .collect()
    }

    #[test]
    fn matches_the_definition_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let payload: Vec<u8> = (0..=40).collect();
        for len in 0..payload.len() {
            for offset in 0..4 {
                let mut dst = BytesMut::from(&b"head"[..]);
                extend_masked(&mut dst, &payload[..len], key, offset);
                assert_eq!(&dst[..4], b"head");
                assert_eq!(dst[4..], mask_bytewise(&payload[..len], key, offset));
            }
        }
    }

    #[test]
    fn masking_twice_restores_the_payload() {
        let key = [1, 2, 3, 4];
        let payload = b"Hello, WebSocket! This spans several words.";
        let mut once = BytesMut::new();
        extend_masked(&mut once, payload, key, 0);
        assert_ne!(&once[..], &payload[..]);
        let mut twice = BytesMut::new();
        extend_masked(&mut twice, &once, key, 0);
        assert_eq!(&twice[..], &payload[..]);
    }

    #[test]
    fn a_payload_masked_in_parts_equals_one_masked_whole() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let payload = b"\x03\xe8going away now";
        let mut whole = BytesMut::new();
        extend_masked(&mut whole, payload, key, 0);
        let mut parts = BytesMut::new();
        extend_masked(&mut parts, &payload[..2], key, 0);
        extend_masked(&mut parts, &payload[2..], key, 2);
        assert_eq!(whole, parts);
    }
}
