//! Opening the tunnel through a proxy, over the TCP connection to it: HTTP `CONNECT`
//! (RFC 9110 §9.3.6) or SOCKS5 `CONNECT` (RFC 1928, with RFC 1929 credentials).

use actix_rt::net::TcpStream;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{authority, ProxyEndpoint, ProxyKind};
use crate::{error::ProxyError, http::StatusCode, Error};

/// The longest answer head an HTTP proxy may send to `CONNECT`.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Turns `tcp`, connected to the proxy, into a tunnel to `host:port`.
pub(crate) async fn open_tunnel(
    endpoint: &ProxyEndpoint,
    tcp: TcpStream,
    host: &str,
    port: u16,
) -> Result<TcpStream, Error> {
    let result = match endpoint.kind {
        ProxyKind::Http => http_connect(endpoint, tcp, host, port).await,
        ProxyKind::Socks5 { remote_dns } => {
            socks5_connect(endpoint, tcp, host, port, remote_dns).await
        }
    };
    result.map_err(|error| Error::Proxy {
        proxy: endpoint.shown(),
        error,
    })
}

async fn http_connect(
    endpoint: &ProxyEndpoint,
    mut tcp: TcpStream,
    host: &str,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    let target = authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = &endpoint.credentials {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.user, credentials.password));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|error| lost(&error))?;

    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let read = tcp.read(&mut buf).await.map_err(|error| lost(&error))?;
        if read == 0 {
            return Err(ProxyError::Protocol(
                "the proxy closed the connection before answering CONNECT".into(),
            ));
        }
        answer.extend_from_slice(&buf[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response
                    .code
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or_else(|| ProxyError::Protocol("no valid status".into()))?;
                if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                    return Err(ProxyError::AuthenticationRequired);
                }
                if !status.is_success() {
                    return Err(ProxyError::Refused(status));
                }
                // The server cannot have spoken yet: the client speaks first in both TLS and
                // the WebSocket upgrade. Bytes after the answer would be lost or misread.
                if head_len < answer.len() {
                    return Err(ProxyError::Protocol(
                        "the proxy sent bytes after its answer to CONNECT".into(),
                    ));
                }
                return Ok(tcp);
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_CONNECT_ANSWER => {}
            Ok(httparse::Status::Partial) => {
                return Err(ProxyError::Protocol(format!(
                    "the answer to CONNECT is longer than {MAX_CONNECT_ANSWER} bytes"
                )))
            }
            Err(error) => {
                return Err(ProxyError::Protocol(format!(
                    "the answer to CONNECT is not HTTP: {error}"
                )))
            }
        }
    }
}

async fn socks5_connect(
    endpoint: &ProxyEndpoint,
    tcp: TcpStream,
    host: &str,
    port: u16,
    remote_dns: bool,
) -> Result<TcpStream, ProxyError> {
    let target = if remote_dns {
        tokio_socks::TargetAddr::Domain(host.to_owned().into(), port)
    } else {
        let address = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| {
                ProxyError::Unreachable(format!("the server's name could not be resolved: {error}"))
            })?
            .next()
            .ok_or_else(|| {
                ProxyError::Unreachable("the server's name resolved to no address".into())
            })?;
        tokio_socks::TargetAddr::Ip(address)
    };
    let connected = match &endpoint.credentials {
        Some(credentials) => {
            tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                tcp,
                target,
                &credentials.user,
                &credentials.password,
            )
            .await
        }
        None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, target).await,
    };
    connected
        .map(tokio_socks::tcp::Socks5Stream::into_inner)
        .map_err(socks_error)
}

fn socks_error(error: tokio_socks::Error) -> ProxyError {
    use tokio_socks::Error as Socks;
    match error {
        Socks::GeneralSocksServerFailure => ProxyError::SocksReply(1),
        Socks::ConnectionNotAllowedByRuleset => ProxyError::SocksReply(2),
        Socks::NetworkUnreachable => ProxyError::SocksReply(3),
        Socks::HostUnreachable => ProxyError::SocksReply(4),
        Socks::ConnectionRefused => ProxyError::SocksReply(5),
        Socks::TtlExpired => ProxyError::SocksReply(6),
        Socks::CommandNotSupported => ProxyError::SocksReply(7),
        Socks::AddressTypeNotSupported => ProxyError::SocksReply(8),
        Socks::UnknownError => {
            ProxyError::Protocol("the SOCKS5 proxy answered with an unknown reply code".into())
        }
        Socks::NoAcceptableAuthMethods
        | Socks::PasswordAuthFailure(_)
        | Socks::AuthorizationRequired => ProxyError::SocksAuthentication,
        // A proxy that wants credentials often just hangs up on a client without them.
        Socks::Io(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            ProxyError::Protocol(
                "the SOCKS5 proxy closed the connection (if it needs credentials, give them in \
                 the proxy URL)"
                    .into(),
            )
        }
        Socks::Io(error) => lost(&error),
        other => ProxyError::Protocol(format!("SOCKS5: {other}")),
    }
}

fn lost(error: &std::io::Error) -> ProxyError {
    ProxyError::Protocol(format!("the connection to the proxy failed: {error}"))
}
