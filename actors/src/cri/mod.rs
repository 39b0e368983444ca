//! Container runtimes, behind one trait the kubelet's pod workers drive.
//!
//! - [`ContainerRuntime`]: start a container, look at it, signal and stop it, run a
//!   command beside it, find its log; what every runtime (process, later Docker) does.
//! - `process.rs`: the embedded default. Each container is a child process of its own
//!   small shim (`shim.rs`, this binary run as `keelson shim`), which owns the process,
//!   writes its output and exit status to files and outlives the agent, so a restarted
//!   kubelet finds its containers still running and adopts them. Shims are forked by
//!   one small spawner process per agent (`spawner.rs`) rather than exec'd each.
//! - `logs.rs`: container logs in the CRI format (`<time> stdout F <line>`) and the
//!   reading `kubectl logs` asks for (tail, since, timestamps, follow).
//! - `mounts.rs`: volumes bound into a container's own mount namespace (as root);
//! - `network.rs`: pod addresses: a network namespace per pod on a bridge of the
//!   node's (as root), or a loopback address per pod.
//! - `volatile.rs`: where the runtime's state and the address claims live (a tmpfs).

pub mod cgroups;
pub mod docker;
pub mod logs;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod process;
pub mod shim;
pub mod spawner;
pub mod volatile;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use docker::DockerRuntime;
pub use network::{PodAddress, PodNetwork};
pub use process::ProcessRuntime;

/// What a runtime can fail at; `CreateContainer` is the user's to fix (shown as the
/// container's `CreateContainerError`), the rest are the node's.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    CreateContainer(String),
    /// The image could not be had (shown as `ErrImagePull`, then `ImagePullBackOff`).
    #[error("{0}")]
    ImagePull(String),
    #[error("no container {0}")]
    NotFound(String),
    #[error("network: {0}")]
    Network(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// One container to run: what the pod's spec says, resolved (env expanded, command
/// and args joined), and where it lives (its pod, its network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub pod_uid: String,
    /// `<namespace>/<name>` of its pod (for people reading the node's files).
    pub pod: String,
    pub name: String,
    /// Which run of this container in its pod this is (0, 1, … — restarts count up).
    pub attempt: u32,
    pub image: String,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The spec's `command` and `args` as written (an image runtime combines them
    /// with the image's entrypoint and command, as Kubernetes does).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `imagePullPolicy` as the spec says (none: Kubernetes' default for the tag).
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The pod's address (an image runtime puts the pod's sandbox there).
    #[serde(default)]
    pub pod_ip: Option<String>,
    /// `resources.limits`: memory in bytes, CPU in millicores (none: unlimited).
    #[serde(default)]
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The network namespace to run in (`/run/netns/…`), if the pod has its own.
    pub netns: Option<PathBuf>,
    /// Volumes bound over the node's folders, in a mount namespace of the container's own.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// A container's resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

impl Limits {
    /// From a container's spec (`resources.limits.memory` / `.cpu`).
    pub fn of(container: &serde_json::Value) -> Self {
        let limits = &container["resources"]["limits"];
        let some = |n: u64| (n > 0).then_some(n);
        Limits {
            memory_bytes: some(crate::controllers::quantity::units(&limits["memory"])),
            cpu_millis: some(crate::controllers::quantity::millicores(&limits["cpu"])),
        }
    }
}

/// A volume as a container sees it: `source` (a folder or file on the node) bound at
/// `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl ContainerSpec {
    /// The container's id, unique on its node: `<pod uid>.<name>.<attempt>`.
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.pod_uid, self.name, self.attempt)
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Kubernetes' reason: `Completed`, `Error`, `StartError`, `OOMKilled`.
    pub reason: String,
    pub message: Option<String>,
    pub finished_at: String,
}

/// A container as its runtime sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub started_at: Option<String>,
    /// Its main process, while it runs.
    pub pid: Option<u32>,
    pub exit: Option<Exit>,
}

impl ContainerStatus {
    pub fn running(&self) -> bool {
        self.exit.is_none()
    }
}

