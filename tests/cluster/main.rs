//! Cluster tests: real `keelson` processes, driven through the command line as a
//! user would. They run one at a time (a lock below), each in its own data folder,
//! with every port chosen by the OS on 127.0.0.1, and stop what they start.
//!
//! What these check:
//! - `keelson up` comes up and prints `keelson: ready`; `keelson tree` shows every
//!   member's tree; `keelson events` follows a kill and the restart live;
//!   `keelson chaos kill PATH` restarts that actor, and the tree then
//!   shows one restart for it; a killed member process is restarted by the launcher;
//!   random kills print the paths they killed; Ctrl-C stops everything it started;
//! - the chaos door refuses a request without the admin token (401) and kills nothing;
//! - a second `up` on the same data folder refuses to start;
//! - a member whose root exceeds its restart intensity exits non-zero with the reason;
//! - three members exchange request/response, streamed and one-way messages over QUIC,
//!   reach a restarted remote actor again, fail within deadlines under a partition and
//!   recover after healing, and answer through injected loss and delay;
//! - the replicated store acknowledges writes through any member, keeps every
//!   acknowledged write across a SIGKILL of its leader and across a full stop and
//!   start of the cluster, and refuses garbage with a 400;
//! - the store's histories of reads, writes and compare-and-swaps stay linearizable
//!   while its leader is killed, cut off, and its links lose packets;
//! - the scheduler and controllers place, scale, roll out and back, and collect
//!   workloads on hollow nodes, and replace what lost nodes and a lost leader held;
//! - real agents run pods as processes: addresses, logs, restarts and back-off, probes,
//!   graceful deletion, adoption after kill -9, rollouts, and a clean stop;
//! - the process runtime's shim logs a container's output, records how it ended, and
//!   ends its process group with it (stragglers' output drained for a bounded time);
//! - Services reach ready pods at cluster IPs and node ports, through rollouts.

mod support;

mod api_door;
mod api_watch;
mod docker;
mod kubectl;
mod kubectl_apply;
mod kubelet;
mod launcher;
mod leader;
mod linearizability;
mod member;
mod python_client;
mod services;
mod shim;
mod store;
mod store_api;
mod store_history;
mod store_members;
mod transport;
mod workloads;
