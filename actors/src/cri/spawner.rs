//! The shim spawner: a small single-threaded process (`keelson shim-spawner <root>`),
//! started once by the process runtime, that forks a shim for each container folder
//! under `root` (a shim shows the spawner's command line, so `root` is in it, and is
//! named `keelson-shim`).
//!
//! Exec'ing this binary for every shim cost a few milliseconds of CPU each (the loader,
//! relocations and page faults of a 19 MB program): about a fifth of the machine during
//! a burst of 100 pod starts. A fork of a process that has done nothing yet copies
//! almost nothing and maps no program again. The agent cannot fork shims itself: it is
//! multi-threaded, and a forked child of it may only make async-signal-safe calls.
//!
//! The protocol, on the spawner's standard input and output: the runtime writes a
//! container's folder ended by a NUL; the spawner answers with the shim's pid, or `!`
//! and the reason, and a newline. The spawner ends when its input does (the agent is
//! gone). It ignores `SIGCHLD`, so the kernel reaps the shims that end; each shim sets
//! it back first, since it waits for its own container. A shim that outlives the
//! spawner is re-parented to the agent (a subreaper), which reaps it (`process.rs`).
//!
//! A spawner found gone before it read a request is started again and asked again. One
//! that read it and then ended, or gave no answer within 5 s (stopped from outside), is
//! killed and the start fails: it may have forked the shim, and a second one would run
//! the container twice. The kubelet looks at the container again (its folder is there)
//! and the next start gets a new spawner.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// How long the spawner may take to answer before it is taken for stuck.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Why a shim was not had from the spawner.
enum Failed {
    /// The request never reached it (it was gone).
    NotAsked(std::io::Error),
    /// It read the request and gave no answer: a shim may have been forked.
    Unanswered(std::io::Error),
    /// It (or the request) said no.
    Refused(std::io::Error),
}

fn invalid(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, reason)
}

/// Whether `fd` becomes readable (or closed) within `wait`.
pub(super) fn readable(fd: std::os::fd::RawFd, wait: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let until = std::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        // SAFETY: poll on one descriptor we own, with a count of 1.
        match unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) } {
            n if n > 0 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return true, // the read that follows reports the error
        }
    }
}

/// The runtime's side: the running spawner, started again if it is found gone.
pub struct Spawner {
    program: PathBuf,
    root: PathBuf,
    running: Option<Running>,
    answer_wait: Duration,
}

struct Running {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Spawner {
    /// A spawner that runs `<program> shim-spawner <root>` when first asked for a shim.
    pub fn new(program: PathBuf, root: PathBuf) -> Self {
        Self { program, root, running: None, answer_wait: ANSWER_WAIT }
    }

    /// Starts the shim for the container in `dir`; its pid.
    pub fn spawn(&mut self, dir: &Path) -> std::io::Result<u32> {
        let mut again = false;
        loop {
            match self.ask(dir) {
                Ok(pid) => return Ok(pid),
                Err(Failed::Refused(e)) => return Err(e),
                // Gone before it read the request (killed from outside): started again,
                // and asked again once.
                Err(Failed::NotAsked(e)) if !again => {
                    tracing::warn!(error = %e, "the shim spawner is gone; starting it again");
                    self.stop();
                    again = true;
                }
                // Gone or stuck after it read the request: it may have forked the shim,
                // so it is not asked twice; the container's start fails and is looked at
                // again. Stopped either way, so no late answer is read as the next one's.
                Err(Failed::NotAsked(e) | Failed::Unanswered(e)) => {
                    tracing::warn!(error = %e, "the shim spawner did not answer; it is stopped");
                    self.stop();
                    return Err(e);
                }
            }
        }
    }

    fn ask(&mut self, dir: &Path) -> Result<u32, Failed> {
        let mut request = dir.as_os_str().as_bytes().to_vec();
        if request.contains(&0) {
            return Err(Failed::Refused(invalid("a folder name holds a NUL".into())));
        }
        request.push(0);
        if self.running.is_none() {
            self.running = Some(self.start().map_err(Failed::Refused)?);
        }
        let r = self.running.as_mut().expect("started above");
        r.to.write_all(&request).map_err(Failed::NotAsked)?;
        // The answer is one short write: once the pipe is readable, the line is there.
        if r.from.buffer().is_empty() && !readable(r.from.get_ref().as_raw_fd(), self.answer_wait) {
            return Err(Failed::Unanswered(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the shim spawner did not answer within {:?}", self.answer_wait),
            )));
        }
        let mut answer = String::new();
        match r.from.read_line(&mut answer) {
            Ok(0) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the shim spawner ended");
                return Err(Failed::Unanswered(e));
            }
            Ok(_) => {}
            Err(e) => return Err(Failed::Unanswered(e)),
        }
        let answer = answer.trim_end();
        match answer.strip_prefix('!') {
            Some(reason) => Err(Failed::Refused(invalid(reason.to_string()))),
            None => answer.parse().map_err(|_| Failed::Refused(invalid(format!("the spawner answered {answer:?}")))),
        }
    }

    fn start(&self) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("shim-spawner").arg(&self.root).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        // SAFETY: setsid between fork and exec: the spawner, and so each shim it forks
        // (which then leads a session of its own), is out of the agent's terminal.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let to = child.stdin.take().expect("piped");
        let from = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Running { child, to, from })
    }

    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Its input closes: it ends by itself; waiting reaps it.
        if let Some(r) = self.running.take() {
            drop(r.to);
            let mut child = r.child;
            let _ = child.wait();
        }
    }
}

