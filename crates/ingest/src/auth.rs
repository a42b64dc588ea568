//! API keys: which tenant a request acts for.
//!
//! Each tenant has one or more API keys from configuration. Only their SHA-256 digests are kept,
//! so a heap dump or a debug print does not reveal a key, and a presented key is compared against
//! every digest in constant time (no early exit, no short-circuiting byte comparison), so response
//! timing says nothing about how close a guess was.

use std::fmt;

use pushfan_store::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::error::IngestError;

/// Shortest API key accepted: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why an API key was refused at configuration time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// The key is too short.
    #[error("API key of tenant {tenant} is {len} bytes; at least 16 are required")]
    TooShort {
        /// The tenant it was configured for.
        tenant: String,
        /// Its length.
        len: usize,
    },
    /// The key would not survive as an HTTP header value.
    #[error("API key of tenant {tenant} must be printable ASCII without spaces")]
    NotPrintable {
        /// The tenant it was configured for.
        tenant: String,
    },
    /// Two tenants (or one tenant twice) were given the same key.
    #[error("API key of tenant {tenant} is already configured for tenant {other}")]
    Duplicate {
        /// The tenant being added.
        tenant: String,
        /// The tenant that has the key.
        other: String,
    },
}

/// The API key table: SHA-256 digests of keys, each with its tenant.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<([u8; 32], TenantId)>,
}

impl ApiKeys {
    /// An empty table: every request is refused until keys are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` for `tenant`.
    pub fn insert(&mut self, tenant: TenantId, key: &str) -> Result<(), ApiKeyError> {
        if key.len() < MIN_KEY_LEN {
            return Err(ApiKeyError::TooShort { tenant: tenant.to_string(), len: key.len() });
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiKeyError::NotPrintable { tenant: tenant.to_string() });
        }
        let digest = digest(key);
        // Configuration time: an ordinary comparison is fine here.
        if let Some((_, other)) = self.entries.iter().find(|(known, _)| *known == digest) {
            return Err(ApiKeyError::Duplicate { tenant: tenant.to_string(), other: other.to_string() });
        }
        self.entries.push((digest, tenant));
        Ok(())
    }

    /// The tenant whose key the request's `authorization: Bearer <key>` metadata carries.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<TenantId, IngestError> {
        self.authenticate_header(metadata.get("authorization").and_then(|value| value.to_str().ok()))
    }

    /// The tenant whose key an `authorization` header value (`Bearer <key>`) carries.
    pub fn authenticate_header(&self, value: Option<&str>) -> Result<TenantId, IngestError> {
        let value = value.ok_or(IngestError::Unauthenticated)?;
        // RFC 7235: the scheme name is case-insensitive.
        let (scheme, key) = value.split_once(' ').ok_or(IngestError::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(IngestError::Unauthenticated);
        }
        let presented = digest(key.trim());
        let mut found = None;
        // Every entry is compared, whatever matched, so the time taken does not depend on
        // which entry (if any) matched first.
        for (known, tenant) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(tenant);
            }
        }
        found.cloned().ok_or(IngestError::Unauthenticated)
    }

    /// Every tenant that has a key.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.entries.iter().map(|(_, tenant)| tenant)
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tenants only: even digests of keys stay out of logs.
        f.debug_struct("ApiKeys")
            .field("tenants", &self.entries.iter().map(|(_, t)| t).collect::<Vec<_>>())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let mut keys = ApiKeys::new();
        keys.insert(TenantId::new("acme").unwrap(), "acme-key-0123456789").unwrap();
        keys.insert(TenantId::new("globex").unwrap(), "globex-key-0123456789").unwrap();
        keys
    }

    fn with_authorization(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    #[test]
    fn a_known_bearer_key_names_its_tenant() {
        let keys = keys();
        let tenant = keys.authenticate(&with_authorization("Bearer globex-key-0123456789")).unwrap();
        assert_eq!(tenant.as_str(), "globex");
        let tenant = keys.authenticate(&with_authorization("bearer acme-key-0123456789")).unwrap();
        assert_eq!(tenant.as_str(), "acme");
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let keys = keys();
        assert!(matches!(keys.authenticate(&MetadataMap::new()), Err(IngestError::Unauthenticated)));
        for value in
            ["acme-key-0123456789", "Basic acme-key-0123456789", "Bearer acme-key-012345678", "Bearer "]
        {
            assert!(
                matches!(keys.authenticate(&with_authorization(value)), Err(IngestError::Unauthenticated)),
                "{value}"
            );
        }
    }

    #[test]
    fn weak_odd_and_duplicate_keys_are_refused_at_configuration() {
        let mut keys = keys();
        let tenant = TenantId::new("initech").unwrap();
        assert!(matches!(keys.insert(tenant.clone(), "short"), Err(ApiKeyError::TooShort { len: 5, .. })));
        assert!(matches!(
            keys.insert(tenant.clone(), "with a space in it!"),
            Err(ApiKeyError::NotPrintable { .. })
        ));
        let err = keys.insert(tenant, "acme-key-0123456789").unwrap_err();
        assert_eq!(err.to_string(), "API key of tenant initech is already configured for tenant acme");
        assert!(!format!("{keys:?}").contains("key-0123"));
    }
}
