//! The HTTP clients: one for `https` push services (TLS with ALPN `h2`, falling back to
//! HTTP/1.1) and one for plain `http` on loopback (HTTP/1.1 or h2c), each pooling one held
//! connection per origin.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use crate::GatewayError;

pub(crate) type Body = Full<Bytes>;

/// Both clients; a request picks one by its scheme.
#[derive(Clone, Debug)]
pub(crate) struct Clients {
    pub(crate) tls: Client<HttpsConnector<HttpConnector>, Body>,
    pub(crate) plain: Client<HttpConnector, Body>,
}

pub(crate) fn build(
    connect_timeout: Duration,
    extra_root_certs: &[Vec<u8>],
    plaintext_h2c: bool,
) -> Result<Clients, GatewayError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for der in extra_root_certs {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| GatewayError::RootCertificate(e.to_string()))?;
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http.clone());

    let mut builder = Client::builder(TokioExecutor::new());
    // HTTP/2 keep-alive pings and idle-pool expiry need a timer.
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(true)
        .http2_adaptive_window(true);
    let tls = builder.build(https);
    let plain = builder.http2_only(plaintext_h2c).build(http);
    Ok(Clients { tls, plain })
}
