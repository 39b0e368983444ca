//! `keelson bench …`: benchmarks that print figures (BENCHMARKS.md has the latest).

mod actors;
mod api;
mod cpu;
mod pods;
mod proxy;
mod scheduler;
mod store;
mod transport;

pub use actors::{actors, ActorBenchArgs};
pub use api::{api, ApiBenchArgs};
pub use pods::{pods, PodsBenchArgs};
pub use proxy::{proxy, ProxyBenchArgs};
pub use scheduler::{scheduler, SchedulerBenchArgs};
pub use store::{store, StoreBenchArgs};
pub use transport::{transport, transport_peer, TransportBenchArgs, TransportPeerArgs};

/// The end of a bench that used the scratch folder `dir`: removed after a run that
/// worked; a failed run keeps it, with its members' logs (`*/keelson.log`), and says
/// where, so the failure can be looked into.
fn finish<T>(dir: &std::path::Path, result: anyhow::Result<T>) -> anyhow::Result<T> {
    match &result {
        Ok(_) => drop(std::fs::remove_dir_all(dir)),
        Err(_) => eprintln!("the bench's data folder and its members' logs are kept in {}", dir.display()),
    }
    result
}
