//! Resource limits for the process runtime: a container with `resources.limits` gets
//! cgroups of its own, on whichever cgroup layout the host has.
//!
//! - v1 (separate hierarchies, as on this machine kind): `memory/keelson/<id>` and
//!   `cpu/keelson/<id>`; `memory.limit_in_bytes` (+ memsw held to it), CFS quota;
//!   OOM kills counted in `memory.oom_control`.
//! - v2 (the unified tree): `keelson/<id>` with `memory.max`, `memory.swap.max` 0 and
//!   `cpu.max`; the controllers are enabled down the path (`cgroup.subtree_control`);
//!   OOM kills counted in `memory.events`.
//!
//! The shim makes a container's groups and holds their `cgroup.procs` open, so its
//! child writes itself in between fork and exec and the shim is never charged.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::Limits;

/// Where the host mounts its cgroups.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The host's cgroup layout, found writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1(PathBuf),
    V2(PathBuf),
}

impl Layout {
    /// The layout under `root` if this process may make groups there (and, on v2,
    /// enable the memory and cpu controllers for them), or why not (for
    /// the agent to say at start and in its node's conditions).
    pub fn detect(root: &Path) -> Result<Self, String> {
        let layout = if root.join("memory").join("cgroup.procs").exists() && root.join("cpu").exists() {
            Layout::V1(root.to_path_buf())
        } else if root.join("cgroup.controllers").exists() {
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("memory") && has("cpu")) {
                return Err(format!("the cgroup v2 tree at {} offers no memory and cpu controllers", root.display()));
            }
            Layout::V2(root.to_path_buf())
        } else {
            return Err(format!("no cgroup v1 memory/cpu hierarchies and no cgroup v2 tree at {}", root.display()));
        };
        for dir in layout.parents() {
            let made = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make cgroup {}: {e}", dir.display()))?;
            if made {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // v2: groups get controllers only if the root hands them down (refused, e.g.,
        // where the root of a cgroup namespace holds processes itself).
        if let Layout::V2(root) = &layout {
            std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu")
                .map_err(|e| format!("cannot enable the memory and cpu controllers under {}: {e}", root.display()))?;
        }
        Ok(layout)
    }

    /// The `keelson` groups containers' groups are made in.
    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Layout::V1(root) => vec![root.join("memory/keelson"), root.join("cpu/keelson")],
            Layout::V2(root) => vec![root.join("keelson")],
        }
    }

    /// Removes the `keelson` groups once empty (another agent on the machine may still
    /// hold containers there: then they stay).
    pub fn remove_parents(&self) {
        for dir in self.parents() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A container's cgroups and their `cgroup.procs`, open for its child to join.
pub struct Cgroups {
    layout: Layout,
    dirs: Vec<PathBuf>,
    pub procs: Vec<File>,
}

/// Makes `dir` and writes `settings` into it; `optional` ones may be absent (no swap
/// accounting).
fn group(dir: &Path, settings: &[(&str, String)], optional: &[(&str, String)]) -> std::io::Result<File> {
    std::fs::create_dir_all(dir)?;
    for (file, value) in settings {
        std::fs::write(dir.join(file), value).map_err(|e| std::io::Error::new(e.kind(), format!("{file}: {e}")))?;
    }
    for (file, value) in optional {
        let _ = std::fs::write(dir.join(file), value);
    }
    OpenOptions::new().write(true).open(dir.join("cgroup.procs"))
}

/// The CFS quota of `millis` in a 100 ms period (at least 1 ms).
fn quota_us(millis: u64) -> u64 {
    (millis * 100).max(1000)
}

impl Cgroups {
    /// Groups for `limits` (none when there are none).
    pub fn make(layout: &Layout, id: &str, limits: &Limits) -> std::io::Result<Self> {
        let mut groups = Cgroups { layout: layout.clone(), dirs: Vec::new(), procs: Vec::new() };
        if limits.memory_bytes.is_none() && limits.cpu_millis.is_none() {
            return Ok(groups);
        }
        match layout {
            Layout::V1(root) => {
                if let Some(bytes) = limits.memory_bytes {
                    let dir = root.join("memory/keelson").join(id);
                    let limit = bytes.to_string();
                    groups.procs.push(group(
                        &dir,
                        &[("memory.limit_in_bytes", limit.clone())],
                        &[("memory.memsw.limit_in_bytes", limit), ("memory.swappiness", "0".into())],
                    )?);
                    groups.dirs.push(dir);
                }
                if let Some(millis) = limits.cpu_millis {
                    let dir = root.join("cpu/keelson").join(id);
                    let quota = quota_us(millis).to_string();
                    groups.procs.push(group(
                        &dir,
                        &[("cpu.cfs_period_us", "100000".into()), ("cpu.cfs_quota_us", quota)],
                        &[],
                    )?);
                    groups.dirs.push(dir);
                }
            }
            Layout::V2(root) => {
                // A group's controllers are what its parent enables for its children.
                let parent = root.join("keelson");
                std::fs::create_dir_all(&parent)?;
                for dir in [root.as_path(), parent.as_path()] {
                    std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu")?;
                }
                let mut settings = Vec::new();
                let mut optional = Vec::new();
                if let Some(bytes) = limits.memory_bytes {
                    settings.push(("memory.max", bytes.to_string()));
                    optional.push(("memory.swap.max", "0".to_string()));
                }
                if let Some(millis) = limits.cpu_millis {
                    settings.push(("cpu.max", format!("{} 100000", quota_us(millis))));
                }
                let dir = parent.join(id);
                groups.procs.push(group(&dir, &settings, &optional)?);
                groups.dirs.push(dir);
            }
        }
        Ok(groups)
    }

    /// Whether the kernel's OOM killer killed something of the container.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = match &self.layout {
            Layout::V1(_) => ("memory.oom_control", "oom_kill "),
            Layout::V2(_) => ("memory.events", "oom_kill "),
        };
        let Some(dir) = self.dirs.first() else { return false };
        let counts = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        counts.lines().any(|l| l.strip_prefix(key).is_some_and(|n| n.trim() != "0"))
    }

    /// The groups go once the container's processes have (they are empty by now).
    pub fn remove(self) {
        drop(self.procs);
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keelson-cgroups-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A v2 tree as the kernel shows it, in a plain folder (files the kernel would make
    /// in a new group are made by hand, since a folder is not a cgroupfs).
    #[test]
    fn v2_groups_get_their_limits_and_controllers() {
        let root = scratch("v2");
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let layout = Layout::detect(&root).unwrap();
        assert_eq!(layout, Layout::V2(root.clone()));
        assert!(!root.join("keelson").exists(), "detection leaves nothing behind");
        let dir = root.join("keelson/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        let limits = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250) };
        let groups = Cgroups::make(&layout, "c1", &limits).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&dir.join("cpu.max")), "25000 100000");
        assert_eq!(read(&root.join("keelson/cgroup.subtree_control")), "+memory +cpu");
        assert!(!groups.oom_killed());
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(groups.oom_killed());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn v1_groups_are_per_hierarchy() {
        let root = scratch("v1");
        for h in ["memory", "cpu"] {
            std::fs::create_dir_all(root.join(h)).unwrap();
            std::fs::write(root.join(h).join("cgroup.procs"), "").unwrap();
            std::fs::create_dir_all(root.join(h).join("keelson/c1")).unwrap();
            std::fs::write(root.join(h).join("keelson/c1/cgroup.procs"), "").unwrap();
        }
        let layout = Layout::detect(&root).unwrap();
        assert_eq!(layout, Layout::V1(root.clone()));
        let groups = Cgroups::make(&layout, "c1", &Limits { memory_bytes: None, cpu_millis: Some(5) }).unwrap();
        assert_eq!(groups.procs.len(), 1, "only the cpu hierarchy: no memory limit");
        assert_eq!(std::fs::read_to_string(root.join("cpu/keelson/c1/cpu.cfs_quota_us")).unwrap(), "1000");
        let none = Cgroups::make(&layout, "c2", &Limits::default()).unwrap();
        assert!(none.procs.is_empty() && !root.join("cpu/keelson/c2").exists());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_host_without_cgroups_is_told_apart() {
        let root = scratch("none");
        let why = Layout::detect(&root).unwrap_err();
        assert!(why.contains("no cgroup"), "{why}");
        std::fs::write(root.join("cgroup.controllers"), "pids").unwrap();
        assert!(Layout::detect(&root).unwrap_err().contains("no memory and cpu"));
        let _ = std::fs::remove_dir_all(root);
    }
}
