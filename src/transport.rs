//! Opening a connection: URL and header checks, TCP/TLS through awc, the HTTP upgrade, and the
//! switch from awc's frame codec to ours.

use std::time::{Duration, Instant};

use awc::{
    error::{ConnectError, SendRequestError, WsClientError},
    http::{
        header::{self, HeaderMap, HeaderName, HeaderValue},
        StatusCode, Uri,
    },
    BoxedSocket,
};

use futures_util::future::{select, Either};

#[cfg(feature = "tls")]
use crate::tls::handshake_failure;
use crate::{
    compression::{Agreed, Deflate},
    connector::{Connector, Handshake},
    error::Timeout,
    framed::Framed,
    options::{redact_url, ConnectRequest},
    protocol::Codec,
    Error,
};

/// An open WebSocket connection, framed by our codec.
pub(crate) type Transport = Framed<BoxedSocket>;

/// The server's answer to a successful upgrade.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status: always `101 Switching Protocols`.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
}

impl Response {
    /// The subprotocol the server selected, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
    }
}

/// Connects, upgrades and hands back the connection, or the reason it could not be opened.
///
/// The options are checked first, before any I/O: a bad setting is a configuration error for
/// both the actor client and the simple API, never a hang or a panic later.
pub(crate) async fn open(request: &ConnectRequest) -> Result<(Response, Transport), Error> {
    request.options.validate()?;
    let uri = parse_url(&request.url)?;
    let headers = parse_headers(&request.headers)?;
    let options = &request.options;
    let secure = uri.scheme_str() == Some("wss");
    #[cfg(not(feature = "tls"))]
    if secure {
        return Err(Error::TlsNotEnabled {
            url: redact_url(&request.url),
        });
    }

    // minch opens the stream (TCP, then TLS) itself and hands it to awc ready, as a plain
    // connection: awc then does the upgrade over it (see `connector`).
    let (handshake, ready) = Handshake::new();
    let connector = Connector::new(
        handshake.clone(),
        options.connect_timeout,
        options.tls_timeout,
    )
    .tcp_nodelay(options.tcp_nodelay);
    let origin_host = uri.host().unwrap_or_default();
    let origin_host = crate::connector::bare_host(origin_host);
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let connector = match &options.unix_socket {
        #[cfg(unix)]
        Some(path) => connector.unix_socket(path),
        // Refused by `validate` elsewhere.
        #[cfg(not(unix))]
        Some(_) => connector,
        None => match options.proxy.endpoint_for(secure, origin_host, port)? {
            #[cfg(feature = "tls")]
            Some(proxy) if proxy.kind == crate::proxy::ProxyKind::Https => connector
                .proxy_tls(crate::tls::client_config(&options.tls)?)
                .proxy(proxy),
            Some(proxy) => connector.proxy(proxy),
            None => connector,
        },
    };
    #[cfg(feature = "tls")]
    let connector = if secure {
        connector.tls(crate::tls::client_config(&options.tls)?)
    } else {
        connector
    };
    let connector = awc::Connector::new()
        .connector(connector)
        // Only a backstop: the connector times the TCP and TLS steps itself.
        .timeout(options.connect_timeout + options.tls_timeout + Duration::from_secs(1))
        // awc pools at most 100 connections by default and an upgraded connection holds its
        // slot: the 101st WebSocket would wait and time out. Each attempt gets its own
        // unlimited connector instead.
        .limit(0);
    // awc's own request timeout is only a backstop: the TCP and TLS steps have their own
    // timeouts, and the upgrade's is enforced below.
    let handshake_budget = options.connect_timeout
        + options.tls_timeout
        + options.upgrade_timeout
        + Duration::from_secs(1);
    let client = awc::Client::builder()
        .connector(connector)
        .no_default_headers()
        .add_default_header((
            header::USER_AGENT,
            concat!("minch/", env!("CARGO_PKG_VERSION")),
        ))
        .timeout(handshake_budget)
        .finish();

    let mut ws = client.ws(plain_uri(&uri)?);
    if !headers.iter().any(|(name, _)| name == header::HOST) {
        ws = ws.header(header::HOST, host_header(&uri)?);
    }
    for (name, value) in headers {
        ws = ws.header(name, value);
    }
    if let Some(deflate) = &options.compression {
        ws = ws.header(header::SEC_WEBSOCKET_EXTENSIONS, deflate.offer());
    }
    if !options.subprotocols.is_empty() {
        ws = ws.protocols(&options.subprotocols);
    }
    if let Some(origin) = &options.origin {
        let origin = HeaderValue::try_from(origin.as_str()).map_err(|_| Error::InvalidHeader {
            name: "origin".into(),
            reason: "not a valid header value".into(),
        })?;
        ws = ws.origin(origin);
    }

    let upgrade_timeout = options.upgrade_timeout;
    let upgrade_deadline = async move {
        match ready.await {
            Ok(at) => actix_rt::time::sleep_until((at + upgrade_timeout).into()).await,
            // The connection could not be opened: awc reports why.
            Err(_) => std::future::pending().await,
        }
    };
    let connecting = std::pin::pin!(ws.connect());
    let upgrade_deadline = std::pin::pin!(upgrade_deadline);
    let result = match select(connecting, upgrade_deadline).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => return Err(Error::Timeout(Timeout::Upgrade)),
    };
    let (response, framed) = match result {
        Ok(answer) => answer,
        Err(WsClientError::InvalidResponseStatus(status)) => {
            let deadline = handshake
                .ready_at()
                .map_or_else(Instant::now, |at| at + upgrade_timeout);
            let response = Box::new(handshake.rejection(status, deadline).await);
            return Err(Error::Rejected { status, response });
        }
        Err(error) => {
            return Err(handshake
                .take_failure()
                .unwrap_or_else(|| classify(error, &request.url, secure, handshake.was_ready())))
        }
    };
    handshake.finish();
    let response = Response {
        status: response.status(),
        headers: response.headers().clone(),
    };
    let deflate = check_negotiation(
        &response,
        &options.subprotocols,
        options.compression.as_ref(),
    )?;

    // Frames that arrived together with the 101 stay in the read buffer handed over.
    let parts = framed.into_parts();
    let codec = Codec::with_compression(options.limits(), deflate);
    let transport = Framed::new(parts.io, codec, parts.read_buf);
    Ok((response, transport))
}

