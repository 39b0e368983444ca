//! A linearizability checker for one key's history (Wing & Gong's search with Lowe's
//! memoisation): reads, writes and compare-and-swaps on a register whose written
//! values are all distinct.
//!
//! An operation whose outcome the client never learned (a timeout, a dropped
//! connection) has no completion: it may take effect at any point after its call,
//! or never, which is the same as taking effect after everything else. Reads
//! without an answer say nothing and are left out of the history.
//!
//! The compare-and-swap of the store compares modification revisions; the tests
//! record it by the value the client read with that revision, which is equivalent
//! because every written value is distinct (one write, one value, one revision).

use std::collections::HashSet;

/// What an operation did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Read the value (`None`: the key was absent).
    Read(Option<String>),
    Write(String),
    /// Replace `expected` (`None`: the key must be absent) with `new`; `ok` is the
    /// answer, `None` when the client never got one.
    Cas {
        expected: Option<String>,
        new: String,
        ok: Option<bool>,
    },
}

/// One operation: called at `call`, answered at `ret` (`None`: never answered).
#[derive(Debug, Clone)]
pub struct Op {
    pub call: u64,
    pub ret: Option<u64>,
    pub kind: Kind,
    /// Anything that helps read a failure (the member asked, the revision answered).
    pub note: String,
}

/// The register's value: an index into the values seen, `NONE` when absent.
type State = u32;
const NONE: State = u32::MAX;

/// Whether the history is linearizable; on failure, how far an order could be found,
/// and the operations around that point.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut ops: Vec<Op> =
        history.iter().filter(|o| !(matches!(o.kind, Kind::Read(_)) && o.ret.is_none())).cloned().collect();
    ops.sort_by_key(|o| o.call);
    // Intern every value.
    let mut values: Vec<String> = Vec::new();
    let mut id = |v: &Option<String>| -> State {
        match v {
            None => NONE,
            Some(s) => match values.iter().position(|x| x == s) {
                Some(i) => i as State,
                None => {
                    values.push(s.clone());
                    (values.len() - 1) as State
                }
            },
        }
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|o| match &o.kind {
            Kind::Read(v) => Step::Read(id(v)),
            Kind::Write(v) => Step::Write(id(&Some(v.clone()))),
            Kind::Cas { expected, new, ok } => Step::Cas(id(expected), id(&Some(new.clone())), *ok),
        })
        .collect();
    let calls: Vec<u64> = ops.iter().map(|o| o.call).collect();
    let rets: Vec<u64> = ops.iter().map(|o| o.ret.unwrap_or(u64::MAX)).collect();
    let mut search = Search { steps, calls, rets, seen: HashSet::new(), best: 0 };
    let done = vec![0u64; ops.len().div_ceil(64)];
    if search.run(&done, NONE, 0) {
        Ok(())
    } else {
        let near = search.best.saturating_sub(5)..(search.best + 5).min(ops.len());
        let shown: Vec<String> = ops[near.clone()]
            .iter()
            .map(|o| format!("\n  call {} ret {:?}: {:?} ({})", o.call, o.ret, o.kind, o.note))
            .collect();
        Err(format!(
            "not linearizable: at most {} of {} operations can be ordered; by call time, operations {near:?}:{}",
            search.best,
            ops.len(),
            shown.concat()
        ))
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Read(State),
    Write(State),
    Cas(State, State, Option<bool>),
}

impl Step {
    /// The state after this step from `s`, or `None` if the step cannot happen there.
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(v) => (v == s).then_some(s),
            Step::Write(v) => Some(v),
            Step::Cas(expected, new, ok) => match (expected == s, ok) {
                (true, Some(true)) | (true, None) => Some(new),
                (false, Some(false)) | (false, None) => Some(s),
                _ => None,
            },
        }
    }
}

struct Search {
    steps: Vec<Step>,
    calls: Vec<u64>,
    rets: Vec<u64>,
    seen: HashSet<(Vec<u64>, State)>,
    best: usize,
}

