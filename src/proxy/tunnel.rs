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
    // An address is sent as one even with socks5h://: there is no name for the proxy to
    // resolve, and strict proxies refuse an address sent as a name.
    let target = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        SocksTarget::Address((ip, port).into())
    } else if remote_dns {
        SocksTarget::Name(host)
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
    socks5_handshake(&mut tcp, endpoint.credentials.as_ref(), &target, port).await?;
    Ok(tcp)
}

/// The SOCKS5 exchange over `stream`, up to an open tunnel to `target` (on `port`).
async fn socks5_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    credentials: Option<&super::Credentials>,
    target: &SocksTarget<'_>,
    port: u16,
) -> Result<(), ProxyError> {
    // Offer no authentication, and username/password when there are credentials.
    let greeting: &[u8] = match credentials {
        Some(_) => &[5, 2, 0, 2],
        None => &[5, 1, 0],
    };
    tcp.write_all(greeting).await.map_err(|e| lost(&e))?;
    let mut choice = [0u8; 2];
    read_socks(tcp, &mut choice).await?;
    if choice[0] != 5 {
        return Err(not_socks5());
    }
    match (choice[1], credentials) {
        (0, _) => {}
        (2, Some(credentials)) => {
            let mut request = vec![1, credentials.user.len() as u8];
            request.extend_from_slice(credentials.user.as_bytes());
            request.push(credentials.password.len() as u8);
            request.extend_from_slice(credentials.password.as_bytes());
            tcp.write_all(&request).await.map_err(|e| lost(&e))?;
            let mut status = [0u8; 2];
            read_socks(tcp, &mut status).await?;
            if status[1] != 0 {
                return Err(ProxyError::SocksAuthentication);
            }
        }
        // 0xFF: none of the methods offered; or a method that was not offered.
        _ => return Err(ProxyError::SocksAuthentication),
    }

    let mut request = vec![5, 1, 0];
    match *target {
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
    read_socks(tcp, &mut reply).await?;
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
            read_socks(tcp, &mut len).await?;
            usize::from(len[0])
        }
        _ => return Err(not_socks5()),
    };
    let mut bound = vec![0u8; bound_len + 2];
    read_socks(tcp, &mut bound).await?;
    Ok(())
}

