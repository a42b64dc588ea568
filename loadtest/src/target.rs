//! The pushfan under test: a `pushfan standalone` child process started with a generated config
//! (ephemeral ports, trusting the fleet's CA), or processes already running (a cluster), reached
//! through the gRPC API.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pushfan_proto::v1::broadcast_service_client::BroadcastServiceClient;
use pushfan_proto::v1::publish_service_client::PublishServiceClient;
use pushfan_proto::v1::subscription_service_client::SubscriptionServiceClient;
use pushfan_webpush::b64;
use pushfan_webpush::vapid::VapidKey;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The tenant the load test acts as.
pub const TENANT: &str = "loadtest";
/// The VAPID subject the generated config uses (also given to peers).
pub const SUBJECT: &str = "mailto:loadtest@pushfan.invalid";
/// Apple refuses tokens valid for more than an hour; pushfan signs for this long.
const VAPID_VALIDITY_SECS: u64 = 3600;
/// How long a spawned pushfan may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the pushfan under test is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Writing the config or data directory.
    #[error("preparing pushfan's files in {path}: {source}")]
    Files {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The generated config could not be serialised (a bad `[pushfan]` table).
    #[error("the generated pushfan config: {0}")]
    Config(String),
    /// The binary did not start.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited or never said where it listens.
    #[error("pushfan did not start serving: {0}")]
    NotServing(String),
    /// The gRPC connection failed.
    #[error("connecting to the pushfan API at {url}: {source}")]
    Connect {
        /// The API URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The API key is not a valid header value.
    #[error("the API key is not valid ASCII for an authorization header")]
    ApiKey,
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Clients of pushfan's three services over one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Api {
    /// Subscriptions (bulk import).
    pub subscriptions: SubscriptionServiceClient<Authed>,
    /// Publishing.
    pub publish: PublishServiceClient<Authed>,
    /// Progress.
    pub broadcasts: BroadcastServiceClient<Authed>,
}

impl Api {
    /// Connects to `url` as the tenant owning `api_key`.
    pub async fn connect(url: &str, api_key: &str) -> Result<Self, TargetError> {
        let connect = |source| TargetError::Connect { url: url.to_owned(), source };
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| TargetError::NotServing(format!("`{url}` is not a valid URL: {e}")))?
            .connect()
            .await
            .map_err(connect)?;
        let bearer = Bearer(format!("Bearer {api_key}").parse().map_err(|_| TargetError::ApiKey)?);
        // Bulk imports carry large messages.
        let max = 64 * 1024 * 1024;
        Ok(Self {
            subscriptions: SubscriptionServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_encoding_message_size(max),
            publish: PublishServiceClient::with_interceptor(channel.clone(), bearer.clone())
                .max_encoding_message_size(max),
            broadcasts: BroadcastServiceClient::with_interceptor(channel, bearer),
        })
    }
}

/// The credentials a spawned pushfan is configured with.
#[derive(Debug)]
pub struct Credentials {
    /// The tenant's API key.
    pub api_key: String,
    /// The VAPID key subscriptions are imported with (id 1).
    pub vapid: VapidKey,
}

impl Credentials {
    /// Fresh random credentials.
    pub fn generate() -> Self {
        Self { api_key: b64::encode(VapidKey::generate().public_key()), vapid: VapidKey::generate() }
    }
}

/// A `pushfan standalone` child process; killed when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// Its process id, for CPU accounting.
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its config and data; removed when dropped.
    _dir: tempfile::TempDir,
}

