//! Requests in, domain types out, and back: every field of the public API is validated here,
//! and each refusal names the field's path. Pure: no I/O; callers pass the time in.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushfan_bus::messages as bus;
use pushfan_proto::v1;
use pushfan_store::ledger::BroadcastStatus;
use pushfan_store::{
    ContentEncodings, StoreError, Subscription, SubscriptionId, TenantId, Topic, UnixSeconds, VapidKeyId,
};
use pushfan_webpush::message::MAX_PLAINTEXT_LEN;
use pushfan_webpush::rfc8030::DEFAULT_TTL;
use pushfan_webpush::{b64, EndpointPolicy, PushSubscription, SubscriptionError};

use crate::error::IngestError;

/// Most subscription ids one request may name (a tag call, a publish to a list).
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Longest client idempotency key, in bytes. The ledger takes keys of up to 255 bytes; ingest
/// prefixes its own namespace (see `publish`), so client keys stay well below that.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// A `SubscribeRequest` as a store record of `tenant`, created at `now`.
pub fn subscription(
    request: v1::SubscribeRequest,
    tenant: &TenantId,
    policy: &EndpointPolicy,
    now: SystemTime,
) -> Result<Subscription, IngestError> {
    let keys = request.keys.ok_or_else(|| IngestError::invalid("keys", "is required"))?;
    let mut push = PushSubscription::new(&request.endpoint, &keys.p256dh, &keys.auth, policy)
        .map_err(subscription_error)?;
    if let Some(expires) = request.expiration_time {
        let Ok(expires) = u64::try_from(expires) else {
            return Err(IngestError::invalid(
                "expiration_time",
                "must be milliseconds since the Unix epoch, not negative",
            ));
        };
        if UNIX_EPOCH + Duration::from_millis(expires) <= now {
            return Err(IngestError::invalid(
                "expiration_time",
                "is in the past: the push service has expired the subscription",
            ));
        }
        push.expiration_time = Some(expires);
    }
    let topics = request
        .topics
        .iter()
        .enumerate()
        .map(|(n, name)| topic(&format!("topics[{n}]"), name))
        .collect::<Result<Vec<_>, _>>()?;
    let encodings = content_encodings(&request.content_encodings)?;
    Subscription::new(
        tenant.clone(),
        push,
        encodings,
        VapidKeyId(request.vapid_key_id),
        topics,
        UnixSeconds::from_system_time(now),
    )
    .map_err(|error| match error {
        StoreError::TooManyTopics { count } => {
            IngestError::invalid("topics", format!("a subscription may have at most 32 topics, got {count}"))
        }
        other => IngestError::Store(other),
    })
}

/// A webpush refusal as a field error. The webpush messages start with the field's name
/// ("keys.p256dh must be …"), so the name becomes the path and the rest the description.
fn subscription_error(error: SubscriptionError) -> IngestError {
    let field = match &error {
        SubscriptionError::EndpointNotUrl(_)
        | SubscriptionError::EndpointNotHttps(_)
        | SubscriptionError::EndpointNoHost
        | SubscriptionError::EndpointHasCredentials
        | SubscriptionError::EndpointHasFragment
        | SubscriptionError::EndpointTooLong { .. }
        | SubscriptionError::EndpointNotRequestUri
        | SubscriptionError::EndpointRefused(_) => "endpoint",
        SubscriptionError::P256dhNotBase64
        | SubscriptionError::P256dhWrongLength(_)
        | SubscriptionError::P256dhNotUncompressed(_)
        | SubscriptionError::P256dhNotOnCurve => "keys.p256dh",
        SubscriptionError::AuthNotBase64 | SubscriptionError::AuthWrongLength(_) => "keys.auth",
        SubscriptionError::BadExpirationTime(_) => "expiration_time",
        // Only JSON parsing produces these, and the gRPC API has no JSON.
        SubscriptionError::Json(_) | SubscriptionError::MissingField(_) => "subscription",
    };
    let message = error.to_string();
    let description = message.strip_prefix(field).map_or(message.as_str(), str::trim_start);
    IngestError::invalid(field, description)
}