/// The URL awc is given: `wss://` becomes `ws://` with the port spelled out, since minch's
/// connector has already made the TLS connection awc would otherwise make.
fn plain_uri(uri: &Uri) -> Result<Uri, Error> {
    if uri.scheme_str() != Some("wss") {
        return Ok(uri.clone());
    }
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    Uri::try_from(format!("ws://{host}:{port}{path}"))
        .map_err(|error| Error::Handshake(format!("the URL could not be rewritten: {error}")))
}

/// `Host`, as awc would write it for the URL the user gave: the host, and the port if the URL
/// names one.
fn host_header(uri: &Uri) -> Result<HeaderValue, Error> {
    let host = uri.host().unwrap_or_default();
    let value = match uri.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    HeaderValue::try_from(value).map_err(|_| Error::InvalidUrl {
        url: String::new(),
        reason: "the host is not a valid Host header".into(),
    })
}

pub(crate) fn parse_url(url: &str) -> Result<Uri, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let uri = Uri::try_from(url).map_err(|error| invalid(&error.to_string()))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(other) => return Err(invalid(&format!("the scheme is {other:?}, not ws or wss"))),
        None => return Err(invalid("the scheme is missing")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing"));
    }
    Ok(uri)
}

pub(crate) fn parse_headers(
    headers: &[(String, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    headers
        .iter()
        .map(|(name, value)| {
            let invalid = |reason: &str| Error::InvalidHeader {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            let Ok(parsed_name) = HeaderName::try_from(name.as_str()) else {
                // A name that does not parse is often a whole header line
                // (`"Authorization: Bearer …"`) or a swapped name and value: show only its
                // valid start, never what may be the secret after it.
                return Err(Error::InvalidHeader {
                    name: shown_name_start(name),
                    reason: "not a valid header name (a name alone, such as \"Authorization\", \
                             without ':' or the value; shown up to its first invalid character)"
                        .to_owned(),
                });
            };
            if parsed_name == header::SEC_WEBSOCKET_EXTENSIONS {
                return Err(invalid(
                    "minch negotiates extensions itself; set permessage-deflate's parameters \
                     with ConnectOptions::compression",
                ));
            }
            if parsed_name == header::SEC_WEBSOCKET_PROTOCOL {
                // The server's choice is checked against the offer, which this header would
                // bypass; and subprotocols often carry tokens, which minch keeps out of logs.
                return Err(invalid(
                    "offer subprotocols with ConnectOptions::subprotocol, which checks the \
                     server's choice against them",
                ));
            }
            let mut parsed_value = HeaderValue::try_from(value.as_str())
                .map_err(|_| invalid("the value is not a valid header value"))?;
            if is_secret(&parsed_name) {
                // Keeps the value out of any Debug output awc or the user might print.
                parsed_value.set_sensitive(true);
            }
            Ok((parsed_name, parsed_value))
        })
        .collect()
}

/// The start of an invalid header name, up to its first character that cannot be in one
/// (at most 64 characters).
fn shown_name_start(name: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let start: String = name.chars().take_while(|&c| valid(c)).take(64).collect();
    if start.len() < name.len() {
        format!("{start}…")
    } else {
        start
    }
}

fn is_secret(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION
        || name == header::PROXY_AUTHORIZATION
        || name == header::COOKIE
        || name.as_str().contains("token")
        || name.as_str().contains("key")
}

/// Checks the server's choices in a `101` against what the client offered: the subprotocol
/// and the extensions. Returns the permessage-deflate parameters, if the server accepted them.
pub(crate) fn check_negotiation(
    response: &Response,
    offered_subprotocols: &[String],
    offered_compression: Option<&Deflate>,
) -> Result<Option<Agreed>, Error> {
    check_subprotocol(response, offered_subprotocols)?;
    check_extensions(response, offered_compression)
}

/// RFC 6455 §4.1: the client must fail the connection if the server selects a subprotocol it
/// did not offer, or more than one.
fn check_subprotocol(response: &Response, offered: &[String]) -> Result<(), Error> {
    let protocols = response.headers.get_all(header::SEC_WEBSOCKET_PROTOCOL);
    if protocols.len() > 1 {
        let reason = "the server selected more than one subprotocol";
        return Err(Error::Handshake(reason.into()));
    }
    if let Some(chosen) = response.headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let chosen = chosen.as_bytes();
        if !offered.iter().any(|protocol| protocol.as_bytes() == chosen) {
            // Not shown: subprotocols may carry tokens (the server may echo a near-copy of one).
            return Err(Error::Handshake(format!(
                "the server selected a subprotocol that was not offered ({} bytes; offer it \
                 with ConnectOptions::subprotocol)",
                chosen.len()
            )));
        }
    }
    Ok(())
}

/// RFC 6455 §9.1: the client must fail the connection if the server enables an extension it
/// did not offer. permessage-deflate, the one minch offers, is checked strictly.
fn check_extensions(
    response: &Response,
    offered: Option<&Deflate>,
) -> Result<Option<Agreed>, Error> {
    let answer: Vec<&[u8]> = response
        .headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .map(HeaderValue::as_bytes)
        .collect();
    match offered {
        Some(deflate) => deflate.accept(&answer),
        // Nothing offered: anything but an empty answer enables something not offered.
        None => match Deflate::default().accept(&answer) {
            Ok(None) => Ok(None),
            Ok(Some(_)) => Err(Error::Extension {
                parameter: crate::compression::EXTENSION.to_owned(),
                reason: "the server enabled compression, which was not offered".to_owned(),
            }),
            Err(error) => Err(error),
        },
    }
}

/// Without TLS there is no `wss://` connection to fail (see `open`).
#[cfg(not(feature = "tls"))]
fn handshake_failure(error: &std::io::Error) -> Error {
    Error::Tls(error.to_string())
}

/// Turns awc's error into ours. awc reports the TCP and the TLS timeout alike; whether TCP
/// was up by then tells them apart. `url` is the requested URL, shown redacted.
fn classify(error: WsClientError, url: &str, secure: bool, tcp_was_up: bool) -> Error {
    match error {
        WsClientError::InvalidResponseStatus(status) => Error::Rejected {
            status,
            response: Box::new(crate::error::Rejection::received(
                HeaderMap::new(),
                bytes::Bytes::new(),
                false,
            )),
        },
        WsClientError::SendRequest(SendRequestError::Timeout) => Error::Timeout(Timeout::Upgrade),
        WsClientError::SendRequest(SendRequestError::Connect(ConnectError::Timeout)) => {
            if secure && tcp_was_up {
                Error::Timeout(Timeout::Tls)
            } else {
                Error::Timeout(Timeout::Connect)
            }
        }
        WsClientError::SendRequest(SendRequestError::Connect(ConnectError::Io(error)))
            if secure && error.kind() == std::io::ErrorKind::InvalidData =>
        {
            handshake_failure(&error)
        }
        WsClientError::SendRequest(SendRequestError::Connect(error)) => Error::tcp_connect(error),
        WsClientError::SendRequest(SendRequestError::Url(error)) => Error::InvalidUrl {
            url: redact_url(url),
            reason: error.to_string(),
        },
        WsClientError::SendRequest(SendRequestError::Send(error)) => Error::io(error),
        WsClientError::SendRequest(error) => Error::Handshake(error.to_string()),
        WsClientError::Protocol(error) => Error::Handshake(error.to_string()),
        other => Error::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_other_than_ws_and_wss_are_refused() {
        assert!(parse_url("ws://127.0.0.1:1/x").is_ok());
        assert!(parse_url("wss://example.com").is_ok());
        for bad in [
            "http://example.com",
            "example.com",
            "ws://",
            "ws://exa mple.com",
            "",
        ] {
            assert!(
                matches!(parse_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn header_values_with_line_breaks_are_refused_without_echoing_them() {
        let headers = vec![("x-token".to_string(), "abc\r\nevil: 1".to_string())];
        let error = parse_headers(&headers).unwrap_err();
        assert!(matches!(&error, Error::InvalidHeader { name, .. } if name == "x-token"));
        assert!(!error.to_string().contains("evil"));
        let bad_name = vec![("bad name".to_string(), "v".to_string())];
        assert!(parse_headers(&bad_name).is_err());
    }

    #[test]
    fn an_invalid_header_name_is_shown_up_to_its_first_invalid_character() {
        let shown = |name: &str| match parse_headers(&[(name.to_owned(), String::new())]) {
            Err(Error::InvalidHeader { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(shown("Authorization: Bearer abc"), "Authorization…");
        assert_eq!(shown(" leading"), "…");
        assert_eq!(shown(""), "");
        assert_eq!(
            shown(&format!("{}:", "x".repeat(100))),
            format!("{}…", "x".repeat(64))
        );
    }
}
