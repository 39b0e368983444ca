//! The node's volatile state, kept on a tmpfs as containerd keeps its own under `/run`.
//!
//! The process runtime's container folders (spec, pid, start and exit files) and the
//! pod address claims are made, renamed and read many times a second while pods start,
//! and none of it means anything after a reboot: the processes and namespaces it
//! describes are gone with the machine. On a disk such files cost more than their
//! writes: ext4 without a journal finds each new inode by skipping every inode freed
//! in the last half minute, which was 7% of the whole machine's CPU over a burst of
//! 100 pod starts (BENCHMARKS.md). Container logs stay on disk.
//!
//! `<kubelet dir>/<name>` is a symbolic link to `<tmpfs>/keelson-<uid>/<key>/<name>`
//! (`key`: a hash of the kubelet folder's path), so the data folder still shows
//! everything where it always was, a restarted agent finds its containers through the
//! link, and a folder an older version made there (a real one) is used as it is. With
//! no writable tmpfs the folders are made on disk, as before.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::hash::fnv1a;

/// Where a tmpfs is looked for, in order.
pub const TMPFS: [&str; 2] = ["/run", "/dev/shm"];

/// The kubelet folder's volatile folders: the process runtime's containers and the
/// pod address claims.
pub const KUBELET: [&str; 2] = ["containers", "addresses"];

/// The file in each volatile folder naming the kubelet folder it belongs to.
const OWNER: &str = "owner";

/// Whether `path` is on a tmpfs.
fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0) && s.f_type == libc::TMPFS_MAGIC
}

/// This user's folder on the first tmpfs of `candidates` it can write in.
fn base(candidates: &[&str]) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    candidates.iter().map(Path::new).filter(|p| is_tmpfs(p)).find_map(|p| {
        let mine = p.join(format!("keelson-{uid}"));
        let made = std::fs::create_dir_all(&mine)
            .and_then(|()| std::fs::set_permissions(&mine, std::os::unix::fs::PermissionsExt::from_mode(0o700)));
        made.ok().map(|()| mine)
    })
}

/// Links `dir/<name>` for each of `names` to a folder on a tmpfs (one of `candidates`),
/// making what is missing: the links, and their folders (gone after a reboot). A name
/// that is a real folder already stays one. Volatile folders of kubelet folders that
/// no longer exist (a data folder removed without a clean stop) are removed first.
pub fn link(dir: &Path, names: &[&str], candidates: &[&str]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let Some(base) = base(candidates) else {
        tracing::info!("no tmpfs to keep the node's volatile state on: it is kept on disk");
        return names.iter().try_for_each(|n| std::fs::create_dir_all(dir.join(n)));
    };
    prune(&base);
    let dir = dir.canonicalize()?;
    let mine = base.join(format!("{:016x}", fnv1a(dir.as_os_str().as_bytes())));
    std::fs::create_dir_all(&mine)?;
    std::fs::write(mine.join(OWNER), dir.as_os_str().as_bytes())?;
    for name in names {
        let (at, target) = (dir.join(name), mine.join(name));
        std::fs::create_dir_all(&target)?;
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() && std::fs::read_link(&at)? == target => continue,
            Ok(_) => std::fs::remove_file(&at)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&target, &at)?;
    }
    Ok(())
}

/// Removes the volatile folders `dir`'s links lead to (after a clean stop: nothing of
/// the node is left in memory). The links stay, and lead to new folders next time.
pub fn remove(dir: &Path, names: &[&str]) {
    for name in names {
        let Ok(target) = std::fs::read_link(dir.join(name)) else { continue };
        let _ = std::fs::remove_dir_all(&target);
        if let Some(parent) = target.parent() {
            // The key folder goes with its last link's folder.
            let left = std::fs::read_dir(parent).map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name() != OWNER));
            if left.is_ok_and(|l| !l) {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

/// Removes the volatile folders whose kubelet folder is gone.
fn prune(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().filter_map(|e| e.ok()) {
        let Ok(owner) = std::fs::read(entry.path().join(OWNER)) else { continue };
        // The path as written, byte for byte (a folder's name need not be UTF-8).
        let owner = Path::new(OsStr::from_bytes(&owner));
        if !owner.exists() {
            tracing::info!(folder = %entry.path().display(), owner = %owner.display(), "removing the volatile state of a node folder that is gone");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keelson-volatile-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn folders_are_linked_onto_a_tmpfs_and_found_again() {
        if !is_tmpfs(Path::new("/dev/shm")) {
            eprintln!("skipped: /dev/shm is not a tmpfs here");
            return;
        }
        let dir = scratch("link").join("kubelet");
        link(&dir, &["containers", "addresses"], &["/dev/shm"]).unwrap();
        let target = std::fs::read_link(dir.join("containers")).unwrap();
        assert!(target.starts_with("/dev/shm"), "{}", target.display());
        assert!(is_tmpfs(&target));
        std::fs::write(dir.join("containers/a"), b"x").unwrap();
        link(&dir, &["containers", "addresses"], &["/dev/shm"]).unwrap();
        assert_eq!(std::fs::read(dir.join("containers/a")).unwrap(), b"x", "the same folder again");
        assert_eq!(std::fs::read_link(dir.join("containers")).unwrap(), target);

        // After a reboot the tmpfs is empty: the folder is made again behind the link.
        std::fs::remove_dir_all(target.parent().unwrap()).unwrap();
        link(&dir, &["containers", "addresses"], &["/dev/shm"]).unwrap();
        assert!(dir.join("containers").is_dir() && !dir.join("containers/a").exists());

        remove(&dir, &["containers", "addresses"]);
        assert!(!target.parent().unwrap().exists(), "nothing left on the tmpfs");
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_real_folder_stays_and_no_tmpfs_means_disk() {
        let dir = scratch("real").join("kubelet");
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        link(&dir, &["containers"], &["/dev/shm"]).unwrap();
        assert!(!std::fs::symlink_metadata(dir.join("containers")).unwrap().file_type().is_symlink());
        let temp = std::env::temp_dir();
        if !is_tmpfs(&temp) {
            link(&dir, &["addresses"], &[temp.to_str().unwrap()]).unwrap();
            let m = std::fs::symlink_metadata(dir.join("addresses")).unwrap();
            assert!(m.is_dir() && !m.file_type().is_symlink(), "made on disk");
        }
        remove(&dir, &["containers", "addresses"]);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_state_of_a_removed_data_folder_is_pruned() {
        if !is_tmpfs(Path::new("/dev/shm")) {
            eprintln!("skipped: /dev/shm is not a tmpfs here");
            return;
        }
        let (gone, kept) = (scratch("gone").join("kubelet"), scratch("kept").join("kubelet"));
        link(&gone, &["containers"], &["/dev/shm"]).unwrap();
        let target = std::fs::read_link(gone.join("containers")).unwrap();
        std::fs::remove_dir_all(gone.parent().unwrap()).unwrap();
        assert!(target.exists(), "left behind by a data folder removed without a clean stop");
        link(&kept, &["containers"], &["/dev/shm"]).unwrap();
        assert!(!target.parent().unwrap().exists(), "pruned at the next node's start");
        remove(&kept, &["containers"]);
        std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
    }
}
