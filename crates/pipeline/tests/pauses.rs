//! Push-service pauses shared through a real Redis: a pause one process holds reaches another
//! process's gateway through `pauses::run`. Needs `PUSHFAN_TEST_REDIS_URL` (`scripts/test`
//! starts Redis).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pushfan_gateway::{Gateway, GatewayConfig};
use pushfan_pipeline::pauses;
use pushfan_store::{RedisConfig, RedisStore, RedisTarget, ShardCount};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_pause_reaches_every_process_sharing_the_board() {
    let url = std::env::var("PUSHFAN_TEST_REDIS_URL")
        .expect("PUSHFAN_TEST_REDIS_URL is not set: run scripts/test, which starts Redis");
    let board = Arc::new(
        RedisStore::connect(RedisConfig::new(RedisTarget::Single(url), ShardCount::DEFAULT)).await.unwrap(),
    );
    let (throttled, other) =
        (Gateway::new(GatewayConfig::default()).unwrap(), Gateway::new(GatewayConfig::default()).unwrap());
    // The board is shared by every test on this Redis: an origin of this test's own.
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    let origin = format!("https://p{}-{nanos}.push.example", std::process::id());
    let until = SystemTime::now() + Duration::from_secs(30);
    throttled.pause_origin(&origin, until);

    let shutdown = CancellationToken::new();
    for gateway in [&throttled, &other] {
        tokio::spawn(pauses::run(gateway.clone(), board.clone(), shutdown.clone()));
    }
    // Up to 10 s: a bound on waiting, not a timing check (a round is every 250 ms).
    let mut learnt = None;
    for _ in 0..200 {
        learnt = other.paused_origins().into_iter().find(|(name, _)| *name == origin);
        if learnt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, learnt_until) = learnt.expect("the other gateway learnt the pause");
    // The same end, up to the board's millisecond resolution and the clocks' conversions.
    let gap = learnt_until.duration_since(until).unwrap_or_else(|e| e.duration());
    assert!(gap < Duration::from_millis(50), "{learnt_until:?} against {until:?}");
    shutdown.cancel();
}
