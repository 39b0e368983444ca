//! The store is linearizable while its leader is killed, cut off, and its links lose a
//! fifth of their packets with 50 ± 20 ms of delay: clients read, write and
//! compare-and-swap a few keys through random members, and every key's recorded
//! history is checked (`linearizability.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::linearizability::{check, Kind, Op};
use crate::store::{leader, START};
use crate::support::*;

const MEMBERS: [&str; 3] = ["server-1", "server-2", "server-3"];
const KEYS: usize = 4;
const CLIENTS: usize = 6;
/// How long a client waits for an answer; after that the operation is indeterminate.
const PATIENCE: Duration = Duration::from_secs(2);

struct Recorder {
    origin: Instant,
    ops: Mutex<BTreeMap<usize, Vec<Op>>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn record(&self, key: usize, call: u64, ret: Option<u64>, kind: Kind, note: String) {
        self.ops.lock().unwrap().entry(key).or_default().push(Op { call, ret, kind, note });
    }
}

/// A read through `member`: the value and its modification revision, or `None` when
/// the store gave no clear answer.
fn read(data: &Path, rec: &Recorder, member: &str, k: usize) -> Option<(Option<String>, u64)> {
    let call = rec.now();
    let answer = door_call(data, member, "GET", &format!("/kv/key/lin/k{k}"), b"", PATIENCE);
    let ret = rec.now();
    let seen = match &answer {
        Some((200, v)) => (Some(v["value"].as_str()?.to_string()), v["mod_revision"].as_u64()?),
        Some((404, _)) => (None, 0),
        _ => return None,
    };
    let note = format!("{member}: {}", answer.map(|(_, v)| v.to_string()).unwrap_or_default());
    rec.record(k, call, Some(ret), Kind::Read(seen.0.clone()), note);
    Some(seen)
}

/// One client's loop: (answered, without a clear answer, refused with 503).
fn client(data: &Path, rec: &Recorder, id: usize, stop: &AtomicBool) -> (usize, usize, usize) {
    let (mut answered, mut unknown, mut refused) = (0, 0, 0);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (k, member) = (fastrand::usize(..KEYS), MEMBERS[fastrand::usize(..3)]);
        let value = format!("c{id}-{n}");
        let (call, kind, answer) = match fastrand::u8(..10) {
            0..=3 => {
                match read(data, rec, member, k) {
                    Some(_) => answered += 1,
                    None => unknown += 1,
                }
                continue;
            }
            4..=6 => {
                let call = rec.now();
                let a = door_call(data, member, "PUT", &format!("/kv/key/lin/k{k}"), value.as_bytes(), PATIENCE);
                (call, Kind::Write(value), a)
            }
            _ => {
                let Some((expected, revision)) = read(data, rec, member, k) else {
                    unknown += 1;
                    continue;
                };
                let body = serde_json::json!({"key": format!("/lin/k{k}"), "expected": revision, "value": value});
                let call = rec.now();
                let a = door_call(data, member, "POST", "/kv/cas", body.to_string().as_bytes(), PATIENCE);
                let ok = match a {
                    Some((200, _)) => Some(true),
                    Some((409, _)) => Some(false),
                    _ => None,
                };
                (call, Kind::Cas { expected, new: value, ok }, a)
            }
        };
        // A 503 says nothing was done: the write is left out of the history, so a read
        // that ever saw its value would fail the check. A write without a clear answer
        // (a timeout, a 504 from a leader that lost the lead mid-write) may or may not
        // have happened: it gets no completion.
        if matches!(answer, Some((503, _))) {
            refused += 1;
            continue;
        }
        let clear =
            matches!((&kind, &answer), (Kind::Write(_), Some((200, _))) | (Kind::Cas { .. }, Some((200 | 409, _))));
        let ret = clear.then(|| rec.now());
        let note = format!("{member}: {answer:?}");
        let kind = match (kind, ret) {
            (Kind::Cas { expected, new, .. }, None) => Kind::Cas { expected, new, ok: None },
            (kind, _) => kind,
        };
        match ret {
            Some(_) => answered += 1,
            None => unknown += 1,
        }
        rec.record(k, call, ret, kind, note);
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..15)));
    }
    (answered, unknown, refused)
}

fn kill_leader(data: &Path, rec: &Recorder) {
    let Some(l) = leader(data, &MEMBERS) else { return };
    let pid = door(data, &l)["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eprintln!("nemesis at {} ns: SIGKILL the leader {l} (pid {pid})", rec.now());
}

#[test]
fn the_store_is_linearizable_under_leader_kills_partitions_and_loss() {
    let _one = serial();
    let scratch = Scratch::new("history");
    let data = scratch.data();
    let mut up = Running::start(&data, &["up", "--agents", "0"], &scratch.0.join("up.log"));
    up.wait_for_line("keelson: ready", START);
    eventually("a leader", START, || leader(&data, &MEMBERS).is_some());

    let rec = Arc::new(Recorder { origin: Instant::now(), ops: Mutex::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (data, rec, stop) = (data.clone(), rec.clone(), stop.clone());
            std::thread::spawn(move || client(&data, &rec, id, &stop))
        })
        .collect();

    let at = |secs: u64| {
        let until = rec.origin + Duration::from_secs(secs);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    };
    at(4);
    kill_leader(&data, &rec);
    at(10);
    if let Some(l) = leader(&data, &MEMBERS) {
        let others: Vec<&str> = MEMBERS.iter().copied().filter(|m| *m != l).collect();
        eprintln!("nemesis: cut {l} off from {others:?}");
        run_ok(&data, &["chaos", "net", "--partition", &l, "--from", &others.join(",")]);
    }
    at(15);
    run_ok(&data, &["chaos", "net", "--heal"]);
    at(17);
    eprintln!("nemesis: 20% loss, 50 ± 20 ms on every link");
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let pair = format!("{},{}", MEMBERS[a], MEMBERS[b]);
        run_ok(&data, &["chaos", "net", "--between", &pair, "--loss", "20%", "--delay", "50ms", "--jitter", "20ms"]);
    }
    at(25);
    run_ok(&data, &["chaos", "net", "--heal"]);
    at(26);
    kill_leader(&data, &rec);
    at(32);
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut unknown, mut refused) = (0, 0, 0);
    for c in clients {
        let (a, u, r) = c.join().unwrap();
        answered += a;
        unknown += u;
        refused += r;
    }

    let histories = std::mem::take(&mut *rec.ops.lock().unwrap());
    let cas_ok: usize =
        histories.values().flatten().filter(|o| matches!(o.kind, Kind::Cas { ok: Some(true), .. })).count();
    eprintln!(
        "{answered} operations answered, {unknown} without a clear answer, {refused} writes refused (503), \
         {cas_ok} successful compare-and-swaps"
    );
    assert!(answered >= 300, "too few operations to say anything: {answered}");
    assert!(cas_ok >= 10, "too few successful compare-and-swaps: {cas_ok}");
    for (k, history) in &histories {
        let began = Instant::now();
        check(history).unwrap_or_else(|e| panic!("/lin/k{k}: {e}"));
        eprintln!("/lin/k{k}: {} operations, linearizable (checked in {:?})", history.len(), began.elapsed());
    }

    up.stop(Duration::from_secs(60));
}
