//! `/<agent>/kubelet/node`: a real node's kubelet. It registers the Node (capacity of
//! this machine or its flags), renews its heartbeat Lease, waits for the pod CIDR the
//! control plane gives the node, sets up the pods' network, and then keeps one pod
//! worker under `/<agent>/kubelet/pod` for each pod bound here. It also answers the
//! API gateway's log and exec streams (`serve.rs`), and clears away containers and
//! addresses whose pods are gone (after a restart, say).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::AsyncContext;
use keelson_config::{Cidr, KubeletConfig};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::node::{self, is_ready, ready_condition};
use super::pod::{PodChanged, PodWorker};
use crate::api::informer::{Cache, Change, Informer};
use crate::api::{rfc3339_now, ApiClient, EventRecorder};
use crate::cri::{ContainerRuntime, PodNetwork};
use crate::runtime::{Actor, ChildContext, ChildSpec, Ctx, Handler, Ref, Restart, StartChild, StopChild, Supervisor};
use crate::transport::Delivered;

/// What a node's pod workers share.
pub struct NodeShared {
    pub node: String,
    pub client: ApiClient,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub network: Arc<PodNetwork>,
    pub cfg: Arc<KubeletConfig>,
    /// The pods bound to this node, as the kubelet's informer has them.
    pub pods: Arc<RwLock<Cache>>,
    /// Every Service (for containers' service variables), as Kubernetes' kubelet keeps them.
    pub services: Arc<RwLock<Cache>>,
    /// Every EndpointSlice: a pod being deleted waits to leave them before its SIGTERM.
    pub slices: Arc<RwLock<Cache>>,
    pub events: EventRecorder,
}

pub struct Kubelet {
    node: String,
    client: ApiClient,
    runtime: Arc<dyn ContainerRuntime>,
    cfg: Arc<KubeletConfig>,
    /// `/<agent>/kubelet/pod`, where the pod workers live.
    workers: Ref<Supervisor>,
}

impl Kubelet {
    pub fn new(
        cx: &ChildContext,
        client: ApiClient,
        runtime: Arc<dyn ContainerRuntime>,
        cfg: Arc<KubeletConfig>,
        workers: Ref<Supervisor>,
    ) -> Self {
        Self { node: cx.path.member().to_string(), client, runtime, cfg, workers }
    }
}

fn node_object(name: &str, cfg: &KubeletConfig, runtime: &str) -> Value {
    let capacity = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string()});
    let arch = std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": arch}},
        "spec": {},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                            "message": "the pod network is not set up yet (waiting for the node's pod CIDR)",
                            "lastHeartbeatTime": rfc3339_now(), "lastTransitionTime": rfc3339_now()}],
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": node::node_info(name, runtime),
        }
    })
}

