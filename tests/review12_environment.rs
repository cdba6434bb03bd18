//! Review 12: the proxy environment variables, checked against scripted proxies on 127.0.0.1.
//! The environment is process-wide, so this binary has one test, which changes the variables
//! only between connections. Everything here passes (`checked_…`): behaviour reviewed and found
//! right.

#![cfg(feature = "tls")]

mod common;
mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{closed_port, WAIT};
use minch::{ConnectOptions, Error, Frame, ProxyError};
use support::TestServer;

const VARIABLES: [&str; 9] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

fn environment(vars: &[(&str, &str)]) {
    for name in VARIABLES {
        std::env::remove_var(name);
    }
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
}

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

/// An HTTP CONNECT proxy that records each head and forwards to 127.0.0.1:`target`.
fn forwarding_proxy(target: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let copy = |mut from: TcpStream, mut to: TcpStream| {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                };
                std::thread::spawn(move || copy(c2, s2));
                copy(server, client);
            });
        }
    });
    (port, heads)
}

#[actix_rt::test]
async fn checked_environment_edge_cases() {
    let server = TestServer::start();
    let (port, heads) = forwarding_proxy(server.port());
    let proxy = format!("http://127.0.0.1:{port}");
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let count = || heads.lock().unwrap().len();

    // Nothing set: direct, as before the change. A no_proxy alone changes nothing.
    environment(&[]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    environment(&[("no_proxy", "example.com")]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(count(), 0);

    // ws:// ignores https_proxy (a dead one here), and takes http_proxy.
    environment(&[("https_proxy", &dead), ("http_proxy", &proxy)]);
    echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(count(), 1);

    // Under CGI, HTTP_PROXY is ignored but ALL_PROXY still applies.
    environment(&[
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
        environment(&[("all_proxy", &dead), ("no_proxy", no_proxy)]);
        echo(&server.url_localhost("/echo"), ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("no_proxy={no_proxy:?}: {e}"));
    }
    environment(&[("all_proxy", &dead), ("no_proxy", "calhost")]);
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
    environment(&[("http_proxy", &proxy)]);
    echo(&server.url_localhost("/echo"), ConnectOptions::default())
        .await
        .unwrap();
    let last = heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.starts_with(&format!("CONNECT localhost:{} HTTP/1.1", server.port())),
        "{last}"
    );

    // A broken variable is a configuration error naming it, without its password.
    environment(&[("http_proxy", "http://user:s3cret@127.0.0.1:99999")]);
    let error = echo(&server.url("/echo"), ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(error.is_config(), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(
        shown.contains("http_proxy") && !shown.contains("s3cret"),
        "{shown}"
    );
    environment(&[]);
}
