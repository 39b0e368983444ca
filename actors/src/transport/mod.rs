//! The member's side of the transport: who answers messages from other processes,
//! and the actors that keep its links up.
//!
//! ```text
//! /<member>/transport        supervisor, one_for_one
//!   /probe                   answers pings and streamed counts from peers (diagnostics)
//!   /<peer> …                one link keeper per peer: dials, watches, redials with back-off
//! ```
//!
//! The QUIC endpoint itself ([`keelson_transport::Transport`]) belongs to the process
//! (it owns the UDP port and its own runtime) and is passed down by handle. Inbound
//! messages go through the [`Router`], which maps an actor path to a stable [`Ref`]
//! (crate::runtime::Ref): a message for an actor that is restarting is answered with
//! an error at once, and one for a restarted actor reaches its new incarnation.

mod link;
mod probe;
mod remote;
mod router;

pub use link::PeerLink;
pub use probe::{Probe, ProbeReply, ProbeRequest};
pub use remote::{Delivered, RemoteError, RemoteRef};
pub use router::Router;

use std::sync::Arc;

use keelson_config::SupervisorConfig;
use keelson_transport::Transport;

use crate::runtime::{ActorPath, ChildSpec, Restart, Strategy, SupervisorSpec};

/// The `/transport` subtree of `member`: the probe, then a link keeper per known peer.
pub fn transport_tree(
    member: &ActorPath,
    transport: Transport,
    router: Arc<Router>,
    cfg: SupervisorConfig,
) -> ChildSpec {
    let here = member.child("transport");
    let (probe, probe_ref) = ChildSpec::new("probe", Restart::Permanent, Probe::new);
    router.route(&here.child("probe"), probe_ref);
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, cfg).child(probe);
    for peer in transport.peers() {
        let t = transport.clone();
        let name = peer.clone();
        spec = spec.child(ChildSpec::new(&peer, Restart::Permanent, move |cx| PeerLink::new(cx, t.clone(), &name)).0);
    }
    ChildSpec::supervisor("transport", Restart::Permanent, spec).0
}
