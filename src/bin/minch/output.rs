//! Printing: received frames on stdout, everything else on stderr, with optional timestamps
//! and colour.

use std::{
    fmt::Write as _,
    io::{self, IsTerminal, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use minch::{CloseFrame, Frame};

use crate::{
    args::{Args, When},
    exit::Exit,
};

/// Binary frames show at most this many bytes in hex.
const HEX_PREVIEW: usize = 32;

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BLUE: &str = "\x1b[34m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

/// Where and how to print; decided once, from the arguments and the environment.
#[derive(Debug, Clone)]
pub struct Printer {
    out_colour: bool,
    err_colour: bool,
    /// Whether stdout is a terminal: then text is printed with control characters escaped.
    out_terminal: bool,
    timestamps: bool,
    verbose: bool,
    quiet: bool,
}

impl Printer {
    /// Decides colour and timestamps for this run.
    pub fn new(args: &Args) -> Self {
        let out_terminal = io::stdout().is_terminal();
        let err_terminal = io::stderr().is_terminal();
        // NO_COLOR (https://no-color.org): any non-empty value turns colour off.
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let colour = |terminal: bool| match args.color {
            When::Always => true,
            When::Never => false,
            When::Auto => terminal && !no_color,
        };
        Printer {
            out_colour: colour(out_terminal),
            err_colour: colour(err_terminal),
            out_terminal,
            timestamps: match args.timestamps {
                When::Always => true,
                When::Never => false,
                When::Auto => out_terminal,
            },
            verbose: args.verbose,
            quiet: args.quiet,
        }
    }

    /// A received data frame, pong or ping, on stdout.
    pub fn frame(&self, frame: &Frame) {
        let line = match frame {
            Frame::Text(text) => self.text(text),
            Frame::Binary(data) => format!(
                "{} {}",
                self.paint_out(CYAN, &format!("[binary {} bytes]", data.len())),
                hex_preview(data)
            ),
            Frame::Pong(data) => format!(
                "{} {}",
                self.paint_out(MAGENTA, "[pong]"),
                self.text(&String::from_utf8_lossy(data))
            ),
            Frame::Ping(data) => format!(
                "{} {}",
                self.paint_out(MAGENTA, "[ping]"),
                self.text(&String::from_utf8_lossy(data))
            ),
            Frame::Close(close) => return self.close_frame(close.as_ref()),
        };
        self.out(&line);
    }

    /// The server's close frame, on stdout.
    pub fn close_frame(&self, close: Option<&CloseFrame>) {
        let line = match close {
            Some(close) => format!(
                "{} {}",
                self.paint_out(MAGENTA, &format!("[close {}]", close.code)),
                self.text(&close.reason)
            ),
            None => self.paint_out(MAGENTA, "[close]"),
        };
        self.out(line.trim_end());
    }

    /// What the client is doing (connected, reconnecting, …), on stderr unless `--quiet`.
    pub fn status(&self, message: &str) {
        if !self.quiet {
            self.err(&self.paint_err(GREEN, &format!("* {message}")));
        }
    }

    /// Details for `--verbose`, on stderr.
    pub fn detail(&self, message: &str) {
        if self.verbose {
            self.err(&self.paint_err(BLUE, &format!("* {message}")));
        }
    }

    /// A frame sent, for `--verbose`.
    pub fn sent(&self, what: &str) {
        if self.verbose {
            self.err(&self.paint_err(DIM, &format!("> {what}")));
        }
    }

    /// The answer to a command (`/stats`, `/help`), on stderr.
    pub fn info(&self, message: &str) {
        for line in message.lines() {
            self.err(line);
        }
    }

    /// Something that needs attention, on stderr.
    pub fn warning(&self, message: &str) {
        self.err(&self.paint_err(YELLOW, &format!("warning: {message}")));
    }

    /// Something that failed, on stderr, even with `--quiet`.
    pub fn error(&self, message: &str) {
        self.err(&self.paint_err(RED, &format!("error: {message}")));
    }

    fn out(&self, line: &str) {
        let line = format!("{}{line}\n", self.stamp(self.out_colour));
        let mut out = io::stdout().lock();
        if let Err(error) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            // Whoever read the frames is gone (`| head -1`): nothing printed from now on would
            // reach anyone. Rust ignores SIGPIPE, so end here as the signal would have.
            if error.kind() == io::ErrorKind::BrokenPipe {
                std::process::exit(Exit::Failed.code());
            }
        }
    }

    fn err(&self, line: &str) {
        let line = format!("{}{line}\n", self.stamp(self.err_colour));
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }

    fn stamp(&self, colour: bool) -> String {
        if !self.timestamps {
            return String::new();
        }
        let stamp = format!("{} ", utc_time_of_day(SystemTime::now()));
        paint(colour, DIM, &stamp)
    }

    /// Text from the server, made safe for a terminal: escape sequences in it could move the
    /// cursor, change the title or worse, so control characters are shown escaped there.
    /// Into a pipe it goes as is.
    fn text(&self, text: &str) -> String {
        if !self.out_terminal {
            return text.to_owned();
        }
        let mut shown = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_control() && c != '\n' && c != '\t' {
                shown.extend(c.escape_default());
            } else {
                shown.push(c);
            }
        }
        shown
    }

    fn paint_out(&self, colour: &str, text: &str) -> String {
        paint(self.out_colour, colour, text)
    }

    fn paint_err(&self, colour: &str, text: &str) -> String {
        paint(self.err_colour, colour, text)
    }
}

fn paint(on: bool, colour: &str, text: &str) -> String {
    if on {
        format!("{colour}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

/// `HH:MM:SS.mmm` in UTC: no time zone database needed, and logs from several machines line up.
fn utc_time_of_day(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        since_epoch.subsec_millis()
    )
}

/// The first [`HEX_PREVIEW`] bytes in hex, `…` if there are more.
pub fn hex_preview(data: &[u8]) -> String {
    let mut shown = String::with_capacity(HEX_PREVIEW * 3 + 4);
    for (i, byte) in data.iter().take(HEX_PREVIEW).enumerate() {
        if i > 0 {
            shown.push(' ');
        }
        let _ = write!(shown, "{byte:02x}");
    }
    if data.len() > HEX_PREVIEW {
        shown.push_str(" …");
    }
    shown
}

/// The URL as it may be printed, as the library shows it: without `user:password@`, and with
/// query values and the fragment replaced by `REDACTED`, since they often carry credentials.
pub fn shown_url(url: &str) -> String {
    minch::redact_url(url)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hex_preview_is_bounded() {
        assert_eq!(hex_preview(b""), "");
        assert_eq!(hex_preview(&[0, 0xab, 0xff]), "00 ab ff");
        let long = hex_preview(&[7; 100]);
        assert!(long.ends_with("07 …"), "{long}");
        assert_eq!(long.matches("07").count(), HEX_PREVIEW);
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(shown_url("ws://h:1/p"), "ws://h:1/p");
        assert_eq!(
            shown_url("wss://u:pw@h/p?token=x"),
            "wss://h/p?token=REDACTED"
        );
        assert_eq!(shown_url("ws://u:p@ss@h"), "ws://h");
        assert_eq!(
            shown_url("ws://h/users/@me#frag"),
            "ws://h/users/@me#REDACTED"
        );
        assert_eq!(shown_url("user:pw@host"), "host");
    }

    #[test]
    fn time_of_day_in_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(86_400_000 * 3 + 3_723_045);
        assert_eq!(utc_time_of_day(at), "01:02:03.045");
    }
}
