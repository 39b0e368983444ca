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
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
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

/// The shim outlives a terminal's Ctrl-C and signals sent to the agent's group, as
/// `ignore_signals` does, but by catching them in a handler that does nothing: a
/// caught signal is back at its default after exec, an ignored one would stay ignored
/// in the container (its SIGTERM with it). So the container starts with nothing to
/// undo between fork and exec, which lets it be spawned without copying the shim.
fn shrug_off_signals() {
    extern "C" fn nothing(_: libc::c_int) {}
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid one; the handler touches nothing.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    // Ignored here; std sets SIGPIPE back to its default in the child it starts.
    // SAFETY: as in `ignore_signals`.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Where `program` is, found as `execvp` would find it but in the container's `PATH`
/// (relative entries from its working folder): std starts a program named by its path
/// with `posix_spawn` (a vfork: nothing of the shim is copied), while a bare name under
/// an environment with a `PATH` of its own takes fork and exec. Not found: the name as
/// given, whose start then fails as before.
fn resolve(program: &str, env: &[(String, String)], cwd: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') || program.is_empty() {
        return program.into();
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .unwrap_or_else(|| program.into())
}

/// `PATH` for a container whose environment has none: what the kubelet gives every
/// container first, as an image's configuration would.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn serve(dir: &Path) -> std::io::Result<()> {
    shrug_off_signals();
    let spec: ContainerSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json"))?)?;
    let me = std::process::id();
    std::fs::write(dir.join("shim.pid"), format!("{me} {}", start_ticks(me).unwrap_or(0)))?;
    // The container's orphans (a shell's children once it is gone) come to the shim,
    // not to the agent, and are reaped here.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let log = Log { path: dir.join("log"), file: None, failed: false };
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
    let cwd = Path::new(spec.working_dir.as_deref().unwrap_or("/"));
    let mut cmd = Command::new(resolve(program, &spec.env, cwd));
    cmd.arg0(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !joins.is_empty() {
        // SAFETY: only async-signal-safe calls (write) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Into the container's cgroups ("0": the writer itself), before the program runs.
                for &fd in &joins {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    // Before the spawn, so no end is missed: the shim learns of its children's ends from
    // a descriptor it polls with their output (std clears the container's signal mask).
    let ended = match ChildEnds::watch() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot watch for the container's end: {e}")),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(format!("failed to start {program:?}: {e}"));
        }
    };
    let started =
        Started { pid: child.id(), start_ticks: start_ticks(child.id()).unwrap_or(0), started_at: timestamp_now() };
    write_json(dir, "started.json", &started)?;
    let pipes = [
        Pipe::new("stdout", child.stdout.take().expect("piped").into()),
        Pipe::new("stderr", child.stderr.take().expect("piped").into()),
    ];
    let main = child.id() as i32;
    let status = pump(pipes, log, Some((&ended, main))).unwrap_or(255 << 8);
    // The orphans that ended during the drain (the signalfd is not watched after main's end).
    ended.reap(main);
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

/// One of the container's output pipes and what was read of it past its last whole line.
struct Pipe {
    stream: &'static str,
    fd: OwnedFd,
    pending: Vec<u8>,
    open: bool,
}

impl Pipe {
    fn new(stream: &'static str, fd: OwnedFd) -> Self {
        Self { stream, fd, pending: Vec::new(), open: true }
    }

    /// Writes each whole line read (a longer one in parts of `MAX_LINE`), and at the
    /// pipe's end what is left, as a partial line.
    fn write_lines(&mut self, log: &mut Log) {
        let mut from = 0;
        loop {
            let rest = &self.pending[from..];
            let window = &rest[..rest.len().min(MAX_LINE)];
            let (text, full, took) = match memchr::memchr(b'\n', window) {
                Some(i) => (&window[..i], true, i + 1),
                None if window.len() == MAX_LINE || (!self.open && !window.is_empty()) => (window, false, window.len()),
                None => break,
            };
            log.write(&cri_line(&timestamp_now(), self.stream, full, text));
            from += took;
        }
        self.pending.drain(..from);
    }
}

/// How long the container's output may still come after its main process ended: a
/// grandchild that kept the pipes open does not hold the exit back for long.
const DRAIN: Duration = Duration::from_secs(2);

/// Where the shim hears of its children's ends: SIGCHLD blocked and read from a signalfd,
/// so one thread polls for them and for the container's output together (a thread to
/// wait beside the copier cost its creation, stack and allocator arena at every start).
struct ChildEnds(OwnedFd);

impl ChildEnds {
    fn watch() -> std::io::Result<Self> {
        // SAFETY: a signal set built in place; the mask of this single-threaded process.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Self(OwnedFd::from_raw_fd(fd)))
        }
    }

    /// Reaps every child that has ended (the container's orphans come to the shim too);
    /// `main`'s wait status if it was one of them.
    fn reap(&self, main: i32) -> Option<i32> {
        let mut info = [0u8; 128 * 8];
        // SAFETY: reading the pending notices into our buffer; they only say "look".
        while unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
        let mut main_status = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid for any child, without blocking, into our integer.
            match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
                pid if pid == main => main_status = Some(status),
                pid if pid > 0 => {}
                _ => return main_status,
            }
        }
    }
}

