//! A throwaway TLS identity for the simulated push service: a self-signed CA and a server
//! certificate it issues for `127.0.0.1`, `localhost` and `::1`. Clients trust the CA.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS identity or configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the certificate failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("configuring rustls failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA certificate is not PEM: {0}")]
    Pem(String),
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
        Self::issue(ca_cert.pem(), ca_cert.der().clone(), &issuer, extra_names)
    }

    /// A server certificate for the loopback names and `extra_names`, issued by an existing CA
    /// (PEM certificate and key): senders set up in advance to trust that CA (a deployed
    /// pushfan) accept a server started later.
    pub fn from_ca(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        extra_names: &[String],
    ) -> Result<Arc<Self>, TlsError> {
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, KeyPair::from_pem(ca_key_pem)?)?;
        let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        Self::issue(ca_cert_pem.to_owned(), ca_der, &issuer, extra_names)
    }

    fn issue(
        ca_pem: String,
        ca_der: CertificateDer<'static>,
        issuer: &Issuer<'_, KeyPair>,
        extra_names: &[String],
    ) -> Result<Arc<Self>, TlsError> {
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned(), "::1".to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut server_params = CertificateParams::new(names)?;
        server_params.distinguished_name.push(DnType::CommonName, "pushsim");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, issuer)?;
        Ok(Arc::new(Self {
            ca_pem,
            server_chain: vec![server_cert.der().clone(), ca_der.clone()],
            ca_der,
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

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;

    #[test]
    fn a_server_issued_by_a_given_ca_is_trusted_through_that_ca() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "operator CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let identity = TlsIdentity::from_ca(&ca.pem(), &key.serialize_pem(), &["fleet.test".into()]).unwrap();
        assert_eq!(identity.ca_der(), ca.der());
        // rustls accepts the chain for the extra name when trusting only the given CA.
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
        let name = rustls::pki_types::ServerName::try_from("fleet.test").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        verifier
            .verify_server_cert(&identity.server_chain[0], &identity.server_chain[1..], &name, &[], now)
            .unwrap();
        assert!(matches!(
            TlsIdentity::from_ca("nonsense", &key.serialize_pem(), &[]),
            Err(TlsError::Certificate(_) | TlsError::Pem(_))
        ));
    }
}