/// Writes pushfan's config: embedded store and bus in `dir`, an ephemeral API port, the tenant,
/// the VAPID key, the fleet's CA, then the scenario's `[pushfan]` overrides on top.
pub fn write_config(
    dir: &Path,
    credentials: &Credentials,
    ca_pem: &str,
    overrides: &toml::Table,
) -> Result<PathBuf, TargetError> {
    let files = |source| TargetError::Files { path: dir.to_owned(), source };
    let ca = dir.join("fleet-ca.pem");
    std::fs::write(&ca, ca_pem).map_err(files)?;
    let mut config = toml::Table::new();
    let set = |config: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        if let Some(toml::Value::Table(table)) = config.get_mut(section) {
            table.insert(key.to_owned(), value);
        } else {
            let mut table = toml::Table::new();
            table.insert(key.to_owned(), value);
            config.insert(section.to_owned(), toml::Value::Table(table));
        }
    };
    set(&mut config, "store", "backend", "embedded".into());
    set(&mut config, "store", "path", dir.join("data").display().to_string().into());
    set(&mut config, "ingest", "listen", "127.0.0.1:0".into());
    set(&mut config, "vapid", "subject", SUBJECT.into());
    set(&mut config, "vapid", "validity_secs", (VAPID_VALIDITY_SECS as i64).into());
    let mut key = toml::Table::new();
    key.insert("id".into(), 1.into());
    key.insert("private_key".into(), credentials.vapid.private_base64().into());
    set(&mut config, "vapid", "keys", toml::Value::Array(vec![key.into()]));
    set(
        &mut config,
        "gateway",
        "extra_root_certs",
        toml::Value::Array(vec![ca.display().to_string().into()]),
    );
    // The simulated push service listens on loopback, which pushfan refuses unless allowed.
    set(
        &mut config,
        "egress",
        "allowed_networks",
        toml::Value::Array(vec!["127.0.0.0/8".into(), "::1/128".into()]),
    );
    let mut tenant = toml::Table::new();
    tenant.insert("name".into(), TENANT.into());
    tenant.insert("api_keys".into(), toml::Value::Array(vec![credentials.api_key.clone().into()]));
    config.insert("tenants".into(), toml::Value::Array(vec![tenant.into()]));
    for (section, value) in overrides {
        match (config.get_mut(section), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(extra)) => {
                existing.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {
                config.insert(section.clone(), value.clone());
            }
        }
    }
    let text = toml::to_string(&config).map_err(|e| TargetError::Config(e.to_string()))?;
    let path = dir.join("pushfan.toml");
    std::fs::write(&path, text).map_err(files)?;
    Ok(path)
}

impl Spawned {
    /// Starts `binary standalone` and waits until its API listens.
    pub async fn start(
        binary: &Path,
        credentials: &Credentials,
        ca_pem: &str,
        overrides: &toml::Table,
    ) -> Result<Self, TargetError> {
        let dir = tempfile::tempdir().map_err(|source| TargetError::Files { path: "/tmp".into(), source })?;
        let config = write_config(dir.path(), credentials, ca_pem, overrides)?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("standalone")
            .env("RUST_LOG", "warn,pushfan=info")
            .env("NO_COLOR", "1")
            .env_remove("PUSHFAN_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| TargetError::Spawn { binary: binary.to_owned(), source })?;
        let pid = child.id().ok_or_else(|| TargetError::NotServing("exited at once".into()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("gRPC API listening") {
                    return parse_addr(&line);
                }
                seen.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| TargetError::NotServing(format!("its log said: {}", seen.join(" | "))))?;
        // Keep draining its log so it never blocks on a full pipe. Its errors show in ours; the
        // rest (e.g. a warning per 429 in a throttling scenario) only at debug level.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(" ERROR ") {
                    tracing::error!(target: "pushfan_child", "{line}");
                } else {
                    tracing::debug!(target: "pushfan_child", "{line}");
                }
            }
        });
        Ok(Self { child, pid, url: format!("http://{addr}"), _dir: dir })
    }

    /// Stops the child (SIGKILL: nothing of it is kept).
    pub async fn stop(mut self) {
        // Already gone is fine: there is nothing left to stop.
        let _ = self.child.kill().await;
    }
}

/// `… gRPC API listening addr=127.0.0.1:PORT` → `127.0.0.1:PORT`.
fn parse_addr(line: &str) -> Option<std::net::SocketAddr> {
    line.split_whitespace().find_map(|word| word.strip_prefix("addr=")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_line_gives_the_address() {
        let line = "2026-11-27T10:00:00Z  INFO pushfan: gRPC API listening addr=127.0.0.1:40123";
        assert_eq!(parse_addr(line), Some(([127, 0, 0, 1], 40123).into()));
        assert_eq!(parse_addr("gRPC API listening"), None);
    }

    #[test]
    fn the_config_has_the_credentials_and_the_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::generate();
        let overrides: toml::Table = toml::from_str("[gateway]\nmax_in_flight_per_origin = 7\n").unwrap();
        let path = write_config(dir.path(), &credentials, "PEM", &overrides).unwrap();
        let written: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(written["gateway"]["max_in_flight_per_origin"].as_integer(), Some(7));
        assert_eq!(written["gateway"]["extra_root_certs"].as_array().unwrap().len(), 1);
        assert_eq!(written["vapid"]["validity_secs"].as_integer(), Some(3600));
        assert_eq!(written["tenants"][0]["api_keys"][0].as_str(), Some(credentials.api_key.as_str()));
    }
}
