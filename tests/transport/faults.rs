//! Lossy, slow, duplicating and partitioned links, injected in the socket layer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_transport::faults::{Direction, LinkFaults};
use keelson_transport::tls::ClusterCa;
use keelson_transport::Error;

use crate::support::*;

fn degrade(a: &Node, b: &Node, f: LinkFaults) {
    a.transport.faults().set(b.transport.local_addr(), Direction::Out, f);
    b.transport.faults().set(a.transport.local_addr(), Direction::Out, f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_over_a_bad_link_each_complete_exactly_once() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (Node::start(&ca, "a"), Node::start(&ca, "b"));
    a.link(&b);
    let bad = LinkFaults {
        loss: 0.20,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        duplicate: 0.05,
        ..LinkFaults::default()
    };
    degrade(&a, &b, bad);

    const N: usize = 10_000;
    const CONCURRENCY: usize = 400;
    let next = Arc::new(AtomicUsize::new(0));
    let transport = a.transport.clone();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (t, next) = (transport.clone(), next.clone());
            tokio::spawn(async move {
                let mut wrong = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= N {
                        return wrong;
                    }
                    let payload = format!("req-{i:05}").into_bytes();
                    let want: Vec<u8> = payload.iter().rev().copied().collect();
                    match t.request("b", "/echo", "/load", payload, Duration::from_secs(120)).await {
                        Ok(got) if got == want => {}
                        other => wrong.push((i, format!("{other:?}"))),
                    }
                }
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for w in workers {
        wrong.extend(w.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} requests failed or got a wrong reply, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    let seen = b.seen.requests.lock().unwrap();
    assert_eq!(seen.len(), N, "every request reached the application");
    assert!(seen.values().all(|&n| n == 1), "a request was handled twice");
    let stats = a.transport.stats();
    let s = stats.iter().find(|s| s.peer == "b").unwrap();
    // Requests share packets, so count the faults against packets sent, not requests.
    let drop_share = s.injected_drops as f64 / s.sent_packets as f64;
    assert!(
        (0.1..0.3).contains(&drop_share) && s.injected_duplicates > 0 && s.lost_packets > 0,
        "faults not in force: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fails_callers_within_their_deadline_and_heals() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (Node::start(&ca, "a"), Node::start(&ca, "b"));
    a.link(&b);
    let deadline = Duration::from_millis(800);
    assert!(a.transport.request("b", "/echo", "/t", b"x".to_vec(), deadline).await.is_ok());

    degrade(&a, &b, LinkFaults::cut());
    for _ in 0..3 {
        let began = Instant::now();
        let err = a.transport.request("b", "/echo", "/t", b"x".to_vec(), deadline).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. } | Error::Unreachable { .. }), "{err}");
        assert!(began.elapsed() < deadline + Duration::from_millis(500), "an error came after {:?}", began.elapsed());
    }
    // One-way cut: b can no longer hear a, so a's requests fail too.
    a.transport.faults().heal();
    b.transport.faults().set(a.transport.local_addr(), Direction::In, LinkFaults::cut());
    assert!(a.transport.request("b", "/echo", "/t", b"x".to_vec(), deadline).await.is_err());

    b.transport.faults().heal();
    let mut healed = false;
    for _ in 0..40 {
        if a.transport.request("b", "/echo", "/t", b"y".to_vec(), deadline).await.is_ok() {
            healed = true;
            break;
        }
    }
    assert!(healed, "traffic did not resume after healing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_carries_100_mb_each_way_under_loss() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (Node::start(&ca, "a"), Node::start(&ca, "b"));
    a.link(&b);
    degrade(&a, &b, LinkFaults { loss: 0.05, ..LinkFaults::default() });

    const TOTAL: usize = 100 << 20;
    let (mut send, mut recv) = a.transport.open("b", "/pipe", "/bulk", vec![], Duration::from_secs(10)).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut sum = FNV_START;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            rng.fill(&mut chunk);
            sum = fnv(sum, &chunk);
            send.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        send.finish().unwrap();
        sum
    });
    let mut sum = FNV_START;
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(n) = recv.read(&mut buf).await.unwrap() {
        sum = fnv(sum, &buf[..n]);
        got += n;
    }
    let sent_sum = writer.await.unwrap();
    assert_eq!(got, TOTAL, "bytes lost");
    assert_eq!(sum, sent_sum, "the echoed stream differs from what was sent");
}
