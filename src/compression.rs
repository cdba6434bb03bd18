//! permessage-deflate (RFC 7692): the settings a program chooses ([`Deflate`]), the offer the
//! client makes from them, and the strict check of the server's answer, which gives the
//! parameters both sides then keep to ([`Agreed`]).
//!
//! The compression itself is done frame by frame in `protocol::deflate`.

use std::fmt;

use crate::Error;

/// The extension's registered name (RFC 7692 §7).
pub(crate) const EXTENSION: &str = "permessage-deflate";

/// permessage-deflate compression (RFC 7692), set with
/// [`ConnectOptions::compression`](crate::ConnectOptions::compression).
///
/// minch offers it by default, as browsers and Python `websockets` do. When the server accepts,
/// text and binary messages of at least [`threshold`](Self::threshold) bytes go out compressed,
/// and compressed messages from the server are inflated, with
/// [`max_message_size`](crate::ConnectOptions::max_message_size) applying to the inflated size.
/// A server that does not accept leaves the connection uncompressed; nothing else changes.
///
/// No compression state exists until the first compressed message in each direction, so a
/// connection that has not exchanged compressed messages costs nothing more with compression
/// negotiated. After traffic:
/// - the compressor is given back once the client has compressed nothing for a whole
///   keepalive [`ping_interval`](crate::ConnectOptions::ping_interval) (the next message
///   simply starts afresh);
/// - the inflater must keep the server's context: it stays while the connection is open,
///   unless [`server_no_context_takeover`](Self::server_no_context_takeover) was agreed; then
///   it too is given back after a whole ping interval without compressed messages.
///
/// Without context takeover, the state is reset after every message rather than freed, so a
/// busy connection does not allocate and clear it for each one. With keepalive off
/// ([`ping_interval`](crate::ConnectOptions::ping_interval) `None`) nothing is given back
/// before the connection ends.
///
/// The README's "Compression" section has measured figures.
///
/// ```
/// use minch::{ConnectOptions, Deflate};
///
/// // Less memory per connection: small windows, and no state kept between messages
/// // in either direction (each message is compressed on its own).
/// let lean = Deflate::default()
///     .client_max_window_bits(10)
///     .server_max_window_bits(Some(10))
///     .client_no_context_takeover(true)
///     .server_no_context_takeover(true)
///     .memory_level(1);
/// let options = ConnectOptions::default().compression(lean);
/// # let _ = options;
///
/// // No compression at all.
/// let plain = ConnectOptions::default().compression(None);
/// # let _ = plain;
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deflate {
    /// The largest LZ77 window the client compresses with, as a power of two. Offered to the
    /// server as `client_max_window_bits`, which lets it ask for a smaller one. Default: 15
    /// (32 KiB). Allowed: 9 to 15. (8 is not offered: zlib-based compressors use a 512-byte
    /// window when asked for 256 bytes. If the server asks for 8 anyway, minch accepts and
    /// sends every message uncompressed, which RFC 7692 allows.)
    pub client_max_window_bits: u8,
    /// The largest window to ask the server to compress with (`server_max_window_bits`), which
    /// bounds the client's inflate window and so its memory. Default: `None`, not asked (the
    /// server may use up to 15, 32 KiB). Allowed: `None`, or 8 to 15. A server that cannot
    /// honour it declines compression altogether (RFC 7692 §7.1.2.1); one that accepts
    /// compression but leaves the parameter out of its answer fails the handshake with
    /// [`Error::Extension`], rather than leaving a 32 KiB window in place unseen.
    pub server_max_window_bits: Option<u8>,
    /// Compress every message on its own (`client_no_context_takeover`), at some cost in
    /// compression ratio: for servers short of memory, which then need no context per client.
    /// Default: `false`. The server may also ask for this; the client then complies.
    pub client_no_context_takeover: bool,
    /// Ask the server to compress every message on its own (`server_no_context_takeover`): the
    /// client's inflater then holds no context, and is given back when the connection goes
    /// idle. Default: `false`. As with `server_max_window_bits`, a server that accepts
    /// compression but leaves this out of its answer fails the handshake with
    /// [`Error::Extension`].
    pub server_no_context_takeover: bool,
    /// zlib's memory level for the compressor: how much memory it uses for its hash table and
    /// buffers (1 least, 9 most). Default: 5, as Python `websockets`. Allowed: 1 to 9.
    pub memory_level: u8,
    /// The compression level: 0 stores, 1 is fastest, 9 compresses best. Default: 1 (see the
    /// README for the measurements behind it). Allowed: 0 to 9.
    pub level: u8,
    /// Messages shorter than this many bytes are sent uncompressed: compressing them costs CPU
    /// for no gain. Default: 64. Allowed: any (0 compresses every message).
    pub threshold: usize,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            client_max_window_bits: 15,
            server_max_window_bits: None,
            client_no_context_takeover: false,
            server_no_context_takeover: false,
            memory_level: 5,
            level: 1,
            threshold: 64,
        }
    }
}

