//! The bus's topics and their names on a Kafka cluster. Pure naming; no I/O.
//!
//! | topic              | carries                    | key                                  |
//! |--------------------|----------------------------|--------------------------------------|
//! | `publish-requests` | `PublishRequest`           | broadcast id                         |
//! | `shard-jobs`       | `ShardJob`                 | `broadcast id/shard`                 |
//! | `deliveries`       | `DeliveryBatch`            | `broadcast id/shard/batch seq`       |
//! | `delivery-results` | `DeliveryResultBatch`      | broadcast id                         |
//! | `dead-letters`     | `DeadLetter`               | the original record's key            |
//!
//! Shard jobs and delivery batches are keyed finely so one big broadcast spreads over every
//! partition (and so every worker and gateway); results are keyed by broadcast so one consumer
//! sees all of a broadcast's results and can aggregate them.
//! On Kafka each name gets a deployment prefix (default `pushfan.`), e.g. `pushfan.shard-jobs`.

use std::fmt;

/// One of the bus's topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Accepted publishes, to be expanded into shard jobs.
    PublishRequests,
    /// One store shard's part of a broadcast each.
    ShardJobs,
    /// Encrypted deliveries for gateways.
    Deliveries,
    /// What gateways did with delivery batches.
    DeliveryResults,
    /// Records no consumer could read.
    DeadLetters,
}

impl Topic {
    /// Every topic, in pipeline order.
    pub const ALL: [Topic; 5] = [
        Topic::PublishRequests,
        Topic::ShardJobs,
        Topic::Deliveries,
        Topic::DeliveryResults,
        Topic::DeadLetters,
    ];

    /// The topic's logical name (without a deployment prefix); also its metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Topic::PublishRequests => "publish-requests",
            Topic::ShardJobs => "shard-jobs",
            Topic::Deliveries => "deliveries",
            Topic::DeliveryResults => "delivery-results",
            Topic::DeadLetters => "dead-letters",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Kafka topic names of one deployment: `prefix` + logical name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// The prefix every pushfan deployment uses unless configured otherwise.
    pub const DEFAULT_PREFIX: &'static str = "pushfan.";

    /// Names with `prefix` in front, e.g. `"staging.pushfan."`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The Kafka topic name of `topic`.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    /// The Kafka consumer group id of `group`: prefixed like the topics, so deployments that
    /// share a Kafka cluster never share (and rebalance) each other's groups.
    pub fn group(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }

    /// Which topic a Kafka topic name stands for, if any of this deployment's.
    pub fn topic_of(&self, kafka_name: &str) -> Option<Topic> {
        let logical = kafka_name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|topic| topic.name() == logical)
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_map_back() {
        let names = TopicNames::default();
        assert_eq!(names.name(Topic::ShardJobs), "pushfan.shard-jobs");
        for topic in Topic::ALL {
            assert_eq!(names.topic_of(&names.name(topic)), Some(topic));
        }
        assert_eq!(names.topic_of("pushfan.other"), None);
        assert_eq!(names.topic_of("shard-jobs"), None);
    }

    #[test]
    fn logical_names_are_distinct() {
        let mut logical: Vec<_> = Topic::ALL.iter().map(|t| t.name()).collect();
        logical.sort_unstable();
        logical.dedup();
        assert_eq!(logical.len(), Topic::ALL.len());
    }
}
