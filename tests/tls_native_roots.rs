//! `TlsOptions::native_roots`: the operating system's roots are trusted besides the bundled
//! ones. rustls-native-certs reads `SSL_CERT_FILE` when it is set, so this binary points it at
//! a PEM file holding the test server's certificate: trusted with `native_roots(true)`, a typed
//! `Error::Tls` without.
//!
//! The environment is process-wide and minch reads the store once per process, so this is its
//! own test binary with a single test that sets the variables before anything connects.
#![cfg(feature = "tls")]

mod support;

use std::time::Duration;

use minch::{blocking, ConnectOptions, Error, Frame, TlsOptions};
use support::TestServer;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(
    url: String,
    tls: TlsOptions,
) -> Result<(minch::Connection, minch::Frames), Error> {
    actix_rt::time::timeout(
        WAIT,
        minch::connect(
            url,
            Vec::<(String, String)>::new(),
            ConnectOptions::default().tls(tls),
        ),
    )
    .await
    .expect("connect resolves in time")
}

#[actix_rt::test]
async fn the_system_store_is_trusted_with_native_roots_only() {
    let server = TestServer::start_tls();
    let store = std::env::temp_dir().join(format!(
        "minch-native-roots-{}-{}.pem",
        std::process::id(),
        server.port()
    ));
    std::fs::write(&store, server.cert_pem()).expect("write the test CA");
    // Before any connection in this process, and nothing else here reads the environment.
    std::env::set_var("SSL_CERT_FILE", &store);
    std::env::remove_var("SSL_CERT_DIR");

    // Without native roots the bundled ones do not know the test certificate.
    match connect(server.url("/echo"), TlsOptions::default()).await {
        Err(error @ Error::Tls(_)) => {
            assert!(!error.is_config());
            assert!(error.to_string().contains("native_roots"), "{error}");
        }
        other => panic!("expected Error::Tls, got {:?}", other.err()),
    }
    assert_eq!(server.upgrades(), 0);

    // With them, the store's certificate is trusted.
    let tls = TlsOptions::default().native_roots(true);
    assert!(format!("{tls:?}").contains("native_roots: true"));
    let (connection, mut frames) = connect(server.url("/echo"), tls.clone())
        .await
        .expect("the system store's root is trusted");
    connection
        .send_frame(Frame::text("native roots"))
        .await
        .expect("sent");
    let echo = frames.receive_frame(WAIT).await.expect("echo");
    assert_eq!(echo.as_text(), Some("native roots"));
    connection.close().await;

    // The bundled roots and the ones added stay: a second server, whose certificate is not in
    // the store, is trusted once it is added.
    let other = TestServer::start_tls();
    match connect(other.url("/echo"), tls.clone()).await {
        Err(Error::Tls(_)) => {}
        other => panic!("expected Error::Tls, got {:?}", other.err()),
    }
    let (connection, _frames) = connect(
        other.url("/echo"),
        tls.clone().add_root_certificate(other.cert_der()),
    )
    .await
    .expect("an added root is trusted alongside the native ones");
    connection.close().await;

    // The blocking API takes the same options.
    let url = server.url("/echo");
    let blocking_tls = tls.clone();
    let echoed = std::thread::spawn(move || {
        let (connection, frames) = blocking::connect(
            url,
            Vec::<(String, String)>::new(),
            ConnectOptions::default().tls(blocking_tls),
        )
        .expect("blocking connect with native roots");
        connection
            .send_frame(Frame::text("blocking native"))
            .expect("sent");
        let echo = frames.receive_frame(WAIT).expect("echo");
        connection.close();
        echo.as_text().map(str::to_owned)
    })
    .join()
    .expect("the blocking thread");
    assert_eq!(echoed.as_deref(), Some("blocking native"));
    assert_eq!(server.upgrades(), 2);

    let _ = std::fs::remove_file(&store);
}
