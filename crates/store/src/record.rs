//! The compact binary record one subscription is stored as (both backends use it). Pure; no I/O.
//!
//! The id and the tenant are not in the record: they are in its key. Layout, version 1:
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       4     last success, u32 BE Unix seconds, 0 = never      ┐ fixed offsets: the Redis
//! 5       2     consecutive failures, u16 BE, saturating           ┘ outcome script edits them
//! 7       1     supported content encodings (bit 0 aes128gcm, bit 1 aesgcm); bit 7: an
//!                 expiration time follows the endpoint
//! 8       4     created, u32 BE Unix seconds
//! 12      65    p256dh (uncompressed P-256 point)
//! 77      16    auth secret
//! 93      1-5   VAPID key id, LEB128
//! ..            endpoint: a mode byte, bits 0-6 an interned prefix (0 = none), bit 7 "packed";
//!                 packed: char count u8, position of the one ':' u8 (0xff = none), then the
//!                         other chars 6 bits each (base64url alphabet), MSB first
//!                 raw:    byte count LEB128, then the bytes
//! ..      0/8   expiration time, u64 BE Unix milliseconds (only with bit 7 of byte 7)
//! ..            topics: count u8, then per topic its length u8 and bytes
//! ```
//!
//! The expiration time came after version 1's first records; a flag rather than a new version
//! keeps every record written before readable as it is, and the Redis scripts unchanged.
//!
//! The Redis scripts depend on the first 7 bytes staying put: the outcome script edits bytes 1-6
//! in place, and the retag script keeps bytes 0-6 of the stored record while replacing the rest.
//!
//! Interning the push service's URL prefix and packing the base64url token (FCM, Mozilla and
//! Apple all use one) takes a 180-byte FCM endpoint to 110 bytes and the whole record to about
//! 206 bytes, which is what keeps a subscription under 300 bytes of Redis memory. The prefix
//! table is part of the format: append to it, never reorder it.

use pushfan_webpush::{Endpoint, EndpointPolicy, SubscriptionError, SubscriptionKeys};

use crate::model::{
    ContentEncodings, DeliveryResult, Subscription, SubscriptionId, TenantId, Topic, UnixSeconds, VapidKeyId,
    MAX_TOPICS_PER_SUBSCRIPTION,
};

/// The format version this code writes and reads.
pub(crate) const VERSION: u8 = 1;
/// Where the last-success time starts (4 bytes).
pub(crate) const LAST_SUCCESS_OFFSET: usize = 1;
/// Where the consecutive-failure count starts (2 bytes).
pub(crate) const FAILURES_OFFSET: usize = 5;
/// The last-success time is kept to this resolution: a broadcast to everyone would otherwise
/// rewrite every record it reaches, a store write per push for a timestamp nobody needs to
/// the second (autopush keeps its `last_connect` coarse for the same reason).
pub const SUCCESS_RESOLUTION_SECS: u32 = 3600;
const ENCODINGS_OFFSET: usize = 7;
/// In the encodings byte: an expiration time follows the endpoint.
const HAS_EXPIRATION: u8 = 0x80;
/// The outcome header: the version and the two outcome fields, bytes 0-6. The embedded store
/// keeps an edited copy beside the record rather than rewriting the record.
pub(crate) const OUTCOME_LEN: usize = ENCODINGS_OFFSET;
/// An outcome header with nothing recorded yet, for an outcome that sets every field (a
/// success) where the record's own header was not read.
pub(crate) const BLANK_OUTCOME: [u8; OUTCOME_LEN] = {
    let mut header = [0; OUTCOME_LEN];
    header[0] = VERSION;
    header
};
const CREATED_OFFSET: usize = 8;
const P256DH_OFFSET: usize = 12;
const AUTH_OFFSET: usize = 77;
const VAPID_OFFSET: usize = 93;

