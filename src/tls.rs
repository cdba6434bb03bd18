//! rustls client configurations for `wss://`.
//!
//! The ring provider is named explicitly instead of relying on a process-wide default, so that
//! connecting never panics for want of an installed `CryptoProvider` (rustls 0.23), whatever
//! other crates in the program do. ALPN offers `http/1.1` only: the WebSocket upgrade is an
//! HTTP/1.1 mechanism, and a server that picks `h2` cannot accept it. That holds for a
//! configuration the user built too ([`TlsOptions::client_config`]): its ALPN list is replaced.

use std::{
    io,
    sync::{Arc, OnceLock},
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{
        pem::{self, PemObject},
        CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime,
    },
    sign::{CertifiedKey, SingleCertAndKey},
    AlertDescription, ClientConfig, DigitallySignedStruct, InconsistentKeys, RootCertStore,
    SignatureScheme,
};

use crate::{options::TlsOptions, Error};

/// The one ALPN protocol minch offers.
const HTTP_1_1: &[u8] = b"http/1.1";

/// The configuration for `options`; the common ones (nothing set, or only
/// [`native_roots`](TlsOptions::native_roots)) are built once and shared.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    static SHARED: [OnceLock<Arc<ClientConfig>>; 2] = [OnceLock::new(), OnceLock::new()];
    if let Some(config) = &options.client_config {
        // Checked by `TlsOptions::validate`: nothing else is set, and the ALPN list was
        // replaced when the configuration was given.
        return Ok(config.clone());
    }
    let is_shared = options.root_certificates.is_empty()
        && options.root_pems.is_empty()
        && !options.accept_invalid_certs
        && options.client_certificate.is_none();
    if is_shared {
        let slot = &SHARED[usize::from(options.native_roots)];
        if let Some(config) = slot.get() {
            return Ok(config.clone());
        }
        let config = build(options)?;
        return Ok(slot.get_or_init(|| config).clone());
    }
    build(options)
}

fn build(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Tls(error.to_string()))?;
    let builder = if options.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(root_store(options)?)
    };
    let mut config = match &options.client_certificate {
        Some(certificate) => {
            let key = certificate.loaded().map_err(Error::InvalidOptions)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// `config` with ALPN `http/1.1` only: the same `Arc` if that is what it offers already,
/// otherwise a copy (which shares its verifier, client certificate resolver and session store
/// with the original, all behind `Arc`s).
pub(crate) fn with_http11_alpn(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    if config.alpn_protocols == [HTTP_1_1] {
        return config;
    }
    log::debug!(
        "TlsOptions::client_config: ALPN {:?} replaced by [\"http/1.1\"] (the WebSocket upgrade is HTTP/1.1)",
        config
            .alpn_protocols
            .iter()
            .map(|protocol| String::from_utf8_lossy(protocol))
            .collect::<Vec<_>>()
    );
    let mut copy = ClientConfig::clone(&config);
    copy.alpn_protocols = vec![HTTP_1_1.to_vec()];
    Arc::new(copy)
}

fn root_store(options: &TlsOptions) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if options.native_roots {
        roots.roots.extend(native_roots().iter().cloned());
    }
    let invalid = |error: &dyn std::fmt::Display| {
        Error::InvalidOptions(format!("a root certificate could not be used: {error}"))
    };
    for der in &options.root_certificates {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| invalid(&e))?;
    }
    for pem in &options.root_pems {
        let mut found = false;
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(certificate.map_err(|e| invalid(&e))?)
                .map_err(|e| invalid(&e))?;
            found = true;
        }
        if !found {
            return Err(invalid(&"the PEM text holds no CERTIFICATE block"));
        }
    }
    Ok(roots)
}