/// Registers the node and waits until the control plane has given it a pod CIDR.
async fn register(client: &ApiClient, name: &str, cfg: &KubeletConfig, runtime: &str) -> Cidr {
    let object = node_object(name, cfg, runtime);
    loop {
        match node::register(client, &object).await {
            Ok(()) => break,
            Err(e) => tracing::info!(error = %e, "cannot register the node yet"),
        }
        actix_rt::time::sleep(Duration::from_millis(500)).await;
    }
    let _first_beat = node::renew(client, name, cfg.heartbeat).await;
    let mut said = false;
    loop {
        if let Ok(n) = client.get(&format!("/api/v1/nodes/{name}")).await {
            if let Some(cidr) = n["spec"]["podCIDR"].as_str().and_then(|c| c.parse::<Cidr>().ok()) {
                return cidr;
            }
        }
        if !said {
            tracing::info!("registered; waiting for the node's pod CIDR");
            said = true;
        }
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Posts the node ready with its addresses.
async fn post_ready(
    client: &ApiClient,
    name: &str,
    network: &PodNetwork,
    runtime: &dyn ContainerRuntime,
) -> Result<(), crate::api::ApiError> {
    let now = rfc3339_now();
    let limits = node::limits_condition(&now, runtime.limits_unavailable().as_deref());
    let status = json!({"status": {
        "conditions": [ready_condition(&now, "kubelet is posting ready status"), limits],
        "addresses": [{"type": "InternalIP", "address": network.node_ip().to_string()},
                      {"type": "Hostname", "address": name}],
    }});
    client.merge_patch(&format!("/api/v1/nodes/{name}/status"), &status).await.map(drop)
}

impl Actor for Kubelet {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let (name, client, runtime, cfg, workers) =
            (self.node.clone(), self.client.clone(), self.runtime.clone(), self.cfg.clone(), self.workers.clone());
        ctx.spawn(actix::fut::wrap_future(async move {
            let cidr = register(&client, &name, &cfg, &runtime.version()).await;
            let network = Arc::new(PodNetwork::new(cfg.network, &name, cidr, cfg.root_dir.join("addresses")));
            loop {
                let net = network.clone();
                match tokio::task::spawn_blocking(move || net.setup()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot set up the pod network; again in 5 s"),
                    Err(e) => tracing::error!(error = %e, "pod network set-up failed; again in 5 s"),
                }
                actix_rt::time::sleep(Duration::from_secs(5)).await;
            }
            while let Err(e) = runtime.node_network(cidr, network.node_ip()).await {
                tracing::error!(error = %e, "the runtime cannot make the node's network; again in 5 s");
                actix_rt::time::sleep(Duration::from_secs(5)).await;
            }
            tracing::info!(cidr = %cidr, node_ip = %network.node_ip(), mode = ?cfg.network, "pod network ready");
            while let Err(e) = post_ready(&client, &name, &network, &*runtime).await {
                tracing::info!(error = %e, "cannot post the node ready yet");
                actix_rt::time::sleep(Duration::from_millis(500)).await;
            }
            actix_rt::spawn(heartbeat(client.clone(), name.clone(), cfg.clone(), network.clone(), runtime.clone()));
            actix_rt::spawn(keep_pool(network.clone(), cfg.netns_pool.min(cfg.pods as usize)));
            let pods =
                Informer::new(client.clone(), "/api/v1/pods", &[("fieldSelector", &format!("spec.nodeName={name}"))]);
            let services = Informer::new(client.clone(), "/api/v1/services", &[]);
            let services_cache = services.cache();
            let (stx, mut srx) = mpsc::channel(1024);
            actix_rt::spawn(services.run(stx));
            actix_rt::spawn(async move { while srx.recv().await.is_some() {} });
            let slices = Informer::new(client.clone(), "/apis/discovery.k8s.io/v1/endpointslices", &[]);
            let slices_cache = slices.cache();
            let (etx, mut erx) = mpsc::channel(1024);
            actix_rt::spawn(slices.run(etx));
            actix_rt::spawn(async move { while erx.recv().await.is_some() {} });
            let shared = Arc::new(NodeShared {
                services: services_cache,
                slices: slices_cache,
                node: name.clone(),
                // The workers read objects (GETs) and write without reading the answer.
                client: client.clone().quiet(),
                runtime,
                network,
                cfg,
                pods: pods.cache(),
                events: EventRecorder::new(client.clone(), "kubelet", &name),
            });
            let (tx, rx) = mpsc::channel(1024);
            actix_rt::spawn(pods.run(tx));
            keep_workers(shared, workers, rx).await;
        }));
    }
}

/// Renews the Lease; re-posts Ready every 10 s, and at once if the node was marked lost.
async fn heartbeat(
    client: ApiClient,
    name: String,
    cfg: Arc<KubeletConfig>,
    network: Arc<PodNetwork>,
    runtime: Arc<dyn ContainerRuntime>,
) {
    let mut last_post = tokio::time::Instant::now();
    loop {
        actix_rt::time::sleep(cfg.heartbeat.renew).await;
        if let Err(e) = node::renew(&client, &name, cfg.heartbeat).await {
            tracing::debug!(error = %e, "heartbeat failed");
            continue;
        }
        let stale = last_post.elapsed() >= Duration::from_secs(10);
        let lost = match client.get(&format!("/api/v1/nodes/{name}")).await {
            Ok(n) => !is_ready(&n),
            Err(_) => false,
        };
        if stale || lost {
            if lost {
                tracing::info!("the node was marked not ready; posting ready again");
            }
            if post_ready(&client, &name, &network, &*runtime).await.is_ok() {
                last_post = tokio::time::Instant::now();
            }
        }
    }
}

/// One worker per pod bound here: started when the pod appears, told when it changes,
/// forgotten once it has ended; and containers or addresses of pods that are gone
/// (left by an earlier run of the agent) are removed.
async fn keep_workers(shared: Arc<NodeShared>, workers: Ref<Supervisor>, mut changes: mpsc::Receiver<Change>) {
    let mut running: HashMap<String, (String, Ref<PodWorker>)> = HashMap::new();
    let mut swept = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let change = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await;
        match change {
            Ok(None) => return,
            Ok(Some(Change::Upserted(key) | Change::Deleted(key, _))) => {
                if let Some((_, w)) = running.get(&key) {
                    let _ = w.tell(PodChanged);
                }
            }
            Err(_idle) => {}
        }
        // Containers get Services' variables: start none before the Services are listed.
        if shared.pods.read().unwrap().lists == 0 || shared.services.read().unwrap().lists == 0 {
            continue;
        }
        // Workers that ended are forgotten; pods without one get one.
        let ended: Vec<String> =
            running.iter().filter(|(_, (_, w))| w.incarnation().is_none()).map(|(k, _)| k.clone()).collect();
        for key in ended {
            running.remove(&key);
            let _ = workers.send(StopChild { name: key }).await;
        }
        let pods: Vec<(String, String)> = shared
            .pods
            .read()
            .unwrap()
            .objects
            .iter()
            .map(|(k, p)| (k.clone(), p["metadata"]["uid"].as_str().unwrap_or_default().to_string()))
            .collect();
        for (key, uid) in &pods {
            if running.contains_key(key) {
                continue;
            }
            let (k, u, s) = (key.clone(), uid.clone(), shared.clone());
            let (spec, worker) =
                ChildSpec::new(key, Restart::Transient, move |_| PodWorker::new(k.clone(), u.clone(), s.clone()));
            match workers.send(StartChild(spec)).await {
                Ok(Ok(_)) => {
                    running.insert(key.clone(), (uid.clone(), worker));
                }
                Ok(Err(e)) => tracing::debug!(pod = %key, error = %e, "pod worker not started yet"),
                Err(e) => tracing::warn!(pod = %key, error = %e, "cannot reach the pod workers' supervisor"),
            }
        }
        if swept.elapsed() >= Duration::from_secs(10) {
            swept = tokio::time::Instant::now();
            let live: HashSet<String> = pods.into_iter().map(|(_, uid)| uid).collect();
            sweep_orphans(&shared, &live).await;
        }
    }
}

