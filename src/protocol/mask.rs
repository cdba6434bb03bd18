//! Masking of client frames (RFC 6455 §5.3).
//!
//! Every frame a client sends is XORed with a 4-byte key, so that a hostile page cannot make the
//! bytes on the wire look like another protocol to a proxy in between (RFC 6455 §10.3). The mask
//! is applied to the payload in the write buffer, 8 bytes at a time.

use bytes::BytesMut;

/// Fresh masking keys, drawn from the thread's CSPRNG several at a time (RFC 6455 §5.3 and
/// §10.3: a new, unpredictable key for every frame). One draw for many frames saves reaching the
/// thread-local generator for each.
pub(crate) struct MaskKeys {
    keys: [[u8; 4]; KEYS_PER_DRAW],
    /// How many of `keys` are used up.
    used: usize,
}

const KEYS_PER_DRAW: usize = 8;

impl Default for MaskKeys {
    fn default() -> Self {
        // None drawn yet: the first frame draws them, so an idle connection costs no draw.
        MaskKeys {
            keys: [[0; 4]; KEYS_PER_DRAW],
            used: KEYS_PER_DRAW,
        }
    }
}

impl MaskKeys {
    /// A key no frame has used.
    pub(crate) fn next(&mut self) -> [u8; 4] {
        if self.used == KEYS_PER_DRAW {
            rand::fill(self.keys.as_flattened_mut());
            self.used = 0;
        }
        self.used += 1;
        self.keys[self.used - 1]
    }
}

impl std::fmt::Debug for MaskKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys not used yet must stay unpredictable: never shown.
        f.write_str("MaskKeys")
    }
}

/// Appends `payload` to `dst`, masked with `key`.
///
/// `offset` is where `payload` starts within the frame's payload, so that a payload written in
/// several parts (a close code, then its reason) is masked as one: byte `i` of the frame's payload
/// is XORed with `key[i % 4]`.
pub(super) fn extend_masked(dst: &mut BytesMut, payload: &[u8], key: [u8; 4], offset: usize) {
    let key: [u8; 4] = match offset % 4 {
        0 => key,
        shift => std::array::from_fn(|i| key[(i + shift) % 4]),
    };
    // The key repeated over 8 bytes; XOR works byte by byte, so the byte order of the words does
    // not matter as long as data and key use the same one.
    let key_word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);

    // Copied, then masked in place, a word at a time: a plain copy is cheaper than any masking
    // copy of our own, and no `unsafe` is needed.
    let start = dst.len();
    dst.extend_from_slice(payload);
    let mut words = dst[start..].chunks_exact_mut(8);
    for word in &mut words {
        let masked = u64::from_ne_bytes((&*word).try_into().expect("chunks of 8")) ^ key_word;
        word.copy_from_slice(&masked.to_ne_bytes());
    }
    // Whole words keep the key aligned (8 is a multiple of 4), so the tail starts at key[0].
    for (index, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[index % 4];
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
    fn keys_are_fresh_across_draws() {
        let mut keys = MaskKeys::default();
        let drawn: Vec<[u8; 4]> = (0..10 * KEYS_PER_DRAW).map(|_| keys.next()).collect();
        let distinct: std::collections::HashSet<_> = drawn.iter().collect();
        // 80 random 32-bit keys collide with a chance of about one in a million.
        assert_eq!(distinct.len(), drawn.len(), "a key came twice: {drawn:?}");
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
