//! The Web Push standards core of pushfan.
//!
//! - [`subscription`]: the browser's `PushSubscription`, validated; endpoints redacted in logs.
//!
//! Architecture invariant: this crate does no I/O (no sockets, files, clocks or environment);
//! callers pass the time in. Everything here is deterministic except the random ephemeral keys
//! and salts that encryption requires.

pub mod b64;
pub mod subscription;

pub use subscription::{Endpoint, EndpointPolicy, PushSubscription, SubscriptionError, SubscriptionKeys};
