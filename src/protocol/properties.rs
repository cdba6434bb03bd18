//! Property tests of the frame layer: generated frame sequences, fragmented at generated
//! points, with control frames between fragments, written with any length form and read in
//! reads that end anywhere, decode to the messages they were made of; the limits cut the
//! stream exactly where a model says; the client's encoding decodes back to what it was given;
//! the incremental UTF-8 validator agrees with `std::str::from_utf8`, on every chunking, as to
//! whether and in which chunk the text goes wrong.
//!
//! The fixed cases (a stream split at every byte, code points cut at every point) are in
//! `codec.rs` and `utf8.rs`; these generate the inputs. Each runs proptest's default number
//! of cases (256) in well under a second; `PROPTEST_CASES=100000 cargo test properties`
//! runs more.

use actix_codec::{Decoder, Encoder};
use bytes::BytesMut;
use proptest::{prelude::*, sample::Index};

use super::{header::FrameHeader, utf8::Utf8Validator, Codec, CodecError, Limits, ProtocolError};
use crate::frame::Frame;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// How a frame's length is written: the shortest form, or a longer one than needed (which
/// RFC 6455 forbids but which is unambiguous, and accepted).
#[derive(Debug, Clone, Copy)]
enum LenForm {
    Shortest,
    Sixteen,
    SixtyFour,
}

fn len_form() -> impl Strategy<Value = LenForm> {
    prop_oneof![
        6 => Just(LenForm::Shortest),
        1 => Just(LenForm::Sixteen),
        1 => Just(LenForm::SixtyFour),
    ]
}

/// An unmasked frame as a server writes it.
fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], form: LenForm) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    match form {
        LenForm::Shortest if len <= 125 => out.push(len as u8),
        LenForm::Shortest | LenForm::Sixteen if len <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A control frame a server may send between fragments.
#[derive(Debug, Clone)]
struct Control {
    opcode: u8,
    payload: Vec<u8>,
    form: LenForm,
}

impl Control {
    fn frame(&self) -> Frame {
        match self.opcode {
            PING => Frame::ping(self.payload.clone()),
            _ => Frame::pong(self.payload.clone()),
        }
    }
}

fn control() -> impl Strategy<Value = Control> {
    (
        prop_oneof![Just(PING), Just(PONG)],
        prop::collection::vec(any::<u8>(), 0..=125),
        len_form(),
    )
        .prop_map(|(opcode, payload, form)| Control {
            opcode,
            payload,
            form,
        })
}

/// A data message, the points its payload is cut into fragments at (sorted, repeats meaning
/// empty fragments, possibly inside a code point), and control frames, each with the fragment
/// it is sent after (`None`: before the first), in the order they are sent.
#[derive(Debug, Clone)]
struct Message {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<usize>,
    controls: Vec<(Option<usize>, Control)>,
    forms: Vec<LenForm>,
}

impl Message {
    fn frame(&self) -> Frame {
        if self.text {
            Frame::text(String::from_utf8(self.payload.clone()).expect("generated as text"))
        } else {
            Frame::binary(self.payload.clone())
        }
    }

    /// The fragments' payloads.
    fn fragments(&self) -> Vec<&[u8]> {
        let mut fragments = Vec::new();
        let mut start = 0;
        for &cut in &self.cuts {
            fragments.push(&self.payload[start..cut]);
            start = cut;
        }
        fragments.push(&self.payload[start..]);
        fragments
    }
}

fn message() -> impl Strategy<Value = Message> {
    let payload = prop_oneof![
        8 => any::<String>().prop_map(|s| (true, s.into_bytes())),
        8 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b)),
        // Long enough for a 16-bit length, and now and then for a 64-bit one.
        2 => "[a-zé€𝄞]{40,200}".prop_map(|s| (true, s.into_bytes())),
        1 => (126usize..70_000).prop_map(|n| (false, vec![0xA5; n])),
    ];
    (
        payload,
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec((any::<Index>(), control()), 0..4),
        prop::collection::vec(len_form(), 6),
    )
        .prop_map(|((text, payload), cuts, controls, forms)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
            cuts.sort_unstable();
            let fragments = cuts.len() + 1;
            let mut controls: Vec<(Option<usize>, Control)> = controls
                .into_iter()
                .map(|(at, control)| match fragments {
                    1 => (None, control),
                    n => (Some(at.index(n - 1)), control),
                })
                .collect();
            // Stable: controls after the same fragment keep their generated order.
            controls.sort_by_key(|(after, _)| *after);
            Message {
                text,
                payload,
                cuts,
                controls,
                forms,
            }
        })
}

