//! Review 12: the proxy environment variables, checked against scripted proxies on 127.0.0.1.
//! The environment is process-wide, so this binary has one test, which changes the variables
//! only between connections. Everything here passes (`checked_…`): behaviour reviewed and found
//! right.

#![cfg(feature = "tls")]

mod common;
mod support;

use common::{closed_port, WAIT};
use minch::{ConnectOptions, Error, Frame, ProxyError};
use support::{forwarding_proxy, set_proxy_environment, TestServer};

async fn echo(url: &str, options: ConnectOptions) -> Result<(), Error> {
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(url.to_owned(), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time")?;
    connection
        .send_frame(Frame::text("env12"))
        .await
        .expect("sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("echo").as_text(),
        Some("env12")
    );
    connection.close().await;
    Ok(())
}

#[actix_rt::test]
async fn checked_environment_edge_cases() {
    let server = TestServer::start();
    let (port, heads) = forwarding_proxy(
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        server.port(),
    );
    let proxy = format!("http://127.0.0.1:{port}");
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let count = || heads.lock().unwrap().len();

    // Nothing set: direct, as before the change. A no_proxy alone changes nothing.
    set_proxy_environment(&[]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    set_proxy_environment(&[("no_proxy", "example.com")]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(count(), 0);

    // ws:// ignores https_proxy (a dead one here), and takes http_proxy.
    set_proxy_environment(&[("https_proxy", &dead), ("http_proxy", &proxy)]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(count(), 1);

    // Under CGI, HTTP_PROXY is ignored but ALL_PROXY still applies.
    set_proxy_environment(&[
        ("HTTP_PROXY", &dead),
        ("ALL_PROXY", &proxy),
        ("REQUEST_METHOD", "POST"),
    ]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(count(), 2);

    // NO_PROXY: leading dot, `*.` wildcard, upper case and a trailing dot on the entry all
    // match `localhost`; a suffix that is not at a dot does not.
    for no_proxy in [
        ".localhost",
        "*.LOCALHOST",
        "localhost.",
        " other , localhost ",
    ] {
        set_proxy_environment(&[("all_proxy", &dead), ("no_proxy", no_proxy)]);
        echo(&server.url_localhost("/echo"), ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("no_proxy={no_proxy:?}: {e}"));
    }
    set_proxy_environment(&[("all_proxy", &dead), ("no_proxy", "calhost")]);
    let error = echo(&server.url_localhost("/echo"), ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Proxy {
                error: ProxyError::Unreachable(_),
                ..
            }
        ),
        "{error:?}"
    );

    // The CONNECT for a localhost URL names localhost (the proxy resolves it).
    set_proxy_environment(&[("http_proxy", &proxy)]);
    echo(&server.url_localhost("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    let last = heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.starts_with(&format!("CONNECT localhost:{} HTTP/1.1", server.port())),
        "{last}"
    );

    // A broken variable is a configuration error naming it, without its password.
    set_proxy_environment(&[("http_proxy", "http://user:s3cret@127.0.0.1:99999")]);
    let error = echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(error.is_config(), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(
        shown.contains("http_proxy") && !shown.contains("s3cret"),
        "{shown}"
    );
    set_proxy_environment(&[]);
}