/// Stops and removes containers, and frees addresses, of pods not bound here any more.
async fn sweep_orphans(shared: &NodeShared, live: &HashSet<String>) {
    let Ok(all) = shared.runtime.list().await else { return };
    for c in all.into_iter().filter(|c| !live.contains(&c.pod_uid)) {
        tracing::info!(container = %c.id, "removing the container of a pod that is gone");
        if c.running() {
            let _ = shared.runtime.stop(&c.id, Duration::from_secs(2)).await;
        }
        let _ = shared.runtime.remove(&c.id).await;
    }
    // Volumes of pods that are gone.
    if let Ok(dirs) = std::fs::read_dir(shared.cfg.root_dir.join("pods")) {
        for d in dirs.filter_map(|d| d.ok()) {
            if !live.contains(d.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    let gone: Vec<String> = shared.network.attached().into_iter().filter(|u| !live.contains(u)).collect();
    for uid in &gone {
        if let Err(e) = shared.runtime.release_pod(uid).await {
            tracing::warn!(pod_uid = %uid, error = %e, "cannot release a gone pod's sandbox");
        }
    }
    let net = shared.network.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for uid in gone {
            if let Err(e) = net.detach(&uid) {
                tracing::warn!(pod_uid = %uid, error = %e, "cannot free a gone pod's address");
            }
        }
    })
    .await;
}

impl Handler<Delivered> for Kubelet {
    type Result = ();

    fn handle(&mut self, Delivered(inbound): Delivered, _: &mut Ctx<Self>) {
        actix_rt::spawn(super::serve::serve(self.runtime.clone(), inbound));
    }
}

/// Keeps `target` pod network namespaces made ahead, filling the pool again only after
/// a second without a pod start (making them meanwhile would queue the starting pods
/// behind them on the kernel's routing lock).
async fn keep_pool(network: Arc<PodNetwork>, target: usize) {
    const QUIET: Duration = Duration::from_secs(1);
    if network.mode != keelson_config::PodNetworkMode::Netns || target == 0 {
        return;
    }
    let mut failing = false;
    loop {
        let net = network.clone();
        match tokio::task::spawn_blocking(move || net.refill(target, QUIET)).await {
            Ok(Ok(made)) => {
                if made > 0 {
                    tracing::debug!(made, ready = network.pooled_count(), "pod network pool refilled");
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, "cannot make pod networks ahead; pods will make their own");
                failing = true;
            }
            _ => {}
        }
        actix_rt::time::sleep(QUIET).await;
    }
}

/// Stops every container this node runs and takes its network down: the agent is
/// stopping for good (Ctrl-C on `keelson up`), and leaves nothing behind. Blocking.
pub fn stop_everything(runtime: &dyn ContainerRuntime, cfg: &KubeletConfig, node: &str, grace: Duration) {
    // The pods' addresses (and namespaces, bridge): whatever CIDR they were made with.
    let any: Cidr = "0.0.0.0/0".parse().expect("a block");
    let net = PodNetwork::new(cfg.network, node, any, cfg.root_dir.join("addresses"));
    let attached = net.attached();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let all = runtime.list().await.unwrap_or_default();
        let stops = all.iter().filter(|c| c.running()).map(|c| runtime.stop(&c.id, grace));
        futures_util::future::join_all(stops).await;
        for c in &all {
            let _ = runtime.remove(&c.id).await;
        }
        for uid in &attached {
            let _ = runtime.release_pod(uid).await;
        }
        if let Err(e) = runtime.teardown().await {
            tracing::warn!(error = %e, "cannot take the runtime's node network down");
        }
    });
    runtime.tidy();
    let _ = std::fs::remove_dir_all(cfg.root_dir.join("pods"));
    net.teardown();
    crate::cri::volatile::remove(&cfg.root_dir, &crate::cri::volatile::KUBELET);
}
