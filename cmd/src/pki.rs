//! The cluster's CA and members' certificates in the data folder.
//!
//! ```text
//! keelson-data/
//!   cluster-id          names the CA (its subject repeats in every certificate it issues)
//!   ca.crt, ca.key      the cluster CA (ca.key 0600); created by the first up or server
//!   <member>/tls.crt    the member's certificate, for <member>.<role>.keelson
//!   <member>/tls.key    its key (0600)
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use keelson_transport::tls::{ClusterCa, Credentials, Identity};

use crate::datadir::DataDir;

fn write_secret(path: &Path, contents: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The cluster CA, created on first use.
pub fn ca(data: &DataDir) -> Result<ClusterCa> {
    let root = data.root();
    let (id_path, crt, key) = (root.join("cluster-id"), root.join("ca.crt"), root.join("ca.key"));
    if crt.exists() {
        let cluster = std::fs::read_to_string(&id_path).context("ca.crt without cluster-id")?;
        let ca = ClusterCa::from_pem(cluster.trim(), &std::fs::read_to_string(&crt)?, &std::fs::read_to_string(&key)?)
            .with_context(|| format!("the CA in {} is unusable", root.display()))?;
        return Ok(ca);
    }
    let cluster = format!("keelson-{}", &data.token()?[..8]);
    let ca = ClusterCa::generate(&cluster)?;
    write_secret(&key, &ca.key_pem)?;
    std::fs::write(&crt, &ca.cert_pem)?;
    std::fs::write(&id_path, &cluster)?;
    Ok(ca)
}

/// A member's credentials: read back if present and still for this identity, else issued.
pub fn credentials(data: &DataDir, ca: &ClusterCa, identity: &Identity) -> Result<Credentials> {
    let dir = data.member_dir(&identity.name)?;
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    if let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        let creds = Credentials { identity: identity.clone(), cert_pem, key_pem, ca_pem: ca.cert_pem.clone() };
        if creds.chain().first().is_some_and(|c| {
            keelson_transport::tls::certifies(c, identity) && keelson_transport::tls::chains_to(c, ca.cert_der())
        }) {
            return Ok(creds);
        }
    }
    let creds = ca.issue(identity)?;
    write_secret(&key, &creds.key_pem)?;
    std::fs::write(&crt, &creds.cert_pem)?;
    Ok(creds)
}
