//! An operating-system process as a supervised actor.
//!
//! `keelson up` runs each cluster member as a child process owned by one of these,
//! so a member that dies is an actor exit like any other: its supervisor restarts it
//! with back-off and counts it against its intensity. The process
//! - writes its output to a log file (not a pipe: nothing dies of SIGPIPE if the
//!   launcher goes away);
//! - runs in its own process group, so a terminal's Ctrl-C reaches the launcher only,
//!   which then stops members in order;
//! - gets SIGTERM if the launcher dies (`PR_SET_PDEATHSIG`), so no member is orphaned;
//! - is stopped with SIGTERM and, if it outlives its shutdown timeout, SIGKILL (the
//!   actor's task is aborted and the child handle kills on drop).

use std::path::PathBuf;
use std::process::Stdio;

use actix::{ActorContext, ActorFutureExt, AsyncContext, Running};

use crate::runtime::{exit, Actor, Ctx, ExitReason, Incarnation};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

pub struct ChildProcess {
    spec: ProcessSpec,
    pid: Option<i32>,
    stopping: bool,
}

impl ChildProcess {
    pub fn new(spec: ProcessSpec) -> Self {
        Self { spec, pid: None, stopping: false }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.spec.log)?;
        let mut cmd = tokio::process::Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

impl Actor for ChildProcess {
    fn started(&mut self, ctx: &mut Ctx<Self>) {
        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(e) => {
                return exit(ctx, ExitReason::failed(format!("cannot start {}: {e}", self.spec.program.display())));
            }
        };
        self.pid = child.id().map(|p| p as i32);
        tracing::info!(pid = ?self.pid, log = %self.spec.log.display(), "process started");
        // The child handle lives in this future: if the incarnation is dropped for any
        // reason (crash, abort), the handle is dropped and the process killed.
        let wait = async move { child.wait().await };
        ctx.spawn(actix::fut::wrap_future(wait).map(|status, me: &mut Incarnation<Self>, ctx| {
            me.pid = None;
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            if me.stopping {
                tracing::info!(%status, "process stopped");
                ctx.stop();
            } else {
                exit(ctx, ExitReason::failed(format!("process exited ({status})")));
            }
        }));
    }

    /// SIGTERM, then wait for the exit; the supervisor's shutdown timeout bounds it.
    fn stopping(&mut self, _ctx: &mut Ctx<Self>) -> Running {
        match self.pid {
            Some(pid) => {
                if !self.stopping {
                    self.stopping = true;
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                Running::Continue
            }
            None => Running::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{start_root, ActorPath, ActorState, ChildSpec, Registry, Restart, Strategy, SupervisorSpec};
    use keelson_config::SupervisorConfig;
    use std::time::Duration;

    async fn wait_for(registry: &Registry, incarnation: u64) {
        let path = ActorPath::parse("/m/sleeper").unwrap();
        for _ in 0..2000 {
            if registry.info(&path).is_some_and(|i| i.state == ActorState::Running && i.incarnation == incarnation) {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("sleeper never reached incarnation {incarnation}");
    }

    #[actix_rt::test]
    async fn a_process_that_dies_is_restarted_and_shutdown_terminates_it() {
        let dir = std::env::temp_dir().join(format!("keelson-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let spec = ProcessSpec { program: "/bin/sh".into(), args: vec!["-c".into(), script], log: dir.join("log") };
        let (child, _) = ChildSpec::new("sleeper", Restart::Permanent, move |_| ChildProcess::new(spec.clone()));
        let registry = Registry::new("m");
        let mut root =
            start_root(&registry, SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default()).child(child));
        wait_for(&registry, 1).await;

        let read_pid = || async {
            for _ in 0..400 {
                if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
                    return pid;
                }
                actix_rt::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("no pid written");
        };
        let first = read_pid().await;
        std::fs::remove_file(&pidfile).unwrap();
        unsafe { libc::kill(first, libc::SIGKILL) };
        wait_for(&registry, 2).await;
        let info = registry.info(&ActorPath::parse("/m/sleeper").unwrap()).unwrap();
        assert!(matches!(info.last_exit.unwrap().reason, ExitReason::Failed { .. }));
        let second = read_pid().await;
        assert_ne!(first, second);

        root.shutdown();
        assert_eq!(root.exited().await, ExitReason::Shutdown { forced: false });
        // The process is gone (reaped by its waiter, so kill(0) fails).
        assert_eq!(unsafe { libc::kill(second, 0) }, -1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
