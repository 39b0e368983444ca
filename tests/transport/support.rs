//! Endpoints with a small echo application behind them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use keelson_transport::tls::{ClusterCa, Credentials, Identity, Role};
use keelson_transport::{Inbound, Reply, Transport, TransportConfig, TransportRuntime};

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// What a node's application saw: how often each request payload was handled.
#[derive(Default)]
pub struct Seen {
    pub requests: Mutex<HashMap<Vec<u8>, u32>>,
    pub one_way: Mutex<Vec<Vec<u8>>>,
}

pub struct Node {
    pub transport: Transport,
    pub seen: Arc<Seen>,
    _runtime: TransportRuntime,
}

impl Node {
    pub fn start(ca: &ClusterCa, name: &str) -> Self {
        let creds = ca.issue(&Identity::new(name, Role::Server).unwrap()).unwrap();
        Self::with_credentials(&creds)
    }

    pub fn with_credentials(creds: &Credentials) -> Self {
        let cfg = TransportConfig { listen: loopback(), fault_seed: 11, ..TransportConfig::default() };
        let (transport, mut inbox, runtime) = Transport::start(creds, cfg).unwrap();
        let seen = Arc::new(Seen::default());
        let app_seen = seen.clone();
        tokio::runtime::Handle::current().spawn(async move {
            while let Some(msg) = inbox.recv().await {
                tokio::spawn(serve(msg, app_seen.clone()));
            }
        });
        Self { transport, seen, _runtime: runtime }
    }

    pub fn name(&self) -> String {
        self.transport.identity().name.clone()
    }

    /// Makes each node able to reach the other.
    pub fn link(&self, other: &Node) {
        self.transport.add_peer(other.transport.identity().clone(), other.transport.local_addr());
        other.transport.add_peer(self.transport.identity().clone(), self.transport.local_addr());
    }
}

/// The echo application: `/echo` answers the payload reversed, `/fail` fails, `/count`
/// streams 1..=n, one-way messages are recorded, opened streams echo their bytes.
async fn serve(msg: Inbound, seen: Arc<Seen>) {
    let Inbound { envelope, reply, .. } = msg;
    match (envelope.to.path.as_str(), reply) {
        (_, Reply::None) => seen.one_way.lock().unwrap().push(envelope.payload),
        ("/echo", reply) => {
            *seen.requests.lock().unwrap().entry(envelope.payload.clone()).or_default() += 1;
            let mut back = envelope.payload;
            back.reverse();
            let _ = reply.respond(back).await;
        }
        ("/fail", reply) => {
            let _ = reply.fail(409, "no thanks").await;
        }
        ("/count", mut reply) => {
            let n = envelope.payload[0] as u64;
            for i in 1..=n {
                let _ = reply.item(i, vec![i as u8]).await;
            }
            let _ = reply.end().await;
        }
        (_, Reply::Open { mut send, mut recv }) => {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(n)) = recv.read(&mut buf).await {
                if send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        }
        (_, reply) => {
            let _ = reply.fail(404, "no such actor").await;
        }
    }
}

/// A quick checksum (FNV-1a), enough to see corruption or loss in a stream.
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub const FNV_START: u64 = 0xcbf29ce484222325;
