//! Which Kafka offsets are safe to commit when handlers finish out of order. Pure bookkeeping;
//! no I/O.
//!
//! A consumer hands records to handlers that may run concurrently and finish in any order. Kafka
//! stores one committed position per partition ("everything before this is done"), so the
//! position may only advance to the lowest offset still in flight. Each assignment of a partition
//! gets a new generation: acks from an earlier assignment (work that was in flight when the
//! partition was revoked) are ignored, because the partition's new owner re-reads that work from
//! the committed position.

use std::collections::{BTreeSet, HashMap};

/// Offset bookkeeping for the partitions one consumer owns (of one topic).
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
    next_generation: u64,
}

#[derive(Debug)]
struct PartitionOffsets {
    /// Which assignment of the partition this state belongs to.
    generation: u64,
    /// Offsets handed to handlers and not acked yet.
    in_flight: BTreeSet<i64>,
    /// One past the highest offset handed out in this assignment.
    next_offset: Option<i64>,
    /// The last position committed (or handed to [`OffsetTracker::take_commits`]), or where
    /// this assignment started reading.
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// The position everything before which is done.
    fn safe_position(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_offset)
    }

    /// The safe position if it moved past the last commit.
    fn uncommitted_position(&self) -> Option<i64> {
        self.safe_position().filter(|&position| self.committed.is_none_or(|committed| position > committed))
    }
}

