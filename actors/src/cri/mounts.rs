//! Volumes for the process runtime: the shim gives its container a mount namespace of
//! its own (propagation from the host kept, none back) and binds each volume's folder
//! over the node's folder at the mount path, read-only where asked. The node's own files
//! are untouched: the binds exist only in the container's namespace (and in what runs
//! beside it: exec and probes enter that namespace). A mount path the node lacks is made
//! (an empty folder or file) and noted in `<containers>/.mountpoints`, so a clean stop of
//! the agent removes what it made. Needs root.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Mount;

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(r: libc::c_int, what: &str) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// In the calling (single-threaded) process: a mount namespace of its own with `mounts`
/// bound in it; mount points made are noted in `made` (appended, one path a line).
pub fn enter(mounts: &[Mount], made: &Path) -> std::io::Result<()> {
    // SAFETY: unshare and mount with pointers to NUL-terminated strings we own.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "a mount namespace of its own")?;
        let root = CString::new("/").expect("no NUL");
        check(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ),
            "keeping mounts from the host",
        )?;
    }
    for m in mounts {
        let target = Path::new(&m.target);
        if !target.exists() {
            // Every level made is noted (the deepest is removed first).
            let missing: Vec<&Path> = target.ancestors().take_while(|a| !a.exists()).collect();
            if m.source.is_dir() {
                std::fs::create_dir_all(target)?;
            } else {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::File::create(target)?;
            }
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(made)?;
            for p in missing {
                log.write_all(format!("{}\n", p.display()).as_bytes())?;
            }
        }
        let (src, dst) = (cstr(&m.source)?, cstr(target)?);
        // SAFETY: as above.
        unsafe {
            let bind = libc::MS_BIND | libc::MS_REC;
            check(
                libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), bind, std::ptr::null()),
                &format!("binding {} at {}", m.source.display(), m.target),
            )?;
            if m.read_only {
                let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
                check(
                    libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), ro, std::ptr::null()),
                    &format!("making {} read-only", m.target),
                )?;
            }
        }
    }
    Ok(())
}

/// Removes the mount points noted in `made` that are still empty (deepest first), and
/// the note: every container is gone (a clean stop of the agent).
pub fn remove_made(made: &Path) {
    let Ok(list) = std::fs::read_to_string(made) else { return };
    let mut paths: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    paths.dedup();
    for p in paths {
        let path = Path::new(p);
        if path.is_dir() {
            let _ = std::fs::remove_dir(path);
        } else if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(path);
        }
    }
    let _ = std::fs::remove_file(made);
}
