//! A simulated browser push service (FCM, Mozilla autopush, Apple) for pushfan's end-to-end
//! tests, `pushfan demo` and load tests.
//!
//! - [`population`]: deterministic subscribers (keys and endpoints) from a seed. Pure.
//! - [`check`]: a request's routing, RFC 8030 headers, VAPID and decryption. Pure.
//! - [`faults`]: 404, 410, 429 and 500 injected per subscriber, changeable at run time.
//! - [`profile`]: FCM, Mozilla and Apple rules and wording; latency distributions.
//! - [`stats`]: lock-free counters, with per-subscriber receive counts.
//! - [`tls`]: a throwaway CA and server certificate for loopback.
//! - [`server`]: the hyper plumbing: [`run`] on a listener, or [`PushSim::start`] for a handle.
//!
//! A test starts one with `PushSim::start(PushSimConfig::new(Population::new(seed, n)))` (add
//! `.with_tls()?` for HTTPS), sends to `handle.population().endpoint(i)` with keys
//! `handle.population().keys(i).subscription_keys()`, and asserts on `handle.stats()`. Over TLS
//! a client trusts `handle.cert_pem()` (the CA), or takes a ready rustls config from
//! `handle.tls().unwrap().client_config(&[b"h2"])`.

pub mod check;
pub mod cpu;
pub mod faults;
pub mod population;
pub mod profile;
pub mod server;
pub mod stats;
pub mod tls;

pub use faults::{Burst, Fault, FaultPlan, Faults, Selection};
pub use population::{subscription_json, Population, PopulationError, Seed, Subscriber};
pub use profile::{Latency, LogNormal, Profile, UnknownProfile};
pub use server::{run, Observer, PushSim, PushSimConfig, PushSimHandle, Sample, ServerError, SimState};
pub use stats::{ReceiveSummary, Stats, StatsSnapshot, Status};
pub use tls::{TlsError, TlsIdentity};
