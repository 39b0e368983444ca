//! Join tokens in the data folder: `keelson token create|list|revoke`, and the book
//! a member's join service reads them from (`join-tokens.json`, 0600, secrets hashed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keelson_actors::transport::TokenBook;
use keelson_transport::join::{JoinToken, TokenRecord};

use crate::datadir::DataDir;

pub struct FileTokenBook {
    path: PathBuf,
}

impl FileTokenBook {
    pub fn new(data: &DataDir) -> Self {
        Self { path: data.root().join("join-tokens.json") }
    }

    fn load(&self) -> Result<Vec<TokenRecord>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    fn save(&self, records: &[TokenRecord]) -> Result<()> {
        crate::pki::write_secret(&self.path, &serde_json::to_string_pretty(records)?)
    }
}

impl TokenBook for FileTokenBook {
    fn records(&self) -> Result<Vec<TokenRecord>, String> {
        self.load().map_err(|e| format!("{e:#}"))
    }
}

pub fn create(data: &DataDir, ttl: Duration, description: &str) -> Result<JoinToken> {
    let ca = crate::pki::ca_if_present(data)?
        .context("this data folder holds no cluster CA (run `keelson up` or `keelson server` first)")?;
    let book = FileTokenBook::new(data);
    let mut records = book.load()?;
    let (token, record) = TokenRecord::create(ca.cert_der(), ttl, description);
    records.push(record);
    book.save(&records)?;
    Ok(token)
}

pub fn list(data: &DataDir) -> Result<String> {
    let records = FileTokenBook::new(data).load()?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut out = format!("{:<8}{:<10}{:<14}DESCRIPTION\n", "ID", "STATE", "EXPIRES IN");
    for r in records {
        let state = if r.revoked {
            "revoked"
        } else if r.expires_ms <= now {
            "expired"
        } else {
            "valid"
        };
        let left = r.expires_ms.saturating_sub(now) / 1000;
        let expires = if left == 0 { "-".to_string() } else { format!("{}h{:02}m", left / 3600, (left % 3600) / 60) };
        out.push_str(&format!("{:<8}{:<10}{:<14}{}\n", r.id, state, expires, r.description));
    }
    Ok(out)
}

pub fn revoke(data: &DataDir, id: &str) -> Result<()> {
    let book = FileTokenBook::new(data);
    let mut records = book.load()?;
    let Some(r) = records.iter_mut().find(|r| r.id == id) else { bail!("no token with id {id:?}") };
    r.revoked = true;
    book.save(&records)
}