/// A close frame to end the stream with: a code a peer may send, and a reason that fits.
fn close() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    let reason = "[a-z é€𝄞]{0,40}";
    prop::option::of((code, reason))
}

/// The server's bytes for `messages` and the close, and the frames the client must yield.
fn server_stream(messages: &[Message], close: &Option<(u16, String)>) -> (Vec<u8>, Vec<Frame>) {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for message in messages {
        let fragments = message.fragments();
        let mut controls = message.controls.iter().peekable();
        while let Some((None, control)) = controls.peek() {
            write_frame(
                &mut bytes,
                true,
                control.opcode,
                &control.payload,
                control.form,
            );
            frames.push(control.frame());
            controls.next();
        }
        for (i, fragment) in fragments.iter().enumerate() {
            let opcode = match (i, message.text) {
                (0, true) => TEXT,
                (0, false) => BINARY,
                _ => CONTINUATION,
            };
            let fin = i + 1 == fragments.len();
            let form = message.forms[i % message.forms.len()];
            write_frame(&mut bytes, fin, opcode, fragment, form);
            while let Some((Some(after), control)) = controls.peek() {
                if *after != i {
                    break;
                }
                write_frame(
                    &mut bytes,
                    true,
                    control.opcode,
                    &control.payload,
                    control.form,
                );
                frames.push(control.frame());
                controls.next();
            }
        }
        frames.push(message.frame());
    }
    if let Some((code, reason)) = close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        write_frame(&mut bytes, true, CLOSE, &payload, LenForm::Shortest);
        frames.push(Frame::close(*code, reason.as_str()));
    }
    (bytes, frames)
}

/// Feeds `bytes` to `codec` in reads ending at `splits`, calling `decode` until it yields
/// nothing after each read. Returns the frames and the error that stopped it, if any.
fn decode_in_reads(
    codec: &mut Codec,
    bytes: &[u8],
    splits: &[Index],
) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut ends: Vec<usize> = splits.iter().map(|s| s.index(bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in ends {
        buf.extend_from_slice(&bytes[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(CodecError::Protocol(error)) => return (frames, Some(error)),
                Err(CodecError::Io(error)) => panic!("an I/O error from bytes: {error}"),
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    (frames, None)
}

fn unlimited() -> Limits {
    Limits {
        max_frame_size: usize::MAX,
        max_message_size: usize::MAX,
    }
}

/// A frame the client may send.
fn sendable_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<String>().prop_map(Frame::text),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Frame::binary),
        (200usize..70_000).prop_map(|n| Frame::binary(vec![7; n])),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Frame::ping),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(Frame::pong),
        Just(Frame::Close(None)),
        close().prop_filter_map("a close frame", |close| close
            .map(|(code, reason)| Frame::close(code, reason))),
    ]
}

/// A server's view of what the client wrote: each frame checked (final, masked, no RSV
/// bits), unmasked and written back unmasked, so the client's decoder can read it.
fn unmask_client_stream(mut bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut out = BytesMut::new();
    let mut count = 0;
    while !bytes.is_empty() {
        let (header, header_len) = FrameHeader::parse(bytes)
            .expect("the client writes valid headers")
            .expect("a whole header");
        assert!(header.fin, "the client never fragments");
        assert_eq!(header.rsv, 0);
        let key = header.mask.expect("client frames are masked");
        let len = header.payload_len as usize;
        let payload = &bytes[header_len..header_len + len];
        FrameHeader {
            mask: None,
            ..header
        }
        .write(&mut out);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        bytes = &bytes[header_len + len..];
        count += 1;
    }
    (out.to_vec(), count)
}

