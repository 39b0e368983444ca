//! A pod's status as the kubelet reports it, from what its worker knows of each
//! container: phase, conditions, `initContainerStatuses`, `containerStatuses` (state,
//! lastState, restartCount, ready, started), addresses and start time.

use serde_json::{json, Map, Value};

use crate::cri::Exit;

/// A container's state (Kubernetes' `ContainerState`).
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated { exit: Exit, started_at: Option<String>, id: String },
}

/// What a pod worker knows of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    /// The runtime's id of its latest run (`process://…`).
    pub id: Option<String>,
    pub state: State,
    /// How its run before this one ended.
    pub last: Option<State>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
    /// Ended for good (it will not run again): its exit code.
    pub settled: Option<i32>,
}

/// Where the pod's init containers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Done,
    Running,
    /// One failed and the pod's restartPolicy is Never.
    Failed,
}

pub struct PodView<'a> {
    pub init: Init,
    pub init_containers: &'a [ContainerView],
    pub containers: &'a [ContainerView],
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
    pub start_time: &'a str,
    /// When the readiness last changed, for the conditions' `lastTransitionTime`.
    pub now: &'a str,
    /// The pod's last reported conditions (their transition times are kept).
    pub previous: &'a Value,
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = m.clone().into();
            }
            json!({"waiting": w})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated { exit, started_at, id } => {
            let mut t = json!({"exitCode": exit.code, "reason": exit.reason, "finishedAt": exit.finished_at,
                               "containerID": id});
            if let Some(s) = started_at {
                t["startedAt"] = s.clone().into();
            }
            if let Some(sig) = exit.signal {
                t["signal"] = sig.into();
            }
            if let Some(m) = &exit.message {
                t["message"] = m.clone().into();
            }
            json!({"terminated": t})
        }
    }
}

fn container_json(c: &ContainerView) -> Value {
    let mut v = json!({
        "name": c.name, "image": c.image, "imageID": "", "ready": c.ready, "started": c.started,
        "restartCount": c.restart_count, "state": state_json(&c.state),
        "lastState": c.last.as_ref().map_or(json!({}), state_json),
    });
    if let Some(id) = &c.id {
        v["containerID"] = id.clone().into();
    }
    v
}

/// The pod's phase from its containers.
pub fn phase(init: Init, containers: &[ContainerView]) -> &'static str {
    match init {
        Init::Failed => return "Failed",
        Init::Running => return "Pending",
        Init::Done => {}
    }
    if !containers.is_empty() && containers.iter().all(|c| c.settled.is_some()) {
        return if containers.iter().all(|c| c.settled == Some(0)) { "Succeeded" } else { "Failed" };
    }
    let has_run =
        |c: &ContainerView| matches!(c.state, State::Running { .. } | State::Terminated { .. }) || c.restart_count > 0;
    if containers.iter().any(has_run) {
        "Running"
    } else {
        "Pending"
    }
}

/// A condition, keeping its transition time while its status is unchanged.
fn condition(kind: &str, ok: bool, view: &PodView<'_>, reason: Option<&str>) -> Value {
    let status = if ok { "True" } else { "False" };
    let before = view.previous["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let since = before
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(view.now)
        .to_string();
    let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let (false, Some(r)) = (ok, reason) {
        c["reason"] = r.into();
    }
    c
}

/// The pod's `status`.
pub fn pod_status(view: &PodView<'_>) -> Value {
    let phase = phase(view.init, view.containers);
    let initialized = view.init == Init::Done;
    let ready = initialized && !view.containers.is_empty() && view.containers.iter().all(|c| c.ready);
    let not_ready = if initialized { "ContainersNotReady" } else { "PodInitializing" };
    let completed = matches!(phase, "Succeeded" | "Failed");
    let conditions = vec![
        condition("Initialized", initialized, view, Some("ContainersNotInitialized")),
        condition("Ready", ready, view, Some(if completed { "PodCompleted" } else { not_ready })),
        condition("ContainersReady", ready, view, Some(if completed { "PodCompleted" } else { not_ready })),
        condition("PodScheduled", true, view, None),
    ];
    let mut status = Map::new();
    status.insert("phase".into(), phase.into());
    status.insert("conditions".into(), conditions.into());
    status.insert("hostIP".into(), view.host_ip.into());
    status.insert("hostIPs".into(), json!([{"ip": view.host_ip}]));
    if let Some(ip) = view.pod_ip {
        status.insert("podIP".into(), ip.into());
        status.insert("podIPs".into(), json!([{"ip": ip}]));
    }
    status.insert("startTime".into(), view.start_time.into());
    if !view.init_containers.is_empty() {
        status.insert("initContainerStatuses".into(), view.init_containers.iter().map(container_json).collect());
    }
    status.insert("containerStatuses".into(), view.containers.iter().map(container_json).collect());
    status.insert("qosClass".into(), view.previous["qosClass"].as_str().unwrap_or("BestEffort").into());
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> Exit {
        Exit { code, signal: None, reason: "Error".into(), message: None, finished_at: "t1".into() }
    }

    fn view(name: &str, state: State, settled: Option<i32>) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "img".into(),
            id: Some("process://x".into()),
            state,
            last: None,
            restart_count: 0,
            ready: false,
            started: false,
            settled,
        }
    }

    fn running() -> State {
        State::Running { started_at: "t0".into() }
    }

    fn ended(code: i32) -> State {
        State::Terminated { exit: exit(code), started_at: Some("t0".into()), id: "process://x".into() }
    }

    #[test]
    fn phases_follow_the_containers() {
        let waiting = State::Waiting { reason: "ContainerCreating".into(), message: None };
        assert_eq!(phase(Init::Done, &[view("a", waiting.clone(), None)]), "Pending");
        assert_eq!(phase(Init::Running, &[view("a", running(), None)]), "Pending");
        assert_eq!(phase(Init::Failed, &[view("a", waiting.clone(), None)]), "Failed");
        assert_eq!(phase(Init::Done, &[view("a", running(), None), view("b", waiting.clone(), None)]), "Running");
        let mut crashing = view("a", State::Waiting { reason: "CrashLoopBackOff".into(), message: None }, None);
        crashing.restart_count = 3;
        assert_eq!(phase(Init::Done, &[crashing]), "Running", "a restarting container keeps the pod Running");
        assert_eq!(phase(Init::Done, &[view("a", ended(0), Some(0)), view("b", ended(0), Some(0))]), "Succeeded");
        assert_eq!(phase(Init::Done, &[view("a", ended(0), Some(0)), view("b", ended(2), Some(2))]), "Failed");
        assert_eq!(phase(Init::Done, &[view("a", ended(0), Some(0)), view("b", running(), None)]), "Running");
    }

    #[test]
    fn status_has_kubernetes_shape() {
        let mut c = view("web", running(), None);
        c.ready = true;
        c.started = true;
        c.restart_count = 1;
        c.last = Some(ended(137));
        let previous = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "early"}]});
        let v = PodView {
            init: Init::Done,
            init_containers: &[],
            containers: &[c],
            pod_ip: Some("10.244.1.2"),
            host_ip: "10.244.1.1",
            start_time: "t0",
            now: "now",
            previous: &previous,
        };
        let s = pod_status(&v);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.1.2");
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["state"]["running"]["startedAt"], "t0");
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(cs["restartCount"], 1);
        let cond = |t: &str| s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(cond("Ready")["status"], "True");
        assert_eq!(cond("Ready")["lastTransitionTime"], "early", "unchanged conditions keep their time");
        assert_eq!(cond("Initialized")["lastTransitionTime"], "now");
        assert!(s.get("initContainerStatuses").is_none());
    }
}
