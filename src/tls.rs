//! rustls client configurations for `wss://`.
//!
//! The ring provider is named explicitly instead of relying on a process-wide default, so that
//! connecting never panics for want of an installed `CryptoProvider` (rustls 0.23), whatever
//! other crates in the program do. ALPN offers `http/1.1` only: the WebSocket upgrade is an
//! HTTP/1.1 mechanism, and a server that picks `h2` cannot accept it.

use std::sync::{Arc, OnceLock};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{options::TlsOptions, Error};

/// The configuration for `options`; the default one is built once and shared.
pub(crate) fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let is_default = options.root_certificates.is_empty()
        && options.root_pems.is_empty()
        && !options.accept_invalid_certs;
    if is_default {
        if let Some(config) = DEFAULT.get() {
            return Ok(config.clone());
        }
        let config = build(options)?;
        return Ok(DEFAULT.get_or_init(|| config).clone());
    }
    build(options)
}

fn build(options: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Tls(error.to_string()))?;
    let mut config = if options.accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(root_store(options)?)
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn root_store(options: &TlsOptions) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
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
