//! `/<agent>/kubelet`: a node's agent.
//!
//! ```text
//! /<agent>/kubelet                 supervisor, one_for_all
//!   /node                          registration, heartbeat, pod network, the pods' workers, log streams
//!   /pod                           supervisor of the pod workers
//!     /<namespace>/<name>          one pod worker per pod bound here
//! ```
//!
//! A hollow agent runs `hollow.rs` instead: simulated nodes for scale tests.

mod agent;
pub mod exec;
pub mod hollow;
pub mod node;
pub mod pod;
pub mod serve;

use std::sync::Arc;

pub use agent::{stop_everything, Kubelet, NodeShared};
pub use hollow::{HollowConfig, HollowKubelet, HOLLOW_KEY, PHASE_ANNOTATION};
pub use serve::{Header, KubeletRequest, KUBELET_PATH};

use keelson_config::{KubeletConfig, SupervisorConfig};

use crate::api::ApiClient;
use crate::cri::ContainerRuntime;
use crate::runtime::{ActorPath, ChildSpec, Restart, Strategy, SupervisorSpec};
use crate::transport::Router;

/// The kubelet's subtree; its `/node` answers the transport at `/<agent>/kubelet`.
pub fn kubelet_tree(
    agent: &ActorPath,
    client: ApiClient,
    runtime: Arc<dyn ContainerRuntime>,
    cfg: Arc<KubeletConfig>,
    router: &Router,
) -> ChildSpec {
    let (pods, pods_ref) = ChildSpec::supervisor(
        "pod",
        Restart::Permanent,
        SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default()),
    );
    let factory = move |cx: &_| Kubelet::new(cx, client.clone(), runtime.clone(), cfg.clone(), pods_ref.clone());
    let (node, node_ref) = ChildSpec::new("node", Restart::Permanent, factory);
    router.route_well_known(agent.child(KUBELET_PATH).as_str(), node_ref);
    // One for all: the workers read the node actor's informers, so a restarted node actor
    // brings new workers (they adopt their pods' containers; nothing the containers do stops).
    let spec = SupervisorSpec::new(Strategy::OneForAll, SupervisorConfig::default()).child(pods).child(node);
    ChildSpec::supervisor(KUBELET_PATH, Restart::Permanent, spec).0
}
