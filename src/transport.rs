//! Opening a connection: URL and header checks, TCP/TLS through awc, the HTTP upgrade, and the
//! switch from awc's frame codec to ours.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::Instant,
};

use actix_codec::Framed;
use awc::{
    error::{ConnectError, SendRequestError, WsClientError},
    http::{
        header::{self, HeaderMap, HeaderName, HeaderValue},
        StatusCode, Uri,
    },
    BoxedSocket,
};

use futures_util::future::{select, Either};

use crate::{
    compression::{Agreed, Deflate},
    error::Timeout,
    options::{redact_url, ConnectRequest},
    protocol::Codec,
    Error,
};

/// An open WebSocket connection, framed by our codec.
pub(crate) type Transport = Framed<BoxedSocket, Codec>;

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

    // awc has one timeout for the whole request: learn when TCP is up, so that the upgrade gets
    // exactly `upgrade_timeout` (plus `tls_timeout` for wss) from then on.
    let (tcp_up_tx, tcp_up) = tokio::sync::oneshot::channel();
    let tcp_up_at = Rc::new(Cell::new(None));
    let tcp = StampedTcp {
        inner: actix_tls::connect::ConnectorService::default(),
        at: tcp_up_at.clone(),
        tx: Rc::new(RefCell::new(Some(tcp_up_tx))),
    };
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(options.connect_timeout)
        .handshake_timeout(options.tls_timeout)
        // awc pools at most 100 connections by default and an upgraded connection holds its
        // slot: the 101st WebSocket would wait and time out. Each attempt gets its own
        // unlimited connector instead.
        .limit(0);
    #[cfg(feature = "tls")]
    let connector = if secure {
        connector.rustls_0_23(crate::tls::client_config(&options.tls)?)
    } else {
        connector
    };
    // awc's own request timeout is only a backstop: the TCP and TLS steps have their own
    // timeouts, and the upgrade's is enforced below.
    let mut handshake_budget = options.connect_timeout + options.upgrade_timeout;
    if secure {
        handshake_budget += options.tls_timeout;
    }
    let client = awc::Client::builder()
        .connector(connector)
        .no_default_headers()
        .add_default_header((
            header::USER_AGENT,
            concat!("minch/", env!("CARGO_PKG_VERSION")),
        ))
        .timeout(handshake_budget)
        .finish();

    let mut ws = client.ws(uri);
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

    let mut after_tcp = options.upgrade_timeout;
    if secure {
        after_tcp += options.tls_timeout;
    }
    let upgrade_deadline = async move {
        match tcp_up.await {
            Ok(at) => actix_rt::time::sleep_until((at + after_tcp).into()).await,
            // TCP failed: awc reports why.
            Err(_) => std::future::pending().await,
        }
    };
    let connecting = std::pin::pin!(ws.connect());
    let upgrade_deadline = std::pin::pin!(upgrade_deadline);
    let (response, framed) = match select(connecting, upgrade_deadline).await {
        Either::Left((result, _)) => result
            .map_err(|error| classify(error, &request.url, secure, tcp_up_at.get().is_some()))?,
        Either::Right(_) => return Err(Error::Timeout(Timeout::Upgrade)),
    };
    let response = Response {
        status: response.status(),
        headers: response.headers().clone(),
    };
    let deflate = check_negotiation(
        &response,
        &options.subprotocols,
        options.compression.as_ref(),
    )?;

    // `into_map_codec` keeps the read buffer: frames that arrived together with the 101 stay.
    let transport = framed.into_map_codec(|_| Codec::with_compression(options.limits(), deflate));
    Ok((response, transport))
}

/// awc's TCP connector, reporting the moment the connection is established: awc has one
/// timeout for the whole request, and one error for both the TCP and the TLS timeout.
#[derive(Clone)]
struct StampedTcp {
    inner: actix_tls::connect::ConnectorService,
    at: Rc<Cell<Option<Instant>>>,
    tx: Rc<RefCell<Option<tokio::sync::oneshot::Sender<Instant>>>>,
}

impl actix_service::Service<actix_tls::connect::ConnectInfo<Uri>> for StampedTcp {
    type Response = actix_tls::connect::Connection<Uri, actix_rt::net::TcpStream>;
    type Error = actix_tls::connect::ConnectError;
    type Future =
        futures_util::future::LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, request: actix_tls::connect::ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.inner.call(request);
        let (at, tx) = (self.at.clone(), self.tx.clone());
        Box::pin(async move {
            let connection = connecting.await?;
            let now = Instant::now();
            at.set(Some(now));
            if let Some(tx) = tx.borrow_mut().take() {
                let _ = tx.send(now);
            }
            Ok(connection)
        })
    }
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
            let parsed_name = HeaderName::try_from(name.as_str())
                .map_err(|_| invalid("not a valid header name"))?;
            if parsed_name == header::SEC_WEBSOCKET_EXTENSIONS {
                return Err(invalid(
                    "minch negotiates extensions itself; set permessage-deflate's parameters \
                     with ConnectOptions::compression",
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
        let chosen = chosen.to_str().unwrap_or_default();
        if !offered.iter().any(|protocol| protocol == chosen) {
            return Err(Error::Handshake(format!(
                "the server selected subprotocol {chosen:?}, which was not offered"
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

/// Turns awc's error into ours. awc reports the TCP and the TLS timeout alike; whether TCP
/// was up by then tells them apart. `url` is the requested URL, shown redacted.
fn classify(error: WsClientError, url: &str, secure: bool, tcp_was_up: bool) -> Error {
    match error {
        WsClientError::InvalidResponseStatus(status) => Error::Rejected { status },
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
            Error::Tls(error.to_string())
        }
        WsClientError::SendRequest(SendRequestError::Connect(error)) => {
            Error::Connect(error.to_string())
        }
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
}
