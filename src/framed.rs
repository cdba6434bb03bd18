//! Frames over a socket: the codec between the connection and its read and write buffers.
//!
//! It replaces actix-codec's `Framed`, which gives every connection an 8 KiB read buffer and an
//! 8 KiB write buffer for its whole life. Here the buffers hold memory only while they hold
//! bytes, so that ten thousand quiet connections do not keep 160 MiB of empty buffers:
//! - a read into an empty buffer goes to the stack first and is then copied into an
//!   allocation of its size (of the stack buffer's, 8 KiB, if over 1 KiB), from which the
//!   frames' payloads are taken without another copy; what is left of an 8 KiB one takes the
//!   next reads, until the keepalive ping gives it back; only a frame that arrives in parts
//!   gets a heap buffer sized for it;
//! - the write buffer grows with what is written, and is given back once flushed if it grew
//!   past [`WRITE_BUFFER_KEPT`], or when the connection has been idle (see
//!   [`Framed::release_idle`]).

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
};

use actix_codec::{AsyncRead, AsyncWrite, Decoder, Encoder, ReadBuf};
use bytes::{Buf, BufMut, BytesMut};

use crate::{
    frame::Frame,
    protocol::{Codec, CodecError},
};

/// The stack buffer a read into an empty read buffer goes to: larger reads than this take
/// several passes.
const STACK_READ: usize = 8 * 1024;

/// Reads up to this size are copied into an allocation of their exact size.
const EXACT_READ_MAX: usize = HEAP_READ / 8;

/// A partly received frame is read into heap space of at least this much at a time (the codec
/// asks for more when it knows a frame is large).
const HEAP_READ: usize = 8 * 1024;

/// A flushed write buffer that grew past this is given back rather than kept for the next
/// writes; smaller ones stay until the connection is idle.
pub(crate) const WRITE_BUFFER_KEPT: usize = 64 * 1024;

/// A socket framed by minch's codec.
pub(crate) struct Framed<T> {
    io: T,
    codec: Codec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The write buffer grew past [`WRITE_BUFFER_KEPT`]: give it back once flushed.
    write_buf_grown: bool,
    /// The read buffer may hold a whole frame: decode before reading.
    readable: bool,
    /// The socket reached its end: what is left in the read buffer is all there will be.
    eof: bool,
    /// The read buffer's allocation is one of [`STACK_READ`] bytes, made for a read from the
    /// stack: what is left of it may take the next reads. What is left of a large frame's
    /// allocation may not, or a small message kept by the program would pin all of it.
    read_buf_shareable: bool,
}

impl<T> Framed<T> {
    /// Frames `io` with `codec`; `read_buf` holds bytes that arrived before (with the upgrade
    /// response, say).
    pub(crate) fn new(io: T, codec: Codec, read_buf: BytesMut) -> Self {
        // An empty buffer handed over may still hold a large allocation.
        let read_buf = if read_buf.is_empty() {
            BytesMut::new()
        } else {
            read_buf
        };
        Framed {
            io,
            codec,
            readable: !read_buf.is_empty(),
            read_buf,
            write_buf: BytesMut::new(),
            write_buf_grown: false,
            eof: false,
            read_buf_shareable: false,
        }
    }

    pub(crate) fn codec_ref(&self) -> &Codec {
        &self.codec
    }

