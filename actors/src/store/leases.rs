//! When leases expire: decided by the shard's leader alone, from its own clock, and
//! then committed as `LeaseRevoke` through the log (so every replica deletes the
//! same keys at the same revision).
//!
//! Deadlines are not replicated. A replica that becomes leader (a new term) starts
//! every lease afresh at its full TTL, as etcd does: a lease may outlive its TTL by
//! an election, never expire early.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::state::Lease;

/// The leader's deadlines for the leases of one shard.
#[derive(Debug, Default)]
pub struct LeaseClock {
    term: u64,
    deadlines: HashMap<u64, Instant>,
}

impl LeaseClock {
    /// The leases past their deadline at `now`, for a leader in `term` holding `leases`.
    /// Leases seen for the first time in this term get their full TTL from `now`.
    pub fn due(&mut self, term: u64, now: Instant, leases: &BTreeMap<u64, Lease>) -> Vec<u64> {
        self.enter(term);
        self.deadlines.retain(|id, _| leases.contains_key(id));
        let mut due = Vec::new();
        for (id, lease) in leases {
            let deadline = *self.deadlines.entry(*id).or_insert(now + Duration::from_millis(lease.ttl_ms));
            if deadline <= now {
                due.push(*id);
            }
        }
        due
    }

    /// Renews `id` for `ttl_ms` from `now` (a keep-alive the leader confirmed it may answer).
    pub fn keep_alive(&mut self, term: u64, id: u64, ttl_ms: u64, now: Instant) {
        self.enter(term);
        self.deadlines.insert(id, now + Duration::from_millis(ttl_ms));
    }

    /// Forgets every deadline (this replica is not the leader).
    pub fn step_down(&mut self) {
        self.deadlines.clear();
    }

    fn enter(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.deadlines.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(ids: &[(u64, u64)]) -> BTreeMap<u64, Lease> {
        ids.iter().map(|(id, ttl_ms)| (*id, Lease { ttl_ms: *ttl_ms, keys: Default::default() })).collect()
    }

    #[test]
    fn a_lease_expires_after_its_ttl_unless_kept_alive() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        let l = leases(&[(1, 1_000), (2, 1_000)]);
        assert!(c.due(5, t0, &l).is_empty());
        c.keep_alive(5, 2, 1_000, t0 + Duration::from_millis(900));
        assert_eq!(c.due(5, t0 + Duration::from_millis(1_000), &l), [1]);
        assert_eq!(c.due(5, t0 + Duration::from_millis(1_850), &l), [1]);
        assert_eq!(c.due(5, t0 + Duration::from_millis(1_900), &l), [1, 2]);
    }

    #[test]
    fn a_new_term_restarts_every_lease() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        let l = leases(&[(1, 1_000)]);
        c.due(5, t0, &l);
        assert_eq!(c.due(5, t0 + Duration::from_secs(2), &l), [1]);
        // Another leader came and went: this one leads again in term 7.
        assert!(c.due(7, t0 + Duration::from_secs(2), &l).is_empty());
        assert_eq!(c.due(7, t0 + Duration::from_secs(3), &l), [1]);
        c.step_down();
        assert!(c.due(7, t0 + Duration::from_secs(3), &l).is_empty(), "after stepping down, full TTL again");
    }

    #[test]
    fn revoked_leases_are_forgotten() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.due(1, t0, &leases(&[(1, 10), (2, 10)]));
        assert_eq!(c.due(1, t0 + Duration::from_secs(1), &leases(&[(2, 10)])), [2]);
        assert_eq!(c.deadlines.len(), 1);
    }
}
