//! Who is asking, and whether they may: bearer tokens (the admin token, or tokens kept
//! hashed in the store with a role), and three roles — admin, read-only, and node
//! identities that may change only their own Node, their own Lease and pods bound to
//! them. An agent identity `a` owns the node `a` and the nodes `a.<anything>` (an agent
//! of hollow nodes runs many; member names hold no dots, so no two agents share one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::objects::Objects;
use super::resources::Resource;
use super::status::Failure;

/// Where token records live in the store: `<prefix><sha256 of the token, hex>`.
pub const TOKENS_PREFIX: &str = "/keelson/api-tokens/";

/// How long a token looked up in the store is trusted before it is read again (so a
/// revoked token stops working within this).
const CACHE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "role")]
pub enum Role {
    Admin,
    ReadOnly,
    Node { node: String },
}

/// A token's record in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    #[serde(flatten)]
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

/// The user a member certificate stands for: an agent is its node's identity; servers
/// and the launcher are the cluster's own components.
pub fn member_user(id: &keelson_transport::tls::Identity) -> User {
    use keelson_transport::tls::Role as Member;
    match id.role {
        Member::Agent => User { name: format!("system:node:{}", id.name), role: Role::Node { node: id.name.clone() } },
        Member::Server | Member::Launcher => User { name: format!("system:keelson:{}", id.name), role: Role::Admin },
    }
}

/// The hex SHA-256 of a token: what the store keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authenticates bearer tokens; shared by every request of one API server.
pub struct Authenticator {
    admin: Arc<str>,
    cache: Mutex<HashMap<String, (User, Instant)>>,
}

impl Authenticator {
    pub fn new(admin: Arc<str>) -> Self {
        Self { admin, cache: Mutex::default() }
    }

    /// The user a bearer token belongs to, if any.
    pub async fn user(&self, token: &str, objects: &Objects) -> Result<Option<User>, Failure> {
        if same(token.as_bytes(), self.admin.as_bytes()) {
            return Ok(Some(User { name: "admin".into(), role: Role::Admin }));
        }
        let hash = token_hash(token);
        if let Some((u, at)) = self.cache.lock().unwrap().get(&hash) {
            if at.elapsed() < CACHE {
                return Ok(Some(u.clone()));
            }
        }
        let Some(bytes) = objects.read_raw(&format!("{TOKENS_PREFIX}{hash}")).await? else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<TokenRecord>(&bytes) else { return Ok(None) };
        let user = User { name: record.user, role: record.role };
        self.cache.lock().unwrap().insert(hash, (user.clone(), Instant::now()));
        Ok(Some(user))
    }
}

/// What a request does, as authorization names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// The request being authorized.
pub struct Request<'a> {
    pub verb: Verb,
    pub res: &'a Resource,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// For a pod: the node it is bound to now (read by the caller for node users).
    pub bound_to: Option<&'a str>,
}

/// Whether the agent `agent` speaks for the node `name`: its own, or one of its `agent.<x>`.
fn owns(agent: &str, name: Option<&str>) -> bool {
    name.is_some_and(|n| n == agent || n.strip_prefix(agent).is_some_and(|rest| rest.starts_with('.')))
}

/// Allowed, or Kubernetes' 403.
pub fn authorize(user: &User, r: &Request) -> Result<(), Failure> {
    let allowed = match &user.role {
        Role::Admin => true,
        Role::ReadOnly => r.verb.reads(),
        Role::Node { node } => {
            r.verb.reads()
                || match r.res.plural {
                    "nodes" => owns(node, r.name),
                    "leases" => r.namespace == Some("kube-node-lease") && owns(node, r.name),
                    "pods" => r.verb != Verb::Create && owns(node, r.bound_to),
                    // Recording events: new ones, and counting repeats of its own.
                    "events" => matches!(r.verb, Verb::Create | Verb::Update | Verb::Patch),
                    _ => false,
                }
        }
    };
    if allowed {
        return Ok(());
    }
    let what = match r.name {
        Some(n) => format!("{} \"{n}\"", r.res.qualified()),
        None => r.res.qualified(),
    };
    let scope = match r.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    Err(Failure::new(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\"{scope}",
            user.name,
            r.verb.as_str(),
            r.res.plural,
            r.res.group
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::find;

    fn req<'a>(
        verb: Verb,
        plural: &str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
        bound_to: Option<&'a str>,
    ) -> Request<'a> {
        let res = crate::api::resources::RESOURCES.iter().find(|r| r.plural == plural).unwrap();
        Request { verb, res, namespace: ns, name, bound_to }
    }

    #[test]
    fn roles_allow_what_they_should_and_nothing_else() {
        let admin = User { name: "admin".into(), role: Role::Admin };
        let viewer = User { name: "viewer".into(), role: Role::ReadOnly };
        let node = User { name: "system:node:n1".into(), role: Role::Node { node: "n1".into() } };
        assert!(authorize(&admin, &req(Verb::Delete, "nodes", None, Some("n2"), None)).is_ok());
        assert!(authorize(&viewer, &req(Verb::List, "pods", Some("web"), None, None)).is_ok());
        let f = authorize(&viewer, &req(Verb::Create, "configmaps", Some("web"), None, None)).unwrap_err();
        assert_eq!(f.code, 403);
        assert_eq!(
            f.message,
            "configmaps is forbidden: User \"viewer\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"web\""
        );
        assert!(authorize(&node, &req(Verb::Update, "nodes", None, Some("n1"), None)).is_ok());
        assert!(authorize(&node, &req(Verb::Update, "nodes", None, Some("n2"), None)).is_err());
        // An agent's hollow nodes are `<agent>.<x>`; `n10` is another agent's.
        assert!(authorize(&node, &req(Verb::Update, "nodes", None, Some("n1.7"), None)).is_ok());
        assert!(authorize(&node, &req(Verb::Update, "nodes", None, Some("n10"), None)).is_err());
        assert!(authorize(&node, &req(Verb::Patch, "pods", Some("web"), Some("p"), Some("n1.7"))).is_ok());
        assert!(authorize(&node, &req(Verb::Update, "leases", Some("kube-node-lease"), Some("n1"), None)).is_ok());
        assert!(authorize(&node, &req(Verb::Patch, "pods", Some("web"), Some("p"), Some("n1"))).is_ok());
        let f = authorize(&node, &req(Verb::Patch, "pods", Some("web"), Some("p"), Some("n2"))).unwrap_err();
        assert!(
            f.message.starts_with("pods \"p\" is forbidden: User \"system:node:n1\" cannot patch"),
            "{}",
            f.message
        );
        assert!(authorize(&node, &req(Verb::Delete, "deployments", Some("web"), Some("d"), None)).is_err());
        assert!(find("apps", "v1", "deployments").is_some());
    }

    #[test]
    fn token_records_round_trip_and_tokens_are_hashed() {
        let r = TokenRecord { user: "n1".into(), role: Role::Node { node: "n1".into() } };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"user":"n1","role":"node","node":"n1"}"#);
        assert_eq!(serde_json::from_str::<TokenRecord>(&text).unwrap(), r);
        assert_eq!(token_hash("abc").len(), 64);
        assert_ne!(token_hash("abc"), token_hash("abd"));
    }
}
