//! A client for members' admin doors (tree, events, chaos).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use keelson_actors::admin::{KillRequest, Killed, NetRequest, PingOutcome, PingRequest};
use keelson_actors::runtime::{Event, KillMode, TreeSnapshot};

use crate::datadir::DoorFile;

pub struct DoorClient {
    http: awc::Client,
    token: String,
}

impl DoorClient {
    pub fn new(token: String) -> Self {
        let http = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        Self { http, token }
    }

    pub async fn healthy(&self, door: &DoorFile) -> bool {
        let req = self.http.get(format!("{}/healthz", door.url)).timeout(Duration::from_millis(500));
        matches!(req.send().await, Ok(r) if r.status().is_success())
    }

    pub async fn tree(&self, door: &DoorFile) -> Result<TreeSnapshot> {
        let mut resp = self
            .http
            .get(format!("{}/tree", door.url))
            .send()
            .await
            .map_err(|e| anyhow!("{} ({}): {e}", door.member, door.url))?;
        let body = resp.body().limit(64 << 20).await?;
        if !resp.status().is_success() {
            bail!("{}: {} {}", door.member, resp.status(), String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body).context("the door answered something that is not a tree")
    }

    pub async fn kill(&self, door: &DoorFile, path: &str, mode: KillMode) -> Result<Killed> {
        let body = KillRequest { path: path.to_string(), mode };
        self.post(door, "/chaos/kill", &body).await.with_context(|| format!("kill {path}"))
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        door: &DoorFile,
        path: &str,
        body: &B,
    ) -> Result<R> {
        let mut resp = self
            .http
            .post(format!("{}{path}", door.url))
            .timeout(Duration::from_secs(120))
            .bearer_auth(&self.token)
            .send_json(body)
            .await
            .map_err(|e| anyhow!("{} ({}): {e}", door.member, door.url))?;
        let bytes = resp.body().limit(16 << 20).await?;
        if resp.status().is_success() {
            return serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {path}"));
        }
        let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg =
            status["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into());
        bail!("{}: {msg} ({})", door.member, resp.status())
    }

    /// A raw authenticated call; returns the status code and the JSON body (or null).
    pub async fn call(
        &self,
        door: &DoorFile,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, serde_json::Value)> {
        self.call_with(door, method, path, body, Duration::from_secs(30)).await
    }

    /// `call`, waiting up to `timeout` for the answer (for long operations).
    pub async fn call_with(
        &self,
        door: &DoorFile,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value)> {
        let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| anyhow!("{e}"))?;
        let req = self.http.request(method, format!("{}{path}", door.url)).timeout(timeout).bearer_auth(&self.token);
        let mut resp = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        }
        .map_err(|e| anyhow!("{} ({}): {e}", door.member, door.url))?;
        let bytes = resp.body().limit(64 << 20).await?;
        Ok((resp.status().as_u16(), serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    }

    /// Follows a stream of JSON lines from an authenticated GET until it ends.
    pub async fn stream_lines(
        &self,
        door: &DoorFile,
        path: &str,
        mut each: impl FnMut(serde_json::Value),
    ) -> Result<()> {
        let mut resp = self
            .http
            .get(format!("{}{path}", door.url))
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow!("{}: {e}", door.member))?;
        if !resp.status().is_success() {
            let body = resp.body().await.unwrap_or_default();
            bail!("{}: {}", resp.status(), String::from_utf8_lossy(&body));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(v) = serde_json::from_slice(&line) {
                    each(v);
                }
            }
        }
        Ok(())
    }

    pub async fn ping(&self, door: &DoorFile, req: &PingRequest) -> Result<Vec<PingOutcome>> {
        self.post(door, "/transport/ping", req).await
    }

    pub async fn net(&self, door: &DoorFile, req: &NetRequest) -> Result<serde_json::Value> {
        self.post(door, "/chaos/net", req).await
    }

    /// Calls `each` for every lifecycle event of `door` after `since` (or from now)
    /// until the stream ends; returns the number of the last event seen or bookmarked.
    pub async fn follow(
        &self,
        door: &DoorFile,
        since: Option<u64>,
        mut each: impl FnMut(Event),
    ) -> Result<Option<u64>> {
        let query = since.map(|s| format!("?since={s}")).unwrap_or_default();
        let mut stream = self
            .http
            .get(format!("{}/events{query}", door.url))
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| anyhow!("{}: {e}", door.member))?;
        let mut last = since;
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if let Ok(e) = serde_json::from_slice::<Event>(&line) {
                    last = Some(e.seq);
                    each(e);
                } else if let Some(seq) =
                    serde_json::from_slice::<serde_json::Value>(&line).ok().and_then(|v| v["bookmark"].as_u64())
                {
                    last = Some(last.map_or(seq, |l| l.max(seq)));
                } else {
                    eprintln!("{}: {}", door.member, String::from_utf8_lossy(&line).trim());
                }
            }
        }
        Ok(last)
    }
}
