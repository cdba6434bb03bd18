//! Proxies: which one a connection goes through ([`Proxy`], from the options or the
//! environment) and the tunnel through it (an HTTP `CONNECT` or a SOCKS5 `CONNECT`), made by
//! minch's connector over the TCP connection to the proxy, before TLS with the origin.

mod environment;
mod tunnel;

use std::fmt;

pub(crate) use tunnel::{open_tunnel, ProxyTls};

use crate::{options::redact_url, Error};

/// How connections reach the server: directly, or through an HTTP or SOCKS5 proxy.
///
/// The default, [`Proxy::FromEnvironment`], follows the variables curl, Python `websockets`
/// and most HTTP clients read: `wss://` URLs use `https_proxy`, `ws://` URLs use `http_proxy`
/// (`HTTPS_PROXY` and `HTTP_PROXY` too, lowercase first; the uppercase `HTTP_PROXY` is ignored
/// when `REQUEST_METHOD` is set, as in a CGI script, where a request header could set it),
/// and both fall back to `all_proxy`/`ALL_PROXY`. `no_proxy`/`NO_PROXY` lists the hosts reached
/// directly, separated by commas: `*` for all, a domain (`example.com` or `.example.com`, which
/// also cover every subdomain), an IP address or network (`10.0.0.0/8`, `::1`), each optionally
/// with a port (`example.com:8443`, `[::1]:9000`). Variables are read on every connection
/// attempt, so a reconnecting client follows a changed environment.
///
/// A proxy URL is `http://`, `socks5://` (the client resolves the server's name) or `socks5h://`
/// (the proxy does), with optional credentials: `http://user:password@proxy:3128` sends them as
/// `Proxy-Authorization: Basic`, SOCKS5 uses username/password authentication (RFC 1929).
/// Percent-encode `@`, `:` and `/` in them. An `https://` proxy is spoken to over TLS, verified
/// with the same [`TlsOptions`](crate::TlsOptions) as the server (so a proxy with a private CA
/// needs that CA added); a `wss://` connection through it is TLS inside TLS. Without a port,
/// HTTP proxies are on 80, HTTPS proxies on 443 and SOCKS5 proxies on 1080; a value without a
/// scheme (`proxy:3128`, common in the environment) is an HTTP proxy.
///
/// With `wss://`, TLS runs end to end through the tunnel: the certificate is checked against the
/// server's name, and the proxy sees only encrypted bytes. Reaching the proxy and opening the
/// tunnel share [`connect_timeout`](crate::ConnectOptions::connect_timeout). Credentials never
/// appear in logs, `Debug` output or errors.
///
/// ```
/// use minch::{ConnectOptions, Proxy};
///
/// let through_squid = ConnectOptions::default().proxy(Proxy::url("http://proxy.internal:3128"));
/// let through_ssh = ConnectOptions::default().proxy(Proxy::url("socks5h://127.0.0.1:1080"));
/// let direct = ConnectOptions::default().proxy(Proxy::None);
/// # let _ = (through_squid, through_ssh, direct);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proxy {
    /// The proxy the environment names for the URL, if any (see above). The default.
    #[default]
    FromEnvironment,
    /// Connect directly, whatever the environment says.
    None,
    /// Through the proxy at this URL, whatever the environment says. Checked when connecting:
    /// a URL that cannot be used is [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    Url(String),
}

impl Proxy {
    /// Through the proxy at `url`: `http://[user:password@]host[:port]`, `https://…`,
    /// `socks5://…` or `socks5h://…`.
    pub fn url(url: impl Into<String>) -> Self {
        Proxy::Url(url.into())
    }

    /// The proxy to use for a connection to `host:port`, `None` for a direct connection.
    pub(crate) fn endpoint_for(
        &self,
        secure: bool,
        host: &str,
        port: u16,
    ) -> Result<Option<ProxyEndpoint>, Error> {
        let endpoint = match self {
            Proxy::None => return Ok(None),
            Proxy::Url(url) => ProxyEndpoint::parse(url)
                .map(Some)
                .map_err(|reason| invalid(&format!("proxy {}", redact_url(url)), &reason))?,
            Proxy::FromEnvironment => {
                environment::proxy_for(secure, host, port, |name| std::env::var(name).ok())?
            }
        };
        if let Some(ProxyKind::Socks5 { remote_dns: true }) = endpoint.as_ref().map(|e| e.kind) {
            if host.is_empty() || host.len() > 255 {
                return Err(Error::InvalidOptions(format!(
                    "a socks5h:// proxy is given host names of 1 to 255 bytes, and this URL's \
                     host has {}; use socks5:// to resolve it on this machine",
                    host.len()
                )));
            }
        }
        Ok(endpoint)
    }
}

