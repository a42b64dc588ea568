//! A Redis restart in the middle of a shard scan: Redis draws a new hash seed at every start, so
//! an `HSCAN` cursor from before the restart resumes somewhere else in the new iteration order.
//! The scan must notice and start the shard again, so that no subscription is skipped.
//!
//! The test runs its own `redis-server` (it must restart it) with every write fsynced to the
//! append-only file, on a free loopback port in 6470-6479.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{subscription, unique_tenant};
use pushfan_store::{
    Audience, RedisConfig, RedisStore, RedisTarget, ScanCursor, ScanPage, ShardCount, ShardId, StoreError,
    SubscriptionStore, TenantId,
};

/// A `redis-server` child process that is killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Self { child, port };
        server.wait_for_ping();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Waits until the server answers PING (it has loaded its append-only file by then).
    fn wait_for_ping(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..500 {
            let pong = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            if pong.is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// SHUTDOWN (which syncs the append-only file) and waits for the process to end.
    fn shutdown(mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_connection().unwrap();
        // The server closes the connection instead of answering.
        let _ = redis::cmd("SHUTDOWN").query::<()>(&mut connection);
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    (6470..=6479)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 6470-6479")
}

fn redis_server_installed() -> bool {
    Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok()
}

/// One page, retried while the store reconnects to a restarted server (a broadcast's shard job
/// retries a failed page the same way).
async fn page(store: &RedisStore, tenant: &TenantId, cursor: ScanCursor) -> ScanPage {
    for _ in 0..200 {
        match store.scan_shard(tenant, &Audience::Everyone, ShardId(0), cursor, PAGE).await {
            Ok(page) => return page,
            Err(StoreError::RedisUnavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("scan failed: {other}"),
        }
    }
    panic!("the store did not reconnect to the restarted redis");
}

const SUBSCRIPTIONS: u32 = 2_000;
const PAGE: usize = 100;

#[tokio::test]
async fn a_scan_resumed_after_a_redis_restart_returns_every_subscription() {
    if !redis_server_installed() {
        eprintln!("SKIPPED: redis-server is not installed (this test starts and restarts its own)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port);
    let config = RedisConfig::new(RedisTarget::Single(server.url()), ShardCount::new(1).unwrap());
    let store = RedisStore::connect(config).await.unwrap();
    let tenant = unique_tenant("restart");
    let subs: Vec<_> = (0..SUBSCRIPTIONS).map(|n| subscription(&tenant, n, &[])).collect();
    assert_eq!(store.import(&subs).await.unwrap(), subs.len());

    let mut seen = HashSet::new();
    let mut returned = 0;
    let mut cursor = ScanCursor::START;
    for _ in 0..5 {
        let page = page(&store, &tenant, cursor).await;
        returned += page.subscriptions.len();
        seen.extend(page.subscriptions.iter().map(|sub| sub.id));
        cursor = page.next.expect("the shard is larger than five pages");
    }
    // As a shard checkpoint keeps it.
    let saved = cursor.to_bytes();

    server.shutdown();
    let _server = Server::start(dir.path(), port);

    let mut cursor = Some(ScanCursor::from_bytes(&saved).unwrap());
    while let Some(at) = cursor {
        let page = page(&store, &tenant, at).await;
        returned += page.subscriptions.len();
        seen.extend(page.subscriptions.iter().map(|sub| sub.id));
        cursor = page.next;
    }
    let missing = subs.iter().filter(|sub| !seen.contains(&sub.id)).count();
    assert_eq!(missing, 0, "{missing} of {SUBSCRIPTIONS} subscriptions were never returned");
    eprintln!("{} subscriptions returned more than once after the restart", returned - seen.len());
}
