//! The trees of keelson's processes, as supervisor specs.
//!
//! ```text
//! /<server>            root, one_for_one          /up                 root, one_for_one
//!   /admin             observation + chaos door     /admin            its own door
//!                                                   /server-1 …       one ChildProcess per member
//! ```
//! Later issues add `/transport`, `/store`, `/api`, `/scheduler`, `/controllers`
//! under a server's root, and `/kubelet`, `/proxy` under an agent's.

use std::net::TcpListener;
use std::sync::Arc;

use keelson_config::MemberConfig;

use crate::admin::AdminDoor;
use crate::process::{ChildProcess, ProcessSpec};
use crate::runtime::{ChildSpec, Restart, Strategy, SupervisorSpec};

fn door(cfg: &MemberConfig, listener: Arc<TcpListener>) -> ChildSpec {
    let token: Arc<str> = Arc::from(cfg.admin.token.as_str());
    ChildSpec::new("admin", Restart::Permanent, move |cx| AdminDoor::new(cx, listener.clone(), token.clone())).0
}

/// One control-plane member (`keelson server`).
pub fn server_tree(cfg: &MemberConfig, listener: Arc<TcpListener>) -> SupervisorSpec {
    SupervisorSpec::new(Strategy::OneForOne, cfg.root).child(door(cfg, listener))
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
    let mut tree = SupervisorSpec::new(Strategy::OneForOne, cfg.root).child(door(cfg, listener));
    for m in members {
        let spec = m.spec;
        let (child, _) = ChildSpec::new(&m.name, restart, move |_| ChildProcess::new(spec.clone()));
        tree = tree.child(child.with_shutdown(std::time::Duration::from_secs(15)));
    }
    tree
}
