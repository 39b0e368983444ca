//! `/<agent>/kubelet/pod/<namespace>/<name>`: one pod's worker. It gives the pod its
//! address, runs its init containers in order and then its containers, restarts them
//! as the restartPolicy says (with back-off: CrashLoopBackOff), runs their probes,
//! reports the pod's status when it changes, and on deletion stops them gracefully
//! (preStop, SIGTERM, the grace period, SIGKILL), gives the address back and lets
//! the API remove the pod.
//!
//! The worker keeps nothing the runtime does not: a new incarnation (after a crash,
//! or a restarted agent) lists the pod's containers and carries on from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::AsyncContext;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::env::{self, PodFacts, Refs};
use super::probe::{self, Probe, Prober};
use super::status::{self, ContainerView, Init, PodView, State};
use crate::api::{rfc3339_now, EventType};
use crate::cri::{ContainerSpec, ContainerStatus, PodAddress, RuntimeError};
use crate::kubelet::NodeShared;
use crate::runtime::{Actor, Ctx, Handler};

/// How long a pod leaving its Services' endpoints waits, once this node has seen it go,
/// for the other nodes' proxies to see it too (bounded by its grace period).
const PROXY_LAG: Duration = Duration::from_secs(1);

/// Tells a worker its pod changed in the API (it reads the kubelet's cache).
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct PodChanged;

pub struct PodWorker {
    key: String,
    uid: String,
    shared: Arc<NodeShared>,
    nudge: watch::Sender<u64>,
}

impl PodWorker {
    pub fn new(key: String, uid: String, shared: Arc<NodeShared>) -> Self {
        Self { key, uid, shared, nudge: watch::channel(0).0 }
    }
}

impl Actor for PodWorker {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let run = Run::new(self.key.clone(), self.uid.clone(), self.shared.clone());
        let nudges = self.nudge.subscribe();
        ctx.spawn(actix::fut::wrap_future::<_, crate::runtime::Incarnation<Self>>(run.drive(nudges)).map(
            |(), _, ctx: &mut Ctx<Self>| {
                crate::runtime::exit(ctx, crate::runtime::ExitReason::Normal);
            },
        ));
    }
}

use actix::fut::ActorFutureExt;

impl Handler<PodChanged> for PodWorker {
    type Result = ();

    fn handle(&mut self, _: PodChanged, _: &mut Ctx<Self>) {
        self.nudge.send_modify(|n| *n += 1);
    }
}

/// One container (init or main) as the worker follows it.
struct Track {
    spec: Value,
    name: String,
    /// Its latest run, and the one before (`lastState`, `--previous`).
    current: Option<ContainerStatus>,
    previous: Option<ContainerStatus>,
    /// Why it is not running, when that is not its own exit.
    waiting: Option<(String, Option<String>)>,
    /// A restart is held back until then.
    restart_at: Option<Instant>,
    /// Exits in a row that counted towards the back-off.
    backoff_level: u32,
    /// A failed image pull is tried again then; pulls failed in a row.
    pull_at: Option<Instant>,
    pull_level: u32,
    startup: Option<Prober>,
    liveness: Option<Prober>,
    readiness: Option<Prober>,
    ready: bool,
    started: bool,
}

impl Track {
    fn new(spec: &Value) -> Self {
        Self {
            name: spec["name"].as_str().unwrap_or_default().to_string(),
            spec: spec.clone(),
            current: None,
            previous: None,
            waiting: None,
            restart_at: None,
            backoff_level: 0,
            pull_at: None,
            pull_level: 0,
            startup: None,
            liveness: None,
            readiness: None,
            ready: false,
            started: false,
        }
    }

    fn restart_count(&self) -> u32 {
        self.current.as_ref().map_or(0, |c| c.attempt)
    }

    /// Probers for a run that started at `t` (a bad probe spec is logged and skipped).
    fn arm_probes(&mut self, t: Instant) {
        let make = |field: &str| match Probe::parse(&self.spec[field], &self.spec) {
            Ok(p) => Some(Prober::new(p, t)),
            Err(e) if self.spec[field].is_object() => {
                tracing::warn!(container = %self.name, probe = field, error = %e, "probe ignored");
                None
            }
            Err(_) => None,
        };
        self.startup = make("startupProbe");
        self.liveness = make("livenessProbe");
        self.readiness = make("readinessProbe");
        // Without probes a running container is started and ready at once (no pass later).
        self.started = self.startup.is_none();
        self.ready = self.started && self.readiness.is_none();
    }
}

