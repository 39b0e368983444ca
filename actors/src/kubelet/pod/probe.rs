//! Liveness, readiness and startup probes: exec (through the runtime, beside the
//! container), httpGet and tcpSocket (to the pod's address), with Kubernetes' timing
//! fields and thresholds.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::cri::ContainerRuntime;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http { host: Option<String>, port: u16, path: String, headers: Vec<(String, String)> },
    Tcp { host: Option<String>, port: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A port by number, or by the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = v.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    container["ports"].as_array()?.iter().find(|p| p["name"] == name)?["containerPort"].as_u64()?.try_into().ok()
}

fn secs(v: &Value, default: u64) -> Duration {
    Duration::from_secs(v.as_u64().unwrap_or(default))
}

impl Probe {
    /// The probe `spec` of `container`; `Err` for one that names nothing to do.
    pub fn parse(spec: &Value, container: &Value) -> Result<Self, String> {
        let action = if let Some(cmd) = spec["exec"]["command"].as_array() {
            Action::Exec(cmd.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        } else if spec["httpGet"].is_object() {
            let h = &spec["httpGet"];
            Action::Http {
                host: h["host"].as_str().map(str::to_string),
                port: port(&h["port"], container).ok_or("httpGet: no such port")?,
                path: h["path"].as_str().unwrap_or("/").to_string(),
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| Some((x["name"].as_str()?.to_string(), x["value"].as_str()?.to_string())))
                    .collect(),
            }
        } else if spec["tcpSocket"].is_object() {
            let t = &spec["tcpSocket"];
            Action::Tcp {
                host: t["host"].as_str().map(str::to_string),
                port: port(&t["port"], container).ok_or("tcpSocket: no such port")?,
            }
        } else {
            return Err("a probe needs exec, httpGet or tcpSocket".into());
        };
        Ok(Self {
            action,
            initial_delay: secs(&spec["initialDelaySeconds"], 0),
            period: secs(&spec["periodSeconds"], 10).max(Duration::from_secs(1)),
            timeout: secs(&spec["timeoutSeconds"], 1).max(Duration::from_secs(1)),
            success_threshold: spec["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            failure_threshold: spec["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        })
    }
}

/// One probe of one run of a container: when it is due, and its verdict so far.
#[derive(Debug, Clone)]
pub struct Prober {
    pub probe: Probe,
    pub next: Instant,
    successes: u32,
    failures: u32,
    /// `Some(true)` after `success_threshold` successes in a row, `Some(false)` after
    /// `failure_threshold` failures in a row; `None` before either.
    pub verdict: Option<bool>,
    /// What the last failure said (for events and messages).
    pub last_failure: Option<String>,
}

impl Prober {
    pub fn new(probe: Probe, started: Instant) -> Self {
        let next = started + probe.initial_delay;
        Self { probe, next, successes: 0, failures: 0, verdict: None, last_failure: None }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Counts one result; true when the verdict changed.
    pub fn record(&mut self, result: Result<(), String>, now: Instant) -> bool {
        self.next = now + self.probe.period;
        let before = self.verdict;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= self.probe.success_threshold {
                    self.verdict = Some(true);
                }
            }
            Err(why) => {
                self.successes = 0;
                self.failures += 1;
                self.last_failure = Some(why);
                if self.failures >= self.probe.failure_threshold {
                    self.verdict = Some(false);
                }
            }
        }
        before != self.verdict
    }

    /// Starts counting afresh (a liveness failure acted on).
    pub fn reset(&mut self) {
        self.successes = 0;
        self.failures = 0;
        self.verdict = None;
    }
}

/// Runs `probe` once against the container `id` of a pod at `pod_ip`.
pub async fn run(probe: &Probe, runtime: &dyn ContainerRuntime, id: &str, pod_ip: &str) -> Result<(), String> {
    match &probe.action {
        Action::Exec(argv) => match runtime.exec(id, argv.clone(), probe.timeout).await {
            Ok(out) => match out.code {
                Some(0) => Ok(()),
                Some(code) => {
                    Err(format!("command {argv:?} exited with {code}: {}", String::from_utf8_lossy(&out.output).trim()))
                }
                None => Err(format!("command {argv:?} timed out after {:?}", probe.timeout)),
            },
            Err(e) => Err(format!("command {argv:?}: {e}")),
        },
        Action::Tcp { host, port } => {
            let addr = format!("{}:{port}", host.as_deref().unwrap_or(pod_ip));
            match tokio::time::timeout(probe.timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: timed out")),
            }
        }
        Action::Http { host, port, path, headers } => {
            let addr = format!("{}:{port}", host.as_deref().unwrap_or(pod_ip));
            let get = async {
                let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                let mut req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.{}\r\nAccept: */*\r\nConnection: close\r\n",
                    crate::api::MINOR
                );
                for (k, v) in headers {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str("\r\n");
                s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
                // Read the answer to its end (up to 10 KiB, as Kubernetes does) so the
                // server is not left writing to a closed connection.
                let mut answer = Vec::with_capacity(1024);
                let _ = (&mut s).take(10 * 1024).read_to_end(&mut answer).await;
                let line = String::from_utf8_lossy(&answer[..answer.len().min(64)]);
                let code: u16 =
                    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not an HTTP response")?;
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            };
            match tokio::time::timeout(probe.timeout, get).await {
                Ok(r) => r.map_err(|e: String| format!("Get \"http://{addr}{path}\": {e}")),
                Err(_) => Err(format!("Get \"http://{addr}{path}\": timed out after {:?}", probe.timeout)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn probes_parse_with_kubernetes_defaults_and_named_ports() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        let p =
            Probe::parse(&json!({"httpGet": {"port": "http", "path": "/healthz"}, "periodSeconds": 2}), &c).unwrap();
        assert_eq!(p.action, Action::Http { host: None, port: 8080, path: "/healthz".into(), headers: vec![] });
        assert_eq!((p.period, p.timeout, p.failure_threshold), (Duration::from_secs(2), Duration::from_secs(1), 3));
        assert!(Probe::parse(&json!({"tcpSocket": {"port": "nope"}}), &c).is_err());
        assert!(Probe::parse(&json!({}), &c).is_err());
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let p = Probe::parse(
            &json!({"exec": {"command": ["true"]}, "failureThreshold": 2, "successThreshold": 2}),
            &json!({}),
        )
        .unwrap();
        let t = Instant::now();
        let mut pr = Prober::new(p, t);
        assert!(pr.due(t));
        assert!(!pr.record(Ok(()), t));
        assert!(pr.record(Ok(()), t), "two successes make it pass");
        assert_eq!(pr.verdict, Some(true));
        assert!(!pr.record(Err("x".into()), t));
        assert!(pr.record(Err("y".into()), t));
        assert_eq!((pr.verdict, pr.last_failure.as_deref()), (Some(false), Some("y")));
        assert!(!pr.due(t), "next run a period later");
    }
}