/// Push service URL prefixes stored as one byte. Index 0 means "no prefix". Append only.
const ENDPOINT_PREFIXES: [&str; 7] = [
    "",
    "https://fcm.googleapis.com/fcm/send/",
    "https://fcm.googleapis.com/wp/",
    "https://updates.push.services.mozilla.com/wpush/v2/",
    "https://updates.push.services.mozilla.com/wpush/v1/",
    "https://web.push.apple.com/",
    "https://android.googleapis.com/gcm/send/",
];
const PACKED: u8 = 0x80;
const NO_COLON: u8 = 0xff;
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a stored record could not be read back. Seeing one means the data was damaged or written
/// by a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record ends early")]
    Truncated,
    #[error("record has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("record format version {0} is unknown")]
    UnknownVersion(u8),
    #[error("record has unknown content-encoding bits {0:#04x}")]
    UnknownEncodings(u8),
    #[error("record names unknown endpoint prefix {0}")]
    UnknownEndpointPrefix(u8),
    #[error("record's packed endpoint is malformed")]
    BadPackedEndpoint,
    #[error("record's endpoint is invalid: {0}")]
    BadEndpoint(SubscriptionError),
    #[error("record's keys are invalid: {0}")]
    BadKeys(SubscriptionError),
    #[error("record has an invalid topic")]
    BadTopic,
}

/// Appends the record of `subscription` to `out`.
pub(crate) fn encode(subscription: &Subscription, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&subscription.last_success_at.map_or(0, |t| t.0).to_be_bytes());
    out.extend_from_slice(&subscription.consecutive_failures.to_be_bytes());
    let expiration_flag = if subscription.expiration_time_ms.is_some() { HAS_EXPIRATION } else { 0 };
    out.push(subscription.encodings.bits() | expiration_flag);
    out.extend_from_slice(&subscription.created_at.0.to_be_bytes());
    out.extend_from_slice(subscription.keys.p256dh());
    out.extend_from_slice(subscription.keys.auth());
    write_varint(subscription.vapid_key.0, out);
    encode_endpoint(subscription.endpoint.as_str(), out);
    if let Some(expires) = subscription.expiration_time_ms {
        out.extend_from_slice(&expires.to_be_bytes());
    }
    encode_topics(&subscription.topics, out);
}

/// Reads a record back into a full subscription. The endpoint is parsed again; the keys, checked
/// on the way in, are checked again by the encryption backends (see `SubscriptionKeys::from_stored`).
pub(crate) fn decode(
    tenant: &TenantId,
    id: SubscriptionId,
    record: &[u8],
) -> Result<Subscription, RecordError> {
    let fixed = record.get(..VAPID_OFFSET).ok_or(RecordError::Truncated)?;
    if fixed[0] != VERSION {
        return Err(RecordError::UnknownVersion(fixed[0]));
    }
    let (last_success_at, consecutive_failures) = outcome(fixed)?;
    let has_expiration = fixed[ENCODINGS_OFFSET] & HAS_EXPIRATION != 0;
    let encodings = ContentEncodings::from_bits(fixed[ENCODINGS_OFFSET] & !HAS_EXPIRATION)
        .ok_or(RecordError::UnknownEncodings(fixed[ENCODINGS_OFFSET]))?;
    let created_at = UnixSeconds(u32::from_be_bytes(array(&fixed[CREATED_OFFSET..])));
    let keys = SubscriptionKeys::from_stored(array(&fixed[P256DH_OFFSET..]), array(&fixed[AUTH_OFFSET..]))
        .map_err(RecordError::BadKeys)?;
    let mut rest = &record[VAPID_OFFSET..];
    let vapid_key = VapidKeyId(read_varint(&mut rest)?);
    let endpoint = decode_endpoint(&mut rest)?;
    // Import already applied the deployment's endpoint policy; here only well-formedness matters.
    let endpoint =
        Endpoint::from_serialized(endpoint, EndpointPolicy::stored()).map_err(RecordError::BadEndpoint)?;
    let expiration_time_ms =
        if has_expiration { Some(u64::from_be_bytes(array(take(&mut rest, 8)?))) } else { None };
    let topics = decode_topics(&mut rest)?;
    if !rest.is_empty() {
        return Err(RecordError::TrailingBytes(rest.len()));
    }
    Ok(Subscription {
        id,
        tenant: tenant.clone(),
        endpoint,
        keys,
        encodings,
        vapid_key,
        topics,
        created_at,
        last_success_at,
        consecutive_failures,
        expiration_time_ms,
    })
}

/// A copy of the outcome header at the front of a record (or of a kept header).
pub(crate) fn outcome_header(stored: &[u8]) -> Result<[u8; OUTCOME_LEN], RecordError> {
    Ok(array(stored.get(..OUTCOME_LEN).ok_or(RecordError::Truncated)?))
}

