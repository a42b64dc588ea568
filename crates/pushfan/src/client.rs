//! The gRPC client side of the CLI: connecting with an API key (over TLS for `https://` URLs),
//! and watching a broadcast with a progress bar.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_proto::v1::{Broadcast, WatchBroadcastRequest};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How the CLI reaches an API served over TLS (an `https://` URL).
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct ClientTls {
    /// PEM CA certificates to trust for the API's certificate, instead of the public web PKI.
    #[arg(long, env = "PUSHFAN_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// PEM client certificate, for an API that requires one (with --key-file).
    #[arg(long, env = "PUSHFAN_CLIENT_CERT_FILE", requires = "key_file")]
    pub(crate) cert_file: Option<PathBuf>,
    /// PEM private key of --cert-file.
    #[arg(long, env = "PUSHFAN_CLIENT_KEY_FILE", requires = "cert_file")]
    pub(crate) key_file: Option<PathBuf>,
}

impl ClientTls {
    /// The channel's TLS settings for `url`: none for `http://`.
    fn config(&self, url: &str) -> anyhow::Result<Option<ClientTlsConfig>> {
        if !url.starts_with("https://") {
            anyhow::ensure!(
                self.ca_file.is_none() && self.cert_file.is_none(),
                "--ca-file and --cert-file are for an https:// URL, not {url}"
            );
            return Ok(None);
        }
        let read =
            |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let mut tls = match &self.ca_file {
            Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path)?)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone, Debug)]
pub(crate) struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Clients of the three services, sharing one HTTP/2 connection.
#[derive(Clone, Debug)]
pub(crate) struct Clients {
    /// Subscriptions.
    pub(crate) subscriptions: SubscriptionServiceClient<Authed>,
    /// Publishing.
    pub(crate) publish: PublishServiceClient<Authed>,
    /// Progress.
    pub(crate) broadcasts: BroadcastServiceClient<Authed>,
}

impl Clients {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) as the tenant owning `api_key`.
    pub(crate) async fn connect(url: &str, api_key: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, api_key, &ClientTls::default()).await
    }

    /// [`Clients::connect`], over TLS as `tls` says when `url` is `https://`.
    pub(crate) async fn connect_with(url: &str, api_key: &str, tls: &ClientTls) -> anyhow::Result<Self> {
        let mut endpoint = Channel::from_shared(url.to_owned())
            .with_context(|| format!("{url} is not a valid server URL"))?;
        if let Some(tls) = tls.config(url)? {
            endpoint = endpoint.tls_config(tls).context("TLS settings")?;
        }
        let channel =
            endpoint.connect().await.with_context(|| format!("connecting to the pushfan API at {url}"))?;
        let bearer = Bearer(format!("Bearer {api_key}").parse().context("the API key is not valid ASCII")?);
        // Bulk imports and big broadcasts carry large messages.
        let max = 64 * 1024 * 1024;
        Ok(Self {
            subscriptions: SubscriptionServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_encoding_message_size(max),
            publish: PublishServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            broadcasts: BroadcastServiceClient::with_interceptor(channel, bearer),
        })
    }

    /// Follows a broadcast until it completes, drawing a progress bar when `show` is set;
    /// returns its final state and how long it took from the call.
    pub(crate) async fn watch(
        &mut self,
        broadcast_id: &str,
        show: bool,
    ) -> anyhow::Result<(Broadcast, Duration)> {
        let started = Instant::now();
        let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} finished  {per_sec}  {msg}",
            )
            .expect("a valid template"),
        );
        let mut updates = self
            .broadcasts
            .watch_broadcast(WatchBroadcastRequest { broadcast_id: broadcast_id.to_owned() })
            .await
            .context("watching the broadcast")?
            .into_inner();
        let mut last = None;
        while let Some(update) = updates.message().await.context("watching the broadcast")? {
            let Some(broadcast) = update.broadcast else { continue };
            let finished = broadcast.accepted
                + broadcast.gone
                + broadcast.rejected
                + broadcast.failed
                + broadcast.expired
                + broadcast.encrypt_failed;
            // Results (and with them `targeted`) trail what the workers have handed on.
            bar.set_length(broadcast.targeted.max(broadcast.handed_on + broadcast.encrypt_failed));
            bar.set_position(finished);
            bar.set_message(format!(
                "handed on {}  accepted {}  gone {}  rejected {}  failed {}  shards {}/{}",
                broadcast.handed_on,
                broadcast.accepted,
                broadcast.gone,
                broadcast.rejected,
                broadcast.failed,
                broadcast.shards_done,
                broadcast.shards_total
            ));
            let complete = broadcast.complete;
            last = Some(broadcast);
            if complete {
                break;
            }
        }
        bar.finish();
        let broadcast = last.context("the server ended the watch before reporting the broadcast")?;
        anyhow::ensure!(broadcast.complete, "the server ended the watch before the broadcast completed");
        Ok((broadcast, started.elapsed()))
    }
}