/// Where a container stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Running, starting or waiting to restart.
    Active,
    /// Ended for good with this code.
    Settled(i32),
}

struct Run {
    key: String,
    uid: String,
    shared: Arc<NodeShared>,
    addr: Option<PodAddress>,
    init: Vec<Track>,
    main: Vec<Track>,
    start_time: String,
    /// The status last written (nothing is written while it is unchanged).
    reported: Option<Value>,
    adopted: bool,
    /// The pod's volumes, made before its first container starts.
    volumes: Option<super::volumes::Prepared>,
    /// When this worker began, and how long the pod's network and first start took:
    /// logged (debug) once the pod is first reported Running.
    began: Instant,
    first_start: FirstStart,
}

/// How long a pod's first start took (network, containers), until it is logged.
#[derive(Clone, Copy)]
enum FirstStart {
    Pending,
    Took(Duration, Duration),
    Logged,
}

impl Run {
    fn new(key: String, uid: String, shared: Arc<NodeShared>) -> Self {
        Self {
            key,
            uid,
            shared,
            addr: None,
            init: Vec::new(),
            main: Vec::new(),
            start_time: rfc3339_now(),
            reported: None,
            adopted: false,
            volumes: None,
            began: Instant::now(),
            first_start: FirstStart::Pending,
        }
    }

    fn pod(&self) -> Option<Value> {
        let cache = self.shared.pods.read().unwrap();
        cache.objects.get(&self.key).filter(|p| p["metadata"]["uid"] == self.uid.as_str()).cloned()
    }

    fn api_path(&self) -> String {
        let (ns, name) = self.key.split_once('/').unwrap_or(("default", &self.key));
        format!("/api/v1/namespaces/{ns}/pods/{name}")
    }

