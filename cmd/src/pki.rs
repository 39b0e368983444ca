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

pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
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

/// The cluster CA, if this data folder holds it (with its key).
pub fn ca_if_present(data: &DataDir) -> Result<Option<ClusterCa>> {
    let root = data.root();
    let (id_path, crt, key) = (root.join("cluster-id"), root.join("ca.crt"), root.join("ca.key"));
    if !crt.exists() || !key.exists() {
        return Ok(None);
    }
    let cluster = std::fs::read_to_string(&id_path).context("ca.crt without cluster-id")?;
    let ca = ClusterCa::from_pem(cluster.trim(), &std::fs::read_to_string(&crt)?, &std::fs::read_to_string(&key)?)
        .with_context(|| format!("the CA in {} is unusable", root.display()))?;
    Ok(Some(ca))
}

/// The cluster CA, created on first use.
pub fn ca(data: &DataDir) -> Result<ClusterCa> {
    if let Some(ca) = ca_if_present(data)? {
        return Ok(ca);
    }
    let root = data.root();
    let (id_path, crt, key) = (root.join("cluster-id"), root.join("ca.crt"), root.join("ca.key"));
    let cluster = format!("keelson-{}", &data.token()?[..8]);
    let ca = ClusterCa::generate(&cluster)?;
    write_secret(&key, &ca.key_pem)?;
    std::fs::write(&crt, &ca.cert_pem)?;
    std::fs::write(&id_path, &cluster)?;
    Ok(ca)
}

/// A member's stored credentials (`<member>/tls.crt`, `tls.key`, `ca.crt`), if they
/// are there and name it.
pub fn stored(data: &DataDir, identity: &Identity) -> Result<Option<Credentials>> {
    let dir = data.member_dir(&identity.name)?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let (Ok(cert_pem), Ok(key_pem), Ok(ca_pem)) = (read("tls.crt"), read("tls.key"), read("ca.crt")) else {
        return Ok(None);
    };
    let creds = Credentials { identity: identity.clone(), cert_pem, key_pem, ca_pem };
    let ca = rustls_pki_types::pem::PemObject::from_pem_slice(creds.ca_pem.as_bytes()).ok();
    let ok = creds.chain().first().is_some_and(|c| {
        keelson_transport::tls::certifies(c, identity)
            && ca.as_ref().is_some_and(|ca| keelson_transport::tls::chains_to(c, ca))
    });
    Ok(ok.then_some(creds))
}

/// Keeps a member's credentials in its folder.
pub fn store(data: &DataDir, creds: &Credentials) -> Result<()> {
    let dir = data.member_dir(&creds.identity.name)?;
    write_secret(&dir.join("tls.key"), &creds.key_pem)?;
    std::fs::write(dir.join("tls.crt"), &creds.cert_pem)?;
    std::fs::write(dir.join("ca.crt"), &creds.ca_pem)?;
    Ok(())
}

/// A member's credentials from this folder's CA: read back if still valid, else issued.
pub fn credentials(data: &DataDir, ca: &ClusterCa, identity: &Identity) -> Result<Credentials> {
    if let Some(creds) = stored(data, identity)?.filter(|c| c.ca_pem == ca.cert_pem) {
        return Ok(creds);
    }
    let creds = ca.issue(identity)?;
    store(data, &creds)?;
    Ok(creds)
}

/// The member's QUIC stateless-reset secret (`<member>/quic-reset-key`, 0600), created
/// once: kept across restarts so peers can tell at once that our old connections died.
pub fn reset_secret(data: &DataDir, member: &str) -> Result<[u8; 32]> {
    let path = data.member_dir(member)?.join("quic-reset-key");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
    }
    let secret = crate::datadir::random_bytes::<32>()?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(&secret)?;
    Ok(secret)
}
