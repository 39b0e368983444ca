//! The `docker` runtime: containers from images, through the Docker Engine API (bollard,
//! over the daemon's unix socket).
//!
//! A pod is a sandbox container (`--sandbox-image`, sleeping) holding the pod's network
//! namespace, with the pod's address on the node's Docker network (`keelson-<node>`,
//! the node's pod CIDR, gateway .1: a bridge Docker makes for this project); the pod's
//! containers join it (`network_mode: container:<sandbox>`), as Kubernetes' pause
//! container does. Every container carries labels naming its node, pod and attempt, so
//! a restarted kubelet finds (adopts) what runs already. Images follow
//! `imagePullPolicy`; with no registry reachable, a pull fails as ErrImagePull.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use keelson_config::Cidr;

use super::{
    AttachedExec, Chunk, ContainerRuntime, ContainerSpec, ContainerStatus, ExecControl, ExecOutput, ExecSession, Exit,
    Result, RuntimeError,
};

const NODE: &str = "keelson.node";
const POD_UID: &str = "keelson.pod-uid";
const POD: &str = "keelson.pod";
const NAME: &str = "keelson.container";
const ATTEMPT: &str = "keelson.attempt";
const ROLE: &str = "keelson.role";

fn failed(what: &str) -> impl FnOnce(bollard::errors::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Io { context: format!("docker: {what}"), source: std::io::Error::other(e.to_string()) }
}

/// Whether a Docker answer is a 404.
fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

pub struct DockerRuntime {
    docker: Docker,
    node: String,
    /// `docker://<engine version>`.
    version: String,
    sandbox_image: String,
    /// Each container's output in the CRI format (`<id>.log`), copied from Docker's
    /// log stream while the container runs, so `kubectl logs` reads it as it reads the
    /// process runtime's.
    logs: PathBuf,
    /// The containers whose output is being copied now.
    following: Arc<Mutex<HashSet<String>>>,
}

