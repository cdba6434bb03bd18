//! Exit codes: how a script tells the ways a session can end apart. The table in `--help`
//! (args.rs) and in README.md must match this one.

use minch::{CloseCode, DisconnectReason, Error, Timeout};

/// How the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Closed by the user, `--count` reached, or the server closed normally.
    Done,
    /// The connection ended before `--count` frames arrived, or another failure.
    Failed,
    /// Bad arguments, an invalid URL or header, an unreadable `--ca-file`.
    Usage,
    /// DNS, TCP, TLS, the proxy, a connect/upgrade timeout, an invalid handshake response.
    Connect,
    /// The server answered the upgrade with a status other than 101.
    Rejected,
    /// The server broke the WebSocket protocol.
    Protocol,
    /// `--timeout` elapsed.
    Timeout,
    /// The server closed with a code other than 1000 or 1001.
    ClosedWithError,
    /// Reset, dropped without a close frame, or no pong.
    Lost,
    /// Ctrl-C.
    Interrupted,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Connect => 3,
            Exit::Rejected => 4,
            Exit::Protocol => 5,
            Exit::Timeout => 6,
            Exit::ClosedWithError => 7,
            Exit::Lost => 8,
            Exit::Interrupted => 130,
        }
    }

    /// What a connection's end or a failed attempt means for the exit code.
    pub fn of(reason: &DisconnectReason) -> Exit {
        match reason {
            DisconnectReason::ServerClosed(None) | DisconnectReason::ClientClosed(_) => Exit::Done,
            DisconnectReason::ServerClosed(Some(close)) => {
                if close.code == CloseCode::NORMAL || close.code == CloseCode::AWAY {
                    Exit::Done
                } else {
                    Exit::ClosedWithError
                }
            }
            DisconnectReason::Error(error) => Exit::of_error(error),
            // DisconnectReason is non-exhaustive.
            _ => Exit::Failed,
        }
    }

    fn of_error(error: &Error) -> Exit {
        if error.is_config() {
            return Exit::Usage;
        }
        match error {
            Error::Connect(_) | Error::Tls(_) | Error::Proxy { .. } | Error::Handshake(_) => {
                Exit::Connect
            }
            Error::Timeout(Timeout::Connect | Timeout::Tls | Timeout::Upgrade) => Exit::Connect,
            Error::Rejected { .. } => Exit::Rejected,
            Error::Protocol(_) => Exit::Protocol,
            Error::Io(_) | Error::Timeout(_) => Exit::Lost,
            _ => Exit::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use minch::{http::StatusCode, CloseFrame};

    use super::*;

    #[test]
    fn disconnect_reasons() {
        let server = |code: u16| DisconnectReason::ServerClosed(Some(CloseFrame::new(code, "")));
        assert_eq!(Exit::of(&server(1000)), Exit::Done);
        assert_eq!(Exit::of(&server(1001)), Exit::Done);
        assert_eq!(Exit::of(&server(1011)), Exit::ClosedWithError);
        assert_eq!(Exit::of(&server(4000)), Exit::ClosedWithError);
        assert_eq!(Exit::of(&DisconnectReason::ServerClosed(None)), Exit::Done);
        let error = |error: Error| Exit::of(&DisconnectReason::Error(error));
        assert_eq!(error(Error::Connect("refused".into())), Exit::Connect);
        assert_eq!(error(Error::Timeout(Timeout::Upgrade)), Exit::Connect);
        assert_eq!(error(Error::Timeout(Timeout::Pong)), Exit::Lost);
        assert_eq!(
            error(Error::Rejected {
                status: StatusCode::FORBIDDEN,
                response: Box::new(minch::Rejection::new(Default::default(), "")),
            }),
            Exit::Rejected
        );
        assert_eq!(error(Error::InvalidOptions("x".into())), Exit::Usage);
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            Exit::Done,
            Exit::Failed,
            Exit::Usage,
            Exit::Connect,
            Exit::Rejected,
            Exit::Protocol,
            Exit::Timeout,
            Exit::ClosedWithError,
            Exit::Lost,
            Exit::Interrupted,
        ];
        let mut codes: Vec<i32> = all.iter().map(|exit| exit.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