/// A command's result (exec probes, `kubectl exec` without a terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None`: it ran past its timeout and was killed.
    pub code: Option<i32>,
    pub output: Vec<u8>,
}

/// What the kubelet asks of a container runtime. Every call is a future so runtimes
/// that talk to a daemon (Docker) fit beside ones that work on local files.
pub trait ContainerRuntime: Send + Sync {
    /// `process://0.1.0` (the node's `containerRuntimeVersion`), and the prefix of ids.
    fn version(&self) -> String;
    fn scheme(&self) -> &'static str;
    /// Starts `spec`; answers once it runs (or failed to start, as an exited status).
    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<ContainerStatus>>;
    fn status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>>;
    /// Every container this runtime keeps on the node, running or not.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>>;
    /// The containers of one pod (what a pod worker adopts, or stops).
    fn list_pod(&self, pod_uid: &str) -> BoxFuture<'_, Result<Vec<ContainerStatus>>>;
    /// SIGTERM, then SIGKILL once `grace` has passed; answers once it has exited.
    fn stop(&self, id: &str, grace: Duration) -> BoxFuture<'_, Result<ContainerStatus>>;
    /// Why containers cannot be held to their resource limits on this node, if they
    /// cannot (a host without writable cgroups).
    fn limits_unavailable(&self) -> Option<String> {
        None
    }
    /// Removes what the runtime made on the node besides containers (mount points),
    /// once every container is gone.
    fn tidy(&self) {}
    /// The node's pod network is `cidr` with the node at `gateway` (an image runtime
    /// makes its network for it).
    fn node_network(&self, _cidr: keelson_config::Cidr, _gateway: std::net::Ipv4Addr) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The pod is gone from the node: what the runtime holds for it besides its
    /// containers (a sandbox) goes.
    fn release_pod(&self, _pod_uid: &str) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// The agent stops for good: the node's network the runtime made goes.
    fn teardown(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Forgets an exited container and its files.
    fn remove(&self, id: &str) -> BoxFuture<'_, Result<()>>;
    /// Where its output is (CRI log format).
    fn log_path(&self, id: &str) -> PathBuf;
    /// Runs `argv` beside the container (its environment, directory and network),
    /// killed after `timeout`.
    fn exec(&self, id: &str, argv: Vec<String>, timeout: Duration) -> BoxFuture<'_, Result<ExecOutput>>;
    /// How `argv` runs beside the container for `kubectl exec` (with stdin, on a
    /// terminal, as asked).
    fn exec_session(&self, id: &str, argv: Vec<String>, stdin: bool, tty: bool) -> BoxFuture<'_, Result<ExecSession>>;
}

/// How `kubectl exec` reaches a container.
pub enum ExecSession {
    /// A command for the kubelet to run itself, with pipes or a terminal of its own
    /// (program, arguments, environment, directory set).
    Command(std::process::Command),
    /// A command a daemon runs (Docker's exec), its streams attached here.
    Attached(AttachedExec),
}

/// A piece of an attached command's output.
#[derive(Debug)]
pub struct Chunk {
    pub stderr: bool,
    pub data: Vec<u8>,
}

/// An exec a daemon runs: its output, its input, and what else it can be asked.
pub struct AttachedExec {
    /// Ends when the command's streams do.
    pub output: futures_util::stream::BoxStream<'static, Chunk>,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub control: Box<dyn ExecControl>,
}

/// What an attached exec is asked besides its streams.
pub trait ExecControl: Send + Sync {
    /// Its terminal is now `rows` × `cols`.
    fn resize(&self, rows: u16, cols: u16) -> BoxFuture<'static, ()>;
    /// The caller went away: its terminal hangs up (SIGHUP), as when a terminal closes.
    fn hang_up(&self) -> BoxFuture<'static, ()>;
    /// Its exit code, once its output has ended (1 if the runtime cannot tell: still
    /// running a second later, or gone).
    fn exit_code(&self) -> BoxFuture<'static, i32>;
}
