//! `GET …/pods/<name>/log`: a container's log, streamed from the kubelet of the pod's
//! node over a raw transport stream (`kubelet/serve.rs`) and passed on as it comes,
//! as Kubernetes' API server proxies the kubelet's `/containerLogs`.

use actix_web::web::Bytes;
use futures_util::stream::LocalBoxStream;
use serde_json::Value;
use tokio::sync::mpsc;

use super::http::ApiState;
use super::pipeline::{param, Target};
use super::status::Failure;
use crate::cri::logs::LogOptions;
use crate::kubelet::KubeletRequest;

fn bool_param(q: &[(String, String)], name: &str) -> bool {
    param(q, name).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn int_param(q: &[(String, String)], name: &str) -> Result<Option<i64>, Failure> {
    match param(q, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Failure::bad_request(format!("{name}: Invalid value: {v:?}: must be an integer"))),
    }
}

/// The log options of the query (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`,
/// `timestamps`, `limitBytes`).
pub fn options(q: &[(String, String)]) -> Result<LogOptions, Failure> {
    let since = match (int_param(q, "sinceSeconds")?, param(q, "sinceTime")) {
        (Some(_), Some(_)) => {
            return Err(Failure::bad_request("at most one of sinceTime or sinceSeconds may be specified"))
        }
        (Some(s), None) if s < 1 => {
            return Err(Failure::bad_request("sinceSeconds: Invalid value: must be greater than 0"))
        }
        (Some(s), None) => Some(super::unix_now() - s as f64),
        (None, Some(t)) => {
            Some(super::parse_time(t).ok_or_else(|| Failure::bad_request(format!("sinceTime {t:?} is not a time")))?)
        }
        (None, None) => None,
    };
    let tail = match int_param(q, "tailLines")? {
        Some(n) if n < 0 => None,
        Some(n) => Some(n as usize),
        None => None,
    };
    Ok(LogOptions {
        follow: bool_param(q, "follow"),
        tail,
        since,
        timestamps: bool_param(q, "timestamps"),
        limit_bytes: int_param(q, "limitBytes")?.filter(|n| *n > 0).map(|n| n as u64),
    })
}

/// Which container the request is for, and its status in the pod.
pub(super) fn container<'a>(pod: &'a Value, asked: Option<&str>) -> Result<(String, &'a Value), Failure> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let (main, init) = (names("containers"), names("initContainers"));
    let chosen = match asked.filter(|c| !c.is_empty()) {
        Some(c) if main.iter().chain(&init).any(|n| n == c) => c.to_string(),
        Some(c) => return Err(Failure::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if main.len() == 1 => main[0].clone(),
        None => {
            return Err(Failure::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )))
        }
    };
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|f| pod["status"][f].as_array())
        .flatten()
        .find(|s| s["name"] == chosen.as_str())
        .unwrap_or(&Value::Null);
    Ok((chosen, status))
}

/// Streams the log the query asks for.
pub async fn logs(
    state: &ApiState,
    t: &Target,
    name: &str,
    q: &[(String, String)],
) -> Result<LocalBoxStream<'static, Bytes>, Failure> {
    let opts = options(q)?;
    let pod = state.objects.get(t.res, t.namespace.as_deref(), name).await?;
    let previous = bool_param(q, "previous");
    let (chosen, status) = container(&pod, param(q, "container"))?;
    let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_string) else {
        return Err(Failure::bad_request(format!("pod {name} does not have a host assigned")));
    };
    if previous && !status["lastState"]["terminated"].is_object() {
        return Err(Failure::bad_request(format!(
            "previous terminated container \"{chosen}\" in pod \"{name}\" not found"
        )));
    }
    if !previous {
        if let Some(reason) = status["state"]["waiting"]["reason"].as_str().filter(|_| status["restartCount"] == 0) {
            return Err(Failure::bad_request(format!(
                "container \"{chosen}\" in pod \"{name}\" is waiting to start: {reason}"
            )));
        }
        if status.is_null() {
            return Err(Failure::bad_request(format!(
                "container \"{chosen}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
    }
    let request = KubeletRequest::Logs {
        pod_uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        container: chosen,
        previous,
        opts,
    };
    let (send, mut recv) = super::kubelet::open(state, &node, &request).await?;
    // The log's bytes, read on the transport's runtime as they come.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let runtime = state.transport.as_ref().map(|t| t.runtime().clone()).expect("opened through it");
    runtime.spawn(async move {
        let _keep_open = send;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // The client gone: return, dropping our side, which tells the kubelet to stop.
            let n = tokio::select! {
                r = recv.read(&mut buf) => match r {
                    Ok(Some(n)) => n,
                    Ok(None) | Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Ok(Box::pin(stream))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_follow_the_query() {
        let o = options(&q(&[("follow", "true"), ("tailLines", "5"), ("timestamps", "true")])).unwrap();
        assert!(o.follow && o.timestamps);
        assert_eq!(o.tail, Some(5));
        assert!(options(&q(&[("sinceSeconds", "10")])).unwrap().since.is_some());
        assert_eq!(options(&q(&[("sinceSeconds", "0")])).unwrap_err().code, 400);
        assert_eq!(options(&q(&[("tailLines", "x")])).unwrap_err().code, 400);
        assert_eq!(options(&q(&[("sinceSeconds", "1"), ("sinceTime", "2026-11-29T00:00:00Z")])).unwrap_err().code, 400);
    }

    #[test]
    fn the_container_is_chosen_as_kubernetes_does() {
        let pod = json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]},
            "status": {"containerStatuses": [{"name": "b", "restartCount": 0}]}});
        assert_eq!(
            container(&pod, None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(container(&pod, Some("b")).unwrap().1["restartCount"], 0);
        assert!(container(&pod, Some("i")).is_ok());
        assert_eq!(container(&pod, Some("z")).unwrap_err().code, 400);
    }
}