fn content_encodings(encodings: &[i32]) -> Result<ContentEncodings, IngestError> {
    if encodings.is_empty() {
        // What every current browser supports and the only one RFC 8291 defines.
        return Ok(ContentEncodings::AES128GCM);
    }
    encodings.iter().enumerate().try_fold(ContentEncodings::NONE, |set, (n, &value)| {
        let one = match v1::ContentEncoding::try_from(value) {
            Ok(v1::ContentEncoding::Aes128gcm) => ContentEncodings::AES128GCM,
            Ok(v1::ContentEncoding::Aesgcm) => ContentEncodings::AESGCM,
            Ok(v1::ContentEncoding::Unspecified) | Err(_) => {
                return Err(IngestError::invalid(
                    format!("content_encodings[{n}]"),
                    format!("must be CONTENT_ENCODING_AES128GCM or CONTENT_ENCODING_AESGCM, got {value}"),
                ))
            }
        };
        Ok(set.union(one))
    })
}

/// A pushfan topic name.
pub fn topic(field: &str, name: &str) -> Result<Topic, IngestError> {
    Topic::new(name).map_err(|error| IngestError::invalid(field, error.to_string()))
}

/// A subscription id (28 hex digits).
pub fn subscription_id(field: &str, hex: &str) -> Result<SubscriptionId, IngestError> {
    SubscriptionId::parse_hex(hex).map_err(|error| IngestError::invalid(field, error.to_string()))
}

