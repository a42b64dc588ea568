//! Broadcast ids: ULIDs (48-bit millisecond time, 80 random bits, 26 Crockford base32
//! characters). Time-ordered, so ids sort by when they were published in logs and listings, and
//! inside the ledger's `[A-Za-z0-9_-]`, ≤ 64 rule.

use std::time::SystemTime;

use rand_core::{OsRng, RngCore};

use crate::convert::unix_ms;
use crate::error::IngestError;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new id for a broadcast published at `now`.
pub fn new_broadcast_id(now: SystemTime) -> Result<String, IngestError> {
    let mut random = [0; 10];
    OsRng.try_fill_bytes(&mut random).map_err(|error| IngestError::Entropy(error.to_string()))?;
    Ok(ulid(u64::try_from(unix_ms(now)).unwrap_or(0), random))
}

/// The ULID of `time_ms` (its low 48 bits) and `random`.
fn ulid(time_ms: u64, random: [u8; 10]) -> String {
    let mut value = u128::from(time_ms & 0xFFFF_FFFF_FFFF) << 80;
    for (n, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (8 * (9 - n));
    }
    // 26 characters of 5 bits: 130 bits, the top two always zero.
    (0..26).rev().map(|n| char::from(CROCKFORD[((value >> (5 * n)) & 0x1F) as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_match_the_spec_and_sort_by_time() {
        assert_eq!(ulid(0, [0; 10]), "00000000000000000000000000");
        assert_eq!(ulid(u64::MAX, [0xFF; 10]), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // The ULID spec's example timestamp 1469918176385 encodes as 01ARYZ6S41.
        assert!(ulid(1_469_918_176_385, [0; 10]).starts_with("01ARYZ6S41"));
        assert!(ulid(1_000, [0xFF; 10]) < ulid(1_001, [0; 10]));
        let id = new_broadcast_id(SystemTime::now()).unwrap();
        assert_eq!(id.len(), 26);
        assert!(pushfan_store::ledger::BroadcastId::new(&id).is_ok());
    }
}
