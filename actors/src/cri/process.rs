//! The `process` runtime: each container is a process on the node's own filesystem,
//! owned by a shim (`shim.rs`) that outlives the agent. Everything about a container
//! is in its folder, `<root>/<id>/`, so the runtime keeps no state of its own: a
//! restarted kubelet lists the folders and finds its containers as they are.
//!
//! The agent is a child subreaper (`become_subreaper`): a container whose shim was
//! killed is re-parented to the agent, not to init, and the agent reaps it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::cgroups::Layout;
use super::shim::{start_ticks, write_json, Started};
use super::spawner::Spawner;
use super::{ContainerRuntime, ContainerSpec, ContainerStatus, ExecOutput, ExecSession, Exit, Result, RuntimeError};

/// How long a start may take before the runtime gives up on it.
const START_WAIT: Duration = Duration::from_secs(10);

pub struct ProcessRuntime {
    /// The container folders (volatile: on a tmpfs when the node has one, `volatile.rs`).
    root: PathBuf,
    /// The containers' logs, on disk: `<id>.log`, linked from the container's folder as
    /// `log` and made by its shim at the first line written (most containers of a burst
    /// of starts write none at first, and a file less is a disk inode less per start).
    logs: PathBuf,
    /// Forks each container's shim (`spawner.rs`); shared with the blocking thread
    /// each start asks it from.
    spawner: Arc<std::sync::Mutex<Spawner>>,
    /// The host's cgroups, or why containers cannot be held to limits here.
    cgroups: std::result::Result<Layout, String>,
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with an integer argument; no memory is passed.
    match unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Reaps `pid` if it is an exited child of ours (a container re-parented to us).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG; it only reaps that child if exited.
    unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
}

/// `shim.pid`: "pid start-ticks" (a reused pid, after a reboot, is not the shim).
fn shim_pid(dir: &Path) -> Option<(u32, Option<u64>)> {
    let text = std::fs::read_to_string(dir.join("shim.pid")).ok()?;
    let mut it = text.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next().and_then(|t| t.parse().ok())))
}

/// Waits (blocking) until the shim in `dir` has started its container or failed to
/// (`started.json` or `exit.json`, each renamed into place), at most `limit`; whether it
/// has. Woken by the rename (inotify) rather than looking every few milliseconds: under a
/// burst of starts, each look was a wake-up of the kubelet and most found nothing yet.
fn await_start(dir: &Path, limit: Duration) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let done = || dir.join("started.json").exists() || dir.join("exit.json").exists();
    let until = std::time::Instant::now() + limit;
    // SAFETY: inotify_init1 with flags only.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    // SAFETY: a descriptor inotify_init1 just gave us, owned from here on.
    let watch = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }).filter(|fd| {
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: a watch on a NUL-ended path, on our descriptor.
        unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MOVED_TO | libc::IN_CREATE) >= 0 }
    });
    // Looked at after the watch is set, so a rename in between is not missed.
    while !done() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        match &watch {
            Some(fd) => {
                super::spawner::readable(fd.as_raw_fd(), left);
                let mut events = [0u8; 4096];
                // SAFETY: reading pending events into our buffer; they only say "look".
                while unsafe { libc::read(fd.as_raw_fd(), events.as_mut_ptr().cast(), events.len()) } > 0 {}
            }
            // No inotify here (its limits reached): look every few milliseconds.
            None => std::thread::sleep(Duration::from_millis(5).min(left)),
        }
    }
    true
}