/// The outcome fields of a record or of its outcome header alone: last success, failures.
pub(crate) fn outcome(header: &[u8]) -> Result<(Option<UnixSeconds>, u16), RecordError> {
    let header = header.get(..OUTCOME_LEN).ok_or(RecordError::Truncated)?;
    if header[0] != VERSION {
        return Err(RecordError::UnknownVersion(header[0]));
    }
    let last_success = u32::from_be_bytes(array(&header[LAST_SUCCESS_OFFSET..]));
    let failures = u16::from_be_bytes(array(&header[FAILURES_OFFSET..]));
    Ok(((last_success != 0).then_some(UnixSeconds(last_success)), failures))
}

/// The topics of a record, without decoding (or validating) the rest.
pub(crate) fn topics(record: &[u8]) -> Result<Vec<Topic>, RecordError> {
    let mut rest = &record[topics_offset(record)?..];
    let topics = decode_topics(&mut rest)?;
    if !rest.is_empty() {
        return Err(RecordError::TrailingBytes(rest.len()));
    }
    Ok(topics)
}

/// `record` with its topics replaced by `topics` (sorted, deduplicated, at most
/// [`MAX_TOPICS_PER_SUBSCRIPTION`]: callers check).
pub(crate) fn with_topics(record: &[u8], topics: &[Topic]) -> Result<Vec<u8>, RecordError> {
    let offset = topics_offset(record)?;
    let mut out = Vec::with_capacity(offset + 1 + topics.iter().map(|t| 1 + t.as_str().len()).sum::<usize>());
    out.extend_from_slice(&record[..offset]);
    encode_topics(topics, &mut out);
    Ok(out)
}

/// Records a delivery outcome in place, in a record or its outcome header alone (the first
/// [`OUTCOME_LEN`] bytes): a success sets the last-success time and clears the failure count,
/// a failure increments the count (saturating). Returns whether anything changed: a success
/// within [`SUCCESS_RESOLUTION_SECS`] of the recorded one, with no failures since, is not worth
/// a write. The Redis outcome script does the same edit server-side.
pub(crate) fn apply_outcome(
    record: &mut [u8],
    result: DeliveryResult,
    now: UnixSeconds,
) -> Result<bool, RecordError> {
    if record.len() < OUTCOME_LEN {
        return Err(RecordError::Truncated);
    }
    if record[0] != VERSION {
        return Err(RecordError::UnknownVersion(record[0]));
    }
    let failures = match result {
        DeliveryResult::Delivered => {
            let last = u32::from_be_bytes(array(&record[LAST_SUCCESS_OFFSET..]));
            let clean = u16::from_be_bytes(array(&record[FAILURES_OFFSET..])) == 0;
            if clean && last != 0 && (last..last.saturating_add(SUCCESS_RESOLUTION_SECS)).contains(&now.0) {
                return Ok(false);
            }
            record[LAST_SUCCESS_OFFSET..FAILURES_OFFSET].copy_from_slice(&now.0.to_be_bytes());
            0
        }
        DeliveryResult::Failed => u16::from_be_bytes(array(&record[FAILURES_OFFSET..])).saturating_add(1),
    };
    record[FAILURES_OFFSET..ENCODINGS_OFFSET].copy_from_slice(&failures.to_be_bytes());
    Ok(true)
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn topics_offset(record: &[u8]) -> Result<usize, RecordError> {
    let mut rest = record.get(VAPID_OFFSET..).ok_or(RecordError::Truncated)?;
    if record[0] != VERSION {
        return Err(RecordError::UnknownVersion(record[0]));
    }
    read_varint(&mut rest)?;
    skip_endpoint(&mut rest)?;
    if record[ENCODINGS_OFFSET] & HAS_EXPIRATION != 0 {
        take(&mut rest, 8)?;
    }
    Ok(record.len() - rest.len())
}

fn encode_endpoint(endpoint: &str, out: &mut Vec<u8>) {
    let (prefix_index, body) = ENDPOINT_PREFIXES
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, prefix)| endpoint.starts_with(*prefix))
        .max_by_key(|(_, prefix)| prefix.len())
        .map_or((0, endpoint), |(index, prefix)| (index, &endpoint[prefix.len()..]));
    let prefix_index = prefix_index as u8;
    if let Some(colon) = packable(body) {
        out.push(prefix_index | PACKED);
        out.push(body.len() as u8);
        out.push(colon);
        pack6(body.bytes().filter(|&b| b != b':'), out);
    } else {
        out.push(prefix_index);
        write_varint(body.len() as u32, out);
        out.extend_from_slice(body.as_bytes());
    }
}

