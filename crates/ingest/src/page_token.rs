//! `ListSubscriptions` page tokens: where a listing continues, as an opaque base64url string.
//!
//! A listing walks the store's shards in order, each with the store's own scan cursor, so the
//! position is (shard, cursor). The token also carries a fingerprint of the listed audience, so
//! a token from a listing of one topic is refused for another instead of silently mixing them.
//! The token is not secret: it holds no tenant data and is only honoured for the tenant's own
//! listing (every store call is scoped to the authenticated tenant).
//!
//! Layout: version byte `1`, 4-byte audience fingerprint, big-endian `u16` shard, then
//! `ScanCursor::to_bytes`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pushfan_store::{Audience, ScanCursor, ShardId};
use sha2::{Digest, Sha256};

use crate::error::IngestError;

const VERSION: u8 = 1;

/// Where a listing continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagePosition {
    /// The shard being scanned.
    pub shard: ShardId,
    /// The scan cursor within it.
    pub cursor: ScanCursor,
}

impl PagePosition {
    /// The beginning of a listing.
    pub const START: Self = Self { shard: ShardId(0), cursor: ScanCursor::START };

    /// The token for continuing a listing of `audience` here.
    pub fn encode(&self, audience: &Audience) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&fingerprint(audience));
        bytes.extend_from_slice(&self.shard.0.to_be_bytes());
        bytes.extend_from_slice(&self.cursor.to_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token for a listing of `audience`; the empty token is the start.
    pub fn decode(token: &str, audience: &Audience) -> Result<Self, IngestError> {
        if token.is_empty() {
            return Ok(Self::START);
        }
        let invalid = || IngestError::invalid("page_token", "is not a token this API returned");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let [VERSION, f0, f1, f2, f3, s0, s1, cursor @ ..] = bytes.as_slice() else {
            return Err(invalid());
        };
        if [*f0, *f1, *f2, *f3] != fingerprint(audience) {
            return Err(IngestError::invalid("page_token", "belongs to a listing of a different topic"));
        }
        let cursor = ScanCursor::from_bytes(cursor).map_err(|_| invalid())?;
        Ok(Self { shard: ShardId(u16::from_be_bytes([*s0, *s1])), cursor })
    }
}

fn fingerprint(audience: &Audience) -> [u8; 4] {
    let digest = match audience {
        Audience::Everyone => Sha256::digest(b"everyone"),
        Audience::Topic(topic) => Sha256::digest(format!("topic:{topic}").as_bytes()),
    };
    [digest[0], digest[1], digest[2], digest[3]]
}

#[cfg(test)]
mod tests {
    use pushfan_store::Topic;

    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_audience() {
        let news = Audience::Topic(Topic::new("news").unwrap());
        let position = PagePosition { shard: ShardId(9), cursor: ScanCursor::START };
        let token = position.encode(&news);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(PagePosition::decode(&token, &news).unwrap(), position);
        assert_eq!(PagePosition::decode("", &news).unwrap(), PagePosition::START);
        let err = PagePosition::decode(&token, &Audience::Everyone).unwrap_err();
        assert_eq!(err.to_string(), "page_token: belongs to a listing of a different topic");
        for bad in ["!!", "AQ", &URL_SAFE_NO_PAD.encode([2, 0, 0, 0, 0, 0, 0, 0])] {
            assert!(
                matches!(PagePosition::decode(bad, &news), Err(IngestError::InvalidArgument { .. })),
                "{bad}"
            );
        }
    }
}