/// Text with errors of every kind in it now and then: stray continuation bytes, overlong
/// forms, surrogates, code points past U+10FFFF, truncated sequences.
fn maybe_utf8() -> impl Strategy<Value = Vec<u8>> {
    let glitch = prop_oneof![
        Just(b"\x80".to_vec()),
        Just(b"\xc0\x80".to_vec()),
        Just(b"\xc1\xbf".to_vec()),
        Just(b"\xe0\x80\x80".to_vec()),
        Just(b"\xed\xa0\x80".to_vec()),
        Just(b"\xf4\x90\x80\x80".to_vec()),
        Just(b"\xf5".to_vec()),
        Just(b"\xe2\x82".to_vec()),
        Just(b"\xf0\x9d\x84".to_vec()),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..24),
        (
            any::<String>(),
            prop::collection::vec((any::<Index>(), glitch), 1..3)
        )
            .prop_map(|(text, glitches)| {
                let mut bytes = text.into_bytes();
                for (at, glitch) in glitches {
                    let at = at.index(bytes.len() + 1);
                    bytes.splice(at..at, glitch);
                }
                bytes
            }),
    ]
}

/// Whether `prefix` already holds an error no continuation can repair.
fn definitely_invalid(prefix: &[u8]) -> bool {
    matches!(std::str::from_utf8(prefix), Err(e) if e.error_len().is_some())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // A failure is reported with its shrunk input; no regression files in src/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Messages fragmented anyhow, control frames between the fragments, any length form,
    /// reads ending anywhere: the messages come out whole, the control frames in the order
    /// they were sent and ahead of the message they interrupted.
    #[test]
    fn fragmented_streams_decode_to_their_messages(
        messages in prop::collection::vec(message(), 0..6),
        close in close(),
        splits in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let (bytes, expected) = server_stream(&messages, &close);
        let (frames, error) = decode_in_reads(&mut Codec::new(unlimited()), &bytes, &splits);
        prop_assert_eq!(error, None);
        prop_assert_eq!(frames, expected);
    }

    /// With limits of any size the decoder yields what a model yields and stops with the
    /// model's error, at the first frame or fragment that breaks a limit.
    #[test]
    fn limits_cut_the_stream_where_the_model_says(
        messages in prop::collection::vec(message(), 1..5),
        max_frame_size in 125usize..400,
        max_message_size in 1usize..800,
        splits in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let limits = Limits { max_frame_size, max_message_size };
        let (bytes, _) = server_stream(&messages, &None);
        // The model: frames in wire order, each message checked fragment by fragment.
        let mut expected = Vec::new();
        let mut expected_error = None;
        'messages: for message in &messages {
            let fragments = message.fragments();
            let mut controls = message.controls.iter().peekable();
            while let Some((None, control)) = controls.peek() {
                expected.push(control.frame());
                controls.next();
            }
            let mut so_far = 0u64;
            for (i, fragment) in fragments.iter().enumerate() {
                let len = fragment.len() as u64;
                if fragment.len() > max_frame_size {
                    expected_error = Some(ProtocolError::FrameTooLarge {
                        size: len,
                        max: max_frame_size,
                    });
                    break 'messages;
                }
                so_far += len;
                if so_far > max_message_size as u64 {
                    expected_error = Some(ProtocolError::MessageTooLarge {
                        size: so_far,
                        max: max_message_size,
                    });
                    break 'messages;
                }
                while let Some((Some(after), control)) = controls.peek() {
                    if *after != i {
                        break;
                    }
                    expected.push(control.frame());
                    controls.next();
                }
            }
            expected.push(message.frame());
        }
        let (frames, error) = decode_in_reads(&mut Codec::new(limits), &bytes, &splits);
        prop_assert_eq!(error, expected_error);
        prop_assert_eq!(frames, expected);
    }

    /// What the client encodes, a server reads back as the same frames: one final masked
    /// frame each, with a fresh key, read in reads ending anywhere.
    #[test]
    fn client_frames_encode_and_decode_back(
        frames in prop::collection::vec(sendable_frame(), 0..8),
        splits in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let mut codec = Codec::new(unlimited());
        let mut encoded = BytesMut::new();
        for frame in &frames {
            prop_assert_eq!(super::validate_outgoing(frame), Ok(()));
            codec.encode(frame.clone(), &mut encoded).unwrap();
        }
        let (unmasked, count) = unmask_client_stream(&encoded);
        prop_assert_eq!(count, frames.len());
        let (decoded, error) = decode_in_reads(&mut Codec::new(unlimited()), &unmasked, &splits);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded, frames);
    }

    /// The incremental validator fails exactly at the first chunk after which the text so
    /// far can no longer be valid, and otherwise agrees with `std::str::from_utf8` at the end.
    #[test]
    fn utf8_validator_agrees_with_std_on_every_chunking(
        bytes in maybe_utf8(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        ends.push(bytes.len());
        ends.sort_unstable();
        let mut validator = Utf8Validator::default();
        let mut start = 0;
        let mut failed = false;
        for end in ends {
            let result = validator.feed(&bytes[start..end]);
            start = end;
            let invalid = definitely_invalid(&bytes[..end]);
            prop_assert_eq!(
                result.is_err(),
                invalid,
                "chunk ending at {} of {:?}", end, bytes
            );
            if invalid {
                prop_assert_eq!(result, Err(ProtocolError::InvalidUtf8));
                failed = true;
                break;
            }
        }
        if !failed {
            let finished = validator.finish();
            prop_assert_eq!(finished.is_ok(), std::str::from_utf8(&bytes).is_ok());
        }
    }

    /// Control frames between the fragments of a text message whose code points are cut
    /// between fragments: every control frame is yielded as soon as it is whole, before the
    /// message, and the text is validated across them.
    #[test]
    fn control_frames_between_fragments_come_out_in_order_as_they_arrive(
        text in "[a-zé€𝄞]{1,30}",
        cuts in prop::collection::vec(any::<Index>(), 1..6),
        pings in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=125), 1..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        cuts.sort_unstable();
        let message = Message {
            text: true,
            payload: text.clone().into_bytes(),
            cuts,
            controls: Vec::new(),
            forms: vec![LenForm::Shortest],
        };
        let fragments = message.fragments();
        let mut codec = Codec::new(unlimited());
        let mut buf = BytesMut::new();
        let mut yielded = Vec::new();
        let mut sent = Vec::new();
        for (i, fragment) in fragments.iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONTINUATION };
            let mut bytes = Vec::new();
            write_frame(&mut bytes, i + 1 == fragments.len(), opcode, fragment, LenForm::Shortest);
            if i + 1 < fragments.len() {
                let ping = &pings[i % pings.len()];
                write_frame(&mut bytes, true, PING, ping, LenForm::Shortest);
                sent.push(Frame::ping(ping.clone()));
            }
            buf.extend_from_slice(&bytes);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                yielded.push(frame);
            }
            // Everything sent so far is out: no control frame waits for the message.
            let mut expected = sent.clone();
            if i + 1 == fragments.len() {
                expected.push(Frame::text(text.clone()));
            }
            prop_assert_eq!(&yielded, &expected);
        }
    }
}

/// Guards the generators: a stream with fragments, controls between them and a 64-bit
/// length really is what the properties above produce.
#[test]
fn the_generators_produce_fragments_controls_and_long_lengths() {
    let message = Message {
        text: true,
        payload: "a€b".as_bytes().to_vec(),
        cuts: vec![1, 2],
        controls: vec![(Some(1), control_ping(b"p"))],
        forms: vec![LenForm::SixtyFour],
    };
    let fragments = message.fragments();
    assert_eq!(fragments, [&b"a"[..], &b"\xe2"[..], &b"\x82\xacb"[..]]);
    let (bytes, frames) = server_stream(&[message], &Some((1000, "bye".into())));
    assert_eq!(
        frames,
        [
            Frame::ping(&b"p"[..]),
            Frame::text("a€b"),
            Frame::close(1000, "bye")
        ]
    );
    assert_eq!(&bytes[..2], &[TEXT, 127]);
    let (decoded, error) = decode_in_reads(&mut Codec::new(unlimited()), &bytes, &[]);
    assert_eq!((decoded, error), (frames, None));
}

fn control_ping(payload: &[u8]) -> Control {
    Control {
        opcode: PING,
        payload: payload.to_vec(),
        form: LenForm::Shortest,
    }
}
