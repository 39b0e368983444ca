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
