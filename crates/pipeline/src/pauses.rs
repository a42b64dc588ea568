//! Shares push-service pauses between the processes that deliver. A 429/503 pauses its origin in
//! the gateway that got it; every [`SHARE_EVERY`] each delivering process writes its pauses to the
//! [`PauseBoard`] and takes the others', so a throttling push service is held back by the whole
//! fleet within a fraction of a second instead of answering each process's first push with 429.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushfan_gateway::Gateway;
use pushfan_store::{OriginPause, PauseBoard};
use tokio_util::sync::CancellationToken;

use crate::{until_shutdown, PipelineError};

/// How often a process shares its pauses: well under the shortest `Retry-After` (a second) and
/// one small round trip each.
pub const SHARE_EVERY: Duration = Duration::from_millis(250);

/// Shares `gateway`'s pauses through `board` every [`SHARE_EVERY`] until `shutdown`. A failed
/// round is logged (by the store) and the next one tries again: a pause not shared only means
/// the others learn from their own 429.
pub async fn run(
    gateway: Gateway,
    board: Arc<dyn PauseBoard>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let mut rounds = tokio::time::interval(SHARE_EVERY);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    until_shutdown(&shutdown, async {
        loop {
            rounds.tick().await;
            let local: Vec<OriginPause> = gateway
                .paused_origins()
                .into_iter()
                .map(|(origin, until)| OriginPause { origin, until_ms: unix_ms(until) })
                .collect();
            if let Ok(shared) = board.share_pauses(&local, unix_ms(SystemTime::now())).await {
                for pause in shared {
                    gateway.pause_origin(&pause.origin, UNIX_EPOCH + Duration::from_millis(pause.until_ms));
                }
            }
        }
    })
    .await
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
