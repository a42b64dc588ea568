//! Base64url as Web Push uses it: written without padding, read with or without.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

/// Encodes as base64url without padding (the form browsers and RFC 8291 use).
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without `=` padding.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    if text.ends_with('=') {
        URL_SAFE.decode(text)
    } else {
        URL_SAFE_NO_PAD.decode(text)
    }
}