/// Credentials and query values are left out.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::FromEnvironment => f.write_str("FromEnvironment"),
            Proxy::None => f.write_str("None"),
            Proxy::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
        }
    }
}

fn invalid(what: &str, reason: &str) -> Error {
    Error::InvalidOptions(format!(
        "{what} cannot be used: {reason}; expected http://[user:password@]host[:port], \
         https://…, socks5://… or socks5h://…"
    ))
}

/// The protocol spoken to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// An HTTP proxy: `CONNECT host:port`.
    Http,
    /// An HTTP proxy spoken to over TLS (`https://`): `CONNECT` inside TLS with the proxy.
    Https,
    /// A SOCKS5 proxy; with `remote_dns` (`socks5h://`) the proxy resolves the server's name.
    Socks5 { remote_dns: bool },
}

/// A proxy to connect through, as parsed from its URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProxyEndpoint {
    pub(crate) kind: ProxyKind,
    /// The host, without brackets around an IPv6 address.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<Credentials>,
}

/// A user name and password, percent-decoded. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(REDACTED)")
    }
}

impl ProxyEndpoint {
    /// Parses a proxy URL; the error says what is wrong without repeating the URL.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_owned(), url),
        };
        let (kind, default_port) = match scheme.as_str() {
            "http" => (ProxyKind::Http, 80),
            "socks5" => (ProxyKind::Socks5 { remote_dns: false }, 1080),
            "socks5h" => (ProxyKind::Socks5 { remote_dns: true }, 1080),
            "https" if cfg!(feature = "tls") => (ProxyKind::Https, 443),
            "https" => return Err("https:// proxies need minch's tls feature".into()),
            "socks4" | "socks4a" => return Err("SOCKS4 is not supported, only SOCKS5".into()),
            _ => return Err("the scheme is not http, socks5 or socks5h".into()),
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(end) if rest[end..] != *"/" => {
                return Err("a proxy URL has no path, query or fragment".into())
            }
            Some(end) => &rest[..end],
            None => rest,
        };
        let (credentials, host_port) = match authority.rsplit_once('@') {
            // `http://@proxy` or `http://:@proxy` (a template with both parts unset): none.
            Some(("" | ":", host_port)) => (None, host_port),
            Some((userinfo, host_port)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let credentials = Credentials {
                    user: percent_decode(user)
                        .ok_or("the user name is not valid percent-encoded UTF-8")?,
                    password: percent_decode(password)
                        .ok_or("the password is not valid percent-encoded UTF-8")?,
                };
                (Some(credentials), host_port)
            }
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port)?;
        let port = match port {
            Some(port) => port,
            None => default_port,
        };
        if let (ProxyKind::Socks5 { .. }, Some(credentials)) = (kind, &credentials) {
            // RFC 1929: each is sent with a one-byte length.
            if credentials.user.is_empty() || credentials.user.len() > 255 {
                return Err("a SOCKS5 user name is 1 to 255 bytes".into());
            }
            if credentials.password.is_empty() || credentials.password.len() > 255 {
                return Err("a SOCKS5 password is 1 to 255 bytes".into());
            }
        }
        Ok(ProxyEndpoint {
            kind,
            host,
            port,
            credentials,
        })
    }

    /// `scheme://host:port`, for messages and logs: no credentials.
    pub(crate) fn shown(&self) -> String {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Https => "https",
            ProxyKind::Socks5 { remote_dns: false } => "socks5",
            ProxyKind::Socks5 { remote_dns: true } => "socks5h",
        };
        format!("{scheme}://{}", authority(&self.host, self.port))
    }
}

/// Where the TCP connection goes, and the name TLS checks with an `https://` proxy.
impl actix_tls::connect::Host for ProxyEndpoint {
    fn hostname(&self) -> &str {
        &self.host
    }

    fn port(&self) -> Option<u16> {
        Some(self.port)
    }
}