/// `keelson shim-spawner <root>`: forks a shim for each folder read (one of `root`'s);
/// ends at the input's end.
pub fn serve(root: &Path) -> i32 {
    super::shim::ignore_signals();
    // SAFETY: setting a signal's disposition to SIG_IGN: ended children are reaped by
    // the kernel.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut dir = Vec::new();
    loop {
        dir.clear();
        match input.by_ref().read_until(0, &mut dir) {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
        if dir.pop() != Some(0) {
            return 0;
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&dir));
        let answer = if path.parent() != Some(root) {
            format!("!{} is not a container folder of {}\n", path.display(), root.display())
        } else {
            // SAFETY: this process has one thread, so its child may do anything.
            match unsafe { libc::fork() } {
                0 => std::process::exit(shim_child(&path)),
                pid if pid > 0 => format!("{pid}\n"),
                _ => format!("!cannot fork the shim: {}\n", std::io::Error::last_os_error()),
            }
        };
        // Flushed at once, so a child forked next holds no copy of an answer to write again.
        let mut out = std::io::stdout().lock();
        if out.write_all(answer.as_bytes()).and_then(|()| out.flush()).is_err() {
            return 0;
        }
    }
}

/// In the forked child: a shim as `keelson shim <dir>` would be, with the spawner's
/// pipes to the agent closed (the agent must see their end when the spawner's comes).
fn shim_child(dir: &Path) -> i32 {
    // SAFETY: plain system calls on this process's own descriptors and signals.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::setsid();
        // Its command line is the spawner's: the name tells them apart (`ps`, `top`).
        libc::prctl(libc::PR_SET_NAME, c"keelson-shim".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    super::shim::run(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spawner played by a bash script (`$1` is `shim-spawner`, `$2` the root).
    fn scripted(body: &str) -> (Spawner, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("keelson-spawner-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("spawner");
        // Written here, made executable by another process: a program this (threaded)
        // process had open for writing could be exec'd while a fork of a parallel test
        // still held that descriptor, and fail with ETXTBSY ("Text file busy").
        std::fs::write(dir.join("spawner.txt"), format!("#!/bin/bash\n{body}\n")).unwrap();
        let installed =
            Command::new("install").arg("-m").arg("0755").arg(dir.join("spawner.txt")).arg(&script).status();
        assert!(installed.unwrap().success(), "install the script");
        let mut s = Spawner::new(script, dir.join("containers"));
        s.answer_wait = Duration::from_millis(300);
        (s, dir)
    }

    #[test]
    fn each_folder_gets_the_pid_the_spawner_answers() {
        let (mut s, dir) = scripted(
            r#"n=100; while IFS= read -r -d '' d; do [[ $d == $2/* ]] && echo $((n++)) || echo "!not $d"; done"#,
        );
        let root = dir.join("containers");
        assert_eq!(s.spawn(&root.join("a")).unwrap(), 100);
        assert_eq!(s.spawn(&root.join("b")).unwrap(), 101, "one spawner for every shim");
        let refused = s.spawn(Path::new("/elsewhere/c")).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        assert!(refused.to_string().contains("/elsewhere/c"), "{refused}");
        assert_eq!(s.spawn(&root.join("d")).unwrap(), 102, "a refusal does not stop it");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_spawner_that_does_not_answer_is_stopped_and_not_asked_twice() {
        // Reads the request, answers nothing the first time; the next one answers.
        let (mut s, dir) = scripted(
            r#"f="$(dirname "$0")/asked"; if [[ -e $f ]]; then echo again >> "$f"; else touch "$f"; fi
               while IFS= read -r -d '' d; do [[ $(wc -l < "$f") -ge 1 ]] && echo 7; done"#,
        );
        let root = dir.join("containers");
        let e = s.spawn(&root.join("a")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("asked")).unwrap(), "", "started once, for the one request");
        assert!(s.running.is_none(), "the stuck spawner was stopped");
        assert_eq!(s.spawn(&root.join("b")).unwrap(), 7, "the next start gets a new spawner");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_spawner_that_does_not_answer_is_stopped_too() {
        // The first one answers; the one started after it was killed stays silent.
        let (mut s, dir) = scripted(
            r#"f="$(dirname "$0")/starts"; echo start >> "$f"
               while IFS= read -r -d '' d; do [[ $(wc -l < "$f") -eq 1 ]] && echo 5; done"#,
        );
        let root = dir.join("containers");
        assert_eq!(s.spawn(&root.join("a")).unwrap(), 5);
        s.running.as_mut().unwrap().child.kill().unwrap();
        s.running.as_mut().unwrap().child.wait().unwrap();
        let e = s.spawn(&root.join("b")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(s.running.is_none(), "stopped, so its late answer is never read as another's");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_spawner_found_gone_is_started_again() {
        let (mut s, dir) = scripted(r#"while IFS= read -r -d '' d; do echo $$; done"#);
        let root = dir.join("containers");
        let first = s.spawn(&root.join("a")).unwrap();
        s.running.as_mut().unwrap().child.kill().unwrap();
        s.running.as_mut().unwrap().child.wait().unwrap();
        let second = s.spawn(&root.join("b")).unwrap();
        assert_ne!(first, second, "answered by a new spawner");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