    /// Gives back the memory of empty buffers and of compression state not used lately: for a
    /// connection with no traffic for a while.
    pub(crate) fn release_idle(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
        }
        if self.write_buf.is_empty() {
            self.write_buf = BytesMut::new();
        }
        self.codec.release_idle_compression();
    }

    /// Bytes of buffer space held (for tests of the release rules).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> (usize, usize) {
        (self.read_buf.capacity(), self.write_buf.capacity())
    }

    /// Encodes `frame` into the write buffer; [`Framed::flush`] sends it.
    pub(crate) fn write(&mut self, frame: Frame) -> Result<(), CodecError> {
        self.codec.encode(frame, &mut self.write_buf)?;
        // Noted here: a flush uses the capacity up as it writes.
        self.write_buf_grown |= self.write_buf.capacity() > WRITE_BUFFER_KEPT;
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> Framed<T> {
    /// The next frame, reading from the socket as needed. `None`: the socket ended cleanly
    /// between frames.
    pub(crate) fn next_item(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, CodecError>>> {
        loop {
            if self.readable {
                if self.eof {
                    return Poll::Ready(self.codec.decode_eof(&mut self.read_buf).transpose());
                }
                match self.codec.decode(&mut self.read_buf) {
                    Ok(None) => self.readable = false,
                    other => return Poll::Ready(other.transpose()),
                }
            }
            let read = match ready!(self.poll_read(cx)) {
                Ok(read) => read,
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            };
            self.eof = read == 0;
            self.readable = true;
        }
    }

    /// Reads what the socket has into the read buffer: the number of bytes, 0 at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // An empty buffer is read into from the stack, unless the codec made room in it for a
        // frame whose payload is on its way, or what is left of an earlier stack read's
        // 8 KiB allocation takes the next read: then frequent small reads share one
        // allocation, as with a buffer kept for good.
        let spare = self.read_buf.capacity() - self.read_buf.len();
        let awaits_payload = self.codec.awaits_payload();
        let reuse_leftover = self.read_buf.is_empty()
            && !awaits_payload
            && self.read_buf_shareable
            && spare >= HEAP_READ / 8;
        if self.read_buf.is_empty() && !awaits_payload && !reuse_leftover {
            // What is left of the last buffer goes now, not when the socket next has bytes.
            self.read_buf = BytesMut::new();
            let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            // The frames' payloads share this allocation, and an idle connection holds none.
            // Small reads get exactly their size; larger ones all get the same size, which
            // the allocator hands out again at once (sizes that vary with every read send
            // glibc's malloc into its slow paths when many buffers are alive).
            let size = if read.len() > EXACT_READ_MAX {
                STACK_READ
            } else {
                read.len()
            };
            let mut read_buf = BytesMut::with_capacity(size);
            read_buf.extend_from_slice(read);
            self.read_buf = read_buf;
            self.read_buf_shareable = size == STACK_READ;
            // Shared from the start: the first payload taken out would make it so anyway, and
            // `bytes` advances a shared buffer in fewer steps than a fresh one (which the codec
            // does twice a frame: about 10 % fewer instructions for 64-byte fragments).
            drop(self.read_buf.split_to(0));
            return Poll::Ready(Ok(read.len()));
        }
        if !reuse_leftover {
            // A partly received frame: the codec may have (re)allocated for it, and the
            // allocation stays its own.
            self.read_buf_shareable = false;
        }
        // Mid-payload the codec has reserved what the frame still needs (or a large step of
        // it): more would be held by the payload for as long as the program keeps it.
        if spare == 0 || (!awaits_payload && spare < HEAP_READ / 8) {
            self.read_buf.reserve(HEAP_READ);
        }
        let spare = self.read_buf.chunk_mut();
        // SAFETY: `UninitSlice` is a slice of possibly uninitialised bytes, as `ReadBuf::uninit`
        // expects, and the reader only writes initialised bytes into it.
        let spare = unsafe { spare.as_uninit_slice_mut() };
        let mut buf = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        // SAFETY: the reader initialised the first `read` bytes of the spare capacity.
        unsafe { self.read_buf.advance_mut(read) };
        Poll::Ready(Ok(read))
    }
}

impl<T: AsyncWrite + Unpin> Framed<T> {
    /// Writes the whole write buffer to the socket and flushes it.
    pub(crate) fn flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        while !self.write_buf.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write_buf))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the socket took no more bytes",
                )
                .into()));
            }
            self.write_buf.advance(written);
        }
        if self.write_buf_grown {
            self.write_buf = BytesMut::new();
            self.write_buf_grown = false;
        } else {
            // The whole allocation again, from its start, for the next writes.
            let _ = self.write_buf.try_reclaim(1);
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use proptest::prelude::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::protocol::Limits;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// An unmasked frame as a server sends it.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn framed(near: DuplexStream, handed_over: &[u8]) -> Framed<DuplexStream> {
        Framed::new(
            near,
            Codec::new(Limits::default()),
            BytesMut::from(handed_over),
        )
    }

    async fn next(framed: &mut Framed<DuplexStream>) -> Option<Result<Frame, CodecError>> {
        poll_fn(|cx| framed.next_item(cx)).await
    }

    #[test]
    fn small_frames_leave_no_read_buffer_behind_and_an_idle_one_holds_none() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 20);
            let mut framed = framed(near, &[]);
            assert_eq!(
                framed.buffer_capacity(),
                (0, 0),
                "nothing held before traffic"
            );
            far.write_all(&server_frame(1, b"0123456789abcdef"))
                .await
                .unwrap();
            let frame = next(&mut framed).await.unwrap().unwrap();
            assert_eq!(frame, Frame::text("0123456789abcdef"));
            // The frame's payload shares the exact allocation the bytes were copied into;
            // the buffer itself keeps nothing.
            assert_eq!(framed.buffer_capacity().0, 0);
            framed.write(Frame::text("reply")).unwrap();
            poll_fn(|cx| framed.flush(cx)).await.unwrap();
            assert!(
                framed.buffer_capacity().1 < 64,
                "{:?}",
                framed.buffer_capacity()
            );
            framed.release_idle();
            assert_eq!(framed.buffer_capacity(), (0, 0));
            let mut echoed = [0; 11];
            far.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed[0], 0x81, "a final text frame");
            assert_eq!(echoed[1], 0x80 | 5, "masked, 5 bytes");
        });
    }

    #[test]
    fn after_a_large_read_small_reads_share_its_buffer_until_the_connection_idles() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 20);
            let mut framed = framed(near, &[]);
            let burst: Vec<u8> = (0..100)
                .flat_map(|_| server_frame(1, &[b'x'; 30]))
                .collect();
            far.write_all(&burst).await.unwrap();
            for _ in 0..100 {
                next(&mut framed).await.unwrap().unwrap();
            }
            let left = framed.buffer_capacity().0;
            assert_eq!(
                left,
                STACK_READ - burst.len(),
                "an 8 KiB buffer, read {}",
                burst.len()
            );
            far.write_all(&server_frame(1, b"small")).await.unwrap();
            assert_eq!(
                next(&mut framed).await.unwrap().unwrap(),
                Frame::text("small")
            );
            assert_eq!(
                framed.buffer_capacity().0,
                left - 7,
                "read into what was left"
            );
            framed.release_idle();
            assert_eq!(framed.buffer_capacity().0, 0);
        });
    }

    #[test]
    fn bytes_handed_over_with_the_upgrade_come_first() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 20);
            let mut handed_over = server_frame(2, b"early");
            handed_over.extend_from_slice(&server_frame(1, b"sp")[..3]);
            let mut framed = framed(near, &handed_over);
            far.write_all(&server_frame(1, b"sp")[3..]).await.unwrap();
            assert_eq!(
                next(&mut framed).await.unwrap().unwrap(),
                Frame::binary(&b"early"[..])
            );
            assert_eq!(next(&mut framed).await.unwrap().unwrap(), Frame::text("sp"));
        });
    }

    #[test]
    fn a_large_frame_is_read_into_the_heap_and_not_kept_once_taken() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 16);
            let payload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
            let wire = server_frame(2, &payload);
            let writer = tokio::spawn(async move {
                far.write_all(&wire).await.unwrap();
                far
            });
            let mut framed = framed(near, &[]);
            let frame = next(&mut framed).await.unwrap().unwrap();
            assert_eq!(frame, Frame::binary(payload));
            let far = writer.await.unwrap();
            // Polled until the socket has nothing more, as the driver does.
            let waiting = poll_fn(|cx| Poll::Ready(framed.next_item(cx).is_pending())).await;
            assert!(waiting);
            assert_eq!(
                framed.buffer_capacity().0,
                0,
                "the payload took the buffer with it"
            );
            drop(far);
            assert!(
                next(&mut framed).await.is_none(),
                "a clean end between frames"
            );
        });
    }

    #[test]
    fn a_large_write_buffer_is_given_back_once_flushed() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 16);
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                far.read_to_end(&mut all).await.unwrap();
                all.len()
            });
            let mut framed = framed(near, &[]);
            // Just within what is kept, then past it.
            framed.write(Frame::binary(vec![7; 1000])).unwrap();
            poll_fn(|cx| framed.flush(cx)).await.unwrap();
            let kept = framed.buffer_capacity().1;
            assert!(kept > 0 && kept <= WRITE_BUFFER_KEPT, "{kept}");
            framed
                .write(Frame::binary(vec![7; WRITE_BUFFER_KEPT + 1]))
                .unwrap();
            assert!(framed.buffer_capacity().1 > WRITE_BUFFER_KEPT);
            poll_fn(|cx| framed.flush(cx)).await.unwrap();
            assert_eq!(framed.buffer_capacity().1, 0);
            drop(framed);
            let expected = (1000 + 4 + 4) + (WRITE_BUFFER_KEPT + 1 + 10 + 4);
            assert_eq!(reader.await.unwrap(), expected);
        });
    }

    #[test]
    fn the_end_of_the_stream_inside_a_frame_is_an_error() {
        runtime().block_on(async {
            let (near, mut far) = duplex(1 << 16);
            far.write_all(&server_frame(1, b"cut short")[..5])
                .await
                .unwrap();
            drop(far);
            let mut framed = framed(near, &[]);
            assert!(matches!(
                next(&mut framed).await,
                Some(Err(CodecError::Io(_)))
            ));
        });
    }

    proptest! {
        /// Whatever pieces the frames arrive in (some larger than the stack read, some of one
        /// byte), they come out whole and in order, and no more than an 8 KiB read buffer is
        /// left behind, none once idle.
        #[test]
        fn frames_come_out_whole_whatever_the_pieces(
            payloads in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..200),
                    prop::collection::vec(any::<u8>(), 0..40_000),
                ],
                1..12,
            ),
            pieces in prop::collection::vec(1usize..20_000, 1..40),
        ) {
            let wire: Vec<u8> = payloads.iter().flat_map(|p| server_frame(2, p)).collect();
            let frames = runtime().block_on(async move {
                let (near, mut far) = duplex(1 << 16);
                let writer = tokio::spawn(async move {
                    let mut rest = &wire[..];
                    for &piece in pieces.iter().cycle() {
                        if rest.is_empty() {
                            break;
                        }
                        let (now, later) = rest.split_at(piece.min(rest.len()));
                        far.write_all(now).await.unwrap();
                        tokio::task::yield_now().await;
                        rest = later;
                    }
                });
                let mut framed = framed(near, &[]);
                let mut frames = Vec::new();
                while let Some(frame) = next(&mut framed).await {
                    frames.push(frame.unwrap());
                }
                writer.await.unwrap();
                // At most what is left of a stack-sized read, until the connection idles.
                assert!(framed.buffer_capacity().0 <= STACK_READ);
                framed.release_idle();
                assert_eq!(framed.buffer_capacity().0, 0);
                frames
            });
            let expected: Vec<Frame> = payloads.into_iter().map(Frame::binary).collect();
            prop_assert_eq!(frames, expected);
        }
    }
}