    async fn drive(mut self, mut nudges: watch::Receiver<u64>) {
        loop {
            let Some(pod) = self.pod() else {
                // Gone from the API (deleted at once, or replaced by a pod of the same name).
                self.terminate(None, Duration::ZERO).await;
                return;
            };
            if pod["metadata"]["deletionTimestamp"].is_string() {
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_u64()
                    .or(pod["spec"]["terminationGracePeriodSeconds"].as_u64())
                    .unwrap_or(30);
                self.terminate(Some(&pod), Duration::from_secs(grace)).await;
                return;
            }
            let wait = self.sync(&pod).await;
            tokio::select! {
                _ = nudges.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Finds the pod's containers the runtime already runs (a restarted worker or agent).
    async fn adopt(&mut self, pod: &Value) {
        let spec = &pod["spec"];
        self.init = spec["initContainers"].as_array().into_iter().flatten().map(Track::new).collect();
        self.main = spec["containers"].as_array().into_iter().flatten().map(Track::new).collect();
        if let Some(t) = pod["status"]["startTime"].as_str() {
            self.start_time = t.to_string();
        }
        let mut found: HashMap<String, Vec<ContainerStatus>> = HashMap::new();
        match self.shared.runtime.list_pod(&self.uid).await {
            Ok(all) => {
                for c in all {
                    found.entry(c.name.clone()).or_default().push(c);
                }
            }
            Err(e) => tracing::warn!(pod = %self.key, error = %e, "cannot list the runtime's containers"),
        }
        let now = Instant::now();
        for t in self.init.iter_mut().chain(self.main.iter_mut()) {
            let Some(mut runs) = found.remove(&t.name) else { continue };
            runs.sort_by_key(|c| c.attempt);
            t.current = runs.pop();
            t.previous = runs.pop();
            t.backoff_level = t.restart_count();
            if t.current.as_ref().is_some_and(ContainerStatus::running) {
                t.arm_probes(now);
            }
        }
        if self.main.iter().any(|t| t.current.is_some()) {
            tracing::info!(pod = %self.key, "adopted the pod's running containers");
        }
        self.adopted = true;
    }

    /// One pass over the pod; how long until the next is due.
    async fn sync(&mut self, pod: &Value) -> Duration {
        if !self.adopted {
            self.adopt(pod).await;
        }
        let mut next = self.shared.cfg.sync_every;
        if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) && self.reported.is_none() {
            // Ended before this worker started: nothing more to run.
            return next;
        }
        if self.addr.is_none() {
            let (net, uid) = (self.shared.network.clone(), self.uid.clone());
            // The attach's own time, logged apart from the worker's: under a burst the
            // difference is the worker waiting for the kubelet's thread again.
            match tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                net.attach(&uid).map(|a| (a, t.elapsed()))
            })
            .await
            {
                Ok(Ok((a, took))) => {
                    tracing::debug!(pod = %self.key, ?took, since_began = ?self.began.elapsed(), "network attached");
                    self.addr = Some(a)
                }
                Ok(Err(e)) => {
                    tracing::warn!(pod = %self.key, error = %e, "cannot give the pod its network");
                    self.event(pod, EventType::Warning, "FailedCreatePodSandBox", &e.to_string()).await;
                    return Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %e, "network set-up failed");
                    return Duration::from_secs(1);
                }
            }
        }
        let network = self.began.elapsed();
        let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
        let init = self.step_init(pod, &policy).await;
        let mut settled = Vec::new();
        if init == Init::Done {
            for i in 0..self.main.len() {
                let step = self.step_main(pod, i, &policy).await;
                settled.push(step);
            }
        } else {
            for t in &mut self.main {
                t.waiting = Some(("PodInitializing".into(), None));
            }
        }
        for t in self.init.iter().chain(self.main.iter()) {
            let due = [&t.startup, &t.liveness, &t.readiness]
                .into_iter()
                .flatten()
                .map(|p| p.next)
                .chain(t.restart_at)
                .chain(t.pull_at)
                .min();
            if let Some(due) = due {
                next = next.min(due.saturating_duration_since(Instant::now()).max(Duration::from_millis(20)));
            }
        }
        if let FirstStart::Pending = self.first_start {
            self.first_start = FirstStart::Took(network, self.began.elapsed());
        }
        self.report(pod, init, &settled).await;
        next
    }

    /// Runs the init containers in order; where they stand.
    async fn step_init(&mut self, pod: &Value, policy: &str) -> Init {
        for i in 0..self.init.len() {
            self.refresh(i, true).await;
            let t = &self.init[i];
            match &t.current {
                Some(c) if c.running() => return Init::Running,
                Some(c) if c.exit.as_ref().is_some_and(|e| e.code == 0) => continue,
                _ => {}
            }
            // Not run yet, or failed: an init container is restarted unless the policy is Never.
            let failed = t.current.is_some();
            if failed && policy == "Never" {
                return Init::Failed;
            }
            self.start_or_wait(pod, i, true).await;
            return Init::Running;
        }
        Init::Done
    }

    async fn step_main(&mut self, pod: &Value, i: usize, policy: &str) -> Step {
        self.refresh(i, false).await;
        let t = &self.main[i];
        match &t.current {
            None => {
                self.start_or_wait(pod, i, false).await;
                Step::Active
            }
            Some(c) if c.running() => {
                self.probe(pod, i).await;
                Step::Active
            }
            Some(c) => {
                let code = c.exit.as_ref().map_or(0, |e| e.code);
                let restart = match policy {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if !restart {
                    return Step::Settled(code);
                }
                self.start_or_wait(pod, i, false).await;
                Step::Active
            }
        }
    }

    fn track(&mut self, i: usize, init: bool) -> &mut Track {
        if init {
            &mut self.init[i]
        } else {
            &mut self.main[i]
        }
    }

    /// Reads the container's latest state from the runtime.
    async fn refresh(&mut self, i: usize, init: bool) {
        let runtime = self.shared.runtime.clone();
        let Some(id) = self.track(i, init).current.as_ref().filter(|c| c.running()).map(|c| c.id.clone()) else {
            return;
        };
        match runtime.status(&id).await {
            Ok(s) => {
                let t = self.track(i, init);
                if !s.running() {
                    t.ready = false;
                }
                t.current = Some(s);
            }
            Err(e) => tracing::warn!(pod = %self.key, container = %id, error = %e, "cannot read the container"),
        }
    }

    /// Starts the container's next run now, or says it waits (back-off).
    async fn start_or_wait(&mut self, pod: &Value, i: usize, init: bool) {
        let cfg = self.shared.cfg.clone();
        let now = Instant::now();
        let (uid, key) = (self.uid.clone(), self.key.clone());
        let mut backing_off = false;
        let t = self.track(i, init);
        if let Some(c) = &t.current {
            // A restart: held back 0, base, 2·base, 4·base … up to the maximum (the
            // level drops back once a run lasted twice the maximum).
            if t.restart_at.is_none() {
                let ran = run_length(c);
                if ran >= cfg.restart_backoff_max * 2 {
                    t.backoff_level = 0;
                }
                let delay = restart_delay(&cfg, t.backoff_level);
                t.restart_at = Some(now + delay);
                t.backoff_level += 1;
                backing_off = !delay.is_zero();
            }
            if let Some(at) = t.restart_at.filter(|at| *at > now) {
                let secs = at.saturating_duration_since(now).as_secs_f64().ceil() as u64;
                let (name, pod_name) = (t.name.clone(), pod["metadata"]["name"].as_str().unwrap_or_default());
                t.waiting = Some((
                    "CrashLoopBackOff".into(),
                    Some(format!(
                        "back-off {}s restarting failed container={name} pod={pod_name}_{}({})",
                        restart_delay(&cfg, t.backoff_level.saturating_sub(1)).as_secs().max(secs),
                        ns_of(pod),
                        uid
                    )),
                ));
                if backing_off {
                    let msg =
                        format!("Back-off restarting failed container {name} in pod {pod_name}_{}({uid})", ns_of(pod));
                    self.event(pod, EventType::Warning, "BackOff", &msg).await;
                }
                return;
            }
        }
        // An image that could not be had: tried again after a back-off, as Kubernetes'
        // ImagePullBackOff (base, 2·base … up to the restart maximum).
        if t.pull_at.is_some_and(|at| at > now) {
            t.waiting = Some(("ImagePullBackOff".into(), Some(pull_back_off(&t.spec))));
            return;
        }
        let attempt = t.current.as_ref().map_or(0, |c| c.attempt + 1);
        let spec = t.spec.clone();
        let name = t.name.clone();
        let built = self.container_spec(pod, &spec, attempt).await;
        let runtime = self.shared.runtime.clone();
        let started = match built {
            Ok(cs) => runtime.start(cs).await,
            Err(e) => Err(e),
        };
        let t = self.track(i, init);
        match started {
            Ok(s) => {
                (t.pull_at, t.pull_level) = (None, 0);
                if let Some(old) = t.previous.take() {
                    let _ = runtime.remove(&old.id).await;
                }
                t.previous = t.current.take();
                t.current = Some(s);
                t.waiting = None;
                t.restart_at = None;
                t.arm_probes(Instant::now());
                let msg = format!("Started container {name}");
                self.event(pod, EventType::Normal, "Started", &msg).await;
            }
            Err(RuntimeError::ImagePull(msg)) => {
                let delay = restart_delay(&cfg, t.pull_level.max(1));
                t.pull_level += 1;
                t.pull_at = Some(Instant::now() + delay);
                t.waiting = Some(("ErrImagePull".into(), Some(msg.clone())));
                tracing::info!(pod = %self.key, container = %name, message = %msg, "cannot pull the image");
                self.event(pod, EventType::Warning, "Failed", &msg).await;
                self.event(pod, EventType::Normal, "BackOff", &pull_back_off(&spec)).await;
            }
            Err(RuntimeError::CreateContainer(msg)) => {
                let reason =
                    if msg.starts_with("config: ") { "CreateContainerConfigError" } else { "CreateContainerError" };
                let msg = msg.trim_start_matches("config: ").to_string();
                if t.waiting.as_ref().map(|w| &w.0) != Some(&reason.to_string()) {
                    tracing::info!(pod = %self.key, container = %name, reason, message = %msg, "cannot start");
                }
                let t = self.track(i, init);
                t.waiting = Some((reason.into(), Some(msg.clone())));
                self.event(pod, EventType::Warning, "Failed", &format!("Error: {msg}")).await;
            }
            Err(e) => {
                tracing::warn!(pod = %key, container = %name, error = %e, "cannot start the container");
                t.waiting = Some(("ContainerCreating".into(), Some(e.to_string())));
            }
        }
    }

    /// The runtime's spec for a run of `container`: its environment resolved.
    /// The pod's own folder on the node (its volumes).
    fn pod_dir(&self) -> std::path::PathBuf {
        self.shared.cfg.root_dir.join("pods").join(&self.uid)
    }

    async fn container_spec(
        &mut self,
        pod: &Value,
        container: &Value,
        attempt: u32,
    ) -> Result<ContainerSpec, RuntimeError> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let client = &self.shared.client;
        let (cms, secrets) = Refs::wanted(container);
        let mut refs = Refs::default();
        for (names, kind, into) in [(cms, "configmaps", &mut refs.config_maps), (secrets, "secrets", &mut refs.secrets)]
        {
            for name in names {
                let got = match client.get(&format!("/api/v1/namespaces/{ns}/{kind}/{name}")).await {
                    Ok(v) => Some(v),
                    Err(e) if e.code() == Some(404) => None,
                    Err(e) => return Err(RuntimeError::Network(format!("cannot read {kind}/{name}: {e}"))),
                };
                into.insert(name, got);
            }
        }
        // The Services of the pod's namespace, from the kubelet's informer (no API call).
        let services: Vec<Value> = {
            let cache = self.shared.services.read().unwrap();
            cache.objects.values().filter(|s| s["metadata"]["namespace"] == ns).cloned().collect()
        };
        let svc_vars =
            if pod["spec"]["enableServiceLinks"] == false { Vec::new() } else { env::service_vars(&services) };
        let pod_ip = self.addr.as_ref().map(|a| a.ip.to_string()).unwrap_or_default();
        let host_ip = self.shared.network.node_ip().to_string();
        let facts = PodFacts { pod_ip: &pod_ip, host_ip: &host_ip, node: &self.shared.node };
        let vars = env::resolve(pod, container, &refs, &facts, &svc_vars)
            .map_err(|e| RuntimeError::CreateContainer(format!("config: {e}")))?;
        if self.volumes.is_none() {
            let base = self.pod_dir().join("volumes");
            let prepared = super::volumes::prepare(client, pod, &base)
                .await
                .map_err(|e| RuntimeError::CreateContainer(format!("config: {e}")))?;
            self.volumes = Some(prepared);
        }
        let mounts = super::volumes::mounts(container, self.volumes.as_ref().expect("prepared"))
            .map_err(RuntimeError::CreateContainer)?;
        let (command, args) = env::command_and_args(container, &vars);
        Ok(ContainerSpec {
            pod_uid: self.uid.clone(),
            pod: self.key.clone(),
            name: container["name"].as_str().unwrap_or_default().to_string(),
            attempt,
            image: container["image"].as_str().unwrap_or_default().to_string(),
            argv: env::argv(&command, &args),
            command,
            args,
            image_pull_policy: container["imagePullPolicy"].as_str().map(str::to_string),
            pod_ip: self.addr.as_ref().map(|a| a.ip.to_string()),
            limits: crate::cri::Limits::of(container),
            env: vars,
            working_dir: container["workingDir"].as_str().map(str::to_string),
            netns: self.addr.as_ref().and_then(|a| a.netns.clone()),
            mounts,
        })
    }

    /// Runs the container's due probes; acts on a failed liveness or startup probe.
    async fn probe(&mut self, pod: &Value, i: usize) {
        let now = Instant::now();
        let runtime = self.shared.runtime.clone();
        let pod_ip = self.addr.as_ref().map(|a| a.ip.to_string()).unwrap_or_default();
        let t = &mut self.main[i];
        let Some(id) = t.current.as_ref().map(|c| c.id.clone()) else { return };
        let mut unhealthy: Option<(String, String)> = None;
        // Startup first: until it passes, the others wait.
        if let Some(p) = t.startup.as_mut() {
            if p.verdict != Some(true) && p.due(now) {
                let r = probe::run(&p.probe, runtime.as_ref(), &id, &pod_ip).await;
                p.record(r, Instant::now());
                if p.verdict == Some(false) {
                    unhealthy = Some(("Startup".into(), p.last_failure.clone().unwrap_or_default()));
                }
            }
        }
        let startup_passed = t.startup.as_ref().is_none_or(|p| p.verdict == Some(true));
        t.started = startup_passed;
        if startup_passed && unhealthy.is_none() {
            if let Some(p) = t.liveness.as_mut().filter(|p| p.due(now)) {
                let r = probe::run(&p.probe, runtime.as_ref(), &id, &pod_ip).await;
                p.record(r, Instant::now());
                if p.verdict == Some(false) {
                    unhealthy = Some(("Liveness".into(), p.last_failure.clone().unwrap_or_default()));
                    p.reset();
                }
            }
            match t.readiness.as_mut() {
                None => t.ready = true,
                Some(p) => {
                    if p.due(now) {
                        let r = probe::run(&p.probe, runtime.as_ref(), &id, &pod_ip).await;
                        if p.record(r, Instant::now()) && p.verdict == Some(false) {
                            let msg = format!("Readiness probe failed: {}", p.last_failure.clone().unwrap_or_default());
                            let (events, pod) = (self.shared.events.clone(), pod.clone());
                            actix_rt::spawn(async move {
                                let _ = events.record(&pod, EventType::Warning, "Unhealthy", &msg).await;
                            });
                        }
                    }
                    let t = &mut self.main[i];
                    t.ready = t.readiness.as_ref().is_some_and(|p| p.verdict == Some(true));
                }
            }
        }
        if let Some((which, why)) = unhealthy {
            let name = self.main[i].name.clone();
            let msg = format!("{which} probe failed: {why}");
            self.event(pod, EventType::Warning, "Unhealthy", &msg).await;
            let msg = format!("Container {name} failed {} probe, will be restarted", which.to_lowercase());
            self.event(pod, EventType::Normal, "Killing", &msg).await;
            let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            let stopped = runtime.stop(&id, Duration::from_secs(grace)).await;
            let t = &mut self.main[i];
            t.ready = false;
            if let Ok(s) = stopped {
                t.current = Some(s);
            }
        }
    }

    /// Records an event in the background: the pod's work does not wait for it.
    async fn event(&self, pod: &Value, kind: EventType, reason: &str, message: &str) {
        let pod = crate::api::recorder::EventRecorder::reference(pod);
        let (events, reason, message, key) =
            (self.shared.events.clone(), reason.to_string(), message.to_string(), self.key.clone());
        actix_rt::spawn(async move {
            if let Err(e) = events.record(&pod, kind, &reason, &message).await {
                tracing::debug!(pod = %key, error = %e, "cannot record an event");
            }
        });
    }

    fn view(t: &Track, scheme: &str, settled: Option<i32>) -> ContainerView {
        let terminated = |c: &ContainerStatus| State::Terminated {
            exit: c.exit.clone().unwrap_or_else(|| crate::cri::Exit {
                code: 0,
                signal: None,
                reason: "Unknown".into(),
                message: None,
                finished_at: String::new(),
            }),
            started_at: c.started_at.clone(),
            id: format!("{scheme}://{}", c.id),
        };
        let state = match (&t.waiting, &t.current) {
            (Some((reason, message)), _) => State::Waiting { reason: reason.clone(), message: message.clone() },
            (None, Some(c)) if c.running() => {
                State::Running { started_at: c.started_at.clone().unwrap_or_else(rfc3339_now) }
            }
            (None, Some(c)) => terminated(c),
            (None, None) => State::Waiting { reason: "ContainerCreating".into(), message: None },
        };
        // In back-off the run that just ended is the last state; otherwise the one before.
        let last = match (&state, &t.current) {
            (State::Waiting { .. }, Some(c)) if !c.running() => Some(terminated(c)),
            _ => t.previous.as_ref().map(terminated),
        };
        ContainerView {
            name: t.name.clone(),
            image: t.spec["image"].as_str().unwrap_or_default().to_string(),
            id: t.current.as_ref().map(|c| format!("{scheme}://{}", c.id)),
            state,
            last,
            restart_count: t.restart_count(),
            ready: t.ready && t.current.as_ref().is_some_and(ContainerStatus::running),
            started: t.started && t.current.as_ref().is_some_and(ContainerStatus::running),
            settled,
        }
    }

    async fn report(&mut self, pod: &Value, init: Init, settled: &[Step]) {
        let scheme = self.shared.runtime.scheme();
        let init_views: Vec<ContainerView> = self
            .init
            .iter()
            .map(|t| {
                let done = t.current.as_ref().and_then(|c| c.exit.as_ref()).filter(|e| e.code == 0).map(|_| 0);
                let mut v = Self::view(t, scheme, done);
                v.ready = done.is_some();
                v
            })
            .collect();
        let main_views: Vec<ContainerView> = self
            .main
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let s = match settled.get(i) {
                    Some(Step::Settled(code)) => Some(*code),
                    _ => None,
                };
                Self::view(t, scheme, s)
            })
            .collect();
        let pod_ip = self.addr.as_ref().map(|a| a.ip.to_string());
        let host_ip = self.shared.network.node_ip().to_string();
        let now = rfc3339_now();
        let view = PodView {
            init,
            init_containers: &init_views,
            containers: &main_views,
            pod_ip: pod_ip.as_deref(),
            host_ip: &host_ip,
            start_time: &self.start_time,
            now: &now,
            previous: &pod["status"],
        };
        let status = status::pod_status(&view);
        if self.reported.as_ref() == Some(&status) {
            return;
        }
        let path = format!("{}/status", self.api_path());
        match self.shared.client.merge_patch(&path, &json!({"status": status})).await {
            Ok(_) => {
                if let (FirstStart::Took(network, started), "Running") =
                    (self.first_start, status["phase"].as_str().unwrap_or_default())
                {
                    let reported = self.began.elapsed();
                    tracing::debug!(pod = %self.key, ?network, ?started, ?reported, "Running, since the worker began");
                    self.first_start = FirstStart::Logged;
                }
                self.reported = Some(status)
            }
            Err(e) => tracing::debug!(pod = %self.key, error = %e, "status not written; again next pass"),
        }
    }

    /// Waits (within the grace period, 10 s at most) until no EndpointSlice offers the
    /// pod as ready: proxies stop sending it new connections before its containers
    /// get SIGTERM, so a rollout fails no request. Pods no Service selects go at once.
    async fn leave_endpoints(&self, pod: &Value, deadline: Instant) {
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()) else { return };
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let labels = &pod["metadata"]["labels"];
        let selected = self.shared.services.read().unwrap().objects.values().any(|s| {
            s["metadata"]["namespace"] == ns && crate::controllers::endpoints::selects(&s["spec"]["selector"], labels)
        });
        if !selected {
            return;
        }
        let offered = || {
            self.shared.slices.read().unwrap().objects.values().any(|s| {
                s["metadata"]["namespace"] == ns
                    && s["endpoints"].as_array().into_iter().flatten().any(|e| {
                        crate::controllers::endpoints::offered(e)
                            && e["addresses"].as_array().into_iter().flatten().any(|a| a == ip)
                    })
            })
        };
        let limit = deadline.min(Instant::now() + Duration::from_secs(10));
        let began = Instant::now();
        while offered() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every node's proxy reads the same watch; give the others a moment to catch up.
        // A proxy still offering the pod once its network is gone sends connections into a
        // black hole for its whole connect timeout, so the margin covers a busy machine's
        // watch lag (200 ms did not: a request failed during a rollout under load).
        tokio::time::sleep(PROXY_LAG.min(limit.saturating_duration_since(Instant::now()))).await;
        tracing::debug!(pod = %self.key, waited = ?began.elapsed(), "out of the Services' endpoints");
    }

    /// Stops every container (gracefully while `grace` lasts), gives the address back,
    /// and lets the API remove the pod (`pod`: still there, being deleted).
    async fn terminate(&mut self, pod: Option<&Value>, grace: Duration) {
        let deadline = Instant::now() + grace;
        if let Some(p) = pod {
            self.leave_endpoints(p, deadline).await;
        }
        let runtime = self.shared.runtime.clone();
        let mine: Vec<ContainerStatus> = runtime.list_pod(&self.uid).await.unwrap_or_default();
        let stops = mine.iter().filter(|c| c.running()).map(|c| {
            let (runtime, id, name) = (runtime.clone(), c.id.clone(), c.name.clone());
            let pre_stop = pod.and_then(|p| {
                p["spec"]["containers"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == name.as_str())
                    .map(|s| s["lifecycle"]["preStop"].clone())
            });
            let pod_ip = self.addr.as_ref().map(|a| a.ip.to_string()).unwrap_or_default();
            async move {
                if let Some(hook) = pre_stop.filter(Value::is_object) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(p) = Probe::parse(&hook, &json!({})) {
                        let p = Probe { timeout: left.max(Duration::from_secs(1)), ..p };
                        if let Err(e) = probe::run(&p, runtime.as_ref(), &id, &pod_ip).await {
                            tracing::info!(container = %id, error = %e, "preStop hook failed");
                        }
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = runtime.stop(&id, left).await {
                    tracing::warn!(container = %id, error = %e, "cannot stop the container");
                }
            }
        });
        if let Some(p) = pod {
            let names: Vec<&str> = mine.iter().filter(|c| c.running()).map(|c| c.name.as_str()).collect();
            for name in names {
                self.event(p, EventType::Normal, "Killing", &format!("Stopping container {name}")).await;
            }
        }
        futures_util::future::join_all(stops).await;
        for c in &mine {
            if let Err(e) = runtime.remove(&c.id).await {
                tracing::warn!(container = %c.id, error = %e, "cannot remove the container");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(self.pod_dir()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pod = %self.key, error = %e, "cannot remove the pod's volumes");
            }
        }
        if let Err(e) = runtime.release_pod(&self.uid).await {
            tracing::warn!(pod = %self.key, error = %e, "cannot release the pod's sandbox");
        }
        let (net, uid) = (self.shared.network.clone(), self.uid.clone());
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || net.detach(&uid)).await {
            tracing::warn!(pod = %self.key, error = %e, "cannot take the pod's network back");
        }
        if pod.is_some() {
            let path = self.api_path();
            let body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": self.uid}});
            let request = crate::api::ApiRequest::new(crate::api::Method::Delete, path)
                .body("application/json", body.to_string().into_bytes());
            match self.shared.client.call(request).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                Err(e) => tracing::warn!(pod = %self.key, error = %e, "cannot let the API remove the pod"),
            }
        }
        tracing::info!(pod = %self.key, "pod stopped");
    }
}

