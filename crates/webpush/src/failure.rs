//! Why a push was not delivered, as a small closed set of classes.
//!
//! Push services answer whatever they like, and a subscriber can point its endpoint anywhere, so
//! nothing that counts failures (metrics, the broadcast ledger, the API) may key on their text:
//! a broadcast's failures are counted per [`FailureClass`], with at most a few short
//! [`sample`]s of the push service's words per class.

/// The class of a delivery that did not end accepted. Each has a stable label: labels are
/// stored (ledger counters) and shown (API, metrics), so never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// 410: the browser unsubscribed. The subscription is pruned.
    Gone,
    /// 404: the push service does not know the subscription (expired). Pruned.
    NotFound,
    /// 401/403: the push service refused our VAPID credentials (or no key of this deployment
    /// could sign for the subscription).
    Unauthorized,
    /// 413: the encrypted body is too large for this push service.
    PayloadTooLarge,
    /// 429/503 until the throttle deadline passed (or the retries ran out).
    Throttled,
    /// 5xx answers until the retries ran out.
    ServerError,
    /// The TCP connection could not be opened.
    TransportConnect,
    /// The push service's host name did not resolve.
    TransportDns,
    /// The TLS handshake failed.
    TransportTls,
    /// No connection or no answer in time.
    TransportTimeout,
    /// The connection was reset or closed under the request.
    TransportReset,
    /// The push service broke HTTP (a malformed frame or response).
    TransportProtocol,
    /// The egress policy refuses every address the endpoint's host resolves to. Pruned.
    RefusedByPolicy,
    /// The stored endpoint or record is unusable (fails validation). Pruned.
    Invalid,
    /// Any other 4xx: the push service refused the request.
    Rejected,
    /// The message's TTL ran out before a push service took it.
    Expired,
}

/// Which of a broadcast's summary counters a class adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// The subscription is dead (`gone`).
    Gone,
    /// Refused for good (`rejected`).
    Rejected,
    /// Transient failures that outlasted the retries or the throttle deadline (`failed`).
    Failed,
    /// Out of time (`expired`).
    Expired,
}

impl FailureClass {
    /// How many classes there are: per-class counts are fixed arrays of this length.
    pub const COUNT: usize = 16;

    /// Every class, in [`FailureClass::index`] order.
    pub const ALL: [FailureClass; Self::COUNT] = [
        FailureClass::Gone,
        FailureClass::NotFound,
        FailureClass::Unauthorized,
        FailureClass::PayloadTooLarge,
        FailureClass::Throttled,
        FailureClass::ServerError,
        FailureClass::TransportConnect,
        FailureClass::TransportDns,
        FailureClass::TransportTls,
        FailureClass::TransportTimeout,
        FailureClass::TransportReset,
        FailureClass::TransportProtocol,
        FailureClass::RefusedByPolicy,
        FailureClass::Invalid,
        FailureClass::Rejected,
        FailureClass::Expired,
    ];

    /// Every label, in [`FailureClass::index`] order.
    pub const LABELS: [&'static str; Self::COUNT] = [
        "gone",
        "not_found",
        "unauthorized",
        "payload_too_large",
        "throttled",
        "server_error",
        "transport_connect",
        "transport_dns",
        "transport_tls",
        "transport_timeout",
        "transport_reset",
        "transport_protocol",
        "refused_by_policy",
        "invalid",
        "rejected",
        "expired",
    ];

    /// The stable label: `gone`, `transport_tls`, ...
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The class labelled `label`, if this version knows it.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::LABELS.iter().position(|known| *known == label).map(|i| Self::ALL[i])
    }

    /// Its position in [`FailureClass::ALL`], for fixed per-class arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of a push service's error status (a 2xx is no failure; 429/503 and 5xx are
    /// only final once the retries or the throttle deadline ran out).
    pub fn of_status(status: u16) -> Self {
        match status {
            404 => FailureClass::NotFound,
            410 => FailureClass::Gone,
            401 | 403 => FailureClass::Unauthorized,
            413 => FailureClass::PayloadTooLarge,
            429 => FailureClass::Throttled,
            500..=599 => FailureClass::ServerError,
            _ => FailureClass::Rejected,
        }
    }

    /// Whether the subscription is deleted from the store: the push service says it is dead, or
    /// its endpoint can never be sent to.
    pub fn prunes(self) -> bool {
        matches!(
            self,
            FailureClass::Gone
                | FailureClass::NotFound
                | FailureClass::Invalid
                | FailureClass::RefusedByPolicy
        )
    }

    /// The summary counter the class adds to.
    pub fn summary(self) -> Summary {
        match self {
            FailureClass::Gone | FailureClass::NotFound => Summary::Gone,
            FailureClass::Unauthorized
            | FailureClass::PayloadTooLarge
            | FailureClass::RefusedByPolicy
            | FailureClass::Invalid
            | FailureClass::Rejected => Summary::Rejected,
            FailureClass::Throttled
            | FailureClass::ServerError
            | FailureClass::TransportConnect
            | FailureClass::TransportDns
            | FailureClass::TransportTls
            | FailureClass::TransportTimeout
            | FailureClass::TransportReset
            | FailureClass::TransportProtocol => Summary::Failed,
            FailureClass::Expired => Summary::Expired,
        }
    }
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Longest [`sample`], in bytes.
pub const MAX_SAMPLE_LEN: usize = 120;

