//! The data folder: how a local cluster is found by the commands that talk to it.
//!
//! ```text
//! keelson-data/
//!   admin-token          the admin token (0600), created by the first `up`
//!   up/admin.json        where the launcher's door listens, and its pid
//!   server-1/admin.json  where that member's door listens, and its pid
//!   server-1/keelson.log its output
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One member's door, as written to `<member>/admin.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoorFile {
    pub member: String,
    pub url: String,
    pub pid: u32,
}

impl DoorFile {
    /// Whether the process that wrote it still exists.
    pub fn alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks for existence.
        unsafe { libc::kill(self.pid as i32, 0) == 0 }
    }
}

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating if needed) the folder; paths are made absolute.
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("cannot create data folder {}", path.display()))?;
        let root = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
        Ok(Self { root })
    }

    /// Opens an existing folder, explaining what to do when there is none.
    pub fn existing(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            bail!("no cluster data in {} (start one with `keelson up`, or pass --data-dir)", path.display());
        }
        Self::open(path)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn member_dir(&self, member: &str) -> Result<PathBuf> {
        let dir = self.root.join(member);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    pub fn token_path(&self) -> PathBuf {
        self.root.join("admin-token")
    }

    /// The admin token, created (random, readable by the owner only) on first use.
    pub fn token(&self) -> Result<String> {
        let path = self.token_path();
        if let Ok(t) = std::fs::read_to_string(&path) {
            return Ok(t.trim().to_string());
        }
        let token = random_hex::<24>()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(f, "{token}")?;
        Ok(token)
    }

    pub fn write_door(&self, door: &DoorFile) -> Result<()> {
        let dir = self.member_dir(&door.member)?;
        let tmp = dir.join("admin.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(door)?)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, dir.join("admin.json"))?;
        Ok(())
    }

    pub fn remove_door(&self, member: &str) {
        let _already_gone_is_fine = std::fs::remove_file(self.root.join(member).join("admin.json"));
    }

    pub fn door(&self, member: &str) -> Result<DoorFile> {
        let path = self.root.join(member).join("admin.json");
        let bytes = std::fs::read(&path).with_context(|| {
            format!("member {member:?} has no admin door in {} (is it running?)", self.root.display())
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a door file", path.display()))
    }

    /// The door of `member`, or of the first running server member (one that keeps a
    /// store here: not the launcher, not an agent).
    pub fn server_door(&self, member: Option<&str>) -> Result<DoorFile> {
        match member {
            Some(m) => self.door(m),
            None => self
                .doors()?
                .into_iter()
                .find(|d| d.member != "up" && self.root.join(&d.member).join("store").is_dir())
                .context("no running server member found"),
        }
    }

    /// Every member's door whose process is alive, the launcher first.
    pub fn doors(&self) -> Result<Vec<DoorFile>> {
        let mut doors = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Ok(d) = self.door(&entry.file_name().to_string_lossy()) {
                    if d.alive() {
                        doors.push(d);
                    }
                }
            }
        }
        doors.sort_by(|a, b| (a.member != "up", &a.member).cmp(&(b.member != "up", &b.member)));
        Ok(doors)
    }
}

/// `N` bytes from the kernel's random source (tokens, secrets).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf)
}

fn random_hex<const N: usize>() -> Result<String> {
    Ok(random_bytes::<N>()?.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_and_doors_are_found() {
        let dir = std::env::temp_dir().join(format!("keelson-datadir-{}", std::process::id()));
        let d = DataDir::open(&dir).unwrap();
        let t = d.token().unwrap();
        assert_eq!(t.len(), 48);
        assert_eq!(d.token().unwrap(), t);
        let mode = std::fs::metadata(d.token_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let me = DoorFile { member: "server-1".into(), url: "http://127.0.0.1:1".into(), pid: std::process::id() };
        d.write_door(&me).unwrap();
        d.write_door(&DoorFile { member: "up".into(), ..me.clone() }).unwrap();
        d.write_door(&DoorFile { member: "dead".into(), pid: 0x7fff_fff0, ..me.clone() }).unwrap();
        let found: Vec<String> = d.doors().unwrap().into_iter().map(|d| d.member).collect();
        assert_eq!(found, ["up", "server-1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
