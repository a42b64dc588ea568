//! A throwaway TLS identity for the simulated push service: a self-signed CA and a server
//! certificate it issues for `127.0.0.1`, `localhost` and `::1`. Clients trust the CA.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS identity or configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the certificate failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("configuring rustls failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The CA clients trust and the certificate the server presents.
#[derive(Debug)]
pub struct TlsIdentity {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl TlsIdentity {
    /// A fresh CA and server certificate, valid for the loopback names.
    pub fn generate() -> Result<Arc<Self>, TlsError> {
        Self::generate_for(&[])
    }

    /// A fresh CA and server certificate valid for the loopback names and `extra_names` (the
    /// DNS name senders reach the server by, e.g. a Kubernetes Service).
    pub fn generate_for(extra_names: &[String]) -> Result<Arc<Self>, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "pushsim test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned(), "::1".to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut server_params = CertificateParams::new(names)?;
        server_params.distinguished_name.push(DnType::CommonName, "pushsim");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        Ok(Arc::new(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        }))
    }

    /// The CA certificate as PEM: what a client (or `curl --cacert`) should trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate as DER, for a rustls `RootCertStore`.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The server's rustls configuration: AWS-LC, ALPN `h2` then `http/1.1`.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let key = PrivateKeyDer::Pkcs8(self.server_key.clone_key());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A client configuration that trusts only this CA, offering `alpn` (e.g. `[b"h2"]`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// Named explicitly, so a process that links more than one rustls provider still works.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