/// `Some(colon position or NO_COLON)` when `body` is base64url with at most one ':' and short
/// enough for a one-byte length.
fn packable(body: &str) -> Option<u8> {
    if body.is_empty() || body.len() >= usize::from(NO_COLON) {
        return None;
    }
    let mut colon = NO_COLON;
    for (position, byte) in body.bytes().enumerate() {
        if byte == b':' && colon == NO_COLON {
            colon = position as u8;
        } else if sextet(byte).is_none() {
            return None;
        }
    }
    Some(colon)
}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

fn pack6(chars: impl Iterator<Item = u8>, out: &mut Vec<u8>) {
    let (mut bits, mut held) = (0u32, 0u32);
    for byte in chars {
        // `packable` admitted only base64url bytes here.
        bits = (bits << 6) | u32::from(sextet(byte).unwrap_or(0));
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    if held > 0 {
        out.push((bits << (8 - held)) as u8);
    }
}

fn packed_len(chars: usize) -> usize {
    (chars * 6).div_ceil(8)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], RecordError> {
    if rest.len() < n {
        return Err(RecordError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn prefix_of(mode: u8) -> Result<&'static str, RecordError> {
    ENDPOINT_PREFIXES
        .get(usize::from(mode & !PACKED))
        .copied()
        .ok_or(RecordError::UnknownEndpointPrefix(mode & !PACKED))
}

fn decode_endpoint(rest: &mut &[u8]) -> Result<String, RecordError> {
    let mode = take(rest, 1)?[0];
    let prefix = prefix_of(mode)?;
    if mode & PACKED == 0 {
        let len = read_varint(rest)? as usize;
        let body = std::str::from_utf8(take(rest, len)?).map_err(|_| RecordError::BadPackedEndpoint)?;
        return Ok([prefix, body].concat());
    }
    let header = take(rest, 2)?;
    let (len, colon) = (usize::from(header[0]), header[1]);
    if colon != NO_COLON && usize::from(colon) >= len {
        return Err(RecordError::BadPackedEndpoint);
    }
    let packed_chars =
        if colon == NO_COLON { len } else { len.checked_sub(1).ok_or(RecordError::BadPackedEndpoint)? };
    let packed = take(rest, packed_len(packed_chars))?;
    let mut endpoint = String::with_capacity(prefix.len() + len);
    endpoint.push_str(prefix);
    // Three packed bytes hold four chars; scans decode every record, so this loop is hot.
    let mut remaining = packed_chars;
    for group in packed.chunks(3) {
        let bits =
            group.iter().enumerate().fold(0u32, |bits, (i, &byte)| bits | u32::from(byte) << (16 - 8 * i));
        for shift in [18, 12, 6, 0].into_iter().take(remaining.min(4)) {
            endpoint.push(char::from(BASE64URL[((bits >> shift) & 0x3f) as usize]));
        }
        remaining = remaining.saturating_sub(4);
    }
    if colon != NO_COLON {
        endpoint.insert(prefix.len() + usize::from(colon), ':');
    }
    Ok(endpoint)
}

fn skip_endpoint(rest: &mut &[u8]) -> Result<(), RecordError> {
    let mode = take(rest, 1)?[0];
    prefix_of(mode)?;
    let len = if mode & PACKED == 0 {
        read_varint(rest)? as usize
    } else {
        let header = take(rest, 2)?;
        packed_len(usize::from(header[0]) - usize::from(header[1] != NO_COLON && header[0] > 0))
    };
    take(rest, len)?;
    Ok(())
}

fn encode_topics(topics: &[Topic], out: &mut Vec<u8>) {
    out.push(topics.len() as u8);
    for topic in topics {
        // Topic names are at most 64 bytes (validated), so one length byte suffices.
        out.push(topic.as_str().len() as u8);
        out.extend_from_slice(topic.as_str().as_bytes());
    }
}

fn decode_topics(rest: &mut &[u8]) -> Result<Vec<Topic>, RecordError> {
    let count = usize::from(take(rest, 1)?[0]);
    if count > MAX_TOPICS_PER_SUBSCRIPTION {
        return Err(RecordError::BadTopic);
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(take(rest, 1)?[0]);
        let name = std::str::from_utf8(take(rest, len)?).map_err(|_| RecordError::BadTopic)?;
        topics.push(Topic::new(name).map_err(|_| RecordError::BadTopic)?);
    }
    Ok(topics)
}

fn write_varint(mut value: u32, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(rest: &mut &[u8]) -> Result<u32, RecordError> {
    let mut value = 0u32;
    for shift in (0..35).step_by(7) {
        let byte = take(rest, 1)?[0];
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecordError::Truncated)
}

#[cfg(test)]
mod tests {
    use pushfan_webpush::PushSubscription;

    use super::*;

    // RFC 8291 Appendix A.
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    /// 180 bytes, shaped like a real FCM endpoint (prefix, instance id, ':', token).
    const FCM: &str = "https://fcm.googleapis.com/fcm/send/cXJ0aW9uLWlkZW50aWZpZXI:APA91bHPRgkFLJu6-qwErtyUIOPasdfGHJKLzxcvbnmQWERTYUIOPasdfghjklZXCVBNM1234567890_-ghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS";

    fn subscription(endpoint: &str, topics: &[&str]) -> Subscription {
        let push =
            PushSubscription::new(endpoint, UA_PUBLIC, AUTH, &EndpointPolicy::allow_http_loopback()).unwrap();
        Subscription::new(
            TenantId::new("acme").unwrap(),
            push,
            ContentEncodings::AES128GCM.union(ContentEncodings::AESGCM),
            VapidKeyId(300),
            topics.iter().map(|t| Topic::new(t).unwrap()).collect(),
            UnixSeconds(1_700_000_000),
        )
        .unwrap()
    }

    fn round_trip(sub: &Subscription) -> Vec<u8> {
        let mut record = Vec::new();
        encode(sub, &mut record);
        assert_eq!(&decode(&sub.tenant, sub.id, &record).unwrap(), sub);
        record
    }

    #[test]
    fn records_round_trip_for_every_endpoint_shape() {
        assert_eq!(FCM.len(), 180);
        for endpoint in [
            FCM,
            "https://fcm.googleapis.com/fcm/send/noColonAtAll",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk_-x",
            "https://web.push.apple.com/QGm4u:",
            "https://push.example/other/path?with=query&and:two:colons",
            "https://fcm.googleapis.com/fcm/send/",
            "http://127.0.0.1:8080/p/1",
            &format!("https://fcm.googleapis.com/fcm/send/{}", "A".repeat(300)),
        ] {
            round_trip(&subscription(endpoint, &[]));
        }
    }

    #[test]
    fn a_typical_fcm_record_is_small() {
        let record = round_trip(&subscription(FCM, &[]));
        // 93 fixed + 2 VAPID id + 3 endpoint header + 108 packed + 1 topic count.
        assert_eq!(record.len(), 207);
    }

    #[test]
    fn topics_can_be_read_and_replaced_without_a_full_decode() {
        let sub = subscription(FCM, &["sport", "news"]);
        let record = round_trip(&sub);
        assert_eq!(topics(&record).unwrap(), sub.topics);
        let weather = vec![Topic::new("weather").unwrap()];
        let replaced = with_topics(&record, &weather).unwrap();
        let decoded = decode(&sub.tenant, sub.id, &replaced).unwrap();
        assert_eq!(decoded.topics, weather);
        assert_eq!(decoded.endpoint, sub.endpoint);
    }

    #[test]
    fn an_expiration_time_round_trips_and_survives_a_retag() {
        let sub =
            Subscription { expiration_time_ms: Some(1_900_000_000_123), ..subscription(FCM, &["news"]) };
        let record = round_trip(&sub);
        assert_eq!(record.len(), 207 + 8 + 5);
        assert_eq!(record[ENCODINGS_OFFSET] & HAS_EXPIRATION, HAS_EXPIRATION);
        let weather = vec![Topic::new("weather").unwrap()];
        let replaced = decode(&sub.tenant, sub.id, &with_topics(&record, &weather).unwrap()).unwrap();
        assert_eq!(replaced, Subscription { topics: weather, ..sub.clone() });
        // Without one, a record is byte for byte what it was before expiration times were kept.
        let plain = round_trip(&Subscription { expiration_time_ms: None, ..sub });
        assert_eq!(plain[ENCODINGS_OFFSET] & HAS_EXPIRATION, 0);
        let mut cut = record.clone();
        cut.truncate(record.len() - 5 - 4);
        assert!(decode(&replaced.tenant, replaced.id, &cut).is_err());
    }

    #[test]
    fn outcomes_edit_the_fixed_fields_in_place() {
        let sub = subscription(FCM, &["news"]);
        let mut record = round_trip(&sub);
        for _ in 0..3 {
            apply_outcome(&mut record, DeliveryResult::Failed, UnixSeconds(5)).unwrap();
        }
        let decoded = decode(&sub.tenant, sub.id, &record).unwrap();
        assert_eq!((decoded.consecutive_failures, decoded.last_success_at), (3, None));
        assert!(apply_outcome(&mut record, DeliveryResult::Delivered, UnixSeconds(1_800_000_000)).unwrap());
        let decoded = decode(&sub.tenant, sub.id, &record).unwrap();
        assert_eq!(
            (decoded.consecutive_failures, decoded.last_success_at),
            (0, Some(UnixSeconds(1_800_000_000)))
        );
        // Another success within the resolution changes nothing; one past it moves the time.
        let within = 1_800_000_000 + SUCCESS_RESOLUTION_SECS - 1;
        let unchanged = record.clone();
        assert!(!apply_outcome(&mut record, DeliveryResult::Delivered, UnixSeconds(within)).unwrap());
        assert_eq!(record, unchanged);
        let past = 1_800_000_000 + SUCCESS_RESOLUTION_SECS;
        assert!(apply_outcome(&mut record, DeliveryResult::Delivered, UnixSeconds(past)).unwrap());
        assert_eq!(decode(&sub.tenant, sub.id, &record).unwrap().last_success_at, Some(UnixSeconds(past)));
        // A failure in between makes the next success count at once.
        assert!(apply_outcome(&mut record, DeliveryResult::Failed, UnixSeconds(past + 1)).unwrap());
        assert!(apply_outcome(&mut record, DeliveryResult::Delivered, UnixSeconds(past + 2)).unwrap());
        assert_eq!(
            decode(&sub.tenant, sub.id, &record).unwrap().last_success_at,
            Some(UnixSeconds(past + 2))
        );
        record[FAILURES_OFFSET..FAILURES_OFFSET + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        apply_outcome(&mut record, DeliveryResult::Failed, UnixSeconds(5)).unwrap();
        assert_eq!(decode(&sub.tenant, sub.id, &record).unwrap().consecutive_failures, u16::MAX);
    }

    #[test]
    fn damaged_records_are_reported_not_misread() {
        let sub = subscription(FCM, &["news"]);
        let record = round_trip(&sub);
        let read = |bytes: &[u8]| decode(&sub.tenant, sub.id, bytes).unwrap_err();
        assert_eq!(read(&record[..50]), RecordError::Truncated);
        assert_eq!(read(&record[..record.len() - 1]), RecordError::Truncated);
        assert_eq!(read(&[record.as_slice(), &[0]].concat()), RecordError::TrailingBytes(1));
        let mut bad = record.clone();
        bad[0] = 2;
        assert_eq!(read(&bad), RecordError::UnknownVersion(2));
        let mut bad = record.clone();
        bad[ENCODINGS_OFFSET] = 0x10;
        assert_eq!(read(&bad), RecordError::UnknownEncodings(0x10));
        let mut bad = record.clone();
        bad[P256DH_OFFSET] = 0x06;
        assert!(matches!(read(&bad), RecordError::BadKeys(_)));
        let mut bad = record;
        bad[VAPID_OFFSET + 2] = PACKED | 100;
        assert_eq!(read(&bad), RecordError::UnknownEndpointPrefix(100));
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_varint(value, &mut out);
            assert_eq!(read_varint(&mut out.as_slice()).unwrap(), value);
        }
        assert_eq!(read_varint(&mut [0x80u8, 0x80][..].as_ref()), Err(RecordError::Truncated));
    }
}
