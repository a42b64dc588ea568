//! Peer programs (`loadtest/peers/<name>/run`): other Web Push libraries sending the same
//! broadcast to the same fleet, invoked and read per `peer-contract`: flags in, one JSON object
//! on the last line of stdout out.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pushfan_pushsim::{subscription_json, Population, PopulationError};
use serde::{Deserialize, Serialize};

/// Why a peer run failed (a missing peer is not an error: see [`find`]).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Writing the subscriptions or CA file.
    #[error("writing the peers' input files: {0}")]
    Files(#[from] std::io::Error),
    /// Deriving the subscriptions.
    #[error("exporting subscriptions: {0}")]
    Population(#[from] PopulationError),
    /// The launcher could not be run.
    #[error("running peer `{name}`: {source}")]
    Spawn {
        /// The peer.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited non-zero or printed no result.
    #[error("peer `{name}` failed (exit {status}); last lines of its stderr: {stderr}")]
    Failed {
        /// The peer.
        name: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// Its last stdout line is not the contract's JSON.
    #[error("peer `{name}` printed no result JSON on its last stdout line ({line:?}): {source}")]
    Output {
        /// The peer.
        name: String,
        /// The line.
        line: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// The JSON object a peer prints last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerResult {
    /// Its name.
    pub peer: String,
    /// The library it uses.
    pub library: String,
    /// The library's version.
    pub version: String,
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// Answers by status.
    #[serde(default)]
    pub statuses: BTreeMap<String, u64>,
    /// Transport or library errors by kind.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// First request to last response.
    pub wall_seconds: f64,
    /// Its own user+system CPU over that window.
    pub cpu_seconds: f64,
    /// Requests in flight.
    pub concurrency: u64,
    /// Plaintext size.
    pub payload_bytes: u64,
}

/// The launcher of peer `name` if it is installed (an executable `run`), else `None`.
pub fn find(peers_dir: &Path, name: &str) -> Option<PathBuf> {
    let run = peers_dir.join(name).join("run");
    let executable =
        std::fs::metadata(&run).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    executable.then_some(run)
}

/// Writes the first `count` subscriptions as `PushSubscription.toJSON()` lines.
pub fn export_subscriptions(population: &Population, count: u64, path: &Path) -> Result<(), PeerError> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for start in (0..count).step_by(10_000) {
        for subscriber in population.subscribers(start..(start + 10_000).min(count))? {
            writeln!(out, "{}", subscription_json(&subscriber))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// What a peer is asked to send.
#[derive(Debug)]
pub struct PeerRequest<'a> {
    /// The subscriptions file.
    pub subscriptions: &'a Path,
    /// The fleet's CA (PEM).
    pub ca: &'a Path,
    /// VAPID private scalar, base64url.
    pub vapid_private: &'a str,
    /// VAPID public key, base64url.
    pub vapid_public: &'a str,
    /// VAPID `sub`.
    pub subject: &'a str,
    /// Plaintext size.
    pub payload_bytes: usize,
    /// How many subscriptions to send to.
    pub count: u64,
    /// In flight.
    pub concurrency: u32,
    /// TTL header.
    pub ttl: u32,
}

/// Runs one peer to completion and reads its result.
pub async fn run(name: &str, launcher: &Path, request: &PeerRequest<'_>) -> Result<PeerResult, PeerError> {
    let output = tokio::process::Command::new(launcher)
        .arg("--subscriptions")
        .arg(request.subscriptions)
        .arg("--ca")
        .arg(request.ca)
        .args(["--vapid-private", request.vapid_private, "--vapid-public", request.vapid_public])
        .args(["--subject", request.subject])
        .args(["--payload-bytes", &request.payload_bytes.to_string()])
        .args(["--count", &request.count.to_string()])
        .args(["--concurrency", &request.concurrency.to_string()])
        .args(["--ttl", &request.ttl.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PeerError::Spawn { name: name.to_owned(), source })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(PeerError::Failed {
            name: name.to_owned(),
            status: output.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
    serde_json::from_str(&line).map_err(|source| PeerError::Output { name: name.to_owned(), line, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_launchers_count_as_installed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path(), "nope"), None);
        std::fs::create_dir(dir.path().join("p")).unwrap();
        let run = dir.path().join("p/run");
        std::fs::write(&run, "#!/bin/sh\n").unwrap();
        assert_eq!(find(dir.path(), "p"), None);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(dir.path(), "p"), Some(run));
    }

    #[tokio::test]
    async fn a_peer_is_invoked_per_the_contract_and_its_last_line_read() {
        let dir = tempfile::tempdir().unwrap();
        let run_path = dir.path().join("run");
        // A stand-in launcher that checks its flags and answers like a peer would.
        let script = r#"#!/bin/bash
set -eu
[ "$1" = --subscriptions ] && [ "${13}" = --count ] && [ "${14}" = 3 ] || { echo "bad args: $*" >&2; exit 2; }
echo "diagnostics"
echo '{"peer":"fake","library":"none","version":"0","sent":3,"accepted":3,"statuses":{"201":3},"errors":{},"wall_seconds":0.5,"cpu_seconds":0.25,"concurrency":2,"payload_bytes":10}'
"#;
        std::fs::write(&run_path, script).unwrap();
        std::fs::set_permissions(&run_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("x");
        let request = PeerRequest {
            subscriptions: &file,
            ca: &file,
            vapid_private: "a",
            vapid_public: "b",
            subject: "mailto:a@b.c",
            payload_bytes: 10,
            count: 3,
            concurrency: 2,
            ttl: 60,
        };
        let result = run("fake", &run_path, &request).await.unwrap();
        assert_eq!((result.sent, result.accepted, result.cpu_seconds), (3, 3, 0.25));
        std::fs::write(&run_path, "#!/bin/bash\necho oops >&2\nexit 3\n").unwrap();
        let failed = run("fake", &run_path, &request).await.unwrap_err().to_string();
        assert!(failed.contains("oops"), "{failed}");
    }
}
