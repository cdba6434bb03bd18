//! Opening the tunnel through a proxy, over the TCP connection to it: HTTP `CONNECT`
//! (RFC 9110 §9.3.6) or SOCKS5 `CONNECT` (RFC 1928, with RFC 1929 credentials).

use actix_rt::net::TcpStream;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{authority, ProxyEndpoint, ProxyKind};
use crate::{connector::Socket, error::ProxyError, http::StatusCode, Error};

/// The TLS configuration for an `https://` proxy (unused without the `tls` feature, where such
/// proxies are refused when parsed).
#[cfg(feature = "tls")]
pub(crate) type ProxyTls = Option<std::sync::Arc<rustls::ClientConfig>>;
#[cfg(not(feature = "tls"))]
pub(crate) type ProxyTls = Option<std::convert::Infallible>;

/// The longest answer head an HTTP proxy may send to `CONNECT`.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Turns `tcp`, connected to the proxy, into a tunnel to `host:port`; `tls` is the
/// configuration to speak TLS with an `https://` proxy.
pub(crate) async fn open_tunnel(
    endpoint: &ProxyEndpoint,
    tcp: TcpStream,
    tls: &ProxyTls,
    host: &str,
    port: u16,
) -> Result<Socket, Error> {
    let result = match endpoint.kind {
        ProxyKind::Http => http_connect(endpoint, tcp, host, port)
            .await
            .map(Socket::Tcp),
        ProxyKind::Https => https_connect(endpoint, tcp, tls, host, port).await,
        ProxyKind::Socks5 { remote_dns } => socks5_connect(endpoint, tcp, host, port, remote_dns)
            .await
            .map(Socket::Tcp),
    };
    result.map_err(|error| Error::Proxy {
        proxy: endpoint.shown(),
        error,
    })
}

/// TLS with the proxy, checked against the proxy's name, then `CONNECT` inside it.
#[cfg(feature = "tls")]
async fn https_connect(
    endpoint: &ProxyEndpoint,
    tcp: TcpStream,
    tls: &ProxyTls,
    host: &str,
    port: u16,
) -> Result<Socket, ProxyError> {
    use actix_service::Service;
    use actix_tls::connect::{rustls_0_23::TlsConnector, Connection};

    let config = tls
        .clone()
        .ok_or_else(|| ProxyError::Tls("no TLS configuration for the proxy".into()))?;
    let to_proxy = Connection::new(endpoint.clone(), tcp);
    let tls = TlsConnector::service(config)
        .call(to_proxy)
        .await
        .map_err(|error| match crate::tls::handshake_failure(&error) {
            Error::Tls(reason) => ProxyError::Tls(reason),
            other => ProxyError::Tls(other.to_string()),
        })?
        .into_parts()
        .0;
    http_connect(endpoint, tls, host, port)
        .await
        .map(|tls| Socket::ProxyTls(Box::new(tls)))
}

#[cfg(not(feature = "tls"))]
async fn https_connect(
    _: &ProxyEndpoint,
    _: TcpStream,
    _: &ProxyTls,
    _: &str,
    _: u16,
) -> Result<Socket, ProxyError> {
    // Not reached: an https:// proxy URL is refused when parsed without the feature.
    Err(ProxyError::Tls(
        "https:// proxies need minch's tls feature".into(),
    ))
}

async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    endpoint: &ProxyEndpoint,
    mut stream: S,
    host: &str,
    port: u16,
) -> Result<S, ProxyError> {
    let target = authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(credentials) = &endpoint.credentials {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.user, credentials.password));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| lost(&error))?;

    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        match parse_answer(&answer)? {
            // An interim answer (RFC 9110 §15.2): the final one follows.
            Some((status, head_len))
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                answer.drain(..head_len);
                continue;
            }
            Some((StatusCode::PROXY_AUTHENTICATION_REQUIRED, _)) => {
                return Err(ProxyError::AuthenticationRequired)
            }
            Some((status, _)) if !status.is_success() => return Err(ProxyError::Refused(status)),
            // The server cannot have spoken yet: the client speaks first in both TLS and the
            // WebSocket upgrade. Bytes after the answer would be lost or misread.
            Some((_, head_len)) if head_len < answer.len() => {
                return Err(ProxyError::Protocol(
                    "the proxy sent bytes after its answer to CONNECT".into(),
                ))
            }
            Some(_) => return Ok(stream),
            None if answer.len() >= MAX_CONNECT_ANSWER => {
                return Err(ProxyError::Protocol(format!(
                    "the answer to CONNECT is longer than {MAX_CONNECT_ANSWER} bytes"
                )))
            }
            None => {}
        }
        let read = stream.read(&mut buf).await.map_err(|error| lost(&error))?;
        if read == 0 {
            return Err(ProxyError::Protocol(
                "the proxy closed the connection before answering CONNECT".into(),
            ));
        }
        answer.extend_from_slice(&buf[..read]);
    }
}