impl fmt::Debug for ProxyEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyEndpoint")
            .field("proxy", &self.shown())
            .field("credentials", &self.credentials.is_some())
            .finish()
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address has no closing bracket")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the address in brackets is not an IPv6 address".into());
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected :port after the bracket")?,
                ),
            ),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-._~:%".contains(c);
    if !host.chars().all(valid_char) {
        return Err("the host has characters a host name cannot have".into());
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err("the port is not a number from 1 to 65535".into()),
            Ok(port) => Some(port),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is (as curl and
/// most clients read `user:50%off@proxy`). `None` if the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], escaped) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> ProxyEndpoint {
        ProxyEndpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn schemes_ports_and_credentials() {
        let http = parse("http://proxy.example:3128");
        assert_eq!(http.kind, ProxyKind::Http);
        assert_eq!((http.host.as_str(), http.port), ("proxy.example", 3128));
        assert!(http.credentials.is_none());

        assert_eq!(parse("http://p").port, 80);
        assert_eq!(parse("p:8080").kind, ProxyKind::Http);
        assert_eq!(parse("p:8080/").port, 8080);
        assert_eq!(parse("socks5://p").port, 1080);
        #[cfg(feature = "tls")]
        {
            assert_eq!(parse("https://p").kind, ProxyKind::Https);
            assert_eq!(parse("https://p").port, 443);
            assert_eq!(parse("HTTPS://u:pw@p:8443").shown(), "https://p:8443");
        }
        #[cfg(not(feature = "tls"))]
        assert!(ProxyEndpoint::parse("https://p")
            .unwrap_err()
            .contains("tls feature"));
        assert_eq!(
            parse("SOCKS5H://p:1").kind,
            ProxyKind::Socks5 { remote_dns: true }
        );
        assert_eq!(parse("http://[::1]:3128").host, "::1");
        assert_eq!(parse("http://[::1]").port, 80);
        assert_eq!(parse("http://p:65535").port, 65535);

        let with = parse("socks5://us%40er:p%3Ass@p:1080");
        let credentials = with.credentials.clone().unwrap();
        assert_eq!(credentials.user, "us@er");
        assert_eq!(credentials.password, "p:ss");
        assert_eq!(with.shown(), "socks5://p:1080");
        assert!(!format!("{with:?}").contains("p:ss"));
        // The last @ ends the user info: an unescaped @ in a password still parses.
        assert_eq!(
            parse("http://u:p@ss@p").credentials.unwrap().password,
            "p@ss"
        );
        assert_eq!(parse("http://u@p").credentials.unwrap().password, "");
        assert_eq!(
            parse("http://u:50%off@p").credentials.unwrap().password,
            "50%off"
        );
        assert_eq!(parse("http://u:%4@p").credentials.unwrap().password, "%4");
        assert_eq!(parse("http://u:%41%@p").credentials.unwrap().password, "A%");
        assert!(parse("http://@p").credentials.is_none());
        assert!(parse("http://:@p").credentials.is_none());
        assert!(parse("socks5://:@p").credentials.is_none());
    }

    #[test]
    fn unusable_urls_say_why() {
        for (url, why) in [
            ("socks4://p", "SOCKS4"),
            ("ftp://p", "scheme"),
            ("http://p/path", "no path"),
            ("http://p?x=1", "no path"),
            ("http://", "no host"),
            ("http://:3128", "no host"),
            ("http://p:0", "port"),
            ("http://p:65536", "port"),
            ("http://p:x", "port"),
            ("http://[::1", "bracket"),
            ("http://[nothost]:1", "IPv6"),
            ("http://pro xy:1", "characters"),
            ("http://u:%ff@p", "password"),
            ("socks5://:pw@p", "user name"),
            ("socks5://u@p", "password"),
        ] {
            let error = ProxyEndpoint::parse(url).expect_err(url);
            assert!(error.contains(why), "{url}: {error}");
        }
        let long = "x".repeat(256);
        assert!(ProxyEndpoint::parse(&format!("socks5://{long}:pw@p")).is_err());
        assert!(ProxyEndpoint::parse(&format!("socks5://u:{long}@p")).is_err());
        let longest = "x".repeat(255);
        assert!(ProxyEndpoint::parse(&format!("socks5://{longest}:{longest}@p")).is_ok());
    }

    #[test]
    fn an_invalid_proxy_option_is_a_config_error_without_the_password() {
        let error = Proxy::url("http://user:s3cret@p:99999")
            .endpoint_for(false, "h", 80)
            .unwrap_err();
        assert!(error.is_config());
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("port"), "{shown}");
        assert!(!format!("{:?}", Proxy::url("http://u:s3cret@p")).contains("s3cret"));
    }
}