/// A broadcast's final counts, one per line.
pub(crate) fn summary(broadcast: &Broadcast) -> String {
    let mut text = format!(
        "broadcast {}\n  targeted {}\n  encrypted {} (failed {})\n  accepted {}\n  gone {} (pruned {})\n  rejected {}\n  failed {}\n  expired {}\n",
        broadcast.broadcast_id,
        broadcast.targeted,
        broadcast.encrypted,
        broadcast.encrypt_failed,
        broadcast.accepted,
        broadcast.gone,
        broadcast.pruned,
        broadcast.rejected,
        broadcast.failed,
        broadcast.expired,
    );
    for failure in &broadcast.failures {
        text.push_str(&format!("  {} {}\n", failure.class, failure.count));
        for sample in &failure.samples {
            text.push_str(&format!("    e.g. {sample}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pushfan_bus::{EmbeddedBus, EmbeddedConfig};
    use pushfan_ingest::{ApiKeys, IngestState, ServeOptions, TlsFiles};
    use pushfan_proto::v1::GetSubscriptionRequest;
    use pushfan_store::{EmbeddedStore, ShardCount, TenantId};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    use super::*;

    const KEY: &str = "acme-test-key-0123456789";

    /// A CA (PEM file) and the API served over TLS with a certificate it issued for 127.0.0.1.
    async fn tls_server(dir: &std::path::Path) -> (std::net::SocketAddr, PathBuf) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        for (name, pem) in
            [("ca.pem", ca.pem()), ("server.pem", server.pem()), ("server.key", server_key.serialize_pem())]
        {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        let store_dir = dir.join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        let store = EmbeddedStore::open(&store_dir, ShardCount::new(1).unwrap()).unwrap();
        let mut keys = ApiKeys::new();
        keys.insert(TenantId::new("acme").unwrap(), KEY).unwrap();
        let state = IngestState::new(
            Arc::new(store.clone()),
            Arc::new(store),
            EmbeddedBus::new(EmbeddedConfig::default()),
            keys,
            pushfan_webpush::EndpointPolicy::default(),
            [1],
        );
        let tls = TlsFiles {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            client_ca_file: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = ServeOptions { tls: Some(tls), ..ServeOptions::default() };
        tokio::spawn(pushfan_ingest::serve_with(listener, state, options, std::future::pending()));
        (addr, dir.join("ca.pem"))
    }

    #[tokio::test]
    async fn the_cli_reaches_an_api_served_over_tls_with_the_ca_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, ca_file) = tls_server(dir.path()).await;
        let url = format!("https://{addr}");
        let tls = ClientTls { ca_file: Some(ca_file.clone()), ..ClientTls::default() };
        let mut clients = Clients::connect_with(&url, KEY, &tls).await.expect("connects over TLS");
        let missing = GetSubscriptionRequest { subscription_id: "00".repeat(14) };
        let status = clients.subscriptions.get_subscription(missing.clone()).await.expect_err("none");
        assert_eq!(status.code(), tonic::Code::NotFound, "served: {status:?}");
        // The public roots do not vouch for a private CA, and plaintext is not TLS.
        let refused = match Clients::connect_with(&url, KEY, &ClientTls::default()).await {
            Ok(mut clients) => clients
                .subscriptions
                .get_subscription(missing.clone())
                .await
                .is_err_and(|s| s.code() != tonic::Code::NotFound),
            Err(_) => true,
        };
        assert!(refused, "a client not trusting the CA was served");
        let plaintext = match Clients::connect(&format!("http://{addr}"), KEY).await {
            Ok(mut clients) => clients
                .subscriptions
                .get_subscription(missing)
                .await
                .is_err_and(|s| s.code() != tonic::Code::NotFound),
            Err(_) => true,
        };
        assert!(plaintext, "a plaintext client was served");
        let err = Clients::connect_with(&format!("http://{addr}"), KEY, &tls).await.unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }
}