/// 1 to [`MAX_IDS_PER_REQUEST`] subscription ids, repeats dropped (first occurrence kept).
pub fn subscription_ids(field: &str, ids: &[String]) -> Result<Vec<SubscriptionId>, IngestError> {
    if ids.is_empty() || ids.len() > MAX_IDS_PER_REQUEST {
        return Err(IngestError::invalid(field, format!("must hold 1 to 10000 ids, got {}", ids.len())));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    let mut unique = Vec::with_capacity(ids.len());
    for (n, hex) in ids.iter().enumerate() {
        let id = subscription_id(&format!("{field}[{n}]"), hex)?;
        if seen.insert(id) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// A publish request, validated, as the bus message to queue (its broadcast id left empty for
/// the caller to fill in; the client's idempotency key, possibly empty, travels in it).
pub fn publish(
    request: v1::PublishRequest,
    tenant: &TenantId,
    now: SystemTime,
) -> Result<bus::PublishRequest, IngestError> {
    // First, so an oversize payload is refused before any other work.
    if request.payload.len() > MAX_PLAINTEXT_LEN {
        return Err(IngestError::invalid(
            "payload",
            format!(
                "must be at most {MAX_PLAINTEXT_LEN} bytes (one 4096-byte aes128gcm message), got {}",
                request.payload.len()
            ),
        ));
    }
    let kind = match request.target {
        None => {
            return Err(IngestError::invalid(
                "target",
                "is required: subscription_id, subscription_ids, topic or everyone",
            ))
        }
        Some(v1::publish_request::Target::SubscriptionId(hex)) => {
            let id = subscription_id("target.subscription_id", &hex)?;
            bus::target::Kind::Subscriptions(bus::SubscriptionIds { ids: vec![id.to_string()] })
        }
        Some(v1::publish_request::Target::SubscriptionIds(list)) => {
            let ids = subscription_ids("target.subscription_ids.ids", &list.ids)?;
            bus::target::Kind::Subscriptions(bus::SubscriptionIds {
                ids: ids.iter().map(ToString::to_string).collect(),
            })
        }
        Some(v1::publish_request::Target::Topic(name)) => {
            bus::target::Kind::Topic(topic("target.topic", &name)?.as_str().to_owned())
        }
        Some(v1::publish_request::Target::Everyone(v1::Everyone {})) => {
            bus::target::Kind::Everyone(bus::Everyone {})
        }
    };
    let options = push_options(request.options.unwrap_or_default())?;
    let key = request.idempotency_key;
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IngestError::invalid(
            "idempotency_key",
            format!("must be at most {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"),
        ));
    }
    Ok(bus::PublishRequest {
        broadcast_id: String::new(),
        tenant: tenant.as_str().to_owned(),
        target: Some(bus::Target { kind: Some(kind) }),
        payload: request.payload,
        options: Some(options),
        vapid_key_id: request.vapid_key_id.map(|id| id.to_string()).unwrap_or_default(),
        idempotency_key: key,
        created_at_ms: unix_ms(now),
    })
}

fn push_options(options: v1::PushOptions) -> Result<bus::PushOptions, IngestError> {
    let ttl_seconds = options.ttl_seconds.unwrap_or(DEFAULT_TTL);
    if ttl_seconds > DEFAULT_TTL {
        return Err(IngestError::invalid(
            "options.ttl_seconds",
            format!("must be at most {DEFAULT_TTL} (4 weeks, what push services keep a message for), got {ttl_seconds}"),
        ));
    }
    let urgency = match v1::Urgency::try_from(options.urgency) {
        Ok(v1::Urgency::Unspecified) => bus::Urgency::Unspecified,
        Ok(v1::Urgency::VeryLow) => bus::Urgency::VeryLow,
        Ok(v1::Urgency::Low) => bus::Urgency::Low,
        Ok(v1::Urgency::Normal) => bus::Urgency::Normal,
        Ok(v1::Urgency::High) => bus::Urgency::High,
        Err(_) => {
            return Err(IngestError::invalid(
                "options.urgency",
                format!("{} is not an Urgency value", options.urgency),
            ))
        }
    };
    if !options.topic.is_empty() {
        pushfan_webpush::Topic::parse(&options.topic)
            .map_err(|error| IngestError::invalid("options.topic", error.to_string()))?;
    }
    Ok(bus::PushOptions { ttl_seconds, urgency: urgency.into(), topic: options.topic })
}

/// A stored subscription as the API returns it.
pub fn subscription_message(subscription: &Subscription) -> v1::Subscription {
    let mut encodings = Vec::new();
    if subscription.encodings.contains(ContentEncodings::AES128GCM) {
        encodings.push(v1::ContentEncoding::Aes128gcm.into());
    }
    if subscription.encodings.contains(ContentEncodings::AESGCM) {
        encodings.push(v1::ContentEncoding::Aesgcm.into());
    }
    v1::Subscription {
        subscription_id: subscription.id.to_string(),
        endpoint: subscription.endpoint.as_str().to_owned(),
        keys: Some(v1::SubscriptionKeys {
            p256dh: b64::encode(subscription.keys.p256dh()),
            auth: b64::encode(subscription.keys.auth()),
        }),
        topics: subscription.topics.iter().map(|t| t.as_str().to_owned()).collect(),
        content_encodings: encodings,
        vapid_key_id: subscription.vapid_key.0,
        create_time: Some(timestamp(subscription.created_at)),
        last_success_time: subscription.last_success_at.map(timestamp),
        consecutive_failures: u32::from(subscription.consecutive_failures),
        expire_time: subscription.expiration_time_ms.map(timestamp_ms),
    }
}

/// A broadcast's ledger status as the API returns it.
pub fn broadcast_message(id: &str, status: &BroadcastStatus) -> v1::Broadcast {
    let counts = &status.counts;
    v1::Broadcast {
        broadcast_id: id.to_owned(),
        targeted: counts.targeted,
        encrypted: counts.encrypted,
        encrypt_failed: counts.encrypt_failed,
        accepted: counts.accepted,
        gone: counts.gone,
        pruned: counts.pruned,
        rejected: counts.rejected,
        failed: counts.failed,
        expired: counts.expired,
        failures: failures(status),
        shards_total: status.shards_total,
        shards_done: counts.shards_done,
        complete: status.is_complete(),
        create_time: Some(timestamp(status.created_at)),
        handed_on: counts.handed_on,
    }
}

/// The broadcast's failures by class (class order), each with the samples the ledger kept.
fn failures(status: &BroadcastStatus) -> Vec<v1::Failure> {
    pushfan_webpush::FailureClass::ALL
        .into_iter()
        .filter(|class| status.counts.failures[class.index()] > 0)
        .map(|class| v1::Failure {
            class: class.label().to_owned(),
            count: status.counts.failures[class.index()],
            samples: status
                .samples
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|(_, text)| text.clone())
                .collect(),
        })
        .collect()
}

