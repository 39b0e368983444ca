//! `keelson shim <dir>`: the small process that owns one container of the process
//! runtime, as containerd's shims do.
//!
//! The kubelet starts it in its own session (so Ctrl-C on a terminal and the agent's
//! death do not reach it) and it starts the container: the program of `spec.json`, in
//! its own process group, its network namespace entered first. It then writes what the
//! kubelet needs to files, never pipes to the agent, so nothing dies of SIGPIPE when
//! the agent does and a restarted kubelet can pick the container up again:
//!
//! - `shim.pid`: the shim's pid;
//! - `started.json`: the container's pid, its start time in clock ticks since boot (so
//!   a reused pid is told apart) and when it started;
//! - `log`: its stdout and stderr, line by line in the CRI format (`logs.rs`), made at
//!   the first line (it may be a link to where the runtime keeps logs);
//! - `exit.json`: how it ended, written once (by rename) when it has.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cgroups::{self, Cgroups, Layout};
use super::logs::{cri_line, timestamp_now};
use super::{ContainerSpec, Exit};

/// A line longer than this is written in parts (`P`), as CRI runtimes do.
const MAX_LINE: usize = 16 * 1024;

/// `started.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: tells this process from a later one given its pid.
    pub start_ticks: u64,
    pub started_at: String,
}

/// The start time (clock ticks since boot) of `pid`, if it is alive and not a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: read after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Writes `value` to `dir/name` atomically (a reader sees all of it or nothing).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(tmp, dir.join(name))
}

/// Runs the shim for the container in `dir`; its exit code.
pub fn run(dir: &Path) -> i32 {
    match serve(dir) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::write(dir.join("shim.err"), e.to_string());
            let exit = Exit {
                code: 128,
                signal: None,
                reason: "StartError".into(),
                message: Some(format!("the container's shim failed: {e}")),
                finished_at: timestamp_now(),
            };
            let _ = write_json(dir, "exit.json", &exit);
            1
        }
    }
}

pub(super) fn ignore_signals() {
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no handler to be unsafe in.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

fn serve(dir: &Path) -> std::io::Result<()> {
    ignore_signals();
    let spec: ContainerSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
    let me = std::process::id();
    std::fs::write(dir.join("shim.pid"), format!("{me} {}", start_ticks(me).unwrap_or(0)))?;
    // The container's orphans (a shell's children once it is gone) come to the shim,
    // not to the agent, and are reaped here.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let log = Arc::new(Mutex::new(Log { path: dir.join("log"), file: None, failed: false }));
    let fail = |message: String| {
        let exit = Exit {
            code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(message),
            finished_at: timestamp_now(),
        };
        write_json(dir, "exit.json", &exit)
    };
    if let Some(ns) = &spec.netns {
        let f = File::open(ns)?;
        // SAFETY: setns on a file descriptor we hold open; it changes only this (single-
        // threaded) process's network namespace, which its child then inherits.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            return fail(format!("cannot enter the pod's network namespace {}: {e}", ns.display()));
        }
    }
    if !spec.mounts.is_empty() {
        let made = dir.parent().unwrap_or(dir).join(".mountpoints");
        if let Err(e) = super::mounts::enter(&spec.mounts, &made) {
            return fail(format!("cannot mount the container's volumes: {e}"));
        }
    }
    let Some((program, args)) = spec.argv.split_first() else {
        return fail("no command to run".into());
    };
    let groups = match limit(&spec) {
        Ok(g) => g,
        Err(e) => return fail(format!("cannot hold the container to its limits: {e}")),
    };
    let joins: Vec<i32> = groups.iter().flat_map(|g| &g.procs).map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.working_dir.as_deref().unwrap_or("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setpgid, signal, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setpgid(0, 0);
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE] {
                libc::signal(sig, libc::SIG_DFL);
            }
            // Into the container's cgroups ("0": the writer itself), before the program runs.
            for &fd in &joins {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(format!("failed to start {program:?}: {e}"));
        }
    };
    let started =
        Started { pid: child.id(), start_ticks: start_ticks(child.id()).unwrap_or(0), started_at: timestamp_now() };
    write_json(dir, "started.json", &started)?;
    let (done_tx, done_rx) = mpsc::channel();
    let streams: Vec<(&'static str, Box<dyn Read + Send>)> = vec![
        ("stdout", Box::new(child.stdout.take().expect("piped"))),
        ("stderr", Box::new(child.stderr.take().expect("piped"))),
    ];
    for (stream, pipe) in streams {
        let (log, done) = (log.clone(), done_tx.clone());
        std::thread::spawn(move || {
            copy_lines(stream, pipe, &log);
            let _ = done.send(());
        });
    }
    let main = child.id() as i32;
    let status = reap_until(main);
    // What the main process left in its group goes with it (a container is all of it).
    // SAFETY: signalling the container's process group.
    unsafe { libc::kill(-main, libc::SIGKILL) };
    // Output still buffered in the pipes is written before the exit is; a grandchild
    // that kept the pipes open does not hold the exit back for long.
    for _ in 0..2 {
        let _ = done_rx.recv_timeout(Duration::from_secs(1));
    }
    reap_orphans();
    drop(child);
    let oom = groups.as_ref().is_some_and(Cgroups::oom_killed);
    if let Some(g) = groups {
        g.remove();
    }
    let status = std::process::ExitStatus::from_raw(status);
    let (code, signal) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(s)) => (128 + s, Some(s)),
        (None, None) => (255, None),
    };
    let exit = Exit {
        code,
        signal,
        reason: if oom && signal == Some(libc::SIGKILL) {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .into(),
        message: None,
        finished_at: timestamp_now(),
    };
    write_json(dir, "exit.json", &exit)
}

/// The container's cgroups (none without limits).
fn limit(spec: &ContainerSpec) -> Result<Option<Cgroups>, String> {
    if spec.limits == super::Limits::default() {
        return Ok(None);
    }
    let layout = Layout::detect(Path::new(cgroups::ROOT))?;
    Cgroups::make(&layout, &spec.id(), &spec.limits).map(Some).map_err(|e| e.to_string())
}

/// Waits for `main` to end, reaping any orphan that ends meanwhile; its wait status.
fn reap_until(main: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid for any child, writing into our integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == main {
            return status;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 255 << 8;
        }
    }
}

/// Reaps the orphans that have ended (without waiting for the others).
fn reap_orphans() {
    let mut status = 0;
    // SAFETY: as above, without blocking.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// The container's log, made at the first line written: most containers write nothing
/// while they start, and a file less is a disk inode less per start.
struct Log {
    path: std::path::PathBuf,
    file: Option<File>,
    /// It could not be made (told once, in `shim.err` beside it).
    failed: bool,
}

impl Log {
    fn write(&mut self, entry: &[u8]) {
        if self.file.is_none() && !self.failed {
            match OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.failed = true;
                    let err = self.path.with_file_name("shim.err");
                    let _ = std::fs::write(err, format!("cannot write the log {}: {e}", self.path.display()));
                }
            }
        }
        if let Some(f) = &mut self.file {
            let _ = f.write_all(entry);
        }
    }
}

/// Copies `pipe` to `log` a line at a time, each line stamped and tagged.
fn copy_lines(stream: &str, pipe: Box<dyn Read + Send>, log: &Mutex<Log>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = match reader.by_ref().take(MAX_LINE as u64).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = line[n - 1] == b'\n';
        let text = if full { &line[..n - 1] } else { &line[..] };
        let entry = cri_line(&timestamp_now(), stream, full, text);
        if let Ok(mut log) = log.lock() {
            log.write(&entry);
        }
    }
}