fn ns_of(pod: &Value) -> &str {
    pod["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// How long a run lasted (0 if unknown).
fn run_length(c: &ContainerStatus) -> Duration {
    let (Some(start), Some(end)) = (
        c.started_at.as_deref().and_then(crate::api::parse_time),
        c.exit.as_ref().and_then(|e| crate::api::parse_time(&e.finished_at)),
    ) else {
        return Duration::ZERO;
    };
    Duration::from_secs_f64((end - start).max(0.0))
}

/// Kubernetes' words for a container waiting to pull its image again.
fn pull_back_off(container: &Value) -> String {
    format!("Back-off pulling image \"{}\"", container["image"].as_str().unwrap_or_default())
}

/// How long a restart waits after `level` exits counted towards the back-off:
/// 0, base, 2·base, 4·base … up to the maximum.
fn restart_delay(cfg: &keelson_config::KubeletConfig, level: u32) -> Duration {
    match level {
        0 => Duration::ZERO,
        _ => (cfg.restart_backoff_base * 2u32.pow((level - 1).min(16))).min(cfg.restart_backoff_max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_the_maximum() {
        let cfg = keelson_config::KubeletConfig {
            heartbeat: keelson_config::HeartbeatConfig::default(),
            network: keelson_config::PodNetworkMode::Loopback,
            root_dir: "/x".into(),
            cpu: "1".into(),
            memory: "1Gi".into(),
            pods: 1,
            restart_backoff_base: Duration::from_secs(10),
            restart_backoff_max: Duration::from_secs(300),
            sync_every: Duration::from_secs(1),
            netns_pool: 0,
        };
        let secs: Vec<u64> = (0..8).map(|l| restart_delay(&cfg, l).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(restart_delay(&cfg, 1000).as_secs(), 300);
    }
}
