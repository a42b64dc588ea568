//! The simulated push-service fleet: one `pushsim` server per scenario origin, each on its own
//! port (so each is a distinct origin with its own VAPID audience and connection pool), all
//! sharing one CA and one population of subscribers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use pushfan_pushsim::{
    Observer, Population, PopulationError, PushSim, PushSimConfig, PushSimHandle, Sample, ServerError,
    StatsSnapshot, TlsError, TlsIdentity,
};
use serde::Serialize;

use crate::scenario::Scenario;

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The CA or certificates.
    #[error("fleet TLS: {0}")]
    Tls(#[from] TlsError),
    /// A server did not start.
    #[error("starting origin `{origin}`: {source}")]
    Start {
        /// The origin's name.
        origin: String,
        /// Why.
        source: ServerError,
    },
    /// A public host name was given without fixed ports to put after it.
    #[error("a public fleet host needs fixed ports (a port base other than 0)")]
    PublicHostNeedsPorts,
    /// A server failed while stopping.
    #[error("stopping the fleet: {0}")]
    Shutdown(#[source] ServerError),
    /// The origins' URLs are unusable for endpoints.
    #[error("fleet origins: {0}")]
    Population(#[from] PopulationError),
}

/// Where the fleet listens and how senders reach it.
#[derive(Clone, Debug)]
pub struct FleetNetwork {
    /// The address to bind (loopback for local runs).
    pub bind: IpAddr,
    /// First port; origin `i` binds `port_base + i`. 0 picks free ports.
    pub port_base: u16,
    /// The host senders use instead of the bound address (e.g. a Kubernetes Service name); the
    /// certificate names it too.
    pub public_host: Option<String>,
    /// Issue the fleet's certificate from this CA (PEM certificate and key) instead of a fresh
    /// one, so a pushfan deployed beforehand already trusts it.
    pub ca: Option<(String, String)>,
}

impl Default for FleetNetwork {
    fn default() -> Self {
        Self { bind: IpAddr::V4(Ipv4Addr::LOCALHOST), port_base: 0, public_host: None, ca: None }
    }
}

/// The running fleet.
#[derive(Debug)]
pub struct Fleet {
    origins: Vec<(String, PushSimHandle)>,
    population: Population,
    tls: Arc<TlsIdentity>,
}

/// One origin's counters at the end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct OriginReport {
    /// Its name.
    pub name: String,
    /// Its profile.
    pub profile: String,
    /// Answers by HTTP status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// VAPID tokens verified.
    pub vapid_verified: u64,
    /// VAPID tokens refused.
    pub vapid_failures: u64,
    /// Bodies decrypted to the expected payload.
    pub decrypted: u64,
    /// Bodies that did not decrypt.
    pub decrypt_failures: u64,
    /// Bodies that decrypted to something else.
    pub payload_mismatches: u64,
}

impl Fleet {
    /// Starts every origin of `scenario`; `payload` is what decrypted bodies must equal.
    pub async fn start(
        scenario: &Scenario,
        payload: Bytes,
        network: &FleetNetwork,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, FleetError> {
        if network.public_host.is_some() && network.port_base == 0 {
            return Err(FleetError::PublicHostNeedsPorts);
        }
        let names: Vec<String> = network.public_host.iter().cloned().collect();
        let tls = match &network.ca {
            Some((cert, key)) => TlsIdentity::from_ca(cert, key, &names)?,
            None => TlsIdentity::generate_for(&names)?,
        };
        let population = Population::new(scenario.seed, scenario.subscribers);
        let mut origins = Vec::with_capacity(scenario.origins.len());
        for (i, spec) in scenario.origins.iter().enumerate() {
            let port = if network.port_base == 0 { 0 } else { network.port_base + i as u16 };
            let config = PushSimConfig {
                tls: Some(Arc::clone(&tls)),
                vapid_sample: sample(scenario.check.vapid_one_in),
                decrypt_sample: sample(scenario.check.decrypt_one_in),
                expected_payload: Some(payload.clone()),
                faults: scenario.fault_plan(i),
                profile: scenario.profile(i),
                latency: scenario.latency(i),
                max_concurrent_streams: spec.max_concurrent_streams,
                public_authority: None,
                observer: Some(Arc::clone(&observer)),
                ..PushSimConfig::new(population.clone())
            };
            let config = match &network.public_host {
                // The port is known only for fixed ports; a public host needs them.
                Some(host) => PushSimConfig { public_authority: Some(format!("{host}:{port}")), ..config },
                None => config,
            };
            let handle = PushSim::bind(SocketAddr::new(network.bind, port), config)
                .await
                .map_err(|source| FleetError::Start { origin: spec.name.clone(), source })?;
            origins.push((spec.name.clone(), handle));
        }
        let urls: Vec<&str> = origins.iter().map(|(_, h)| h.base_url()).collect();
        let population = population.with_origins(&urls)?;
        Ok(Self { origins, population, tls })
    }

    /// Every subscriber, with endpoints spread over the origins (`i % origins`).
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// The CA senders must trust, as PEM.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }

    /// The origins' base URLs, in scenario order.
    pub fn base_urls(&self) -> Vec<String> {
        self.origins.iter().map(|(_, h)| h.base_url().to_owned()).collect()
    }

    /// How many messages subscriber `index` accepted, on the origin it lives on.
    pub fn received(&self, index: u64) -> u32 {
        let origin = (index % self.origins.len() as u64) as usize;
        self.origins[origin].1.live_stats().received(index)
    }

    /// Whether subscriber `index` is answered 410 or 404 on every request by its origin.
    pub fn is_permanently_gone(&self, scenario: &Scenario, index: u64) -> bool {
        let origin = (index % self.origins.len() as u64) as usize;
        let plan = scenario.fault_plan(origin);
        plan.gone.contains(index) || plan.not_found.contains(index)
    }

    /// Counters of every origin.
    pub fn snapshots(&self) -> Vec<(String, StatsSnapshot)> {
        self.origins.iter().map(|(name, h)| (name.clone(), h.stats())).collect()
    }

    /// Per-origin counters for the report.
    pub fn reports(&self, scenario: &Scenario) -> Vec<OriginReport> {
        self.origins
            .iter()
            .zip(&scenario.origins)
            .map(|((name, handle), spec)| {
                let s = handle.stats();
                OriginReport {
                    name: name.clone(),
                    profile: spec.profile.clone(),
                    statuses: s.statuses,
                    vapid_verified: s.vapid_verified,
                    vapid_failures: s.vapid_failures,
                    decrypted: s.decrypted,
                    decrypt_failures: s.decrypt_failures,
                    payload_mismatches: s.payload_mismatches,
                }
            })
            .collect()
    }

    /// Zeroes every counter and fault attempt count, between the senders of a comparison.
    pub fn reset(&self) {
        for (_, handle) in &self.origins {
            handle.live_stats().reset();
            handle.faults().reset_attempts();
        }
    }

    /// Stops every origin.
    pub async fn shutdown(self) -> Result<(), FleetError> {
        for (_, handle) in self.origins {
            handle.shutdown().await.map_err(FleetError::Shutdown)?;
        }
        Ok(())
    }
}

fn sample(one_in: u32) -> Sample {
    match one_in {
        0 => Sample::NONE,
        1 => Sample::ALL,
        n => Sample::one_in(n),
    }
}