impl fmt::Debug for Deflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deflate")
            .field("client_max_window_bits", &self.client_max_window_bits)
            .field("server_max_window_bits", &self.server_max_window_bits)
            .field(
                "client_no_context_takeover",
                &self.client_no_context_takeover,
            )
            .field(
                "server_no_context_takeover",
                &self.server_no_context_takeover,
            )
            .field("memory_level", &self.memory_level)
            .field("level", &self.level)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Deflate {
    /// Sets [`client_max_window_bits`](Self::client_max_window_bits).
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// Sets [`server_max_window_bits`](Self::server_max_window_bits).
    pub fn server_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.server_max_window_bits = bits;
        self
    }

    /// Sets [`client_no_context_takeover`](Self::client_no_context_takeover).
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Sets [`server_no_context_takeover`](Self::server_no_context_takeover).
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Sets [`memory_level`](Self::memory_level).
    pub fn memory_level(mut self, level: u8) -> Self {
        self.memory_level = level;
        self
    }

    /// Sets [`level`](Self::level).
    pub fn level(mut self, level: u8) -> Self {
        self.level = level;
        self
    }

    /// Sets [`threshold`](Self::threshold).
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Checks every setting against its documented range.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidOptions(reason));
        if !(9..=15).contains(&self.client_max_window_bits) {
            return invalid(format!(
                "compression: client_max_window_bits must be 9 to 15 (got {}); 8 cannot be \
                 honoured by zlib-based compressors; the default is 15",
                self.client_max_window_bits
            ));
        }
        if let Some(bits) = self.server_max_window_bits {
            if !(8..=15).contains(&bits) {
                return invalid(format!(
                    "compression: server_max_window_bits must be None or 8 to 15 (got {bits}); \
                     the default is None"
                ));
            }
        }
        if !(1..=9).contains(&self.memory_level) {
            return invalid(format!(
                "compression: memory_level must be 1 to 9 (got {}); the default is 5",
                self.memory_level
            ));
        }
        if self.level > 9 {
            return invalid(format!(
                "compression: level must be 0 to 9 (got {}); the default is 1",
                self.level
            ));
        }
        Ok(())
    }

    /// The `Sec-WebSocket-Extensions` offer for these settings.
    pub(crate) fn offer(&self) -> String {
        // `client_max_window_bits` with our value: the server may answer with a smaller one.
        let mut offer = format!(
            "{EXTENSION}; client_max_window_bits={}",
            self.client_max_window_bits
        );
        if let Some(bits) = self.server_max_window_bits {
            offer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if self.client_no_context_takeover {
            offer.push_str("; client_no_context_takeover");
        }
        if self.server_no_context_takeover {
            offer.push_str("; server_no_context_takeover");
        }
        offer
    }

    /// Checks the server's `Sec-WebSocket-Extensions` answer (all its header lines, in order)
    /// against this offer: `None` if the server declined, the agreed parameters if it accepted.
    ///
    /// Strict, as RFC 6455 §9.1 and RFC 7692 §7.1 ask: any extension other than the one offered,
    /// a second permessage-deflate, a parameter that is unknown, repeated, out of range, has a
    /// value where none belongs (or lacks one), or answers something not offered fails the
    /// handshake with [`Error::Extension`] naming it.
    pub(crate) fn accept(&self, answer: &[&[u8]]) -> Result<Option<Agreed>, Error> {
        let mut agreed: Option<Agreed> = None;
        for line in answer {
            let line = std::str::from_utf8(line)
                .map_err(|_| extension_error(EXTENSION, "the header is not valid UTF-8"))?;
            for extension in line.split(',') {
                let mut parts = extension.split(';').map(trim_ows);
                let name = parts.next().unwrap_or_default();
                if name.is_empty() {
                    // An empty list element (`a, , b`) is allowed by the list syntax.
                    if parts.next().is_none() {
                        continue;
                    }
                    return Err(extension_error("", "an extension has no name"));
                }
                if !name.eq_ignore_ascii_case(EXTENSION) {
                    return Err(extension_error(
                        name,
                        "the server enabled an extension that was not offered",
                    ));
                }
                if agreed.is_some() {
                    return Err(extension_error(
                        name,
                        "the server enabled permessage-deflate twice",
                    ));
                }
                agreed = Some(self.accept_parameters(parts)?);
            }
        }
        Ok(agreed)
    }

    fn accept_parameters<'a>(
        &self,
        parameters: impl Iterator<Item = &'a str>,
    ) -> Result<Agreed, Error> {
        let mut agreed = Agreed {
            client_window_bits: self.client_max_window_bits,
            server_window_bits: 15,
            client_no_context_takeover: self.client_no_context_takeover,
            server_no_context_takeover: false,
            memory_level: self.memory_level,
            level: self.level,
            threshold: self.threshold,
        };
        let mut seen: Vec<&str> = Vec::new();
        for parameter in parameters {
            let (name, value) = match parameter.split_once('=') {
                Some((name, value)) => (trim_ows(name), Some(unquote(trim_ows(value)))),
                None => (parameter, None),
            };
            let value = value.as_deref();
            let known = [
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
                "client_max_window_bits",
            ];
            let Some(name) = known
                .into_iter()
                .find(|known| name.eq_ignore_ascii_case(known))
            else {
                return Err(extension_error(
                    name,
                    "unknown permessage-deflate parameter (RFC 7692 §7.1)",
                ));
            };
            if seen.contains(&name) {
                return Err(extension_error(name, "the parameter is given twice"));
            }
            seen.push(name);
            match name {
                "server_no_context_takeover" | "client_no_context_takeover" => {
                    if value.is_some() {
                        return Err(extension_error(name, "the parameter takes no value"));
                    }
                    if name == "server_no_context_takeover" {
                        agreed.server_no_context_takeover = true;
                    } else {
                        agreed.client_no_context_takeover = true;
                    }
                }
                // A server may limit its own window whether or not the client asked it to
                // (RFC 7692 §7.1.2.1); if the client asked, not beyond what it asked for.
                "server_max_window_bits" => {
                    let bits = window_bits(name, value)?;
                    if self
                        .server_max_window_bits
                        .is_some_and(|offered| bits > offered)
                    {
                        return Err(extension_error(
                            name,
                            "the server's window is larger than the one asked for",
                        ));
                    }
                    agreed.server_window_bits = bits;
                }
                _ => {
                    // client_max_window_bits: always offered, with our value.
                    let bits = window_bits(name, value)?;
                    if bits > self.client_max_window_bits {
                        return Err(extension_error(
                            name,
                            "the server allowed a larger client window than offered",
                        ));
                    }
                    agreed.client_window_bits = bits;
                }
            }
        }
        // A server accepts an offer of `server_no_context_takeover` or `server_max_window_bits`
        // by answering with it (RFC 7692 §7.1.1.1, §7.1.2.1); one that cannot honour them must
        // decline compression. An answer that leaves them out would have the client keep a
        // context or a window larger than the user asked for, to save memory, without a sign.
        if self.server_no_context_takeover && !seen.contains(&"server_no_context_takeover") {
            return Err(extension_error(
                "server_no_context_takeover",
                "offered, but left out of the server's answer (a server that cannot honour it \
                 must decline compression)",
            ));
        }
        if self.server_max_window_bits.is_some() && !seen.contains(&"server_max_window_bits") {
            return Err(extension_error(
                "server_max_window_bits",
                "offered, but left out of the server's answer (a server that cannot honour it \
                 must decline compression)",
            ));
        }
        Ok(agreed)
    }
}