/// The operating system's roots, read once per process (reading the store can mean parsing a
/// few hundred kilobytes of PEM: not something to repeat on every reconnect).
fn native_roots() -> &'static [TrustAnchor<'static>] {
    static NATIVE: OnceLock<Vec<TrustAnchor<'static>>> = OnceLock::new();
    NATIVE.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        usable_native_roots(loaded.certs, loaded.errors.len())
    })
}

/// The trust anchors among `certs` read from the system's store, where reading met `errors`
/// errors. What loaded is used even if some of the store could not be read; a store that
/// yields nothing leaves the bundled roots alone, with a warning (the connection may still
/// succeed with them, and fails with [`Error::Tls`] if not).
fn usable_native_roots(
    certs: Vec<CertificateDer<'static>>,
    errors: usize,
) -> Vec<TrustAnchor<'static>> {
    let found = certs.len();
    let mut store = RootCertStore::empty();
    let (added, unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        log::warn!(
            "TlsOptions::native_roots: no usable root certificate in the operating system's store \
             ({found} found, {errors} errors reading it); only the bundled Mozilla roots are trusted"
        );
    } else {
        log::debug!(
            "TlsOptions::native_roots: {added} roots from the operating system's store \
             ({unusable} certificates not usable, {errors} errors reading the store)"
        );
    }
    store.roots
}

/// A client certificate chain with its private key, parsed and checked against each other when
/// given ([`TlsOptions::client_certificate_pem`]), or what is wrong with them, reported as
/// [`Error::InvalidOptions`] when connecting. Never shown: there is no `Debug`.
#[derive(Clone)]
pub(crate) struct ClientCertificate(Result<Arc<CertifiedKey>, String>);

impl ClientCertificate {
    pub(crate) fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Self {
        Self(load_client_certificate(chain_pem, key_pem).map(Arc::new))
    }

    /// What is wrong with the certificate or its key, if anything.
    pub(crate) fn problem(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }

    fn loaded(&self) -> Result<Arc<CertifiedKey>, String> {
        self.0.clone()
    }
}

/// The messages name the part at fault and what is wrong with it, never the PEM text: the
/// PEM parser's own errors can quote a line of it, so they are described here instead.
fn load_client_certificate(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let mut chain = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(chain_pem) {
        chain.push(certificate.map_err(|error| {
            format!(
                "client_certificate_pem: the certificate chain is not valid PEM: {}",
                pem_problem(&error)
            )
        })?);
    }
    if chain.is_empty() {
        let swapped = if PrivateKeyDer::from_pem_slice(chain_pem).is_ok() {
            " (it holds a private key: were the chain and the key swapped?)"
        } else {
            ""
        };
        return Err(format!(
            "client_certificate_pem: the certificate chain holds no CERTIFICATE block{swapped}"
        ));
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            let hint = if contains(key_pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
                " (an ENCRYPTED PRIVATE KEY must be decrypted first)"
            } else if CertificateDer::pem_slice_iter(key_pem).any(|item| item.is_ok()) {
                " (it holds a certificate: were the chain and the key swapped?)"
            } else {
                ""
            };
            return Err(format!(
                "client_certificate_pem: the key holds no PRIVATE KEY, RSA PRIVATE KEY or EC \
                 PRIVATE KEY block{hint}"
            ));
        }
        Err(error) => {
            return Err(format!(
                "client_certificate_pem: the key is not valid PEM: {}",
                pem_problem(&error)
            ))
        }
    };
    CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
            "client_certificate_pem: the private key does not match the certificate (the first \
             one in the chain must be the key's own)"
                .to_owned()
        }
        rustls::Error::InvalidCertificate(_) => format!(
            "client_certificate_pem: the first certificate in the chain cannot be parsed: {error}"
        ),
        // The key provider's refusals name the key type, not the key.
        _ => format!("client_certificate_pem: the private key cannot be used: {error}"),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// What is wrong with a PEM document, without quoting it.
fn pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section's content is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "it cannot be read",
    }
}

