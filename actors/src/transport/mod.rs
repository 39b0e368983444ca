//! The member's side of the transport: who answers messages from other processes,
//! and the actors that keep its links up.
//!
//! ```text
//! /<member>/transport        supervisor, one_for_one
//!   /probe                   answers pings and streamed counts from peers (diagnostics)
//!   /join                    admits new members with a join token (on members holding the CA key)
//!   /<peer> …                one link keeper per peer: dials, watches, redials with back-off
//! ```
//!
//! The QUIC endpoint itself ([`keelson_transport::Transport`]) belongs to the process
//! (it owns the UDP port and its own runtime) and is passed down by handle. Inbound
//! messages go through the [`Router`], which maps an actor path to a stable [`Ref`]
//! (crate::runtime::Ref): a message for an actor that is restarting is answered with
//! an error at once, and one for a restarted actor reaches its new incarnation.

mod join;
mod link;
mod probe;
mod remote;
mod router;

pub use join::{JoinService, TokenBook, JOIN_DEADLINE};
pub use link::PeerLink;
pub use probe::{Probe, ProbeReply, ProbeRequest};
pub use remote::{Delivered, RemoteError, RemoteRef};
pub use router::{InlineLane, Router};

use std::sync::Arc;

use keelson_config::SupervisorConfig;
use keelson_transport::Transport;

use crate::runtime::{ActorPath, ChildSpec, Ref, Restart, StartChild, Strategy, Supervisor, SupervisorSpec};

/// Lets new members in, on a member that holds the cluster CA's key.
pub struct Admission {
    pub ca: keelson_transport::tls::ClusterCa,
    pub tokens: Arc<dyn TokenBook>,
}

/// The `/transport` subtree of `member`: the probe, the join service (with
/// `admission`), then a link keeper per known peer.
pub fn transport_tree(
    member: &ActorPath,
    transport: Transport,
    router: Arc<Router>,
    admission: Option<Admission>,
    cfg: SupervisorConfig,
) -> ChildSpec {
    let here = member.child("transport");
    let links = Ref::<Supervisor>::new();
    let (probe, probe_ref) = ChildSpec::new("probe", Restart::Permanent, Probe::new);
    router.route(&here.child("probe"), probe_ref);
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, cfg).child(probe);
    if let Some(Admission { ca, tokens }) = admission {
        let t = transport.clone();
        let (join, join_ref) = ChildSpec::new("join", Restart::Permanent, move |cx| {
            JoinService::new(cx, ca.clone(), tokens.clone(), t.clone())
        });
        router.route_well_known(keelson_transport::join::JOIN_PATH, join_ref);
        spec = spec.child(join);
    }
    // One link keeper per peer known at each start of this supervisor; peers that
    // arrive while it runs (joined, or learned from their first message) get one added.
    let t = transport.clone();
    spec = spec.children_from(move || t.peers().iter().map(|p| link_spec(&t, p)).collect());
    let l = links.clone();
    transport.on_new_peer(move |t, id| {
        if l.tell(StartChild(link_spec(t, &id.name))).is_err() {
            tracing::warn!(peer = %id.name, "no transport supervisor to keep the new link");
        }
    });
    ChildSpec::supervisor_with_ref("transport", Restart::Permanent, &links, spec)
}

fn link_spec(transport: &Transport, peer: &str) -> ChildSpec {
    let (t, name) = (transport.clone(), peer.to_string());
    ChildSpec::new(peer, Restart::Permanent, move |cx| PeerLink::new(cx, t.clone(), &name)).0
}
