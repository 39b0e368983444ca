//! `/metrics`: the tree's and the transport's counters in the Prometheus text format.

use std::fmt::Write;

use keelson_transport::PeerStats;

use crate::runtime::{ActorInfo, ActorState, TreeSnapshot};

/// One metric family: how to read one sample from one row.
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> f64,
}

const ACTORS: &[Family<ActorInfo>] = &[
    Family { name: "keelson_actor_up", kind: "gauge", help: "1 while the actor runs", value: |a| up(a.state) },
    Family {
        name: "keelson_actor_restarts_total",
        kind: "counter",
        help: "restarts of the path",
        value: |a| a.restarts as f64,
    },
    Family {
        name: "keelson_actor_kills_total",
        kind: "counter",
        help: "kills through the chaos door",
        value: |a| a.kills as f64,
    },
    Family {
        name: "keelson_actor_handled_total",
        kind: "counter",
        help: "messages handled",
        value: |a| a.handled as f64,
    },
    Family {
        name: "keelson_actor_backlog",
        kind: "gauge",
        help: "messages waiting in the mailbox",
        value: |a| a.backlog as f64,
    },
    Family {
        name: "keelson_actor_handler_seconds_total",
        kind: "counter",
        help: "time spent in handlers",
        value: |a| a.handler_us as f64 / 1e6,
    },
];

const PEERS: &[Family<PeerStats>] = &[
    Family {
        name: "keelson_transport_connected",
        kind: "gauge",
        help: "1 while a connection is up",
        value: |s| s.connected as u8 as f64,
    },
    Family {
        name: "keelson_transport_requests_total",
        kind: "counter",
        help: "requests sent",
        value: |s| s.requests as f64,
    },
    Family {
        name: "keelson_transport_one_way_total",
        kind: "counter",
        help: "one-way messages sent",
        value: |s| s.one_way as f64,
    },
    Family {
        name: "keelson_transport_received_total",
        kind: "counter",
        help: "messages received",
        value: |s| s.received as f64,
    },
    Family {
        name: "keelson_transport_bytes_sent_total",
        kind: "counter",
        help: "frame bytes sent",
        value: |s| s.bytes_sent as f64,
    },
    Family {
        name: "keelson_transport_bytes_received_total",
        kind: "counter",
        help: "frame bytes received",
        value: |s| s.bytes_received as f64,
    },
    Family {
        name: "keelson_transport_errors_total",
        kind: "counter",
        help: "requests that failed",
        value: |s| s.errors as f64,
    },
    Family {
        name: "keelson_transport_lost_packets_total",
        kind: "counter",
        help: "packets QUIC found lost and retransmitted",
        value: |s| s.lost_packets as f64,
    },
    Family {
        name: "keelson_transport_injected_drops_total",
        kind: "counter",
        help: "datagrams dropped by injected faults",
        value: |s| s.injected_drops as f64,
    },
    Family {
        name: "keelson_transport_rtt_seconds",
        kind: "gauge",
        help: "smoothed round-trip time",
        value: |s| s.rtt_us as f64 / 1e6,
    },
    Family {
        name: "keelson_transport_mtu_bytes",
        kind: "gauge",
        help: "datagram size path MTU discovery reached",
        value: |s| s.mtu as f64,
    },
];

fn up(state: ActorState) -> f64 {
    (state == ActorState::Running) as u8 as f64
}

fn write_families<T>(out: &mut String, families: &[Family<T>], rows: &[T], labels: impl Fn(&T) -> String) {
    for f in families {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind);
        for row in rows {
            let _ = writeln!(out, "{}{{{}}} {}", f.name, labels(row), (f.value)(row));
        }
    }
}

pub fn render(snapshot: &TreeSnapshot, peers: &[PeerStats]) -> String {
    let mut out = String::new();
    let member = &snapshot.member;
    write_families(&mut out, ACTORS, &snapshot.actors, |a| format!("member=\"{member}\",path=\"{}\"", a.path));
    write_families(&mut out, PEERS, peers, |s| format!("member=\"{member}\",peer=\"{}\"", s.peer));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let snapshot = TreeSnapshot { member: "m".into(), pid: 1, at_ms: 0, actors: vec![] };
        let peers = vec![PeerStats { peer: "p".into(), requests: 3, rtt_us: 1500, ..PeerStats::default() }];
        let text = render(&snapshot, &peers);
        assert!(text.contains("# TYPE keelson_transport_requests_total counter\n"));
        assert!(text.contains("keelson_transport_requests_total{member=\"m\",peer=\"p\"} 3\n"));
        assert!(text.contains("keelson_transport_rtt_seconds{member=\"m\",peer=\"p\"} 0.0015\n"));
    }
}