fn timestamp(at: UnixSeconds) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: i64::from(at.0), nanos: 0 }
}

fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    // Ingest accepted these from an `int64`, so the seconds fit.
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    prost_types::Timestamp { seconds, nanos: (ms % 1000) as i32 * 1_000_000 }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8291 Appendix A.
    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn request() -> v1::SubscribeRequest {
        v1::SubscribeRequest {
            endpoint: "https://push.example/abc".into(),
            keys: Some(v1::SubscriptionKeys { p256dh: P256DH.into(), auth: AUTH.into() }),
            expiration_time: None,
            topics: vec!["news".into(), "sport".into(), "news".into()],
            content_encodings: vec![],
            vapid_key_id: 7,
        }
    }

    fn field_of(error: IngestError) -> (String, String) {
        match error {
            IngestError::InvalidArgument { field, description } => (field, description),
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_subscription_round_trips_to_its_api_form() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stored = subscription(request(), &tenant(), &EndpointPolicy::default(), now).unwrap();
        assert_eq!(stored.encodings, ContentEncodings::AES128GCM);
        let message = subscription_message(&stored);
        assert_eq!(message.subscription_id.len(), 28);
        assert_eq!(message.topics, ["news", "sport"]);
        assert_eq!(message.keys.as_ref().unwrap().p256dh, P256DH);
        assert_eq!(message.keys.as_ref().unwrap().auth, AUTH);
        assert_eq!(message.create_time.unwrap().seconds, 1_800_000_000);
        assert_eq!(message.content_encodings, [i32::from(v1::ContentEncoding::Aes128gcm)]);
    }

    #[test]
    fn webpush_messages_are_split_into_field_and_description() {
        let mut short_key = request();
        short_key.keys.as_mut().unwrap().p256dh = b64::encode(&[4; 30]);
        let (field, description) = field_of(
            subscription(short_key, &tenant(), &EndpointPolicy::default(), SystemTime::now()).unwrap_err(),
        );
        assert_eq!(field, "keys.p256dh");
        assert_eq!(description, "must be a 65-byte uncompressed P-256 point, got 30 bytes");
    }

    #[test]
    fn payload_size_is_checked_first() {
        let request =
            v1::PublishRequest { payload: vec![0; MAX_PLAINTEXT_LEN + 1].into(), ..Default::default() };
        let (field, _) = field_of(publish(request, &tenant(), SystemTime::now()).unwrap_err());
        assert_eq!(field, "payload");
        let fits = v1::PublishRequest {
            payload: vec![0; MAX_PLAINTEXT_LEN].into(),
            target: Some(v1::publish_request::Target::Everyone(v1::Everyone {})),
            ..Default::default()
        };
        let queued = publish(fits, &tenant(), SystemTime::now()).unwrap();
        assert_eq!(queued.options.unwrap().ttl_seconds, DEFAULT_TTL);
    }

    #[test]
    fn id_lists_drop_repeats_and_normalise_case() {
        let id = "378f13c84514cc9b2fdf033f09ee";
        let ids = subscription_ids("ids", &[id.into(), id.to_uppercase()]).unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(field_of(subscription_ids("ids", &[]).unwrap_err()).0, "ids");
        assert_eq!(field_of(subscription_ids("ids", &[id.into(), "zz".into()]).unwrap_err()).0, "ids[1]");
    }
}
