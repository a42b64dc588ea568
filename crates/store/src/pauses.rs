//! Push-service pauses shared by every process that delivers. A 429 or 503 with `Retry-After`
//! pauses an origin in the gateway that received it; through a [`PauseBoard`] the other
//! delivering processes (workers with the direct hand-off, gateways) hold back that origin too,
//! instead of each learning from its own 429.

use async_trait::async_trait;

use crate::error::StoreError;

/// One origin's pause: until when (milliseconds since the Unix epoch) nothing is sent to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPause {
    /// The push service's origin (`https://host[:port]`).
    pub origin: String,
    /// When the pause ends, in milliseconds since the Unix epoch.
    pub until_ms: u64,
}

/// Where delivering processes share their pauses. Keyed by origin, not by tenant: a process's
/// connections and pauses are per origin for every tenant alike.
#[async_trait]
pub trait PauseBoard: Send + Sync + std::fmt::Debug {
    /// Adds `local` (keeping, per origin, the pause that ends later) and returns every pause
    /// that has not ended at `now_ms`. Ended pauses are dropped.
    async fn share_pauses(&self, local: &[OriginPause], now_ms: u64) -> Result<Vec<OriginPause>, StoreError>;
}