/// A window size parameter's value: 8 to 15, required in a server's answer (RFC 7692 §7.1.2).
fn window_bits(name: &str, value: Option<&str>) -> Result<u8, Error> {
    let Some(value) = value else {
        return Err(extension_error(name, "the parameter needs a value"));
    };
    match value.parse::<u8>() {
        // Digits only, no leading zero (RFC 7692 §7.1.2.1): `parse` would also take `+9`, `09`.
        Ok(bits @ 8..=15)
            if value.bytes().all(|b| b.is_ascii_digit()) && !value.starts_with('0') =>
        {
            Ok(bits)
        }
        _ => Err(extension_error(
            name,
            "the value must be a number from 8 to 15",
        )),
    }
}

/// A parameter value may be a quoted string, checked once unescaped (RFC 6455 §9.1, RFC 7692
/// §7: `"10"` and `"1\0"` mean `10`).
fn unquote(value: &str) -> std::borrow::Cow<'_, str> {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    else {
        return value.into();
    };
    let mut unescaped = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        // A backslash quotes the next character; a trailing one stays, and fails the check.
        unescaped.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    unescaped.into()
}

/// Strips the optional whitespace HTTP allows around list elements and parameters (spaces and
/// tabs only: `str::trim` would also take Unicode spaces such as U+00A0, which are not OWS).
fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

