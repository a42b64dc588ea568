//! W3C Trace Context `traceparent` values carried in a bus header. Pure parsing; no I/O.
//!
//! pushfan's `tracing` spans carry no trace ids of their own (that needs an OpenTelemetry
//! layer), so callers pass the `traceparent` they received (e.g. from the gRPC request) along
//! explicitly in a [`MessageContext`] and get it back on the consuming side.

use std::fmt;

/// A valid version-00 `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(String);

/// Why a string is not a usable `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {0:?}: want 00-<32 hex>-<16 hex>-<2 hex>, ids not all zero")]
pub struct InvalidTraceParent(String);

impl TraceParent {
    /// Builds one from its parts.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], sampled: bool) -> Result<Self, InvalidTraceParent> {
        let value = format!("00-{}-{}-{:02x}", hex(&trace_id), hex(&parent_id), u8::from(sampled));
        Self::parse(&value)
    }

    /// Validates a header value; W3C says an invalid one is to be ignored, not repaired.
    pub fn parse(value: &str) -> Result<Self, InvalidTraceParent> {
        let invalid = || InvalidTraceParent(value.to_owned());
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return Err(invalid());
        };
        let is_lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
        if *version != "00"
            || !is_lower_hex(trace_id, 32)
            || !is_lower_hex(parent_id, 16)
            || !is_lower_hex(flags, 2)
            || all_zero(trace_id)
            || all_zero(parent_id)
        {
            return Err(invalid());
        }
        Ok(Self(value.to_owned()))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-message context that travels beside the message in headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageContext {
    /// The trace this message's work belongs to.
    pub traceparent: Option<TraceParent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_w3c_example_and_round_trips_parts() {
        let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(example).map(|t| t.to_string()).as_deref(), Ok(example));
        let built = TraceParent::new([0xab; 16], [0x01; 8], false).expect("valid parts");
        assert_eq!(built.as_str(), format!("00-{}-{}-00", "ab".repeat(16), "01".repeat(8)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