impl Search {
    /// Depth-first: pick any operation that may come next (called before every pending
    /// operation's answer), apply it, go on; memoise (done set, state) pairs.
    fn run(&mut self, done: &[u64], state: State, count: usize) -> bool {
        let n = self.steps.len();
        if count == n {
            return true;
        }
        self.best = self.best.max(count);
        if !self.seen.insert((done.to_vec(), state)) {
            return false;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        let first_ret = (0..n).filter(|&i| !is_done(i)).map(|i| self.rets[i]).min().unwrap_or(u64::MAX);
        for i in 0..n {
            if self.calls[i] > first_ret {
                break; // sorted by call: nothing later may come first
            }
            if is_done(i) {
                continue;
            }
            if let Some(next) = self.steps[i].apply(state) {
                let mut d = done.to_vec();
                d[i / 64] |= 1 << (i % 64);
                if self.run(&d, next, count + 1) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: u64, kind: Kind) -> Op {
        Op { call, ret: Some(ret), kind, note: String::new() }
    }
    fn w(v: &str) -> Kind {
        Kind::Write(v.into())
    }
    fn r(v: Option<&str>) -> Kind {
        Kind::Read(v.map(str::to_string))
    }
    fn cas(from: Option<&str>, to: &str, ok: Option<bool>) -> Kind {
        Kind::Cas { expected: from.map(str::to_string), new: to.into(), ok }
    }

    #[test]
    fn accepts_sequential_and_concurrent_histories() {
        check(&[op(0, 1, w("a")), op(2, 3, r(Some("a"))), op(4, 5, cas(Some("a"), "b", Some(true)))]).unwrap();
        // A read concurrent with a write may see either value.
        check(&[op(0, 1, w("a")), op(2, 6, w("b")), op(3, 4, r(Some("b"))), op(7, 8, r(Some("b")))]).unwrap();
        check(&[op(0, 1, w("a")), op(2, 6, w("b")), op(3, 4, r(Some("a"))), op(7, 8, r(Some("b")))]).unwrap();
        // A write that was never answered may have happened late, or not at all.
        let lost = Op { call: 2, ret: None, kind: w("b"), note: String::new() };
        check(&[op(0, 1, w("a")), lost.clone(), op(10, 11, r(Some("a"))), op(20, 21, r(Some("b")))]).unwrap();
        check(&[op(0, 1, w("a")), lost, op(10, 11, r(Some("a")))]).unwrap();
        // An unanswered compare-and-swap, likewise.
        let maybe = Op { call: 2, ret: None, kind: cas(Some("a"), "c", None), note: String::new() };
        check(&[op(0, 1, w("a")), maybe.clone(), op(5, 6, r(Some("c")))]).unwrap();
        check(&[op(0, 1, w("a")), maybe, op(5, 6, r(Some("a")))]).unwrap();
        check(&[op(0, 1, r(None)), op(2, 3, cas(None, "x", Some(true))), op(4, 5, cas(None, "y", Some(false)))])
            .unwrap();
    }

    #[test]
    fn rejects_known_non_linearizable_histories() {
        // A completed write, then a read of the value before it.
        assert!(check(&[op(0, 1, w("a")), op(2, 3, r(None))]).is_err());
        // A stale read after a newer write completed.
        assert!(check(&[op(0, 1, w("a")), op(2, 3, w("b")), op(4, 5, r(Some("a")))]).is_err());
        // Two later reads that see two concurrent writes in opposite orders.
        assert!(check(&[op(0, 10, w("a")), op(0, 10, w("b")), op(11, 12, r(Some("b"))), op(13, 14, r(Some("a"))),])
            .is_err());
        // Two compare-and-swaps from the same value both succeeding.
        assert!(check(&[
            op(0, 1, w("a")),
            op(2, 3, cas(Some("a"), "b", Some(true))),
            op(4, 5, cas(Some("a"), "c", Some(true))),
        ])
        .is_err());
        // A compare-and-swap refused although the value was what it expected.
        assert!(check(&[op(0, 1, w("a")), op(2, 3, cas(Some("a"), "b", Some(false)))]).is_err());
        // A value read before anything wrote it.
        assert!(check(&[op(0, 1, r(Some("a"))), op(2, 3, w("a"))]).is_err());
        // Even an unanswered write cannot be seen before it was called.
        assert!(check(&[op(0, 1, r(Some("z"))), Op { call: 5, ret: None, kind: w("z"), note: String::new() }]).is_err());
    }

    #[test]
    fn handles_long_histories_with_several_clients() {
        // 6 clients, 600 operations, sequentially consistent by construction.
        let mut history = Vec::new();
        let mut t = 0;
        let mut current: Option<String> = None;
        for i in 0..600u64 {
            let kind = match i % 3 {
                0 => {
                    current = Some(format!("v{i}"));
                    w(&format!("v{i}"))
                }
                1 => r(current.as_deref()),
                _ => {
                    let from = current.clone();
                    current = Some(format!("c{i}"));
                    Kind::Cas { expected: from, new: format!("c{i}"), ok: Some(true) }
                }
            };
            // Overlapping intervals: each op spans the next five calls.
            history.push(Op { call: t, ret: Some(t + 5 * 10 + 1), kind, note: String::new() });
            t += 10;
        }
        check(&history).unwrap();
        // Swap two reads' answers far apart: now it cannot be ordered.
        let (a, b) = (history[1].kind.clone(), history[301].kind.clone());
        history[1].kind = b;
        history[301].kind = a;
        assert!(check(&history).is_err());
    }
}
