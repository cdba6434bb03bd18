//! What a line of input means: text to send, or a `/` command.

use minch::{CloseCode, CloseFrame};

/// One line of input, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a text frame.
    Text(String),
    /// Send a binary frame.
    Binary(Vec<u8>),
    /// Send a ping with this payload.
    Ping(Vec<u8>),
    /// Close the connection with this code and reason, and exit.
    Close(CloseFrame),
    /// Print the client's traffic counters.
    Stats,
    /// Print the commands.
    Help,
}

/// The commands, for `/help`.
pub const HELP: &str = "\
/ping [payload]         send a ping; the pong's round trip is reported
/close [code] [reason]  close the connection (default code 1000) and exit
/binary <hex>           send a binary frame (hex digits, spaces allowed)
/stats                  traffic counters and the last keepalive round trip
/help                   this list
//text                  send \"/text\" (a line starting with // loses its first /)
any other line          sent as a text frame";

/// Understands one line of input (without its line ending). An error says what is wrong
/// with a command; nothing is sent then.
pub fn parse(line: &str) -> Result<Command, String> {
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Command::Text(line.to_owned()));
    };
    if command.starts_with('/') {
        return Ok(Command::Text(command.to_owned()));
    }
    let (name, rest) = match command.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim_start()),
        None => (command, ""),
    };
    match name {
        "ping" => Ok(Command::Ping(rest.as_bytes().to_vec())),
        "close" => parse_close(rest).map(Command::Close),
        "binary" => parse_hex(rest).map(Command::Binary),
        "stats" if rest.is_empty() => Ok(Command::Stats),
        "help" | "?" => Ok(Command::Help),
        "stats" => Err("/stats takes no arguments".into()),
        _ => Err(format!(
            "unknown command /{name}; /help lists the commands, and a line starting with // \
             sends text that begins with /"
        )),
    }
}

fn parse_close(rest: &str) -> Result<CloseFrame, String> {
    let (code, reason) = match rest.split_once(char::is_whitespace) {
        Some((code, reason)) => (code, reason.trim()),
        None => (rest, ""),
    };
    let code = if code.is_empty() {
        CloseCode::NORMAL
    } else {
        let number: u16 = code
            .parse()
            .map_err(|_| format!("/close: {code:?} is not a close code (e.g. 1000)"))?;
        CloseCode(number)
    };
    if !code.is_sendable() {
        return Err(format!(
            "/close: {code} may not be sent; use 1000-1003, 1007-1014 or 3000-4999"
        ));
    }
    // RFC 6455 §5.5: the whole close payload fits in 125 bytes, two of them the code.
    if reason.len() > 123 {
        return Err(format!(
            "/close: the reason is {} bytes; at most 123 fit in a close frame",
            reason.len()
        ));
    }
    Ok(CloseFrame::new(code, reason))
}

/// Hex digits, in pairs, with any whitespace between the pairs.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    // Checked first: `from_str_radix` would take a sign ("+1") as part of a number.
    if let Some(&bad) = digits.iter().find(|byte| !byte.is_ascii_hexdigit()) {
        return Err(format!("/binary: {:?} is not a hex digit", char::from(bad)));
    }
    if !digits.len().is_multiple_of(2) {
        return Err("/binary: an odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("");
            u8::from_str_radix(pair, 16).map_err(|_| format!("/binary: {pair:?} is not a hex byte"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_text() {
        assert_eq!(parse("hello"), Ok(Command::Text("hello".into())));
        assert_eq!(parse(""), Ok(Command::Text(String::new())));
        assert_eq!(parse(" /ping"), Ok(Command::Text(" /ping".into())));
    }

    #[test]
    fn a_double_slash_sends_the_rest() {
        assert_eq!(parse("//ping"), Ok(Command::Text("/ping".into())));
        assert_eq!(parse("//"), Ok(Command::Text("/".into())));
    }

    #[test]
    fn commands() {
        assert_eq!(parse("/ping"), Ok(Command::Ping(vec![])));
        assert_eq!(
            parse("/ping hi there"),
            Ok(Command::Ping(b"hi there".to_vec()))
        );
        assert_eq!(parse("/stats"), Ok(Command::Stats));
        assert_eq!(parse("/help"), Ok(Command::Help));
        assert_eq!(
            parse("/binary 48 69"),
            Ok(Command::Binary(vec![0x48, 0x69]))
        );
        assert_eq!(
            parse("/binary 4869ff"),
            Ok(Command::Binary(vec![0x48, 0x69, 0xff]))
        );
        assert!(parse("/binary 486").is_err());
        assert!(parse("/binary zz").is_err());
        assert!(parse("/nope").is_err());
        assert!(parse("/stats now").is_err());
    }

    #[test]
    fn close_takes_an_optional_code_and_reason() {
        assert_eq!(
            parse("/close"),
            Ok(Command::Close(CloseFrame::new(1000, "")))
        );
        assert_eq!(
            parse("/close 4000 going  home"),
            Ok(Command::Close(CloseFrame::new(4000, "going  home")))
        );
        assert!(parse("/close 1005").is_err());
        assert!(parse("/close abc").is_err());
        assert!(parse(&format!("/close 1000 {}", "x".repeat(124))).is_err());
    }
}