/// Copies both pipes to `log` a line at a time, each line stamped and tagged with its
/// stream, until both are closed; with `(ends, main)`, also until `main` has ended, then
/// at most `DRAIN` longer. What `main` left in its process group is killed at its end (a
/// container is all of it). Returns `main`'s wait status.
fn pump(mut pipes: [Pipe; 2], mut log: Log, children: Option<(&ChildEnds, i32)>) -> Option<i32> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended: Option<(i32, std::time::Instant)> = None;
    loop {
        let open = pipes.iter().any(|p| p.open);
        let wait = match (children, ended) {
            (Some(_), None) => -1,
            (_, Some((_, at))) if open => at.saturating_duration_since(std::time::Instant::now()).as_millis() as i32,
            _ if open => -1,
            _ => break,
        };
        if wait == 0 {
            break;
        }
        // Closed pipes, and the children's ends once main's is known, are left out (-1).
        let pipe_fd = |p: &Pipe| if p.open { p.fd.as_raw_fd() } else { -1 };
        let ends_fd = match (children, ended) {
            (Some((ends, _)), None) => ends.0.as_raw_fd(),
            _ => -1,
        };
        let mut polled = [pipe_fd(&pipes[0]), pipe_fd(&pipes[1]), ends_fd].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: poll on descriptors we own, with their count.
        if unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, wait) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if let (Some((ends, main)), true) = (children, polled[2].revents != 0) {
            if let Some(status) = ends.reap(main) {
                // SAFETY: signalling the container's process group.
                unsafe { libc::kill(-main, libc::SIGKILL) };
                ended = Some((status, std::time::Instant::now() + DRAIN));
            }
        }
        for (pipe, p) in pipes.iter_mut().zip(&polled) {
            if p.revents == 0 {
                continue;
            }
            // SAFETY: reading into our buffer from a descriptor we own, poll said it would not block.
            let n = unsafe { libc::read(pipe.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                n if n > 0 => pipe.pending.extend_from_slice(&buf[..n as usize]),
                n if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => pipe.open = false,
            }
            pipe.write_lines(&mut log);
        }
    }
    ended.map(|(status, _)| status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keelson-shim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The log's entries as (stream, full, text).
    fn entries(path: &Path) -> Vec<(String, bool, Vec<u8>)> {
        let mut all = Vec::new();
        std::fs::File::open(path).unwrap().read_to_end(&mut all).unwrap();
        all.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let e = super::super::logs::parse(l).expect("an entry");
                (e.stream.to_string(), e.full, e.text.to_vec())
            })
            .collect()
    }

    #[test]
    fn both_streams_are_copied_a_line_at_a_time_long_lines_in_parts() {
        let dir = scratch("copy");
        let (out_r, mut out_w) = std::io::pipe().unwrap();
        let (err_r, mut err_w) = std::io::pipe().unwrap();
        let log = Log { path: dir.join("log"), file: None, failed: false };
        let pipes = [Pipe::new("stdout", out_r.into()), Pipe::new("stderr", err_r.into())];
        let copier = std::thread::spawn(move || pump(pipes, log, None));
        out_w.write_all(b"one\ntw").unwrap();
        err_w.write_all(b"oops\n").unwrap();
        out_w.write_all(b"o\n").unwrap();
        let long = vec![b'x'; MAX_LINE + 3];
        out_w.write_all(&long).unwrap();
        out_w.write_all(b"\nlast, unended").unwrap();
        drop((out_w, err_w));
        copier.join().unwrap();
        let mut got = entries(&dir.join("log"));
        // The streams' order between them is the pipes'; within each it is kept.
        let err: Vec<_> = got.iter().filter(|e| e.0 == "stderr").cloned().collect();
        got.retain(|e| e.0 == "stdout");
        assert_eq!(err, vec![("stderr".into(), true, b"oops".to_vec())]);
        let texts: Vec<(bool, Vec<u8>)> = got.into_iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(
            texts,
            vec![
                (true, b"one".to_vec()),
                (true, b"two".to_vec()),
                (false, vec![b'x'; MAX_LINE]),
                (true, b"xxx".to_vec()),
                (false, b"last, unended".to_vec()),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn silent_streams_make_no_log() {
        let dir = scratch("silent");
        let (out_r, out_w) = std::io::pipe().unwrap();
        let (err_r, err_w) = std::io::pipe().unwrap();
        let log = Log { path: dir.join("log"), file: None, failed: false };
        drop((out_w, err_w));
        pump([Pipe::new("stdout", out_r.into()), Pipe::new("stderr", err_r.into())], log, None);
        assert!(!dir.join("log").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn programs_are_found_in_the_containers_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("path");
        for (name, mode) in [("bin/tool", 0o755), ("data/tool", 0o644), ("data/other", 0o755)] {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = |v: &str| vec![("PATH".to_string(), v.to_string())];
        let d = dir.display();
        // Not executable: passed over, as execvp does.
        assert_eq!(resolve("tool", &path(&format!("{d}/data:{d}/bin")), &dir), dir.join("bin/tool"));
        // A relative entry is from the working folder.
        assert_eq!(resolve("other", &path("data"), &dir), dir.join("data/other"));
        // Named by a path, or found nowhere: as given.
        assert_eq!(resolve("./bin/tool", &path("/nowhere"), &dir), Path::new("./bin/tool"));
        assert_eq!(resolve("tool", &path("/nowhere"), &dir), Path::new("tool"));
        // No PATH: the kubelet's default.
        assert_eq!(resolve("sh", &[], &dir).parent().map(|p| p.is_absolute()), Some(true));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
