//! The trees of keelson's processes, as supervisor specs.
//!
//! ```text
//! /<server>            root, one_for_one          /up                 root, one_for_one
//!   /admin             observation + chaos door     /admin            its own door
//!   /transport         links to the other members   /server-1 …       one ChildProcess per member
//!     /probe, /<peer> …
//! ```
//! Later issues add `/store`, `/api`, `/scheduler`, `/controllers` under a server's
//! root, and `/kubelet`, `/proxy` under an agent's.

use std::net::TcpListener;
use std::sync::Arc;

use keelson_config::{MemberConfig, SupervisorConfig};
use keelson_transport::Transport;

use crate::admin::AdminDoor;
use crate::process::{ChildProcess, ProcessSpec};
use crate::runtime::{ActorPath, ChildSpec, Restart, Strategy, SupervisorSpec};
use crate::transport::{transport_tree, Admission, Router};

fn door(cfg: &MemberConfig, listener: Arc<TcpListener>, transport: Option<Transport>) -> ChildSpec {
    let token: Arc<str> = Arc::from(cfg.admin.token.as_str());
    let factory = move |cx: &_| AdminDoor::new(cx, listener.clone(), token.clone(), transport.clone());
    ChildSpec::new("admin", Restart::Permanent, factory).0
}

/// One control-plane member (`keelson server`): its door, then its transport subtree;
/// `admission` lets it admit new members (it needs the CA's key).
pub fn server_tree(
    cfg: &MemberConfig,
    listener: Arc<TcpListener>,
    transport: Transport,
    router: Arc<Router>,
    admission: Option<Admission>,
) -> SupervisorSpec {
    let root = ActorPath::root(&cfg.name);
    SupervisorSpec::new(Strategy::OneForOne, cfg.root)
        .child(door(cfg, listener, Some(transport.clone())))
        .child(transport_tree(&root, transport, router, admission, SupervisorConfig::default()))
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
    let mut tree = SupervisorSpec::new(Strategy::OneForOne, cfg.root).child(door(cfg, listener, None));
    for m in members {
        let spec = m.spec;
        let (child, _) = ChildSpec::new(&m.name, restart, move |_| ChildProcess::new(spec.clone()));
        tree = tree.child(child.with_shutdown(std::time::Duration::from_secs(15)));
    }
    tree
}
