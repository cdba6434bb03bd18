//! The command line: what `minch --help` shows, and turning the arguments into a
//! [`ConnectRequest`].

use std::{fmt, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use minch::{ConnectOptions, ConnectRequest, Proxy, TlsOptions};

/// Shown after the options in `--help`: examples, exit codes, what is left out.
const AFTER_HELP: &str = "\
Examples:
  minch ws://127.0.0.1:4000/echo
      Interactive: type lines to send them, /help for commands, Ctrl-D or /close to quit.
  minch wss://feed.example.com/v1 --header 'Authorization: Bearer ...' --reconnect
      Stays connected: reconnects with minch's backoff, printing each delay.
  minch ws://127.0.0.1:4000/echo --send hello --count 1
      Sends \"hello\" once connected, prints the first frame received, exits 0.
  printf 'a\\nb\\n' | minch ws://127.0.0.1:4000/echo --count 2 --timeout 5
      Sends each line of stdin as a text frame; exits 6 if two frames did not arrive in 5 s.

Interactive commands (lines read from stdin):
  /ping [payload]        send a ping; the pong's round trip is reported
  /close [code] [reason] close the connection (default 1000) and exit
  /binary <hex>          send a binary frame, e.g. /binary 48 69 or /binary 4869
  /stats                 traffic counters and the last keepalive round trip
  /help                  these commands
  //text                 send \"/text\": a line starting with // loses its first /
Any other line is sent as a text frame (without its line ending). Lines typed while the
client is (re)connecting are sent once it is connected.

Output: received frames go to stdout (text as is, binary as its length and a hex preview),
everything else (status, errors, /stats) to stderr. Timestamps (UTC) are on when stdout is a
terminal, colour on each stream that is one; NO_COLOR (any non-empty value) turns colour off. Pings from the
server are answered by the library and not shown; --show-control shows pongs and the
server's close frame. Request header values are never printed.

stdin: at end of input the connection is closed with code 1000 once the --send frames and
the lines read were sent, unless --count or --timeout is still waiting for frames.
--send frames are sent again on every connection (so --reconnect resubscribes).

Exit codes:
    0  done: closed by you (/close, end of input, Ctrl-D), --count reached, or the server
       closed normally (code 1000, 1001 or no code)
    1  the connection ended before --count frames arrived, or another failure
    2  usage error: bad arguments, invalid URL or header, unreadable --ca-file
    3  could not connect: DNS, TCP, TLS, proxy, a connect/upgrade timeout, invalid handshake
    4  the server rejected the WebSocket upgrade (an HTTP status other than 101)
    5  the server broke the WebSocket protocol
    6  --timeout elapsed
    7  the server closed with an error code (not 1000 or 1001)
    8  the connection was lost: reset, dropped without a close frame, no pong
  130  interrupted (Ctrl-C)
With --reconnect every failure but a usage error is retried, so only 0, 2, 6 and 130 end it.

Compression (permessage-deflate) is offered by default; --no-compression turns it off.
Proxies come from --proxy, else from https_proxy, http_proxy, all_proxy and no_proxy.";

/// An interactive and scriptable WebSocket client, built on minch's actor client: with
/// --reconnect it stays connected, reconnecting with backoff.
#[derive(Debug, Parser)]
#[command(name = "minch", version, after_help = AFTER_HELP)]
pub struct Args {
    /// The server: ws://host[:port]/path or wss://…
    pub url: String,

    /// An extra request header, 'Name: value' (repeatable). Values are never printed.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<RawHeader>,

    /// A subprotocol to offer, most preferred first (repeatable).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,

    /// The Origin header to send.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,

    /// Trust the certificates in this PEM file for wss://, besides the bundled roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Do not verify the server's TLS certificate (a warning is printed): tests only.
    #[arg(short = 'k', long)]
    pub insecure: bool,

    /// Also trust the operating system's root certificates for wss://.
    #[arg(long)]
    pub native_roots: bool,

    /// Present this client certificate chain (PEM) for mutual TLS; needs --key.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Connect through this proxy: http://[user:password@]host:port, https://…, socks5://…
    /// or socks5h://…; "none" to connect directly. [default: from https_proxy, http_proxy,
    /// all_proxy and no_proxy]
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,

    /// Connect to the server on this Unix domain socket; the URL gives the path and Host.
    /// (No proxy applies to a Unix socket: --proxy cannot go with it.)
    #[arg(long, value_name = "PATH", conflicts_with = "proxy")]
    pub unix_socket: Option<PathBuf>,

    /// Reconnect when the connection ends or an attempt fails, after minch's backoff delay
    /// (200 ms, 800 ms, 1.8 s, … up to 30 s), or the Retry-After of a 429 or 503 if longer
    /// (up to 30 s). Without it, exit when the connection ends.
    #[arg(short, long)]
    pub reconnect: bool,

    /// Do not offer permessage-deflate compression (offered by default): for servers whose
    /// compression is broken, or to see the frames as they are on the wire.
    #[arg(long)]
    pub no_compression: bool,

    /// Seconds between keepalive pings; 0 or "off" turns keepalive off. [default: 20]
    #[arg(long, value_name = "SECS", value_parser = parse_ping_interval)]
    pub ping_interval: Option<PingInterval>,

    /// Seconds allowed for each step of connecting: TCP, TLS and the upgrade. [default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub connect_timeout: Option<Duration>,

    /// A text frame to send once connected (repeatable, sent in order, on every connection).
    #[arg(short, long = "send", value_name = "TEXT")]
    pub sends: Vec<String>,

    /// Exit 0 after this many data (text or binary) frames were received.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Exit 6 after this many seconds in all, connecting included.
    #[arg(short, long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// Do not read stdin: stay connected until --count, --timeout, the server or Ctrl-C ends
    /// the session.
    #[arg(long)]
    pub no_stdin: bool,

    /// Also print pongs and the server's close frame.
    #[arg(long)]
    pub show_control: bool,

    /// Prefix received frames with the time (UTC).
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub timestamps: When,

    /// Colour: auto (when the stream is a terminal and NO_COLOR is unset), always, never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub color: When,

    /// Print more: the request (header names only), the response, each frame sent.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// Print only received frames and errors: no status lines.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `auto`, `always` or `never`, for colour and timestamps.
// The variants have no doc comments: clap would print them as a second, longer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum When {
    // When the stream is a terminal (and, for colour, NO_COLOR is unset or empty).
    Auto,
    Always,
    Never,
}

/// A `--header` as given, checked by [`Args::request`]: clap quotes a value its parser refuses,
/// and the value may be a token.
#[derive(Clone)]
pub struct RawHeader(String);

impl std::str::FromStr for RawHeader {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(RawHeader(text.to_owned()))
    }
}

