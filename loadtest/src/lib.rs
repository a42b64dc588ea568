//! pushfan's load-test harness.
//!
//! - [`scenario`]: what a test does, from TOML (`loadtest/scenarios/`).
//! - [`fleet`]: simulated push services (FCM-, Mozilla-, Apple-like) on loopback, one per origin.
//! - [`target`]: the pushfan under test: a spawned `pushfan standalone`, or running processes.
//! - [`measure`]: publish-to-201 latency, throughput over time, process CPU, crypto cost.
//! - [`peers`]: other Web Push libraries sending the same broadcast (`loadtest/peers/`).
//! - [`run`]: a scenario end to end; [`report`]: its JSON, summary and plot.

pub mod fleet;
pub mod measure;
pub mod peers;
pub mod report;
pub mod run;
pub mod scenario;
pub mod target;

pub use fleet::{Fleet, FleetNetwork};
pub use report::Report;
pub use run::{run, Mode, RunError, RunOptions};
pub use scenario::Scenario;