fn extension_error(parameter: &str, reason: &str) -> Error {
    // The parameter comes from the server; keep what is shown short and printable.
    let parameter: String = parameter
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    Error::Extension {
        parameter,
        reason: reason.to_owned(),
    }
}

/// What both sides keep to once the server accepted permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The client's compression window, 8 to 15. At 8 the client sends uncompressed.
    pub(crate) client_window_bits: u8,
    /// The server's compression window, 8 to 15: the inflater's window.
    pub(crate) server_window_bits: u8,
    /// Whether the client's compressor starts afresh for every message.
    pub(crate) client_no_context_takeover: bool,
    /// Whether the server's messages are each compressed on their own.
    pub(crate) server_no_context_takeover: bool,
    /// The compressor's memory level, 1 to 9.
    pub(crate) memory_level: u8,
    /// The compression level, 0 to 9.
    pub(crate) level: u8,
    /// Messages shorter than this go out uncompressed.
    pub(crate) threshold: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(offer: &Deflate, answer: &str) -> Result<Option<Agreed>, Error> {
        offer.accept(&[answer.as_bytes()])
    }

    fn parameter_of(result: Result<Option<Agreed>, Error>) -> String {
        match result {
            Err(Error::Extension { parameter, .. }) => parameter,
            other => panic!("expected an extension error, got {other:?}"),
        }
    }

    #[test]
    fn the_default_offer() {
        assert_eq!(
            Deflate::default().offer(),
            "permessage-deflate; client_max_window_bits=15"
        );
        let all = Deflate::default()
            .client_max_window_bits(10)
            .server_max_window_bits(Some(9))
            .client_no_context_takeover(true)
            .server_no_context_takeover(true);
        assert_eq!(
            all.offer(),
            "permessage-deflate; client_max_window_bits=10; server_max_window_bits=9; \
             client_no_context_takeover; server_no_context_takeover"
        );
    }

    #[test]
    fn a_server_may_limit_its_window_unasked() {
        let agreed = accept(
            &Deflate::default(),
            "permessage-deflate; server_max_window_bits=12",
        )
        .unwrap()
        .unwrap();
        assert_eq!(agreed.server_window_bits, 12);
    }

    #[test]
    fn no_answer_means_declined() {
        assert_eq!(Deflate::default().accept(&[]).unwrap(), None);
        assert_eq!(accept(&Deflate::default(), " , ").unwrap(), None);
    }

    #[test]
    fn accepts_every_valid_answer() {
        let plain = Deflate::default();
        let agreed = accept(&plain, "permessage-deflate").unwrap().unwrap();
        assert_eq!(agreed.client_window_bits, 15);
        assert_eq!(agreed.server_window_bits, 15);
        assert!(!agreed.client_no_context_takeover && !agreed.server_no_context_takeover);

        let offer = Deflate::default().server_max_window_bits(Some(12));

        let agreed = accept(
            &offer,
            "Permessage-Deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=\"10\"; client_max_window_bits=8",
        )
        .unwrap()
        .unwrap();
        assert_eq!(agreed.client_window_bits, 8);
        assert_eq!(agreed.server_window_bits, 10);
        assert!(agreed.client_no_context_takeover && agreed.server_no_context_takeover);

        // A quoted value is unescaped first.
        let agreed = accept(
            &plain,
            r#"permessage-deflate; client_max_window_bits="1\0""#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(agreed.client_window_bits, 10);

        // Split over two header lines, with an empty list element.
        let agreed = plain
            .accept(&[b"", b" ,permessage-deflate;client_max_window_bits=9"])
            .unwrap()
            .unwrap();
        assert_eq!(agreed.client_window_bits, 9);
    }

    #[test]
    fn server_parameters_asked_for_must_be_answered() {
        // RFC 7692 §7.1.1.1, §7.1.2.1: a server accepts them by answering with them.
        let window = Deflate::default().server_max_window_bits(Some(9));
        let error = accept(&window, "permessage-deflate").unwrap_err();
        assert!(
            matches!(&error, Error::Extension { parameter, .. } if parameter == "server_max_window_bits"),
            "{error:?}"
        );
        let agreed = accept(&window, "permessage-deflate; server_max_window_bits=8")
            .unwrap()
            .unwrap();
        assert_eq!(agreed.server_window_bits, 8);

        let fresh = Deflate::default().server_no_context_takeover(true);
        let error = accept(&fresh, "permessage-deflate; client_max_window_bits=15").unwrap_err();
        assert!(
            matches!(&error, Error::Extension { parameter, .. } if parameter == "server_no_context_takeover"),
            "{error:?}"
        );
        assert!(
            accept(&fresh, "permessage-deflate; server_no_context_takeover")
                .unwrap()
                .unwrap()
                .server_no_context_takeover
        );
        // Declining altogether is still fine.
        assert_eq!(accept(&fresh, "").unwrap(), None);
    }

    #[test]
    fn rejects_what_was_not_offered_or_is_malformed() {
        let offer = Deflate::default().client_max_window_bits(12);
        let cases = [
            ("x-webkit-deflate-frame", "x-webkit-deflate-frame"),
            (
                "permessage-deflate, permessage-deflate",
                "permessage-deflate",
            ),
            ("permessage-deflate; level=3", "level"),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                "server_no_context_takeover",
            ),
            (
                "permessage-deflate; client_no_context_takeover=1",
                "client_no_context_takeover",
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                "server_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=7",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=16",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=+9",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=13",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=\"\"",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=09",
                "client_max_window_bits",
            ),
            (
                "permessage-deflate; client_max_window_bits=\"0\\9\"",
                "client_max_window_bits",
            ),
            ("; client_max_window_bits=9", ""),
        ];
        for (answer, parameter) in cases {
            assert_eq!(parameter_of(accept(&offer, answer)), parameter, "{answer}");
        }
        let limited = offer.server_max_window_bits(Some(10));
        assert_eq!(
            parameter_of(accept(
                &limited,
                "permessage-deflate; server_max_window_bits=11"
            )),
            "server_max_window_bits"
        );
        assert!(accept(&limited, "permessage-deflate; server_max_window_bits=8").is_ok());
    }

    #[test]
    fn every_range_is_checked_at_its_edges() {
        let valid = |deflate: Deflate| deflate.validate().is_ok();
        assert!(!valid(Deflate::default().client_max_window_bits(8)));
        assert!(valid(Deflate::default().client_max_window_bits(9)));
        assert!(valid(Deflate::default().client_max_window_bits(15)));
        assert!(!valid(Deflate::default().client_max_window_bits(16)));
        assert!(!valid(Deflate::default().server_max_window_bits(Some(7))));
        assert!(valid(Deflate::default().server_max_window_bits(Some(8))));
        assert!(valid(Deflate::default().server_max_window_bits(Some(15))));
        assert!(!valid(Deflate::default().server_max_window_bits(Some(16))));
        assert!(!valid(Deflate::default().memory_level(0)));
        assert!(valid(Deflate::default().memory_level(1)));
        assert!(valid(Deflate::default().memory_level(9)));
        assert!(!valid(Deflate::default().memory_level(10)));
        assert!(valid(Deflate::default().level(0)));
        assert!(valid(Deflate::default().level(9)));
        assert!(!valid(Deflate::default().level(10)));
        assert!(valid(Deflate::default().threshold(0)));
        assert!(valid(Deflate::default().threshold(usize::MAX)));
    }
}
