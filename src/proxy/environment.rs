//! The proxy environment variables, read as curl reads them (see [`Proxy`](super::Proxy)).
//!
//! The one maintained crate for these rules (hyper-util's proxy matcher, which reqwest uses)
//! would bring hyper into the build and has no ports in `NO_PROXY`; they fit in this file.

use std::net::IpAddr;

use super::{invalid, ProxyEndpoint};
use crate::{options::redact_url, Error};

/// The proxy the environment names for a connection to `host:port` (`secure`: `wss://`),
/// reading variables through `var`.
pub(super) fn proxy_for(
    secure: bool,
    host: &str,
    port: u16,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyEndpoint>, Error> {
    let set = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    let names: &[&str] = if secure {
        &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else if set("REQUEST_METHOD").is_some() {
        // In a CGI script a request's `Proxy:` header arrives as HTTP_PROXY ("httpoxy").
        &["http_proxy", "all_proxy", "ALL_PROXY"]
    } else {
        &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
    };
    let Some((name, url)) = names
        .iter()
        .find_map(|name| set(name).map(|value| (*name, value)))
    else {
        return Ok(None);
    };
    let no_proxy = set("no_proxy")
        .or_else(|| set("NO_PROXY"))
        .unwrap_or_default();
    if bypasses(&no_proxy, host, port) {
        return Ok(None);
    }
    ProxyEndpoint::parse(&url).map(Some).map_err(|reason| {
        invalid(
            &format!("the proxy in {name} ({})", redact_url(&url)),
            &reason,
        )
    })
}

/// Whether `no_proxy` lists `host:port`: `*`; a domain, matching itself and its subdomains
/// (`example.com`, `.example.com` and `*.example.com` alike); an IP address or network
/// (`10.0.0.0/8`); each optionally with `:port`. Case does not matter, nor a trailing dot.
pub(crate) fn bypasses(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = normalise(host.trim_start_matches('[').trim_end_matches(']'));
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (pattern, entry_port) = split_port(entry);
            if entry_port.is_some_and(|entry_port| entry_port != port) {
                return false;
            }
            if let Some((network, prefix)) = pattern.split_once('/') {
                return match (host_ip, network.parse::<IpAddr>(), prefix.parse::<u8>()) {
                    (Some(ip), Ok(network), Ok(prefix)) => in_network(ip, network, prefix),
                    _ => false,
                };
            }
            if let Ok(ip) = pattern.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let domain = normalise(pattern.trim_start_matches('*').trim_start_matches('.'));
            // An address matches addresses and networks only, not a name's suffix.
            host_ip.is_none()
                && !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(&domain)
                        .is_some_and(|rest| rest.ends_with('.')))
        })
}

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `host:port`, `[v6]:port` or `[v6]` → the pattern and its port; a bare IPv6 address (more than
/// one colon) has none.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(bracketed) = entry.strip_prefix('[') {
        if let Some((address, after)) = bracketed.split_once(']') {
            let port = after.strip_prefix(':').and_then(|port| port.parse().ok());
            return (address, port);
        }
    }
    match entry.split_once(':') {
        Some((pattern, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (pattern, Some(port)),
            // Not a port: an entry that matches nothing rather than everything on the host.
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::proxy::ProxyKind;

    fn proxy(vars: &[(&str, &str)], secure: bool, host: &str, port: u16) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        proxy_for(secure, host, port, |name| vars.get(name).cloned())
            .unwrap()
            .map(|endpoint| endpoint.shown())
    }

    #[test]
    fn the_variable_follows_the_scheme_lowercase_first() {
        let vars = [
            ("http_proxy", "http://plain:1"),
            ("HTTPS_PROXY", "http://secure:2"),
            ("ALL_PROXY", "socks5h://all:3"),
        ];
        assert_eq!(proxy(&vars, false, "h", 80).unwrap(), "http://plain:1");
        assert_eq!(proxy(&vars, true, "h", 443).unwrap(), "http://secure:2");
        assert_eq!(
            proxy(&vars[2..], false, "h", 80).unwrap(),
            "socks5h://all:3"
        );
        assert_eq!(proxy(&vars[2..], true, "h", 80).unwrap(), "socks5h://all:3");
        let both = [("https_proxy", "lower:1"), ("HTTPS_PROXY", "upper:2")];
        assert_eq!(proxy(&both, true, "h", 443).unwrap(), "http://lower:1");
        // Empty is unset.
        let empty = [("https_proxy", " "), ("HTTPS_PROXY", "upper:2")];
        assert_eq!(proxy(&empty, true, "h", 443).unwrap(), "http://upper:2");
        assert_eq!(proxy(&[], true, "h", 443), None);
        assert_eq!(proxy(&[("http_proxy", "p:1")], true, "h", 443), None);
    }

    #[test]
    fn uppercase_http_proxy_is_ignored_in_cgi() {
        let vars = [("HTTP_PROXY", "evil:1"), ("REQUEST_METHOD", "GET")];
        assert_eq!(proxy(&vars, false, "h", 80), None);
        let vars = [("http_proxy", "ok:1"), ("REQUEST_METHOD", "GET")];
        assert_eq!(proxy(&vars, false, "h", 80).unwrap(), "http://ok:1");
    }

    #[test]
    fn no_proxy_bypasses() {
        let vars = |no: &str| [("all_proxy", "p:1".to_owned()), ("NO_PROXY", no.to_owned())];
        let check = |no: &str, host: &str, port: u16| {
            let vars = vars(no);
            let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
            proxy(&vars, false, host, port).is_none()
        };
        assert!(check("*", "anything", 80));
        assert!(check("example.com", "example.com", 80));
        assert!(check("example.com", "API.Example.com", 80));
        assert!(check(".example.com", "example.com", 80));
        assert!(check("*.example.com", "a.b.example.com", 80));
        assert!(check("example.com.", "example.com", 80));
        assert!(!check("example.com", "notexample.com", 80));
        assert!(!check("example.com", "example.com.evil", 80));
        assert!(check("a, b ,example.com", "example.com", 80));
        assert!(check("a example.com", "example.com", 80));
        assert!(check("example.com:8443", "example.com", 8443));
        assert!(!check("example.com:8443", "example.com", 443));
        assert!(check("127.0.0.1", "127.0.0.1", 80));
        assert!(!check("127.0.0.1", "127.0.0.2", 80));
        assert!(check("127.0.0.1:9", "127.0.0.1", 9));
        assert!(!check("127.0.0.1:9", "127.0.0.1", 10));
        assert!(check("10.0.0.0/8", "10.200.3.4", 80));
        assert!(!check("10.0.0.0/8", "11.0.0.1", 80));
        assert!(check("0.0.0.0/0", "8.8.8.8", 80));
        assert!(check("192.168.1.7/32", "192.168.1.7", 80));
        assert!(!check("192.168.1.7/32", "192.168.1.8", 80));
        assert!(!check("10.0.0.0/33", "10.0.0.1", 80));
        assert!(check("::1", "[::1]", 80));
        assert!(check("[::1]:9000", "[::1]", 9000));
        assert!(!check("[::1]:9000", "[::1]", 9001));
        assert!(check("fd00::/8", "[fd12::1]", 80));
        assert!(!check("fd00::/8", "[fe80::1]", 80));
        assert!(!check("10.0.0.0/8", "ten.example", 80));
        assert!(!check("", "h", 80));
        assert!(!check(",,", "h", 80));
        assert!(!check("h:notaport", "h", 80));
        assert!(!check(".", "h", 80));
        assert!(!check("0.0.1", "127.0.0.1", 80));
        assert!(!check("1", "127.0.0.1", 80));
        // lowercase first, like the proxy variables
        let vars = [("all_proxy", "p:1"), ("no_proxy", "a"), ("NO_PROXY", "b")];
        assert!(proxy(&vars, false, "a", 80).is_none());
        assert!(proxy(&vars, false, "b", 80).is_some());
    }

    #[test]
    fn a_bad_variable_is_a_config_error_naming_it_without_secrets() {
        let error = proxy_for(true, "h", 443, |name| {
            (name == "HTTPS_PROXY").then(|| "ftp://user:s3cret@p:1".to_owned())
        })
        .unwrap_err();
        assert!(error.is_config());
        let shown = error.to_string();
        assert!(shown.contains("HTTPS_PROXY"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn socks_from_the_environment() {
        let endpoint = proxy_for(false, "h", 80, |name| {
            (name == "ALL_PROXY").then(|| "socks5://u:pw@127.0.0.1:1080".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(endpoint.kind, ProxyKind::Socks5 { remote_dns: false });
        assert!(endpoint.credentials.is_some());
    }
}
