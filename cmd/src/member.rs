//! Running one keelson process: bind its door, start its tree, and stop in order on
//! SIGTERM or Ctrl-C. Shared by `keelson server` and `keelson up`.

use std::net::TcpListener;
use std::sync::Arc;

use anyhow::{Context, Result};
use keelson_actors::runtime::{install_panic_hook, start_root, ExitReason, Registry, SupervisorSpec};
use keelson_config::MemberConfig;
use tokio::signal::unix::{signal, SignalKind};

use crate::datadir::{DataDir, DoorFile};

/// What the process does once its tree is up (e.g. `up` waits for its members and
/// reports their restarts).
pub type OnReady = Box<dyn FnOnce(DoorFile, Registry) -> futures_util::future::LocalBoxFuture<'static, ()>>;

/// Runs a member until it is told to stop (exit 0) or its root gives up (exit 1).
pub fn run(
    cfg: MemberConfig,
    data: &DataDir,
    tree: impl FnOnce(&MemberConfig, Arc<TcpListener>) -> SupervisorSpec,
    on_ready: Option<OnReady>,
) -> Result<i32> {
    install_panic_hook(false);
    let listener = TcpListener::bind(cfg.admin.listen)
        .with_context(|| format!("cannot bind the admin door on {}", cfg.admin.listen))?;
    listener.set_nonblocking(true)?;
    let door = DoorFile {
        member: cfg.name.clone(),
        url: format!("http://{}", listener.local_addr()?),
        pid: std::process::id(),
    };
    let spec = tree(&cfg, Arc::new(listener));
    let system = actix_rt::System::new();
    let code = system.block_on(async move {
        let registry = Registry::new(&cfg.name);
        let mut root = start_root(&registry, spec);
        data.write_door(&door)?;
        tracing::info!(member = %cfg.name, door = %door.url, "serving");
        let member = cfg.name.clone();
        if let Some(ready) = on_ready {
            actix_rt::spawn(ready(door, registry.clone()));
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let reason = tokio::select! {
            r = root.exited() => r,
            _ = term.recv() => stop(&mut root, "SIGTERM").await,
            _ = int.recv() => stop(&mut root, "interrupt").await,
        };
        data.remove_door(&member);
        Ok::<_, anyhow::Error>(match reason {
            ExitReason::Shutdown { .. } | ExitReason::Normal => 0,
            other => {
                eprintln!("keelson: root supervisor /{member} gave up: {other}");
                1
            }
        })
    })?;
    Ok(code)
}

async fn stop(root: &mut keelson_actors::runtime::Root, why: &str) -> ExitReason {
    tracing::info!("{why}: stopping in order");
    root.shutdown();
    root.exited().await
}