/// Container `id`, in its folder `dir`, as its files tell it. A container whose shim is
/// gone without writing its exit is ended here (its processes killed, the exit written).
fn inspect_at(dir: &Path, id: &str) -> Result<ContainerStatus> {
    let spec: ContainerSpec =
        read_json(&dir.join("spec.json")).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
    let started: Option<Started> = read_json(&dir.join("started.json"));
    let mut exit: Option<Exit> = read_json(&dir.join("exit.json"));
    if exit.is_none() {
        let shim_alive = shim_pid(dir).is_some_and(|(pid, ticks)| match ticks {
            Some(ticks) => start_ticks(pid) == Some(ticks),
            None => start_ticks(pid).is_some(),
        });
        // The shim may have written the exit just before it ended: read it again.
        if !shim_alive {
            exit = read_json(&dir.join("exit.json"));
        }
        let created_long_ago = std::fs::metadata(dir.join("spec.json"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > START_WAIT);
        if exit.is_none() && !shim_alive && (started.is_some() || created_long_ago) {
            // The shim died (killed from outside): its container goes with it.
            if let Some(s) = &started {
                if start_ticks(s.pid) == Some(s.start_ticks) {
                    // SAFETY: signalling the container's own process group.
                    unsafe { libc::kill(-(s.pid as i32), libc::SIGKILL) };
                }
                reap(s.pid);
            }
            let lost = Exit {
                code: 137,
                signal: Some(libc::SIGKILL),
                reason: "Error".into(),
                message: Some("the container's shim was lost".into()),
                finished_at: super::logs::timestamp_now(),
            };
            // Written only if the shim wrote none meanwhile (a link fails if it exists).
            let tmp = dir.join(".lost.tmp");
            let _ = std::fs::write(&tmp, serde_json::to_vec(&lost).unwrap_or_default());
            let _ = std::fs::hard_link(&tmp, dir.join("exit.json"));
            let _ = std::fs::remove_file(&tmp);
            exit = read_json(&dir.join("exit.json")).or(Some(lost));
        }
    } else {
        if let Some(s) = &started {
            reap(s.pid);
        }
        // A shim whose spawner ended before it was re-parented to the agent.
        if let Some((pid, _)) = shim_pid(dir) {
            reap(pid);
        }
    }
    Ok(ContainerStatus {
        id: id.to_string(),
        pod_uid: spec.pod_uid,
        name: spec.name,
        attempt: spec.attempt,
        image: spec.image,
        started_at: started.as_ref().map(|s| s.started_at.clone()),
        pid: started.as_ref().filter(|_| exit.is_none()).map(|s| s.pid),
        exit,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl ProcessRuntime {
    pub fn new(root: PathBuf, logs: PathBuf, shim: PathBuf) -> Result<Self> {
        for dir in [&root, &logs] {
            std::fs::create_dir_all(dir).map_err(RuntimeError::io(format!("cannot make {}", dir.display())))?;
        }
        let cgroups = Layout::detect(Path::new(super::cgroups::ROOT));
        let spawner = Arc::new(std::sync::Mutex::new(Spawner::new(shim, root.clone())));
        Ok(Self { root, logs, spawner, cgroups })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn inspect(&self, id: &str) -> Result<ContainerStatus> {
        inspect_at(&self.dir(id), id)
    }

    /// The containers whose ids `wanted` picks.
    fn listed(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<ContainerStatus>> {
        let entries = std::fs::read_dir(&self.root).map_err(RuntimeError::io(format!("{}", self.root.display())))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| !name.starts_with('.') && wanted(name))
            .filter_map(|id| self.inspect(&id).ok())
            .collect())
    }

    /// Removes a container's folder and its log on disk.
    fn remove_files(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if let Ok(log) = std::fs::read_link(dir.join("log")) {
            let _ = std::fs::remove_file(log);
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("cannot remove {}", dir.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Signals the container's process group, if it still runs.
    fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let dir = self.dir(id);
        let started: Option<Started> = read_json(&dir.join("started.json"));
        // The group while the container runs (its leader alive, or its shim not yet done).
        let running = !dir.join("exit.json").exists();
        if let Some(s) = started.filter(|s| running || start_ticks(s.pid) == Some(s.start_ticks)) {
            // SAFETY: signalling the container's own process group (its pid is its pgid).
            unsafe { libc::kill(-(s.pid as i32), signal) };
        }
        Ok(())
    }

    async fn start_container(&self, spec: ContainerSpec) -> Result<ContainerStatus> {
        if spec.argv.is_empty() {
            return Err(RuntimeError::CreateContainer(format!(
                "the process runtime runs a container's command on the node: container {:?} (image {:?}) has no `command`",
                spec.name, spec.image
            )));
        }
        let id = spec.id();
        let dir = self.dir(&id);
        if dir.join("spec.json").exists() {
            // Started before (a kubelet that restarted mid-start): it is that one.
            return self.inspect(&id);
        }
        // SAFETY: geteuid has no preconditions.
        if !spec.mounts.is_empty() && unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::CreateContainer(
                "volumes need the agent to run as root (each container gets a mount namespace)".into(),
            ));
        }
        if let Some(wd) = &spec.working_dir {
            if !Path::new(wd).is_dir() {
                return Err(RuntimeError::CreateContainer(format!("workingDir {wd:?} is not a folder on this node")));
            }
        }
        // Off the kubelet's thread: the files, the spawner's fork and answer, the wait for
        // the shim to start the container and the look at it would hold up every other
        // pod's worker (under a burst of starts they queued there for tens of ms each).
        let (spawner, at, log) = (self.spawner.clone(), dir.clone(), self.logs.join(format!("{id}.log")));
        let cid = id.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<Option<ContainerStatus>> {
            std::fs::create_dir_all(&at).map_err(RuntimeError::io(format!("cannot make {}", at.display())))?;
            match std::os::unix::fs::symlink(&log, at.join("log")) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(RuntimeError::io("cannot link the container's log")(e))
                }
                _ => {}
            }
            write_json(&at, "spec.json", &spec).map_err(RuntimeError::io("cannot write the container's spec"))?;
            let spawned = spawner.lock().unwrap_or_else(|e| e.into_inner()).spawn(&at);
            spawned.map_err(RuntimeError::io("cannot start the container's shim"))?;
            match await_start(&at, START_WAIT) {
                true => inspect_at(&at, &cid).map(Some),
                false => Ok(None),
            }
        });
        let started = made
            .await
            .map_err(|e| RuntimeError::io("starting the container")(std::io::Error::other(e.to_string())))??;
        match started {
            Some(status) => Ok(status),
            None => {
                self.kill(&id, libc::SIGKILL)?;
                Err(RuntimeError::CreateContainer("the container did not start within 10 s".into()))
            }
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<ContainerStatus> {
        let status = self.inspect(id)?;
        if !status.running() {
            return Ok(status);
        }
        self.kill(id, libc::SIGTERM)?;
        let until = tokio::time::Instant::now() + grace;
        let mut killed = false;
        loop {
            let s = self.inspect(id)?;
            if !s.running() {
                return Ok(s);
            }
            let now = tokio::time::Instant::now();
            if now >= until && !killed {
                self.kill(id, libc::SIGKILL)?;
                killed = true;
            }
            if now >= until + Duration::from_secs(5) {
                return Err(RuntimeError::Io {
                    context: format!("container {id}"),
                    source: std::io::Error::other("still running 5 s after SIGKILL"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A command that runs `argv` as the container's processes run: its environment,
    /// working directory and network namespace (the caller adds its process group or
    /// session and its standard streams).
    fn command(&self, id: &str, argv: &[String]) -> Result<Command> {
        let spec: ContainerSpec =
            read_json(&self.dir(id).join("spec.json")).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let (program, args) =
            argv.split_first().ok_or_else(|| RuntimeError::CreateContainer("no command to run".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
        // The folder is entered after the namespaces (entering a mount namespace resets it).
        let cwd = std::ffi::CString::new(spec.working_dir.as_deref().unwrap_or("/"))
            .map_err(|_| RuntimeError::CreateContainer("workingDir holds a NUL".into()))?;
        let netns = match &spec.netns {
            Some(ns) => Some(std::fs::File::open(ns).map_err(RuntimeError::io(format!("{}", ns.display())))?),
            None => None,
        };
        // With volumes, the container's own mount namespace (through its main process).
        let mntns = match (spec.mounts.is_empty(), read_json::<Started>(&self.dir(id).join("started.json"))) {
            (false, Some(s)) => {
                let path = format!("/proc/{}/ns/mnt", s.pid);
                Some(std::fs::File::open(&path).map_err(RuntimeError::io(path))?)
            }
            _ => None,
        };
        // SAFETY: setns and chdir only (a C string made before the fork), between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                for (ns, kind) in [(&netns, libc::CLONE_NEWNET), (&mntns, libc::CLONE_NEWNS)] {
                    if let Some(ns) = ns {
                        if libc::setns(std::os::fd::AsRawFd::as_raw_fd(ns), kind) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    async fn exec_in(&self, id: &str, argv: Vec<String>, timeout: Duration) -> Result<ExecOutput> {
        let mut cmd = self.command(id, &argv)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: setpgid only: its own group, so a timeout kills all it started.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| RuntimeError::CreateContainer(format!("cannot run {argv:?}: {e}")))?;
        let pid = child.id() as i32;
        let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
        match tokio::time::timeout(timeout, waited).await {
            Ok(Ok(Ok(out))) => {
                let mut output = out.stdout;
                output.extend(out.stderr);
                Ok(ExecOutput { code: Some(out.status.code().unwrap_or(137)), output })
            }
            Ok(Ok(Err(e))) => Err(RuntimeError::io("exec")(e)),
            Ok(Err(e)) => Err(RuntimeError::io("exec")(std::io::Error::other(e.to_string()))),
            Err(_elapsed) => {
                // SAFETY: the command's own process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                Ok(ExecOutput { code: None, output: Vec::new() })
            }
        }
    }
}

impl ContainerRuntime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    fn scheme(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<ContainerStatus>> {
        self.start_container(spec).boxed()
    }

    fn status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>> {
        let r = self.inspect(id);
        async move { r }.boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        let out = self.listed(|_| true);
        async move { out }.boxed()
    }

    fn list_pod(&self, pod_uid: &str) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        // Ids start with the pod's uid: only its folders are read.
        let prefix = format!("{pod_uid}.");
        let out = self.listed(|id| id.starts_with(&prefix));
        async move { out }.boxed()
    }

    fn stop(&self, id: &str, grace: Duration) -> BoxFuture<'_, Result<ContainerStatus>> {
        let id = id.to_string();
        async move { self.stop_container(&id, grace).await }.boxed()
    }

    fn limits_unavailable(&self) -> Option<String> {
        self.cgroups.as_ref().err().cloned()
    }

    fn tidy(&self) {
        super::mounts::remove_made(&self.root.join(".mountpoints"));
        if let Ok(layout) = &self.cgroups {
            layout.remove_parents();
        }
    }

    fn remove(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let r = match self.inspect(id) {
            Ok(s) if s.running() => Err(RuntimeError::CreateContainer(format!("container {id} still runs"))),
            Ok(_) | Err(RuntimeError::NotFound(_)) => self.remove_files(id),
            Err(e) => Err(e),
        };
        async move { r }.boxed()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    fn exec(&self, id: &str, argv: Vec<String>, timeout: Duration) -> BoxFuture<'_, Result<ExecOutput>> {
        let id = id.to_string();
        async move { self.exec_in(&id, argv, timeout).await }.boxed()
    }

    fn exec_session(
        &self,
        id: &str,
        argv: Vec<String>,
        _stdin: bool,
        _tty: bool,
    ) -> BoxFuture<'_, Result<ExecSession>> {
        let r = self.command(id, &argv).map(ExecSession::Command);
        async move { r }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_is_seen_when_the_shim_renames_its_file_into_place_and_not_before() {
        let dir = std::env::temp_dir().join(format!("keelson-await-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Nothing comes: false once the limit has passed.
        let began = std::time::Instant::now();
        assert!(!await_start(&dir, Duration::from_millis(150)));
        assert!(began.elapsed() >= Duration::from_millis(150));
        // The shim's way: a file written aside, then renamed in while the runtime waits.
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(dir.join(".started.json.tmp"), "{}").unwrap();
                std::fs::rename(dir.join(".started.json.tmp"), dir.join("started.json")).unwrap();
            })
        };
        let began = std::time::Instant::now();
        assert!(await_start(&dir, Duration::from_secs(30)), "the rename is seen");
        assert!(began.elapsed() < Duration::from_secs(20), "woken by the rename, not by the limit");
        writer.join().unwrap();
        // A container that failed to start is done waiting for too.
        std::fs::remove_file(dir.join("started.json")).unwrap();
        std::fs::write(dir.join("exit.json"), "{}").unwrap();
        assert!(await_start(&dir, Duration::from_millis(10)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
