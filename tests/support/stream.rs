//! The 256 MiB stream of the receive-queue tests (`tests/receive_backpressure*.rs`): its shape,
//! the bounds it is held to, and how to measure the process while it waits.

use minch::Frame;

pub const STREAM_FRAMES: u32 = 4096;
pub const STREAM_FRAME_LEN: usize = 64 << 10;
pub const STREAM_BYTES: u64 = STREAM_FRAMES as u64 * STREAM_FRAME_LEN as u64; // 256 MiB
/// Bytes one stream frame takes on the wire (a 64 KiB payload needs the 64-bit length form).
pub const STREAM_FRAME_WIRE: u64 = STREAM_FRAME_LEN as u64 + 10;

pub const STREAM_QUEUE: usize = 16;
pub const STREAM_QUEUE_BYTES: usize = 4 << 20;

/// The most the process may grow while the client holds the stream back: the queue (16 frames
/// of 64 KiB here, at most `max_queue_bytes` + one frame in general), the read buffer, and
/// allocator slack — far below the 256 MiB an unbounded queue would hold.
pub const RSS_GROWTH_BOUND: u64 = 48 << 20;
/// Loopback socket buffers hold a few MiB on each side; beyond this the client kept reading.
pub const WRITTEN_BOUND: u64 = 64 << 20;

/// The resident set of this process, in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value in kB");
    kib * 1024
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Checks that `frame` is frame `seq` of the stream.
pub fn check_stream_frame(seq: u32, frame: &Frame) {
    match frame {
        Frame::Binary(payload) => {
            assert_eq!(payload.len(), STREAM_FRAME_LEN, "length of frame {seq}");
            let got = u32::from_be_bytes(payload[..4].try_into().unwrap());
            assert_eq!(
                got, seq,
                "frame {seq} arrived as number {got}: out of order"
            );
            assert_eq!(
                payload[STREAM_FRAME_LEN - 1],
                seq as u8,
                "last byte of frame {seq}"
            );
        }
        other => panic!("frame {seq}: expected a binary frame, got {other:?}"),
    }
}
