//! Which endpoint a new connection (or UDP flow) goes to: round robin over the ready
//! endpoints, or the client's endpoint of last time under `sessionAffinity: ClientIP`;
//! the rest follow in order, for a connection refused by the first to try the next.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hash::fnv1a;

/// One Service port's endpoints, as the proxy uses them now.
#[derive(Debug, Default)]
pub struct Backends {
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
    /// `Some(timeout)`: ClientIP affinity.
    affinity: Option<Duration>,
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Backends {
    pub fn new(mut endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> Self {
        endpoints.sort();
        endpoints.dedup();
        Self { endpoints, affinity, ..Default::default() }
    }

    /// `next`, with the round-robin position and the clients' affinity of `self`
    /// carried over (for endpoints still there, and not expired).
    pub fn replaced_by(&self, next: Backends) -> Backends {
        next.next.store(self.next.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(timeout) = next.affinity {
            let mut sticky = self.sticky.lock().unwrap().clone();
            sticky.retain(|_, (e, at)| next.endpoints.contains(e) && at.elapsed() < timeout);
            *next.sticky.lock().unwrap() = sticky;
        }
        next
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Every endpoint, the one to try first first.
    pub fn candidates(&self, client: IpAddr) -> Vec<SocketAddr> {
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let first = match self.affinity {
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Some(timeout) => {
                let sticky = self.sticky.lock().unwrap();
                let kept = sticky.get(&client).filter(|(_, at)| at.elapsed() < timeout);
                // A new client's endpoint follows from its address, not from this
                // proxy's turn: proxies sharing an address (agents on one machine,
                // SO_REUSEPORT) then agree on it whichever of them takes each connection.
                let by_address = match client {
                    IpAddr::V4(ip) => fnv1a(&ip.octets()),
                    IpAddr::V6(ip) => fnv1a(&ip.octets()),
                };
                kept.and_then(|(e, _)| self.endpoints.iter().position(|x| x == e))
                    .unwrap_or((by_address % n as u64) as usize)
            }
        };
        (0..n).map(|i| self.endpoints[(first + i) % n]).collect()
    }

    /// `client` got through to `endpoint` (kept for its next connection under affinity).
    pub fn used(&self, client: IpAddr, endpoint: SocketAddr) {
        if let Some(timeout) = self.affinity {
            let mut sticky = self.sticky.lock().unwrap();
            // Expired clients go once there are many (the map would only grow).
            if sticky.len() >= 4096 {
                sticky.retain(|_, (_, at)| at.elapsed() < timeout);
            }
            sticky.insert(client, (endpoint, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 80))
    }

    #[test]
    fn round_robin_visits_every_endpoint_and_offers_the_rest_after() {
        let b = Backends::new(vec![addr(3), addr(1), addr(2)], None);
        let client: IpAddr = [127, 0, 0, 1].into();
        let firsts: Vec<SocketAddr> = (0..6).map(|_| b.candidates(client)[0]).collect();
        assert_eq!(firsts, vec![addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]);
        let all = b.candidates(client);
        assert_eq!(all.len(), 3, "a refused first try goes on to the others");
        assert!(Backends::new(vec![], None).candidates(client).is_empty());
    }

    #[test]
    fn client_ip_affinity_keeps_a_client_on_its_endpoint() {
        let b = Backends::new(vec![addr(1), addr(2), addr(3)], Some(Duration::from_secs(60)));
        let (a, c): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let first = b.candidates(a)[0];
        b.used(a, first);
        for _ in 0..5 {
            assert_eq!(b.candidates(a)[0], first);
            let other = b.candidates(c)[0];
            b.used(c, other);
        }
        // Carried over while the endpoint stays; dropped once it goes.
        let kept =
            b.replaced_by(Backends::new(vec![addr(1), addr(2), addr(3), addr(4)], Some(Duration::from_secs(60))));
        assert_eq!(kept.candidates(a)[0], first);
        let rest: Vec<SocketAddr> = [addr(1), addr(2), addr(3)].into_iter().filter(|e| *e != first).collect();
        let moved = kept.replaced_by(Backends::new(rest.clone(), Some(Duration::from_secs(60))));
        assert!(rest.contains(&moved.candidates(a)[0]));
    }

    #[test]
    fn proxies_sharing_an_address_agree_on_a_new_clients_endpoint() {
        let affinity = Some(Duration::from_secs(60));
        let (one, two) = (
            Backends::new((1..=5).map(addr).collect(), affinity),
            Backends::new((1..=5).map(addr).collect(), affinity),
        );
        two.candidates([10, 9, 9, 9].into()); // the second proxy's turn moved on
        let mut seen = std::collections::HashSet::new();
        for last in 1..=40u8 {
            let client: IpAddr = [127, 0, 0, last].into();
            assert_eq!(one.candidates(client)[0], two.candidates(client)[0], "client {client}");
            seen.insert(one.candidates(client)[0]);
        }
        assert!(seen.len() >= 4, "clients still spread over the endpoints: {seen:?}");
    }
}