/// The status and length of the answer head at the start of `answer`, once it is complete.
fn parse_answer(answer: &[u8]) -> Result<Option<(StatusCode, usize)>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(answer) {
        Ok(httparse::Status::Complete(head_len)) => response
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .map(|status| Some((status, head_len)))
            .ok_or_else(|| ProxyError::Protocol("no valid status".into())),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(ProxyError::Protocol(format!(
            "the answer to CONNECT is not HTTP: {error}"
        ))),
    }
}

/// Where a SOCKS5 `CONNECT` goes: an address the client resolved, or a name for the proxy.
enum SocksTarget<'a> {
    Address(std::net::SocketAddr),
    Name(&'a str),
}

/// SOCKS5 (RFC 1928) with username/password authentication (RFC 1929) when credentials are
/// given. Written here rather than taken from a crate: the one widely used panics on names over
/// 506 bytes, sends a wrong length for names of 256 to 506, and reports unknown reply codes as
/// an authentication failure.
async fn socks5_connect(
    endpoint: &ProxyEndpoint,
    mut tcp: TcpStream,
    host: &str,
    port: u16,
    remote_dns: bool,
) -> Result<TcpStream, ProxyError> {
    let target = if remote_dns {
        SocksTarget::Name(host)
    } else if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        SocksTarget::Address((ip, port).into())
    } else {
        let address = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| {
                ProxyError::Protocol(
                    "the server's name could not be resolved on this machine for the SOCKS5 \
                     proxy (with socks5h:// the proxy resolves it)"
                        .into(),
                )
            })?;
        SocksTarget::Address(address)
    };

    // Offer no authentication, and username/password when there are credentials.
    let greeting: &[u8] = match endpoint.credentials {
        Some(_) => &[5, 2, 0, 2],
        None => &[5, 1, 0],
    };
    tcp.write_all(greeting).await.map_err(|e| lost(&e))?;
    let mut choice = [0u8; 2];
    read_socks(&mut tcp, &mut choice).await?;
    if choice[0] != 5 {
        return Err(not_socks5());
    }
    match (choice[1], &endpoint.credentials) {
        (0, _) => {}
        (2, Some(credentials)) => {
            let mut request = vec![1, credentials.user.len() as u8];
            request.extend_from_slice(credentials.user.as_bytes());
            request.push(credentials.password.len() as u8);
            request.extend_from_slice(credentials.password.as_bytes());
            tcp.write_all(&request).await.map_err(|e| lost(&e))?;
            let mut status = [0u8; 2];
            read_socks(&mut tcp, &mut status).await?;
            if status[1] != 0 {
                return Err(ProxyError::SocksAuthentication);
            }
        }
        // 0xFF: none of the methods offered; or a method that was not offered.
        _ => return Err(ProxyError::SocksAuthentication),
    }

    let mut request = vec![5, 1, 0];
    match target {
        SocksTarget::Address(std::net::SocketAddr::V4(address)) => {
            request.push(1);
            request.extend_from_slice(&address.ip().octets());
        }
        SocksTarget::Address(std::net::SocketAddr::V6(address)) => {
            request.push(4);
            request.extend_from_slice(&address.ip().octets());
        }
        SocksTarget::Name(name) => {
            // Checked when the proxy was chosen; a guard against a malformed request anyway.
            let len = u8::try_from(name.len())
                .ok()
                .filter(|&len| len > 0)
                .ok_or_else(|| {
                    ProxyError::Protocol("a SOCKS5 host name is 1 to 255 bytes".into())
                })?;
            request.push(3);
            request.push(len);
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&request).await.map_err(|e| lost(&e))?;

    let mut reply = [0u8; 4];
    read_socks(&mut tcp, &mut reply).await?;
    if reply[0] != 5 {
        return Err(not_socks5());
    }
    if reply[1] != 0 {
        return Err(ProxyError::SocksReply(reply[1]));
    }
    // The address the proxy bound, which the client has no use for.
    let bound_len = match reply[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut len = [0u8; 1];
            read_socks(&mut tcp, &mut len).await?;
            usize::from(len[0])
        }
        _ => return Err(not_socks5()),
    };
    let mut bound = vec![0u8; bound_len + 2];
    read_socks(&mut tcp, &mut bound).await?;
    Ok(tcp)
}

async fn read_socks(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyError> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        // A proxy that wants credentials often just hangs up on a client without them.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProxyError::Protocol(
                "the SOCKS5 proxy closed the connection (if it needs credentials, give them in \
                 the proxy URL)"
                    .into(),
            ))
        }
        Err(error) => Err(lost(&error)),
    }
}

fn not_socks5() -> ProxyError {
    ProxyError::Protocol("the proxy does not speak SOCKS5".into())
}

fn lost(error: &std::io::Error) -> ProxyError {
    ProxyError::Protocol(format!("the connection to the proxy failed: {error}"))
}