async fn read_socks<S: AsyncRead + Unpin>(tcp: &mut S, buf: &mut [u8]) -> Result<(), ProxyError> {
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

/// The tunnel exchanges driven directly, over an in-memory pipe, against every kind of answer
/// a proxy can give, delivered in any pieces. Invariants:
/// 1. The outcome is the model's: tunnel open, or the one typed error the answer calls for.
/// 2. What the client wrote is exactly the protocol's messages up to where the answer stopped
///    it: CONNECT with `Proxy-Authorization` only when there are credentials; the SOCKS5
///    greeting, credentials only when the proxy chose username/password, the request only after
///    a successful method or authentication.
/// 3. The client never reads past the answer (bytes after it make the HTTP tunnel fail rather
///    than be lost), and never hangs on a complete answer.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::Credentials;

    /// Runs `client` against a peer that sends `script` in pieces of `sizes` (cycled), then
    /// ends its side, and returns the client's result and everything the client wrote.
    fn exchange<T>(
        script: Vec<u8>,
        sizes: Vec<usize>,
        client: impl AsyncFnOnce(&mut tokio::io::DuplexStream) -> T,
    ) -> (T, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (mut near, mut far) = duplex(1 << 16);
            let peer = async move {
                let mut rest = &script[..];
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let size = (*size).clamp(1, rest.len());
                    // The client may have finished (and hung up) before the script did.
                    if far.write_all(&rest[..size]).await.is_err() {
                        break;
                    }
                    rest = &rest[size..];
                    tokio::task::yield_now().await;
                }
                let _ = far.shutdown().await;
                let mut written = Vec::new();
                far.read_to_end(&mut written).await.unwrap();
                written
            };
            let client = async move {
                let result = client(&mut near).await;
                drop(near);
                result
            };
            tokio::join!(client, peer)
        })
    }

    fn endpoint(credentials: Option<(&str, &str)>) -> ProxyEndpoint {
        ProxyEndpoint {
            kind: ProxyKind::Http,
            host: "proxy".into(),
            port: 3128,
            credentials: credentials.map(|(user, password)| Credentials {
                user: user.into(),
                password: password.into(),
            }),
        }
    }

    fn status_line(code: u16) -> String {
        format!("HTTP/1.1 {code} Whatever\r\nX-Proxy: p\r\n\r\n")
    }

    proptest! {
        #[test]
        fn http_connect_follows_the_model(
            interim in proptest::collection::vec(prop_oneof![Just(100u16), Just(102), 103..200u16], 0..3),
            final_status in prop_oneof![Just(200u16), Just(204), Just(101), Just(302), Just(403), Just(407), Just(502), 100..600u16],
            extra in proptest::collection::vec(any::<u8>(), 0..3),
            truncate in proptest::option::weighted(0.2, 0usize..200),
            with_credentials in any::<bool>(),
            sizes in proptest::collection::vec(1usize..40, 1..5),
        ) {
            let mut script = String::new();
            for code in &interim {
                script.push_str(&status_line(*code));
            }
            script.push_str(&status_line(final_status));
            let mut script = script.into_bytes();
            script.extend_from_slice(&extra);
            let full_len = script.len();
            if let Some(at) = truncate {
                script.truncate(at.min(full_len));
            }
            let truncated = script.len() < full_len - extra.len();
            // The part of the extra bytes that was sent at all.
            let extra = extra[..script.len().saturating_sub(full_len - extra.len())].to_vec();
            let credentials = with_credentials.then_some(("u", "p:w"));
            let (result, written) = exchange(script, sizes, async |stream| {
                let opened = http_connect(&endpoint(credentials), &mut *stream, "::1", 443).await;
                // What the tunnel then reads: nothing of the answer may have been swallowed.
                let mut left = Vec::new();
                match opened {
                    Ok(_) => stream.read_to_end(&mut left).await.map(|_| left).map_err(|e| lost(&e)),
                    Err(error) => Err(error),
                }
            });

            // An interim answer is skipped only if it is not the last one that arrived whole.
            let is_final_interim =
                (100..200).contains(&final_status) && final_status != 101;
            let expected = if is_final_interim && !extra.is_empty() && !truncated {
                // What follows the interim answer is not a whole answer: cut short, or not HTTP.
                Err("broken")
            } else if truncated || is_final_interim {
                Err("closed")
            } else if final_status == 407 {
                Err("407")
            } else if !(200..300).contains(&final_status) {
                Err("refused")
            } else if !extra.is_empty() {
                Err("extra")
            } else {
                Ok(())
            };
            match (&expected, &result) {
                (Ok(()), Ok(left)) => prop_assert!(left.is_empty()),
                (Err("closed"), Err(ProxyError::Protocol(m))) => prop_assert!(m.contains("closed"), "{}", m),
                (Err("broken"), Err(ProxyError::Protocol(_))) => {}
                (Err("407"), Err(ProxyError::AuthenticationRequired)) => {}
                (Err("refused"), Err(ProxyError::Refused(status))) => prop_assert_eq!(status.as_u16(), final_status),
                (Err("extra"), Err(ProxyError::Protocol(m))) => prop_assert!(m.contains("after"), "{}", m),
                // Bytes that came after the answer in a later read are the tunnel's to read.
                (Err("extra"), Ok(left)) => prop_assert_eq!(left, &extra),
                _ => prop_assert!(false, "expected {:?}, got {:?}", expected, result),
            }
            let request = String::from_utf8(written).unwrap();
            prop_assert!(request.starts_with("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"), "{}", request);
            prop_assert_eq!(request.contains("Proxy-Authorization: Basic dTpwOnc=\r\n"), with_credentials);
            prop_assert!(request.ends_with("\r\n\r\n"));
            prop_assert_eq!(request.matches("\r\n\r\n").count(), 1);
        }

        #[test]
        fn socks5_follows_the_model(
            version in prop_oneof![9 => Just(5u8), 1 => Just(4u8)],
            method in prop_oneof![Just(0u8), Just(2), Just(0xFF), Just(1)],
            auth_status in prop_oneof![Just(0u8), Just(1), Just(0xFF)],
            reply_version in prop_oneof![9 => Just(5u8), 1 => Just(0u8)],
            reply in prop_oneof![3 => Just(0u8), 1 => 1u8..=8, 1 => any::<u8>()],
            bound_type in prop_oneof![Just(1u8), Just(3), Just(4), Just(7)],
            truncate in proptest::option::weighted(0.2, 0usize..30),
            with_credentials in any::<bool>(),
            name_target in any::<bool>(),
            sizes in proptest::collection::vec(1usize..8, 1..5),
        ) {
            let mut script = vec![version, method];
            let authenticates = version == 5 && method == 2 && with_credentials;
            if authenticates {
                script.extend_from_slice(&[1, auth_status]);
            }
            script.extend_from_slice(&[reply_version, reply, 0, bound_type]);
            match bound_type {
                1 => script.extend_from_slice(&[10, 0, 0, 1]),
                4 => script.extend_from_slice(&[0; 16]),
                3 => script.extend_from_slice(&[3, b'a', b'b', b'c']),
                _ => {}
            }
            script.extend_from_slice(&[0x1F, 0x90]);
            let full_len = script.len();
            if let Some(at) = truncate {
                script.truncate(at.min(full_len));
            }
            let credentials = with_credentials.then(|| Credentials { user: "user".into(), password: "pw".into() });
            let target = if name_target {
                SocksTarget::Name("example.com")
            } else {
                SocksTarget::Address("192.0.2.7:9".parse().unwrap())
            };
            let cut = script.len();
            let (result, written) = exchange(script, sizes, async |stream| {
                socks5_handshake(stream, credentials.as_ref(), &target, 9).await
            });

            // The model: where the exchange stops, and with what.
            let needed_for = |upto: usize| cut < upto;
            let choice_end = 2;
            let auth_end = if authenticates { 4 } else { choice_end };
            let reply_head_end = auth_end + 4;
            let expected: Result<(), &str> = if needed_for(choice_end) {
                Err("closed")
            } else if version != 5 {
                Err("not socks")
            } else if !(method == 0 || authenticates) {
                Err("auth")
            } else if authenticates && needed_for(auth_end) {
                Err("closed")
            } else if authenticates && auth_status != 0 {
                Err("auth")
            } else if needed_for(reply_head_end) {
                Err("closed")
            } else if reply_version != 5 {
                Err("not socks")
            } else if reply != 0 {
                Err("reply")
            } else if ![1, 3, 4].contains(&bound_type) {
                Err("not socks")
            } else if cut < full_len {
                Err("closed")
            } else {
                Ok(())
            };
            match (&expected, &result) {
                (Ok(()), Ok(())) => {}
                (Err("closed"), Err(ProxyError::Protocol(m))) => prop_assert!(m.contains("closed"), "{}", m),
                (Err("not socks"), Err(ProxyError::Protocol(m))) => prop_assert!(m.contains("SOCKS5"), "{}", m),
                (Err("auth"), Err(ProxyError::SocksAuthentication)) => {}
                (Err("reply"), Err(ProxyError::SocksReply(code))) => prop_assert_eq!(*code, reply),
                _ => prop_assert!(false, "expected {:?}, got {:?}", expected, result),
            }

            // What the client wrote, message by message.
            let greeting: &[u8] = if with_credentials { &[5, 2, 0, 2] } else { &[5, 1, 0] };
            prop_assert_eq!(&written[..greeting.len().min(written.len())], greeting);
            let mut rest = &written[greeting.len()..];
            if authenticates && cut >= 2 {
                let login = [&[1u8, 4][..], b"user", &[2], b"pw"].concat();
                prop_assert_eq!(&rest[..login.len()], &login[..]);
                rest = &rest[login.len()..];
            }
            let requested = !cut_before_request(version, method, authenticates, auth_status, cut, auth_end);
            if requested {
                let mut request = vec![5, 1, 0];
                if name_target {
                    request.extend_from_slice(&[3, 11]);
                    request.extend_from_slice(b"example.com");
                } else {
                    request.extend_from_slice(&[1, 192, 0, 2, 7]);
                }
                request.extend_from_slice(&[0, 9]);
                prop_assert_eq!(rest, &request[..]);
            } else {
                prop_assert!(rest.is_empty(), "wrote {:?} after the greeting", rest);
            }
        }
    }

    /// Whether the exchange ended before the client sent its CONNECT request.
    fn cut_before_request(
        version: u8,
        method: u8,
        authenticates: bool,
        auth_status: u8,
        cut: usize,
        auth_end: usize,
    ) -> bool {
        cut < 2
            || version != 5
            || !(method == 0 || authenticates)
            || (authenticates && (cut < auth_end || auth_status != 0))
    }
}
