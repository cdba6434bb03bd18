//! The proxy environment variables, as `Proxy::FromEnvironment` (the default) reads them, with
//! pproxy on loopback: picked up by scheme, `ALL_PROXY` as the fallback, `NO_PROXY` bypassing
//! (and its ports), overridden by an explicit option, and a broken value a configuration
//! error. The environment is process-wide, so this binary runs its cases one after another in
//! one test, changing the variables only between connections.

// wss:// cases run beside the ws:// ones: the file needs the `tls` feature (the default).
#![cfg(feature = "tls")]

mod common;
mod support;

use common::{closed_port, WAIT};
use minch::{ConnectOptions, Error, Frame, Proxy, ProxyError};
use support::{pproxy, set_proxy_environment, ExternalServer, TestServer};

async fn echo(url: &str, options: ConnectOptions) -> Result<(), Error> {
    let (connection, mut frames) = actix_rt::time::timeout(
        WAIT,
        minch::connect(url.to_owned(), Vec::<(String, String)>::new(), options),
    )
    .await
    .expect("connect resolves in time")?;
    connection
        .send_frame(Frame::text("env"))
        .await
        .expect("sent");
    assert_eq!(
        frames.receive_frame(WAIT).await.expect("echo").as_text(),
        Some("env")
    );
    connection.close().await;
    Ok(())
}

/// How many tunnels pproxy's log shows to `target`.
fn tunnels(proxy: &ExternalServer, target: &str) -> usize {
    proxy.stderr().matches(&format!("-> {target}")).count()
}

async fn wait_tunnels(proxy: &ExternalServer, target: &str, count: usize) -> bool {
    support::wait_until(WAIT, || tunnels(proxy, target) >= count).await
}

#[actix_rt::test]
async fn proxy_environment_variables() {
    let server = TestServer::start();
    let tls_server = TestServer::start_tls();
    let proxy = pproxy("http+socks5://127.0.0.1:PORT").unwrap_or_else(|e| panic!("pproxy: {e}"));
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let target = format!("127.0.0.1:{}", server.port());
    let tls_target = format!("localhost:{}", tls_server.port());
    let defaults = ConnectOptions::default;
    let tls = || {
        ConnectOptions::default()
            .tls(minch::TlsOptions::default().add_root_pem(tls_server.cert_pem()))
    };

    // ws:// takes HTTP_PROXY (uppercase too).
    set_proxy_environment(&[("HTTP_PROXY", &proxy_url)]);
    echo(&server.url("/echo"), defaults()).await.unwrap();
    assert!(wait_tunnels(&proxy, &target, 1).await, "{}", proxy.stderr());

    // ... but not in a CGI script, where a request header could have set it.
    set_proxy_environment(&[("HTTP_PROXY", &dead), ("REQUEST_METHOD", "GET")]);
    echo(&server.url("/echo"), defaults()).await.unwrap();

    // wss:// takes https_proxy, not http_proxy; TLS is with the server, through the tunnel.
    set_proxy_environment(&[("http_proxy", &dead), ("https_proxy", &proxy_url)]);
    echo(&tls_server.url_localhost("/echo"), tls())
        .await
        .unwrap();
    assert!(wait_tunnels(&proxy, &tls_target, 1).await);
    // and ws:// then takes http_proxy, which is dead: a typed proxy error, not a direct try.
    let error = echo(&server.url("/echo"), defaults()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Proxy {
                error: ProxyError::Unreachable(_),
                ..
            }
        ),
        "{error:?}"
    );

    // ALL_PROXY for both when nothing more specific is set; a SOCKS5 proxy there too.
    let socks = format!("socks5h://127.0.0.1:{}", proxy.port());
    set_proxy_environment(&[("ALL_PROXY", &socks)]);
    let before = tunnels(&proxy, &tls_target);
    echo(&tls_server.url_localhost("/echo"), tls())
        .await
        .unwrap();
    assert!(wait_tunnels(&proxy, &tls_target, before + 1).await);

    // NO_PROXY: the host (with or without its port) is reached directly, though the proxy
    // named is dead; another port, or another host, still goes to the proxy.
    for no_proxy in ["127.0.0.1", "localhost,127.0.0.0/8", "*", &target] {
        set_proxy_environment(&[("all_proxy", &dead), ("no_proxy", no_proxy)]);
        echo(&server.url("/echo"), defaults())
            .await
            .unwrap_or_else(|e| panic!("NO_PROXY={no_proxy}: {e}"));
    }
    for no_proxy in ["127.0.0.1:1", "example.com", "127.0.0.2"] {
        set_proxy_environment(&[("ALL_PROXY", &dead), ("NO_PROXY", no_proxy)]);
        let error = echo(&server.url("/echo"), defaults()).await.unwrap_err();
        assert!(
            matches!(error, Error::Proxy { .. }),
            "NO_PROXY={no_proxy}: {error:?}"
        );
    }

    // An explicit option wins over the environment, both ways.
    set_proxy_environment(&[("http_proxy", &dead)]);
    echo(&server.url("/echo"), defaults().proxy(Proxy::None))
        .await
        .unwrap();
    let before = tunnels(&proxy, &target);
    echo(
        &server.url("/echo"),
        defaults().proxy(Proxy::url(&proxy_url)),
    )
    .await
    .unwrap();
    assert!(wait_tunnels(&proxy, &target, before + 1).await);
    set_proxy_environment(&[("no_proxy", "*")]);
    let before = tunnels(&proxy, &target);
    echo(
        &server.url("/echo"),
        defaults().proxy(Proxy::url(&proxy_url)),
    )
    .await
    .unwrap();
    assert!(wait_tunnels(&proxy, &target, before + 1).await);

    // A value that is not a proxy URL is a configuration error naming the variable, without
    // the credentials in it.
    set_proxy_environment(&[("https_proxy", "ftp://user:s3cret@127.0.0.1:1")]);
    let error = echo(&tls_server.url_localhost("/echo"), tls())
        .await
        .unwrap_err();
    assert!(error.is_config(), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("https_proxy"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");

    set_proxy_environment(&[]);
}
