//! What the kubelet serves the API gateway on a raw transport stream opened to
//! `/<node>/kubelet`: a container's log (`kubectl logs`), and later exec sessions.
//!
//! The request rides in the stream's opening envelope ([`KubeletRequest`], bincode);
//! the answer is one JSON header line (`{"code":200}` or `{"code":404,"message":…}`)
//! and then the raw bytes of the log, until it ends (or, when following, until the
//! container ends or the caller goes away).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelson_transport::{Inbound, Reply};
use serde::{Deserialize, Serialize};

use crate::cri::logs::{self, LogOptions};
use crate::cri::{ContainerRuntime, ContainerStatus};

/// The path segment the kubelet answers on: `/<node>/kubelet`.
pub const KUBELET_PATH: &str = "kubelet";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum KubeletRequest {
    /// The log of a run of `container` of the pod `pod_uid`: its latest, or the one
    /// before (`previous`).
    Logs { pod_uid: String, container: String, previous: bool, opts: LogOptions },
    /// Runs `command` beside the latest run of `container` (it must be running); the
    /// streams then follow in `exec.rs`' channels.
    Exec { pod_uid: String, container: String, command: Vec<String>, stdin: bool, tty: bool },
}

/// The header line before the answer's bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The run of `container` asked for, or why there is none.
fn pick(all: Vec<ContainerStatus>, pod_uid: &str, container: &str, previous: bool) -> Result<ContainerStatus, Header> {
    let mut runs: Vec<ContainerStatus> =
        all.into_iter().filter(|c| c.pod_uid == pod_uid && c.name == container).collect();
    runs.sort_by_key(|c| c.attempt);
    let latest = runs.pop();
    let chosen = if previous { runs.pop() } else { latest };
    chosen.ok_or_else(|| Header {
        code: 400,
        message: Some(if previous {
            format!("previous terminated container \"{container}\" in pod not found")
        } else {
            format!("container \"{container}\" has not started on this node")
        }),
    })
}

/// The run a request is about, or why it cannot be served.
async fn run_for(runtime: &dyn ContainerRuntime, request: &KubeletRequest) -> Result<ContainerStatus, Header> {
    match request {
        KubeletRequest::Exec { pod_uid, container, .. } => {
            let all = runtime.list_pod(pod_uid).await.unwrap_or_default();
            pick(all, pod_uid, container, false).and_then(|r| match r.running() {
                true => Ok(r),
                false => Err(Header { code: 400, message: Some(format!("container {container} is not running")) }),
            })
        }
        KubeletRequest::Logs { pod_uid, container, previous, .. } => {
            let all = runtime.list_pod(pod_uid).await.unwrap_or_default();
            pick(all, pod_uid, container, *previous)
        }
    }
}

pub async fn serve(runtime: Arc<dyn ContainerRuntime>, inbound: Inbound) {
    let Reply::Open { mut send, recv } = inbound.reply else { return };
    let request = keelson_transport::frame::from_payload::<KubeletRequest>(&inbound.envelope.payload)
        .map_err(|e| Header { code: 400, message: Some(format!("not a kubelet request: {e}")) });
    let run = match request {
        Ok(request) => run_for(runtime.as_ref(), &request).await.map(|run| (request, run)),
        Err(h) => Err(h),
    };
    // The header line: the refusal (and the end), or 200 and the answer after it.
    let (request, run) = match run {
        Ok(r) => r,
        Err(h) => {
            let _ = send.write_all(&header_line(&h)).await;
            let _ = send.finish();
            return;
        }
    };
    if send.write_all(&header_line(&Header { code: 200, message: None })).await.is_err() {
        return;
    }
    match request {
        KubeletRequest::Exec { command, stdin, tty, .. } => {
            super::exec::session(runtime, &run.id, command, stdin, tty, send, recv).await;
        }
        KubeletRequest::Logs { opts, .. } => {
            // Following ends once the run has ended (checked beside the copy).
            let ended = Arc::new(AtomicBool::new(!run.running()));
            let watcher = {
                let (ended, runtime, id) = (ended.clone(), runtime.clone(), run.id.clone());
                actix_rt::spawn(async move {
                    while !ended.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if runtime.status(&id).await.map_or(true, |s| !s.running()) {
                            ended.store(true, Ordering::SeqCst);
                        }
                    }
                })
            };
            let path = runtime.log_path(&run.id);
            // The gateway closes its side when its client goes away: stop following then.
            let mut recv = recv;
            let mut probe = [0u8; 1];
            let copied = tokio::select! {
                r = logs::copy(&path, &opts, || ended.load(Ordering::SeqCst), &mut send) => r,
                _ = recv.read(&mut probe) => Ok(()),
            };
            if let Err(e) = copied {
                tracing::debug!(container = %run.id, error = %e, "log stream ended early");
            }
            ended.store(true, Ordering::SeqCst);
            watcher.abort();
            let _ = send.finish();
        }
    }
}

fn header_line(h: &Header) -> Vec<u8> {
    let mut line = serde_json::to_vec(h).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(uid: &str, name: &str, attempt: u32) -> ContainerStatus {
        ContainerStatus {
            id: format!("{uid}.{name}.{attempt}"),
            pod_uid: uid.into(),
            name: name.into(),
            attempt,
            image: String::new(),
            started_at: None,
            pid: None,
            exit: None,
        }
    }

    #[test]
    fn picks_the_latest_or_the_previous_run() {
        let all = || vec![run("u", "web", 0), run("u", "web", 2), run("u", "web", 1), run("v", "web", 5)];
        assert_eq!(pick(all(), "u", "web", false).unwrap().attempt, 2);
        assert_eq!(pick(all(), "u", "web", true).unwrap().attempt, 1);
        assert_eq!(pick(vec![run("u", "web", 0)], "u", "web", true).unwrap_err().code, 400);
        assert!(pick(all(), "u", "db", false).is_err());
    }
}
