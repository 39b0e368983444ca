//! The message patterns between two and three endpoints.

use std::time::Duration;

use keelson_transport::tls::ClusterCa;
use keelson_transport::Error;

use crate::support::*;

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_one_way_stream_and_open_between_three_members() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b, c) = (Node::start(&ca, "a"), Node::start(&ca, "b"), Node::start(&ca, "c"));
    a.link(&b);
    a.link(&c);
    b.link(&c);

    for (from, to) in [(&a, &b), (&b, &c), (&c, &a), (&a, &c)] {
        let reply = from.transport.request(&to.name(), "/echo", "/test", b"abc".to_vec(), SECOND).await.unwrap();
        assert_eq!(reply, b"cba");
    }
    match a.transport.request("b", "/fail", "/test", vec![], SECOND).await {
        Err(Error::Remote { code: 409, message }) => assert_eq!(message, "no thanks"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(a.transport.request("nobody", "/echo", "/t", vec![], SECOND).await, Err(Error::UnknownPeer(_))));

    a.transport.tell("b", "/log", "/test", b"one".to_vec(), SECOND).await.unwrap();
    a.transport.tell("b", "/log", "/test", b"two".to_vec(), SECOND).await.unwrap();
    for _ in 0..200 {
        if b.seen.one_way.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = b.seen.one_way.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);

    let mut items = c.transport.request_stream("a", "/count", "/test", vec![5], SECOND).await.unwrap();
    let mut all = Vec::new();
    while let Some(item) = items.recv().await {
        all.push(item.unwrap()[0]);
    }
    assert_eq!(all, vec![1, 2, 3, 4, 5]);

    let (mut send, mut recv) = b.transport.open("c", "/pipe", "/test", vec![], SECOND).await.unwrap();
    send.write_all(b"hello over a raw stream").await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(1024).await.unwrap();
    assert_eq!(back, b"hello over a raw stream");

    let stats = a.transport.stats();
    let to_b = stats.iter().find(|s| s.peer == "b").unwrap();
    assert!(to_b.connected && to_b.requests >= 2 && to_b.one_way == 2 && to_b.rtt_us > 0, "{to_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_again_through_the_same_name() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Node::start(&ca, "a");
    let b = Node::start(&ca, "b");
    a.link(&b);
    assert_eq!(a.transport.request("b", "/echo", "/t", b"12".to_vec(), SECOND).await.unwrap(), b"21");
    let addr = b.transport.local_addr();
    b.transport.close();
    drop(b);
    // A new process for "b" on the same address: the old connection is dead, the next
    // request dials again.
    let creds =
        ca.issue(&keelson_transport::tls::Identity::new("b", keelson_transport::tls::Role::Server).unwrap()).unwrap();
    let cfg = keelson_transport::TransportConfig { listen: addr, ..Default::default() };
    let mut bound = None;
    for _ in 0..50 {
        match keelson_transport::Transport::start(&creds, cfg.clone()) {
            Ok(x) => {
                bound = Some(x);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (b2, mut inbox, _rt) = bound.expect("rebind b's address");
    tokio::spawn(async move {
        while let Some(m) = inbox.recv().await {
            let _ = m.reply.respond(b"again".to_vec()).await;
        }
    });
    b2.add_peer(a.transport.identity().clone(), a.transport.local_addr());
    // The first request may still ride the dead connection and fail (a typed error,
    // never silence); the connection is then replaced and later requests get through.
    let mut reply = None;
    for _ in 0..40 {
        match a.transport.request("b", "/echo", "/t", vec![], Duration::from_millis(500)).await {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(e) => assert!(matches!(e, Error::Closed(_) | Error::Timeout { .. } | Error::Unreachable { .. }), "{e}"),
        }
    }
    assert_eq!(reply.as_deref(), Some(&b"again"[..]));
}

/// A request, its reply and a one-way message each end their stream with their one
/// frame, and the receiver takes that end: no side asks the other to stop sending (a
/// frame, a packet and its acknowledgement more for every message), as a rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_leave_no_stream_half_read() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (Node::start(&ca, "a"), Node::start(&ca, "b"));
    a.link(&b);
    for i in 0..20u8 {
        let reply = a.transport.request("b", "/echo", "/test", vec![i, 1, 2], SECOND).await.unwrap();
        assert_eq!(reply, vec![2, 1, i]);
        a.transport.tell("b", "/log", "/test", vec![i], SECOND).await.unwrap();
    }
    for _ in 0..200 {
        if b.seen.one_way.lock().unwrap().len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.seen.one_way.lock().unwrap().len(), 20);
    let to_b = a.transport.stats().into_iter().find(|s| s.peer == "b").unwrap();
    assert!(to_b.connected && to_b.requests == 20 && to_b.one_way == 20, "{to_b:?}");
    // The end is taken only if it is already there (never waited for): on a loaded
    // machine a sender's end can now and then come a packet after its frame. Without
    // taking it, every message left one: 20 sent (replies) and 40 received.
    assert!(to_b.stops_sent + to_b.stops_received < 15, "{to_b:?}");
}

/// Path MTU discovery grows a loopback path past Ethernet's 1,452 bytes (up to the
/// endpoint's bound), and messages bigger than a batch of such datagrams still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_paths_carry_datagrams_bigger_than_ethernet() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (Node::start(&ca, "a"), Node::start(&ca, "b"));
    a.link(&b);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut mtu = 0;
    for _ in 0..100 {
        let reply = a.transport.request("b", "/echo", "/test", big.clone(), SECOND).await.unwrap();
        assert!(reply.iter().eq(big.iter().rev()), "a 200 kB echo came back whole");
        mtu = a.transport.stats().iter().find(|s| s.peer == "b").unwrap().mtu;
        if mtu > 1452 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mtu > 1452 && mtu <= keelson_transport::MAX_DATAGRAM, "path MTU {mtu}");
    // Once grown, full-size batches (ten datagrams in one send) carry it both ways.
    for _ in 0..3 {
        let reply = b.transport.request("a", "/echo", "/test", big.clone(), SECOND).await.unwrap();
        assert!(reply.iter().eq(big.iter().rev()));
    }
}
