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

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The runtime's side: the running spawner, started again if it is found gone.
pub struct Spawner {
    program: PathBuf,
    root: PathBuf,
    running: Option<Running>,
}

struct Running {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Spawner {
    /// A spawner that runs `<program> shim-spawner <root>` when first asked for a shim.
    pub fn new(program: PathBuf, root: PathBuf) -> Self {
        Self { program, root, running: None }
    }

    /// Starts the shim for the container in `dir`; its pid.
    pub fn spawn(&mut self, dir: &Path) -> std::io::Result<u32> {
        // A spawner that died (killed from outside) shows as a broken pipe or an end of
        // its answers: it is started again once.
        match self.ask(dir) {
            Ok(pid) => Ok(pid),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the shim spawner is gone; starting it again");
                self.stop();
                self.ask(dir)
            }
        }
    }

    fn ask(&mut self, dir: &Path) -> std::io::Result<u32> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let r = self.running.as_mut().expect("started above");
        let mut request = dir.as_os_str().as_bytes().to_vec();
        if request.contains(&0) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a folder name holds a NUL"));
        }
        request.push(0);
        r.to.write_all(&request)?;
        let mut answer = String::new();
        if r.from.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the shim spawner ended"));
        }
        let answer = answer.trim_end();
        match answer.strip_prefix('!') {
            Some(reason) => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.to_string())),
            None => answer.parse().map_err(|_| std::io::Error::other(format!("the spawner answered {answer:?}"))),
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
        if path.parent() != Some(root) {
            let refused = format!("!{} is not a container folder of {}\n", path.display(), root.display());
            if std::io::stdout().write_all(refused.as_bytes()).and_then(|()| std::io::stdout().flush()).is_err() {
                return 0;
            }
            continue;
        }
        // SAFETY: this process has one thread, so its child may do anything.
        let answer = match unsafe { libc::fork() } {
            0 => std::process::exit(shim_child(&path)),
            pid if pid > 0 => format!("{pid}\n"),
            _ => format!("!cannot fork the shim: {}\n", std::io::Error::last_os_error()),
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