impl OffsetTracker {
    /// The consumer now owns `partition`; returns the new assignment's generation.
    pub(crate) fn assign(&mut self, partition: i32) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.partitions.insert(
            partition,
            PartitionOffsets { generation, in_flight: BTreeSet::new(), next_offset: None, committed: None },
        );
        generation
    }

    /// The consumer lost `partition`; returns the position to commit for it before letting go
    /// (even if committed before: a commit in flight during a rebalance can be lost), if any
    /// record was handed out. Later acks for the partition are ignored.
    pub(crate) fn revoke(&mut self, partition: i32) -> Option<i64> {
        self.partitions.remove(&partition)?.safe_position()
    }

    /// `offset` of `partition` is being handed to a handler; returns the generation its ack must
    /// carry, or `None` if the partition is not owned (the record must not be handed out).
    /// A record already handed out in this assignment (fetched again after fetching resumed) is
    /// also `None`: handing it out twice would only create duplicate work.
    pub(crate) fn track(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let state = self.partitions.get_mut(&partition)?;
        if state.next_offset.is_some_and(|next| offset < next) {
            return None;
        }
        // The first record's offset is where fetching started: committing it would add nothing.
        state.committed.get_or_insert(offset);
        state.in_flight.insert(offset);
        state.next_offset = Some(state.next_offset.map_or(offset + 1, |next| next.max(offset + 1)));
        Some(state.generation)
    }

    /// A handler finished `offset`; returns false (and changes nothing) if the ack belongs to an
    /// assignment that has since been revoked.
    pub(crate) fn ack(&mut self, partition: i32, generation: u64, offset: i64) -> bool {
        match self.partitions.get_mut(&partition) {
            Some(state) if state.generation == generation => state.in_flight.remove(&offset),
            _ => false,
        }
    }

    /// For each owned partition that has handed out records, the offset to fetch next.
    pub(crate) fn next_offsets(&self) -> Vec<(i32, i64)> {
        let mut next: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(&partition, state)| Some((partition, state.next_offset?)))
            .collect();
        next.sort_unstable();
        next
    }

    /// Whether records handed out under `generation` still belong to this consumer.
    pub(crate) fn is_current(&self, partition: i32, generation: u64) -> bool {
        self.partitions.get(&partition).is_some_and(|state| state.generation == generation)
    }

    /// Positions that advanced since the last call, marked as committed. The caller commits them.
    pub(crate) fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut commits: Vec<(i32, i64)> = self
            .partitions
            .iter_mut()
            .filter_map(|(&partition, state)| {
                let position = state.uncommitted_position()?;
                state.committed = Some(position);
                Some((partition, position))
            })
            .collect();
        commits.sort_unstable();
        commits
    }

    /// Committing `positions` failed: offer them again on the next [`Self::take_commits`].
    pub(crate) fn commit_failed(&mut self, positions: &[(i32, i64)]) {
        for &(partition, position) in positions {
            if let Some(state) = self.partitions.get_mut(&partition) {
                if state.committed == Some(position) {
                    state.committed = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_up_to_the_lowest_unacked_offset() {
        let mut tracker = OffsetTracker::default();
        let generation = tracker.assign(0);
        for offset in 10..15 {
            assert_eq!(tracker.track(0, offset), Some(generation));
        }
        assert!(tracker.take_commits().is_empty(), "nothing acked, nothing to commit");

        // Out-of-order completion: 11, 12 and 14 finish while 10 and 13 are still running.
        for offset in [11, 12, 14] {
            assert!(tracker.ack(0, generation, offset));
        }
        assert!(tracker.take_commits().is_empty(), "10 still runs");

        assert!(tracker.ack(0, generation, 10));
        assert_eq!(tracker.take_commits(), [(0, 13)]);
        assert!(tracker.take_commits().is_empty(), "unchanged position is not committed twice");

        assert!(tracker.ack(0, generation, 13));
        assert_eq!(tracker.take_commits(), [(0, 15)]);
    }

    #[test]
    fn partitions_advance_independently() {
        let mut tracker = OffsetTracker::default();
        let g0 = tracker.assign(0);
        let g1 = tracker.assign(1);
        tracker.track(0, 0);
        tracker.track(1, 100);
        tracker.track(1, 101);
        tracker.ack(1, g1, 100);
        assert_eq!(tracker.take_commits(), [(1, 101)]);
        tracker.ack(0, g0, 0);
        tracker.ack(1, g1, 101);
        assert_eq!(tracker.take_commits(), [(0, 1), (1, 102)]);
    }

    #[test]
    fn revoke_returns_the_final_position_and_fences_old_acks() {
        let mut tracker = OffsetTracker::default();
        let old = tracker.assign(3);
        for offset in 0..4 {
            tracker.track(3, offset);
        }
        tracker.ack(3, old, 0);
        tracker.ack(3, old, 1);
        assert_eq!(tracker.revoke(3), Some(2), "2 and 3 were in flight: the next owner redoes them");
        assert!(!tracker.ack(3, old, 2), "acks of a revoked assignment are ignored");
        assert!(!tracker.is_current(3, old));
        assert_eq!(tracker.track(3, 4), None, "records of an unowned partition are not handed out");

        // Reassigned (eager rebalance): the new owner, possibly us again, starts from offset 2.
        let new = tracker.assign(3);
        assert_ne!(new, old);
        assert!(!tracker.ack(3, old, 3), "an old ack cannot complete new work at the same offset");
        tracker.track(3, 2);
        assert!(tracker.ack(3, new, 2));
        assert_eq!(tracker.take_commits(), [(3, 3)]);
    }

    #[test]
    fn records_fetched_again_are_not_handed_out_twice() {
        let mut tracker = OffsetTracker::default();
        let generation = tracker.assign(2);
        for offset in 0..3 {
            tracker.track(2, offset);
        }
        assert_eq!(tracker.next_offsets(), [(2, 3)]);
        assert_eq!(tracker.track(2, 1), None, "re-fetched after a resume");
        assert_eq!(tracker.track(2, 3), Some(generation));
        assert_eq!(tracker.next_offsets(), [(2, 4)]);
    }

    #[test]
    fn failed_commits_are_offered_again() {
        let mut tracker = OffsetTracker::default();
        let generation = tracker.assign(0);
        tracker.track(0, 0);
        tracker.ack(0, generation, 0);
        let commits = tracker.take_commits();
        assert_eq!(commits, [(0, 1)]);
        tracker.commit_failed(&commits);
        assert_eq!(tracker.take_commits(), [(0, 1)]);
    }

    #[test]
    fn revoke_recommits_the_safe_position_and_nothing_without_records() {
        let mut tracker = OffsetTracker::default();
        let generation = tracker.assign(0);
        tracker.track(0, 5);
        tracker.ack(0, generation, 5);
        assert_eq!(tracker.take_commits(), [(0, 6)]);
        assert_eq!(tracker.revoke(0), Some(6), "committed again in case the earlier commit was lost");
        tracker.assign(1);
        assert_eq!(tracker.revoke(1), None, "nothing read, nothing to commit");
        assert_eq!(tracker.revoke(7), None, "never owned");
    }
}
