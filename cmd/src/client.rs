//! A client for members' admin doors (tree, events, chaos).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use keelson_actors::admin::{KillRequest, Killed};
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
        let mut resp = self
            .http
            .post(format!("{}/chaos/kill", door.url))
            .bearer_auth(&self.token)
            .send_json(&body)
            .await
            .map_err(|e| anyhow!("kill {path} on {}: {e}", door.member))?;
        let bytes = resp.body().await?;
        if resp.status().is_success() {
            return serde_json::from_slice(&bytes).context("unexpected answer to a kill");
        }
        let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg =
            status["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into());
        bail!("kill {path}: {} ({})", msg, resp.status())
    }

    /// Calls `each` for every lifecycle event of `door` until the stream ends.
    pub async fn follow(&self, door: &DoorFile, mut each: impl FnMut(&str, Event)) -> Result<()> {
        let resp = self
            .http
            .get(format!("{}/events", door.url))
            .timeout(Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| anyhow!("{}: {e}", door.member))?;
        let mut stream = resp;
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                match serde_json::from_slice::<Event>(&line) {
                    Ok(e) => each(&door.member, e),
                    Err(_) => eprintln!("{}: {}", door.member, String::from_utf8_lossy(&line).trim()),
                }
            }
        }
        Ok(())
    }
}