impl DockerRuntime {
    /// Connects to the daemon (`DOCKER_HOST` or `/var/run/docker.sock`) and agrees on an
    /// API version; an error says what is missing, for the agent to exit with.
    pub async fn connect(node: &str, sandbox_image: &str, logs: PathBuf) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(&logs).map_err(|e| format!("cannot make {}: {e}", logs.display()))?;
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("the docker runtime needs a Docker daemon: {e}"))?
            .negotiate_version()
            .await
            .map_err(|e| format!("no Docker daemon answers ({e}): start one, or use --runtime process"))?;
        let v = docker.version().await.map_err(|e| format!("the Docker daemon: {e}"))?;
        let rt = Self {
            docker,
            node: node.to_string(),
            version: format!("docker://{}", v.version.unwrap_or_else(|| "unknown".into())),
            sandbox_image: sandbox_image.to_string(),
            logs,
            following: Arc::default(),
        };
        if rt.docker.inspect_image(sandbox_image).await.is_err() {
            return Err(format!(
                "the docker runtime's sandbox image {sandbox_image} is not on this machine (no registry is \
                 needed: scripts/busybox-image.sh builds it)"
            ));
        }
        Ok(rt)
    }

    fn network(&self) -> String {
        format!("keelson-{}", self.node)
    }

    /// Docker's name for container `id` (`<pod uid>.<name>.<attempt>`) of this node.
    fn docker_name(&self, id: &str) -> String {
        format!("keelson_{}_{id}", self.node)
    }

    fn sandbox_name(&self, pod_uid: &str) -> String {
        format!("keelson_{}_{pod_uid}_sandbox", self.node)
    }

    fn labels(&self, spec: &ContainerSpec, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (NODE.to_string(), self.node.clone()),
            (POD_UID.to_string(), spec.pod_uid.clone()),
            (POD.to_string(), spec.pod.clone()),
            (NAME.to_string(), spec.name.clone()),
            (ATTEMPT.to_string(), spec.attempt.to_string()),
            (ROLE.to_string(), role.to_string()),
        ])
    }

    /// The node's network: the pod CIDR on a bridge of Docker's, made once.
    pub async fn ensure_network(&self, cidr: Cidr, gateway: Ipv4Addr) -> Result<()> {
        let name = self.network();
        if self.docker.inspect_network(&name, None).await.is_ok() {
            return Ok(());
        }
        let request = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(bollard::models::Ipam {
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(cidr.to_string()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(NODE.to_string(), self.node.clone())])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(e) => Err(RuntimeError::Network(format!("making the Docker network {name} ({cidr}): {e}"))),
        }
    }

    /// Pulls `image` if the policy asks for it (Kubernetes' defaults: `Always` for an
    /// untagged or `:latest` image, `IfNotPresent` otherwise).
    async fn ensure_image(&self, image: &str, policy: Option<&str>) -> Result<()> {
        // `repo[:tag]`, where a registry's `host:port/` may come before the repo.
        let (from, tag) = match image.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((f, t)) => (f, Some(t)),
            None => (image, None),
        };
        let policy = policy.unwrap_or(if tag.is_none_or(|t| t == "latest") { "Always" } else { "IfNotPresent" });
        let present = self.docker.inspect_image(image).await.is_ok();
        match policy {
            "Never" if !present => {
                return Err(RuntimeError::ImagePull(format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                )))
            }
            "IfNotPresent" | "Never" if present => return Ok(()),
            _ => {}
        }
        let options = CreateImageOptionsBuilder::default().from_image(from).tag(tag.unwrap_or("latest")).build();
        let mut pulling = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pulling.next().await {
            if let Err(e) = step {
                return Err(RuntimeError::ImagePull(format!("failed to pull image \"{image}\": {e}")));
            }
        }
        Ok(())
    }

    /// The pod's sandbox, running with the pod's address (made or restarted if needed).
    async fn ensure_sandbox(&self, spec: &ContainerSpec, ip: &str) -> Result<String> {
        let name = self.sandbox_name(&spec.pod_uid);
        match self.docker.inspect_container(&name, None::<InspectContainerOptions>).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => return Ok(name),
            Ok(_) => {
                self.docker.start_container(&name, None).await.map_err(failed("starting the pod's sandbox"))?;
                return Ok(name);
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(failed("the pod's sandbox")(e)),
        }
        let endpoint = EndpointSettings {
            ipam_config: Some(EndpointIpamConfig { ipv4_address: Some(ip.to_string()), ..Default::default() }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.sandbox_image.clone()),
            cmd: Some(vec!["sleep".into(), "2147483647".into()]),
            hostname: Some(spec.pod.rsplit('/').next().unwrap_or_default().to_string()),
            labels: Some(self.labels(spec, "sandbox")),
            host_config: Some(HostConfig {
                network_mode: Some(self.network()),
                init: Some(true),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(self.network(), endpoint)])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker.create_container(Some(options), body).await.map_err(failed("making the pod's sandbox"))?;
        self.docker.start_container(&name, None).await.map_err(failed("starting the pod's sandbox"))?;
        Ok(name)
    }

    async fn start_container(&self, spec: ContainerSpec) -> Result<ContainerStatus> {
        let id = spec.id();
        let name = self.docker_name(&id);
        if let Ok(s) = self.inspect(&id).await {
            return Ok(s); // started before (a kubelet that restarted mid-start)
        }
        self.ensure_image(&spec.image, spec.image_pull_policy.as_deref()).await?;
        let network_mode = match &spec.pod_ip {
            Some(ip) => format!("container:{}", self.ensure_sandbox(&spec, ip).await?),
            None => "none".to_string(),
        };
        let binds = spec
            .mounts
            .iter()
            .map(|m| format!("{}:{}{}", m.source.display(), m.target, if m.read_only { ":ro" } else { "" }))
            .collect();
        let (entrypoint, cmd) = match (&spec.command, &spec.args) {
            (Some(c), a) => (Some(c.clone()), a.clone().or(Some(vec![]))),
            (None, a) => (None, a.clone()),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd,
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            labels: Some(self.labels(&spec, "container")),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                binds: Some(binds),
                // Docker's own limits (cgroups): a container over its memory is
                // OOM-killed (and reported OOMKilled), its CPU throttled to its share.
                memory: spec.limits.memory_bytes.map(|b| b as i64),
                memory_swap: spec.limits.memory_bytes.map(|b| b as i64),
                nano_cpus: spec.limits.cpu_millis.map(|m| m as i64 * 1_000_000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        if let Err(e) = self.docker.create_container(Some(options), body).await {
            return Err(RuntimeError::CreateContainer(format!("docker: {e}")));
        }
        if let Err(e) = self.docker.start_container(&name, None).await {
            // Started or not, the container is there and says how it ended.
            tracing::debug!(container = %name, error = %e, "docker start failed");
        }
        self.follow(&id);
        self.inspect(&id).await
    }

    /// Copies container `id`'s output from Docker into its CRI log (from just after the
    /// last line already there: an adopting kubelet carries on), until the container ends.
    fn follow(&self, id: &str) {
        if !self.following.lock().unwrap().insert(id.to_string()) {
            return;
        }
        let (docker, name, path, following, id) =
            (self.docker.clone(), self.docker_name(id), self.log_path(id), self.following.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = copy_logs(&docker, &name, &path).await {
                tracing::debug!(container = %name, error = %e, "container output not copied");
            }
            following.lock().unwrap().remove(&id);
        });
    }

    async fn inspect(&self, id: &str) -> Result<ContainerStatus> {
        let c = match self.docker.inspect_container(&self.docker_name(id), None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(e) if not_found(&e) => return Err(RuntimeError::NotFound(id.to_string())),
            Err(e) => return Err(failed("inspecting a container")(e)),
        };
        let labels = c.config.as_ref().and_then(|cfg| cfg.labels.clone()).unwrap_or_default();
        let state = c.state.unwrap_or_default();
        let running = state.running == Some(true);
        // A running container found here (an adopting kubelet's first look) gets its
        // output copied too; one already followed is left as it is.
        if running {
            self.follow(id);
        }
        // Created but never started (a failed start) counts as ended.
        let started_at = state.started_at.filter(|t| !t.starts_with("0001-"));
        let exit = (!running).then(|| {
            let code = state.exit_code.unwrap_or(128) as i32;
            let oom = state.oom_killed == Some(true);
            let error = state.error.filter(|e| !e.is_empty());
            Exit {
                code,
                signal: (code > 128).then_some(code - 128),
                reason: if oom {
                    "OOMKilled".into()
                } else if error.is_some() {
                    "StartError".into()
                } else if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: error,
                finished_at: state.finished_at.filter(|t| !t.starts_with("0001-")).unwrap_or_default(),
            }
        });
        Ok(ContainerStatus {
            id: id.to_string(),
            pod_uid: labels.get(POD_UID).cloned().unwrap_or_default(),
            name: labels.get(NAME).cloned().unwrap_or_default(),
            attempt: labels.get(ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0),
            image: c.config.and_then(|cfg| cfg.image).unwrap_or_default(),
            started_at,
            pid: state.pid.filter(|p| *p > 0 && running).map(|p| p as u32),
            exit,
        })
    }

    /// This node's containers (not sandboxes), those of one pod when `pod_uid` says.
    async fn listed(&self, pod_uid: Option<&str>) -> Result<Vec<ContainerStatus>> {
        let mut labels = vec![format!("{NODE}={}", self.node), format!("{ROLE}=container")];
        if let Some(uid) = pod_uid {
            labels.push(format!("{POD_UID}={uid}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let found = self.docker.list_containers(Some(options)).await.map_err(failed("listing containers"))?;
        let mut out = Vec::new();
        for c in found {
            let l = c.labels.unwrap_or_default();
            let (Some(uid), Some(name), Some(attempt)) = (l.get(POD_UID), l.get(NAME), l.get(ATTEMPT)) else {
                continue;
            };
            match self.inspect(&format!("{uid}.{name}.{attempt}")).await {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<ContainerStatus> {
        let options = StopContainerOptionsBuilder::default().t(grace.as_secs().max(1) as i32).build();
        match self.docker.stop_container(&self.docker_name(id), Some(options)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Err(RuntimeError::NotFound(id.to_string())),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(failed("stopping a container")(e)),
        }
        self.inspect(id).await
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Err(e) if !not_found(&e) => Err(failed("removing a container")(e)),
            _ => Ok(()),
        }
    }

    async fn exec_in(&self, id: &str, argv: Vec<String>, timeout: Duration) -> Result<ExecOutput> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let name = self.docker_name(id);
        let exec = self
            .docker
            .create_exec(
                &name,
                CreateExecOptions {
                    cmd: Some(argv),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(failed("exec"))?;
        let run = async {
            let mut output = Vec::new();
            if let StartExecResults::Attached { output: mut stream, .. } =
                self.docker.start_exec(&exec.id, None).await.map_err(failed("exec"))?
            {
                while let Some(Ok(chunk)) = stream.next().await {
                    output.extend_from_slice(&chunk.into_bytes());
                }
            }
            let done = self.docker.inspect_exec(&exec.id).await.map_err(failed("exec"))?;
            Ok::<_, RuntimeError>(ExecOutput { code: done.exit_code.map(|c| c as i32), output })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Ok(ExecOutput { code: None, output: Vec::new() }),
        }
    }
}

impl DockerRuntime {
    /// Starts `argv` in container `id` with its streams attached (a terminal if `tty`).
    async fn attach_exec(&self, id: &str, argv: Vec<String>, stdin: bool, tty: bool) -> Result<AttachedExec> {
        use bollard::container::LogOutput;
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let options = CreateExecOptions {
            cmd: Some(argv),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            env: tty.then(|| vec!["TERM=xterm".to_string()]),
            ..Default::default()
        };
        let exec = match self.docker.create_exec(&self.docker_name(id), options).await {
            Ok(e) => e,
            Err(e) if not_found(&e) => return Err(RuntimeError::NotFound(id.to_string())),
            Err(e) => return Err(failed("exec")(e)),
        };
        let StartExecResults::Attached { output, input } =
            self.docker.start_exec(&exec.id, None).await.map_err(failed("exec"))?
        else {
            return Err(RuntimeError::CreateContainer("docker started the exec detached".into()));
        };
        let output = output
            .take_while(|item| std::future::ready(item.is_ok()))
            .filter_map(|item| {
                std::future::ready(match item {
                    Ok(LogOutput::StdErr { message }) => Some(Chunk { stderr: true, data: message.to_vec() }),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Chunk { stderr: false, data: message.to_vec() })
                    }
                    _ => None,
                })
            })
            .boxed();
        Ok(AttachedExec { output, input, control: Box::new(DockerExec { docker: self.docker.clone(), id: exec.id }) })
    }
}

/// The time (seconds since the epoch) of the last entry of the CRI log at `path`.
fn last_entry(path: &std::path::Path) -> Option<f64> {
    let data = std::fs::read(path).ok()?;
    let last = data.split(|b| *b == b'\n').rev().find(|l| !l.is_empty())?;
    crate::api::parse_time(super::logs::parse(last)?.time)
}

/// Docker's log stream of container `name` (timestamped) appended to `path` as CRI
/// entries; entries at or before the file's last are skipped (Docker's `since` counts
/// whole seconds).
async fn copy_logs(docker: &Docker, name: &str, path: &std::path::Path) -> std::io::Result<()> {
    use bollard::container::LogOutput;
    let after = last_entry(path);
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(after.map_or(0, |t| t as i32))
        .build();
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut stream = docker.logs(name, Some(options));
    while let Some(item) = stream.next().await {
        let (stream_name, message) = match item {
            Ok(LogOutput::StdOut { message }) => ("stdout", message),
            Ok(LogOutput::StdErr { message }) => ("stderr", message),
            Ok(_) => continue,
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        // `<RFC3339Nano> <text>`: Docker's timestamp, then the chunk as written.
        let Some(space) = message.iter().position(|b| *b == b' ') else { continue };
        let (time, text) = (String::from_utf8_lossy(&message[..space]).into_owned(), &message[space + 1..]);
        if let (Some(a), Some(t)) = (after, crate::api::parse_time(&time)) {
            if t <= a {
                continue;
            }
        }
        let full = text.ends_with(b"\n");
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        file.write_all(&super::logs::cri_line(&time, stream_name, full, text))?;
    }
    Ok(())
}

impl ContainerRuntime for DockerRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    fn scheme(&self) -> &'static str {
        "docker"
    }

    fn node_network(&self, cidr: Cidr, gateway: Ipv4Addr) -> BoxFuture<'_, Result<()>> {
        self.ensure_network(cidr, gateway).boxed()
    }

    fn release_pod(&self, pod_uid: &str) -> BoxFuture<'_, Result<()>> {
        let name = self.sandbox_name(pod_uid);
        async move { self.remove_container(&name).await }.boxed()
    }

    fn start(&self, spec: ContainerSpec) -> BoxFuture<'_, Result<ContainerStatus>> {
        self.start_container(spec).boxed()
    }

    fn status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>> {
        let id = id.to_string();
        async move { self.inspect(&id).await }.boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        self.listed(None).boxed()
    }

    fn list_pod(&self, pod_uid: &str) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        let uid = pod_uid.to_string();
        async move { self.listed(Some(&uid)).await }.boxed()
    }

    fn stop(&self, id: &str, grace: Duration) -> BoxFuture<'_, Result<ContainerStatus>> {
        let id = id.to_string();
        async move { self.stop_container(&id, grace).await }.boxed()
    }

    fn remove(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let (name, log) = (self.docker_name(id), self.log_path(id));
        async move {
            self.remove_container(&name).await?;
            let _ = std::fs::remove_file(log);
            Ok(())
        }
        .boxed()
    }

    fn teardown(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            match self.docker.remove_network(&self.network()).await {
                Err(e) if !not_found(&e) => Err(RuntimeError::Network(format!("removing {}: {e}", self.network()))),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{id}.log"))
    }

    fn exec(&self, id: &str, argv: Vec<String>, timeout: Duration) -> BoxFuture<'_, Result<ExecOutput>> {
        let id = id.to_string();
        async move { self.exec_in(&id, argv, timeout).await }.boxed()
    }

    fn exec_session(&self, id: &str, argv: Vec<String>, stdin: bool, tty: bool) -> BoxFuture<'_, Result<ExecSession>> {
        let id = id.to_string();
        async move { self.attach_exec(&id, argv, stdin, tty).await.map(ExecSession::Attached) }.boxed()
    }
}

