//! What minch checks before any I/O: the URL, the request headers and the options, and
//! `redact_url`. Never a panic; validation agrees with a model of the documented ranges; no
//! secret (password, query value, fragment, header value, subprotocol) shows in
//! `redact_url`'s output, in `ConnectRequest`'s `Debug`, or in an error's `Display`/`Debug`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use minch::{fuzz_api::validate_request, redact_url, ConnectOptions, ConnectRequest, Error};

/// Markers planted in the secret parts; the checks look for them.
const PASSWORD: &str = "PASSW0RDX";
const QUERY: &str = "QU3RYX";
const FRAGMENT: &str = "FRAGM3NTX";
const HEADER: &str = "H3ADERX";
const SUBPROTOCOL: &str = "SUBPR0T0X";

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});

fn run(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<()> {
    // Any string at all: no panic.
    let raw: String = u.arbitrary()?;
    let shown = redact_url(&raw);
    check_uri_secrets(&raw, &shown);

    // A URL with a secret in each place that may carry one.
    let url = secret_url(u)?;
    let shown = redact_url(&url);
    for secret in [PASSWORD, QUERY, FRAGMENT] {
        assert!(!shown.contains(secret), "{url:?} shown as {shown:?}");
    }

    let mut headers = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let name: String = u.arbitrary()?;
        let value: String = u.arbitrary()?;
        let at = u.int_in_range(0..=value.len())?;
        let at = (0..=at)
            .rev()
            .find(|i| value.is_char_boundary(*i))
            .unwrap_or(0);
        headers.push((name, format!("{}{HEADER}{}", &value[..at], &value[at..])));
    }
    let (options, valid_model, origin) = options(u)?;
    let url = if u.arbitrary()? { url } else { raw };
    let request = ConnectRequest::new(url.clone()).options(options);
    let request = headers.iter().fold(request, |request, (name, value)| {
        request.header(name, value)
    });

    let debug = format!("{request:?}");
    // Shown on purpose: the header names and the origin.
    let mut names: String = headers.iter().map(|(name, _)| name.as_str()).collect();
    names.push_str(&origin);
    check_hidden("ConnectRequest's Debug", &debug, &url, &names);

    match validate_request(&request) {
        Ok(()) => {
            assert!(
                valid_model,
                "options outside their ranges were accepted: {request:?}"
            );
        }
        Err(error) => {
            if let Error::InvalidOptions(_) = error {
                assert!(!valid_model, "valid options were refused: {error}");
            }
            check_hidden("an error", &error.to_string(), &url, &names);
            check_hidden("an error's Debug", &format!("{error:?}"), &url, &names);
            assert!(error.is_config(), "{error:?} is not a configuration error");
        }
    }
    Ok(())
}

/// Panics if `shown` holds a planted secret that the public parts (`url`'s text outside its
/// secret places, the header names) do not explain.
fn check_hidden(what: &str, shown: &str, url: &str, names: &str) {
    for secret in [HEADER, SUBPROTOCOL] {
        if !names.contains(secret) && !url.contains(secret) {
            assert!(!shown.contains(secret), "{what} shows {secret}: {shown}");
        }
    }
    let redacted = redact_url(url);
    for secret in [PASSWORD, QUERY, FRAGMENT] {
        if !redacted.contains(secret) && !names.contains(secret) {
            assert!(!shown.contains(secret), "{what} shows {secret}: {shown}");
        }
    }
}

/// If `raw` parses as an absolute URI (as the connection would read it), `redact_url` shows
/// exactly its scheme, host, port and path, each query parameter's name (or `REDACTED`) with
/// its value replaced by `REDACTED` (an empty one stays empty), and nothing of the userinfo.
fn check_uri_secrets(raw: &str, shown: &str) {
    let Ok(uri) = raw.parse::<actix_http::Uri>() else {
        return;
    };
    let Some(authority) = uri.authority() else {
        return;
    };
    // A fragment is not part of an http URI; a port that is not a number makes redact_url hide
    // more than the userinfo (on purpose: the `:` may start a password with an unescaped `/`).
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let after_host = match host_and_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, rest))
                if address
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.%".contains(&b)) =>
            {
                rest
            }
            _ => "x",
        },
        None => host_and_port
            .find(':')
            .map_or("", |at| &host_and_port[at..]),
    };
    let numeric_port = after_host.is_empty()
        || after_host
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()));
    if raw.contains('#') || !numeric_port {
        return;
    }
    let without_userinfo = raw.replacen(authority.as_str(), host_and_port, 1);
    let (expected_prefix, _) = without_userinfo
        .split_once('?')
        .unwrap_or((&without_userinfo, ""));
    let (shown_prefix, shown_query) = shown.split_once('?').unwrap_or((shown, ""));
    assert_eq!(shown_prefix, expected_prefix, "{raw:?} shown as {shown:?}");
    let Some(query) = uri.query() else {
        assert!(!shown.contains('?'), "{raw:?} shown as {shown:?}");
        return;
    };
    let shown_pairs: Vec<&str> = shown_query.split('&').collect();
    let pairs: Vec<&str> = query.split('&').collect();
    assert_eq!(shown_pairs.len(), pairs.len(), "{raw:?} shown as {shown:?}");
    for (pair, shown_pair) in pairs.iter().zip(shown_pairs) {
        let allowed = match pair.split_once('=') {
            None if pair.is_empty() => shown_pair.is_empty(),
            None => shown_pair == "REDACTED",
            Some((name, value)) => {
                let value_shown = if value.is_empty() { "" } else { "REDACTED" };
                shown_pair == format!("{name}={value_shown}")
                    || shown_pair == format!("REDACTED={value_shown}")
            }
        };
        assert!(
            allowed,
            "{raw:?} shown as {shown:?}: {pair:?} as {shown_pair:?}"
        );
    }
}