/// What stands in a sample for a URL the text quoted: push services may echo the endpoint, and
/// endpoint URLs are capability URLs.
const URL_MARK: &str = "<url>";

/// A failure's text as a broadcast keeps it: control characters dropped, every `http://` or
/// `https://` URL replaced by `<url>`, whitespace runs folded, cut to [`MAX_SAMPLE_LEN`] bytes on
/// a character boundary. Empty when nothing is left.
pub fn sample(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SAMPLE_LEN));
    let mut rest = text;
    let mut space = false;
    while let Some(c) = rest.chars().next() {
        let (piece, taken): (&str, usize) = if starts_with_url(rest) {
            let end = rest.find(|c: char| c.is_whitespace() || "\"'<>`".contains(c)).unwrap_or(rest.len());
            (URL_MARK, end)
        } else if c.is_whitespace() || c.is_control() {
            space = true;
            rest = &rest[c.len_utf8()..];
            continue;
        } else {
            (&rest[..c.len_utf8()], c.len_utf8())
        };
        let gap = usize::from(space && !out.is_empty());
        if out.len() + gap + piece.len() > MAX_SAMPLE_LEN {
            break;
        }
        if gap == 1 {
            out.push(' ');
        }
        space = false;
        out.push_str(piece);
        rest = &rest[taken..];
    }
    out
}

fn starts_with_url(text: &str) -> bool {
    let lower = |prefix: &str| text.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix));
    lower("https://") || lower("http://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_round_trip() {
        for (i, class) in FailureClass::ALL.into_iter().enumerate() {
            assert_eq!(class.index(), i);
            assert_eq!(FailureClass::from_label(class.label()), Some(class));
        }
        let mut labels = FailureClass::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), FailureClass::COUNT);
        assert_eq!(FailureClass::from_label("400|Bad"), None);
    }

    #[test]
    fn statuses_map_to_classes() {
        let classes: Vec<_> = [404, 410, 401, 403, 413, 429, 500, 503, 400, 418, 451]
            .into_iter()
            .map(FailureClass::of_status)
            .collect();
        use FailureClass::*;
        assert_eq!(
            classes,
            [
                NotFound,
                Gone,
                Unauthorized,
                Unauthorized,
                PayloadTooLarge,
                Throttled,
                ServerError,
                ServerError,
                Rejected,
                Rejected,
                Rejected
            ]
        );
        let pruned: Vec<_> = FailureClass::ALL.into_iter().filter(|c| c.prunes()).collect();
        assert_eq!(pruned, [Gone, NotFound, RefusedByPolicy, Invalid]);
        assert_eq!(TransportTls.summary(), Summary::Failed);
        assert_eq!(Invalid.summary(), Summary::Rejected);
    }

    #[test]
    fn samples_are_short_single_line_and_never_quote_a_url() {
        assert_eq!(sample("  BadJwtToken \r\n"), "BadJwtToken");
        assert_eq!(sample("bad\tthing\u{7}\n here"), "bad thing here");
        assert_eq!(
            sample("{\"error\":\"no such endpoint: https://fcm.googleapis.com/fcm/send/SECRET-token\"}"),
            "{\"error\":\"no such endpoint: <url>\"}"
        );
        assert_eq!(sample("see HTTP://a.example/x?y=1 now"), "see <url> now");
        assert_eq!(sample(""), "");
        let long = sample(&"é".repeat(500));
        assert!(long.len() <= MAX_SAMPLE_LEN && long.len() >= MAX_SAMPLE_LEN - 1, "{}", long.len());
        assert!(long.chars().all(|c| c == 'é'));
        // A URL that would not fit is left out whole, never cut into a prefix of itself.
        let near_end = format!("{} https://push.example/secret", "x".repeat(MAX_SAMPLE_LEN - 3));
        assert!(!sample(&near_end).contains("http"));
    }
}