/// A `kubectl exec` session Docker runs: resized, hung up and asked its exit code
/// through the Engine API.
struct DockerExec {
    docker: Docker,
    id: String,
}

impl ExecControl for DockerExec {
    fn resize(&self, rows: u16, cols: u16) -> BoxFuture<'static, ()> {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        async move {
            // kubectl sends the first size at once, often before Docker runs the exec
            // (a resize then fails and the terminal would stay 0×0): try for a second.
            for _ in 0..40 {
                let size = bollard::exec::ResizeExecOptions { height: rows, width: cols };
                match docker.resize_exec(&id, size).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!(error = %e, "exec terminal not resized yet"),
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        .boxed()
    }

    fn hang_up(&self) -> BoxFuture<'static, ()> {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        async move {
            // Docker has no hang-up of its own: its process (a host pid, seen by this
            // root agent) gets the SIGHUP a closing terminal sends.
            let Ok(exec) = docker.inspect_exec(&id).await else { return };
            let (Some(pid), Some(container)) = (exec.pid.filter(|p| *p > 0), exec.container_id) else { return };
            // Only a process of this agent's pid namespace that is in the container's
            // cgroup (not one that took a reused pid, nor one of another namespace).
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if exec.running == Some(true) && cgroup.contains(&container) {
                // SAFETY: signalling the exec's own process, checked just above.
                unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            }
        }
        .boxed()
    }

    fn exit_code(&self) -> BoxFuture<'static, i32> {
        let (docker, id) = (self.docker.clone(), self.id.clone());
        async move {
            // The output ends a moment before Docker has the exit code.
            for _ in 0..50 {
                match docker.inspect_exec(&id).await {
                    Ok(e) if e.running != Some(true) => return e.exit_code.map_or(1, |c| c as i32),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => return 1,
                }
            }
            1
        }
        .boxed()
    }
}