/// Any string without the characters in `excluded`, and without the markers (a part shown on
/// purpose must not hold one).
fn part(u: &mut Unstructured<'_>, excluded: &str) -> libfuzzer_sys::arbitrary::Result<String> {
    let s: String = u.arbitrary()?;
    let s: String = s.chars().filter(|c| !excluded.contains(*c)).collect();
    let markers = [PASSWORD, QUERY, FRAGMENT, HEADER, SUBPROTOCOL];
    if markers.iter().any(|marker| s.contains(marker)) {
        return Ok(String::new());
    }
    Ok(s)
}

/// `scheme://user:PASSWORD…@host/path?name=…QUERY…#…FRAGMENT`, each part chosen by the
/// fuzzer (the scheme optional, the delimiters that would move a part out of its place
/// left out of the parts before the secret; the password itself may hold anything).
fn secret_url(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<String> {
    let mut url = String::new();
    if u.arbitrary()? {
        url.push_str(u.choose(&["ws", "wss", "http", "WS", "x+y.z-1", "ws?"])?);
        url.push_str("://");
    }
    let user = part(u, "/?#:@")?;
    // Anything, delimiters included, but no second marker: a password with an `@` and then a
    // `/` is a host and a path as far as any URL parser (and so the connection) is concerned.
    let password_rest = part(u, "")?;
    let host = part(u, "/?#@")?;
    let path = part(u, "?#")?;
    url.push_str(&format!("{user}:{PASSWORD}{password_rest}@{host}/{path}"));
    for i in 0..u.int_in_range(0..=3)? {
        let name = part(u, "=&#")?;
        let value = part(u, "&#")?;
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&format!("{name}={value}{QUERY}{value}"));
    }
    if u.arbitrary()? {
        let fragment: String = u.arbitrary()?;
        url.push_str(&format!("#{fragment}{FRAGMENT}"));
    }
    Ok(url)
}

/// A duration from the fuzzer: often at the edges of the allowed range.
fn duration(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    Ok(match u.int_in_range(0..=5)? {
        0 => Duration::ZERO,
        1 => DAY,
        2 => DAY + Duration::from_nanos(1),
        3 => Duration::MAX,
        4 => Duration::from_nanos(u.arbitrary()?),
        _ => Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
    })
}

fn size(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<usize> {
    Ok(match u.int_in_range(0..=3)? {
        0 => 0,
        1 => usize::MAX,
        _ => u.int_in_range(0..=1000)?,
    })
}

fn in_range(d: Duration) -> bool {
    d > Duration::ZERO && d <= Duration::from_secs(86_400)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Options set through the builders, and whether the documented ranges allow them.
/// Also returns the origin, which is no secret.
fn options(
    u: &mut Unstructured<'_>,
) -> libfuzzer_sys::arbitrary::Result<(ConnectOptions, bool, String)> {
    let mut options = ConnectOptions::default();
    let mut valid = true;
    let timeouts: [fn(ConnectOptions, Duration) -> ConnectOptions; 4] = [
        ConnectOptions::connect_timeout,
        ConnectOptions::tls_timeout,
        ConnectOptions::upgrade_timeout,
        ConnectOptions::close_timeout,
    ];
    for set in timeouts {
        if u.arbitrary()? {
            let d = duration(u)?;
            valid &= in_range(d);
            options = set(options, d);
        }
    }
    let mut pings = true;
    if u.arbitrary()? {
        let interval = if u.arbitrary()? {
            Some(duration(u)?)
        } else {
            None
        };
        valid &= interval.is_none_or(in_range);
        pings = interval.is_some();
        options = options.ping_interval(interval);
    }
    if u.arbitrary()? {
        let d = duration(u)?;
        valid &= in_range(d) && pings;
        options = options.pong_timeout(d);
    }
    if u.arbitrary()? {
        let n = size(u)?;
        valid &= n >= 125;
        options = options.max_frame_size(n);
    }
    type SetSize = fn(ConnectOptions, usize) -> ConnectOptions;
    let sizes: [SetSize; 4] = [
        ConnectOptions::max_message_size,
        ConnectOptions::max_buffered_bytes,
        ConnectOptions::max_queue,
        ConnectOptions::max_queue_bytes,
    ];
    for set in sizes {
        if u.arbitrary()? {
            let n = size(u)?;
            valid &= n >= 1;
            options = set(options, n);
        }
    }
    let mut protocols: Vec<String> = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let mut protocol: String = u.arbitrary()?;
        if u.arbitrary()? {
            protocol.push_str(SUBPROTOCOL);
        }
        valid &= is_token(&protocol) && !protocols.contains(&protocol);
        protocols.push(protocol.clone());
        options = options.subprotocol(protocol);
    }
    let mut origin = String::new();
    if u.arbitrary()? {
        origin = u.arbitrary()?;
        options = options.origin(origin.clone());
    }
    Ok((options, valid, origin))
}
