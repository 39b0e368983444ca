//! Actor paths: `/<member>/<child>/<grandchild>`, the names used in the tree, in
//! tracing spans, in chaos requests and (later) in transport envelopes.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An actor's place in its member's tree. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorPath(Arc<str>);

impl ActorPath {
    /// The root of a member's tree, `/<member>`.
    pub fn root(member: &str) -> Self {
        Self(format!("/{member}").into())
    }

    /// The path of a child called `name` under this one.
    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}/{name}", self.0).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The member this path belongs to (its first segment).
    pub fn member(&self) -> &str {
        self.0.trim_start_matches('/').split('/').next().unwrap_or_default()
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &ActorPath) -> bool {
        self.0.len() >= other.0.len()
            && self.0.starts_with(&*other.0)
            && (self.0.len() == other.0.len() || self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// Parses a user-supplied path; it must start with '/' and have no empty segment.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.starts_with('/') && s.len() > 1 && s[1..].split('/').all(|seg| !seg.is_empty());
        ok.then(|| Self(s.into()))
    }
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Matches `pattern` against `text`, where `*` matches within one segment and `**`
/// across segments (as in `/server-1/controllers/*` or `/**/pod/**`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=t.len()).any(|i| go(&p[2..], &t[i..])),
            Some(b'*') => {
                let seg = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=seg).any(|i| go(&p[1..], &t[i..]))
            }
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compose() {
        let root = ActorPath::root("m1");
        let c = root.child("controllers").child("replicaset");
        assert_eq!(c.as_str(), "/m1/controllers/replicaset");
        assert_eq!(c.member(), "m1");
        assert_eq!(c.name(), "replicaset");
        assert!(c.is_within(&root));
        assert!(!ActorPath::root("m10").is_within(&root));
        assert!(ActorPath::parse("/a/b").is_some());
        assert!(ActorPath::parse("a/b").is_none());
        assert!(ActorPath::parse("/a//b").is_none());
        assert!(ActorPath::parse("/").is_none());
    }

    #[test]
    fn globs() {
        assert!(glob_match("/m1/*", "/m1/admin"));
        assert!(!glob_match("/m1/*", "/m1/a/b"));
        assert!(glob_match("/m1/**", "/m1/a/b"));
        assert!(glob_match("/**/w-*", "/m1/s-3/w-7"));
        assert!(!glob_match("/**/w-*", "/m1/s-3"));
        assert!(glob_match("*", "x"));
    }
}