impl fmt::Debug for RawHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawHeader(<redacted>)")
    }
}

/// A request header from `--header`.
#[derive(Clone)]
pub struct Header {
    /// The name, as given.
    pub name: String,
    /// The value, without the spaces around it.
    pub value: String,
}

// By hand, so that a debug print of the arguments never shows a header value.
impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Header({:?}: <redacted>)", self.name)
    }
}

/// `--ping-interval`: seconds, or off.
#[derive(Debug, Clone, Copy)]
pub struct PingInterval(pub Option<Duration>);

fn parse_header(text: &str) -> Result<Header, String> {
    // The value is left out of every message: it may be a token.
    let Some((name, value)) = text.split_once(':') else {
        return Err(
            "--header: expected 'Name: value' (no ':' found; the argument is not shown, \
                    as it may hold a secret)"
                .into(),
        );
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("--header: the header name before ':' is empty".into());
    }
    Ok(Header {
        name: name.to_owned(),
        value: value.trim().to_owned(),
    })
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    let limit = ConnectOptions::MAX_DURATION;
    if seconds > limit.as_secs_f64() {
        return Err(format!("must be at most {} seconds", limit.as_secs()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_ping_interval(text: &str) -> Result<PingInterval, String> {
    match text.trim() {
        "off" | "0" => Ok(PingInterval(None)),
        seconds => parse_seconds(seconds).map(|every| PingInterval(Some(every))),
    }
}

impl Args {
    /// The request to make on every attempt. Fails (a usage error) when `--ca-file` cannot be
    /// read.
    pub fn request(&self) -> Result<ConnectRequest, String> {
        let mut options = ConnectOptions::default();
        for protocol in &self.subprotocols {
            options = options.subprotocol(protocol.clone());
        }
        if let Some(origin) = &self.origin {
            options = options.origin(origin.clone());
        }
        if let Some(PingInterval(every)) = self.ping_interval {
            options = options.ping_interval(every);
        }
        if self.no_compression {
            options = options.compression(None);
        }
        if let Some(timeout) = self.connect_timeout {
            options = options
                .connect_timeout(timeout)
                .tls_timeout(timeout)
                .upgrade_timeout(timeout);
        }
        if let Some(proxy) = &self.proxy {
            options = options.proxy(match proxy.as_str() {
                "none" => Proxy::None,
                url => Proxy::url(url),
            });
        }
        if let Some(path) = &self.unix_socket {
            options = options.unix_socket(path.clone());
        }
        let mut tls = TlsOptions::default()
            .danger_accept_invalid_certs(self.insecure)
            .native_roots(self.native_roots);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let read = |flag: &str, path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|error| format!("cannot read {flag} {}: {error}", path.display()))
            };
            tls = tls.client_certificate_pem(read("--cert", cert)?, read("--key", key)?);
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read --ca-file {}: {error}", path.display()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "--ca-file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
            }
            tls = tls.add_root_pem(pem);
        }
        options = options.tls(tls);
        let headers = self
            .headers
            .iter()
            .map(|RawHeader(text)| parse_header(text).map(|header| (header.name, header.value)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.url.clone(), headers, options).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon() {
        let header = parse_header("Authorization:  Bearer a:b ").unwrap();
        assert_eq!(header.name, "Authorization");
        assert_eq!(header.value, "Bearer a:b");
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(!format!("{header:?}").contains("Bearer"));
    }

    #[test]
    fn ping_interval_off_or_seconds() {
        assert_eq!(parse_ping_interval("off").unwrap().0, None);
        assert_eq!(parse_ping_interval("0").unwrap().0, None);
        assert_eq!(
            parse_ping_interval("1.5").unwrap().0,
            Some(Duration::from_millis(1500))
        );
        assert!(parse_ping_interval("-1").is_err());
        assert!(parse_ping_interval("soon").is_err());
    }

    #[test]
    fn seconds_are_positive_and_at_most_a_day() {
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("86401").is_err());
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn compression_is_offered_unless_turned_off() {
        use clap::Parser;
        let request = |args: &[&str]| Args::parse_from(args).request().unwrap();
        assert!(request(&["minch", "ws://127.0.0.1:1/"])
            .options
            .compression
            .is_some());
        assert!(request(&["minch", "--no-compression", "ws://127.0.0.1:1/"])
            .options
            .compression
            .is_none());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
