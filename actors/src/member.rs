//! The trees of keelson's processes, as supervisor specs.
//!
//! ```text
//! /<server>            root, one_for_one          /up                 root, one_for_one
//!   /transport         links to the other members   /admin            its own door
//!     /probe, /join, /<peer> …                      /server-1 …       one ChildProcess per member
//!   /store             the replicated store
//!     /shard-0 …
//!   /api               the Kubernetes API (HTTPS door, actor door)
//!   /controllers       the controllers, while this member leads
//!   /leader            the controllers' leader election (fencing epochs)
//!   /admin             observation, chaos, kv door
//! ```
//! A server also runs `/api` (the Kubernetes API: HTTPS and the actor door) and
//! `/leader` (the election of the member that runs the controllers).
//!
//! ```text
//! /<agent>             root, one_for_one
//!   /transport         its links to the servers
//!   /kubelet           its node: /node (registration, pods' network, log streams)
//!   /proxy             Service traffic to pods: /sync, /service/<ns>/<name>
//!     /pod/<ns>/<name> one worker per pod; or, for a hollow agent, its simulated nodes
//!   /admin
//! ```

use std::net::TcpListener;
use std::sync::Arc;

use keelson_config::{ControlPlaneConfig, KubeletConfig, MemberConfig, SupervisorConfig};
use keelson_transport::Transport;

use crate::admin::AdminDoor;
use crate::api::{ApiClient, ApiServer, HttpsSetup};
use crate::controllers::{Election, Elector};
use crate::cri::ContainerRuntime;
use crate::kubelet::{kubelet_tree, HollowConfig, HollowKubelet};
use crate::process::{ChildProcess, ProcessSpec};
use crate::runtime::{ActorPath, ChildSpec, Ref, Restart, Strategy, SupervisorSpec};
use crate::store::{store_tree, Replica, StoreConfig};
use crate::transport::{transport_tree, Admission, Router};

fn door(
    cfg: &MemberConfig,
    listener: Arc<TcpListener>,
    transport: Option<Transport>,
    store: Vec<Ref<Replica>>,
) -> ChildSpec {
    let token: Arc<str> = Arc::from(cfg.admin.token.as_str());
    let factory = move |cx: &_| AdminDoor::new(cx, listener.clone(), token.clone(), transport.clone(), store.clone());
    ChildSpec::new("admin", Restart::Permanent, factory).0
}

/// What a server member's components are configured with.
pub struct ServerParts {
    pub store: StoreConfig,
    /// The HTTPS door's socket and TLS, where this member has the CA's key.
    pub https: Option<HttpsSetup>,
    pub control: ControlPlaneConfig,
}

/// One control-plane member (`keelson server`): its door, then its transport subtree;
/// `admission` lets it admit new members (it needs the CA's key).
pub fn server_tree(
    cfg: &MemberConfig,
    listener: Arc<TcpListener>,
    transport: Transport,
    router: Arc<Router>,
    admission: Option<Admission>,
    parts: ServerParts,
) -> SupervisorSpec {
    let ServerParts { store, https, control } = parts;
    let store = &store;
    let root = ActorPath::root(&cfg.name);
    // The transport first (the store's raft talks through it), then the store, then
    // the door that serves both: started in this order, stopped in reverse.
    let links = transport_tree(&root, transport.clone(), router.clone(), admission, SupervisorConfig::default());
    let (store_spec, replicas) = store_tree(&root, store, transport.clone(), &router);
    // The API: HTTPS where this member has credentials for it, the actor door always.
    let token: Arc<str> = Arc::from(cfg.admin.token.as_str());
    let (r, t) = (replicas.clone(), transport.clone());
    let factory = move |cx: &_| ApiServer::new(cx, https.clone(), token.clone(), r.clone(), control, Some(t.clone()));
    let (api, api_ref) = ChildSpec::new("api", Restart::Permanent, factory);
    router.route(&root.child("api"), api_ref.clone());
    // The controllers' leader election, once the store it campaigns in has started; the
    // controllers themselves start under `/controllers` while this member leads.
    let (controllers, controllers_ref) = ChildSpec::supervisor(
        "controllers",
        Restart::Permanent,
        SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default()),
    );
    let r = replicas.clone();
    let elector = move |cx: &_| {
        Elector::new(cx, r.clone(), Election::default(), control, controllers_ref.clone(), api_ref.clone())
    };
    let (leader, _) = ChildSpec::new("leader", Restart::Permanent, elector);
    SupervisorSpec::new(Strategy::OneForOne, cfg.root)
        .child(links)
        .child(store_spec)
        .child(api)
        .child(controllers)
        .child(leader)
        .child(door(cfg, listener, Some(transport), replicas))
}

/// What an agent's node runs: real containers through a runtime, or hollow nodes.
pub enum AgentNode {
    Real { runtime: Arc<dyn ContainerRuntime>, cfg: Arc<KubeletConfig> },
    Hollow(HollowConfig),
}

/// One node agent (`keelson agent`): its transport to the servers, then its kubelet,
/// which calls the servers' actor door (`servers`: their member names).
pub fn agent_tree(
    cfg: &MemberConfig,
    listener: Arc<TcpListener>,
    transport: Transport,
    router: Arc<Router>,
    servers: Vec<String>,
    node: AgentNode,
) -> SupervisorSpec {
    let root = ActorPath::root(&cfg.name);
    let links = transport_tree(&root, transport.clone(), router.clone(), None, SupervisorConfig::default());
    let client = ApiClient::remote(transport.clone(), &servers, root.child("kubelet"));
    let mut proxy = None;
    let kubelet = match node {
        AgentNode::Real { runtime, cfg } => {
            // Docker keeps its bridge networks apart: its pods reach another node's pods
            // on this machine only through the host's proxy, not straight as the
            // kernel's connect-time balancing would send them.
            let in_kernel = runtime.scheme() != "docker";
            let proxy_client = ApiClient::remote(transport.clone(), &servers, root.child("proxy"));
            proxy = Some(crate::proxy::proxy_tree(proxy_client, in_kernel));
            kubelet_tree(&root, client, runtime, cfg, &router)
        }
        AgentNode::Hollow(hollow) => {
            let factory = move |cx: &_| HollowKubelet::new(cx, client.clone(), hollow.clone());
            ChildSpec::new("kubelet", Restart::Permanent, factory).0
        }
    };
    let mut tree = SupervisorSpec::new(Strategy::OneForOne, cfg.root).child(links).child(kubelet);
    if let Some(proxy) = proxy {
        tree = tree.child(proxy);
    }
    tree.child(door(cfg, listener, Some(transport), Vec::new()))
}

/// A member process the launcher keeps running.
#[derive(Debug, Clone)]
pub struct MemberProcess {
    pub name: String,
    pub spec: ProcessSpec,
}

/// The `keelson up` launcher: its own door, then one supervised process per member.
/// `restart` is `Permanent`, or `Temporary` for `--no-restart`.
pub fn launcher_tree(
    cfg: &MemberConfig,
    listener: Arc<TcpListener>,
    members: Vec<MemberProcess>,
    restart: Restart,
) -> SupervisorSpec {
    let mut tree = SupervisorSpec::new(Strategy::OneForOne, cfg.root).child(door(cfg, listener, None, Vec::new()));
    for m in members {
        let spec = m.spec;
        let (child, _) = ChildSpec::new(&m.name, restart, move |_| ChildProcess::new(spec.clone()));
        tree = tree.child(child.with_shutdown(std::time::Duration::from_secs(15)));
    }
    tree
}
