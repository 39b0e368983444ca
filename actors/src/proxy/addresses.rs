//! Where cluster IPs live on a node: a link of this agent's own (`kss<hash of node>`,
//! an empty bridge: a `dummy` link would do, but kernels without the dummy module are
//! common in containers, as on this machine kind), holding each Service's cluster IP
//! as a /32, so the host and pods (whose default route leads to the host) reach the
//! proxy's listeners there.
//!
//! Several agents on one machine each hold the same addresses on their own link (the
//! kernel keeps an address local while any link has it) and listen with
//! `SO_REUSEPORT`, so neither fights the other for `clusterIP:port` and either one
//! going away leaves the other serving. Making links needs root; without it cluster
//! IPs are not served here (node ports still are) and the agent says so.

use super::is_root;
use crate::cri::netlink::Netlink;
use crate::hash::fnv1a;
use std::net::Ipv4Addr;

pub struct ServiceAddresses {
    link: String,
    /// Whether `setup` made the link (cluster IPs are served only then).
    made: bool,
}

impl ServiceAddresses {
    pub fn new(node: &str) -> Self {
        Self { link: format!("kss{:08x}", fnv1a(node.as_bytes()) as u32), made: false }
    }

    pub fn link(&self) -> &str {
        &self.link
    }

    /// Makes the link afresh (one an earlier run left may hold addresses of Services
    /// deleted since; while it is re-made, another agent's link keeps the addresses
    /// local). Cluster IPs are served only if this worked.
    pub fn setup(&mut self) -> Result<(), String> {
        let made = if !is_root() {
            Err("holding cluster IPs needs root (a link of the agent's own); node ports are served".to_string())
        } else {
            Netlink::open()
                .and_then(|mut nl| {
                    match nl.delete(&self.link) {
                        Err(e) if e.raw_os_error() != Some(libc::ENODEV) => return Err(e),
                        _ => {}
                    }
                    nl.link(&self.link, "bridge")
                })
                .map_err(|e| format!("cannot make the cluster IPs' link {}: {e}", self.link))
        };
        self.made = made.is_ok();
        made
    }

    pub fn available(&self) -> bool {
        self.made
    }

    /// Holds `ip` on the link (already held is fine).
    pub fn hold(&self, ip: Ipv4Addr) -> std::io::Result<()> {
        let mut nl = Netlink::open()?;
        let index = nl.index(&self.link)?;
        match nl.address(index, ip, 32) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Lets `ip` go (its Service is gone).
    pub fn release(&self, ip: Ipv4Addr) {
        if let Ok(mut nl) = Netlink::open() {
            if let Ok(index) = nl.index(&self.link) {
                let _ = nl.remove_address(index, ip, 32);
            }
        }
    }

    /// Removes the link and every address on it: the agent stops for good.
    pub fn teardown(&self) {
        if std::path::Path::new("/sys/class/net").join(&self.link).exists() {
            if let Err(e) = Netlink::open().and_then(|mut nl| nl.delete(&self.link)) {
                tracing::warn!(link = %self.link, error = %e, "cannot remove the cluster IPs' link");
            }
        }
    }
}