/// The error for a failed TLS handshake, from the `io::Error` that carries rustls' error, with
/// a hint where one helps.
pub(crate) fn handshake_failure(error: &io::Error) -> Error {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Error::Tls(error.to_string());
    };
    Error::Tls(describe(tls))
}

/// rustls' error, said with what to do about it.
pub(crate) fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(_) => format!(
            "{error}; to trust a private CA add it with TlsOptions::add_root_certificate, or trust \
             the operating system's roots with TlsOptions::native_roots"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => format!(
            "{error}: the server refused the connection; if it requires a client certificate, \
             give one it trusts with TlsOptions::client_certificate_pem (or in a \
             TlsOptions::client_config)"
        ),
        _ => error.to_string(),
    }
}

/// Accepts every certificate but still checks handshake signatures, so that the connection is
/// at least bound to the key the server presented. Only reachable through
/// `TlsOptions::danger_accept_invalid_certs`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_alpn(protocols: &[&[u8]]) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    #[test]
    fn a_user_config_offers_http_1_1_only() {
        for protocols in [
            &[][..],
            &[b"h2".as_slice()][..],
            &[b"h2".as_slice(), b"http/1.1".as_slice()][..],
            &[b"http/1.1".as_slice(), b"h2".as_slice()][..],
        ] {
            let given = config_with_alpn(protocols);
            let used = with_http11_alpn(given.clone());
            assert_eq!(used.alpn_protocols, vec![b"http/1.1".to_vec()]);
            assert!(!Arc::ptr_eq(&given, &used));
            // The user's own configuration is left as it was.
            assert_eq!(given.alpn_protocols.len(), protocols.len());
        }
        let given = config_with_alpn(&[b"http/1.1"]);
        assert!(Arc::ptr_eq(&given, &with_http11_alpn(given.clone())));
    }

    fn self_signed() -> (CertificateDer<'static>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key.serialize_pem())
    }

    #[test]
    fn native_roots_use_what_loaded() {
        let (good, _) = self_signed();
        let bad = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        let roots = usable_native_roots(vec![good.clone(), bad.clone(), good.clone()], 2);
        assert_eq!(roots.len(), 2);
        assert!(usable_native_roots(vec![bad], 1).is_empty());
        assert!(usable_native_roots(Vec::new(), 0).is_empty());
    }

    #[test]
    fn native_roots_are_added_to_the_bundled_ones() {
        let bundled = webpki_roots::TLS_SERVER_ROOTS.len();
        let store = root_store(&TlsOptions::default()).unwrap();
        assert_eq!(store.roots.len(), bundled);
        let store = root_store(&TlsOptions::default().native_roots(true)).unwrap();
        assert_eq!(store.roots.len(), bundled + native_roots().len());
    }

    #[test]
    fn a_client_certificate_is_offered() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let options = TlsOptions::default().client_certificate_pem(cert.pem(), key.serialize_pem());
        let config = client_config(&options).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let config = client_config(&TlsOptions::default()).unwrap();
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn pem_problems_do_not_quote_the_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key_pem = key.serialize_pem();
        let secret_line = key_pem.lines().nth(1).unwrap();
        let broken = [
            // A BEGIN line cut short: the parser's own error quotes the line.
            key_pem.replacen("-----BEGIN PRIVATE KEY-----", "-----BEGIN PRIVATE KEY", 1),
            key_pem.replacen("-----END PRIVATE KEY-----", "", 1),
            key_pem.replacen(secret_line, &format!("{secret_line}!*"), 1),
        ];
        for broken in broken {
            let problem = load_client_certificate(cert.pem().as_bytes(), broken.as_bytes())
                .map(drop)
                .expect_err("a broken key is refused");
            assert!(!problem.contains(secret_line), "{problem}");
            // Nor the parser's quote of a line, which it shows as a list of bytes.
            assert!(!problem.contains('['), "{problem}");
            assert!(
                problem.starts_with("client_certificate_pem: the key"),
                "{problem}"
            );
        }
    }
}
