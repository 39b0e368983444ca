//! `kubectl exec`, the kubelet's half: runs a command beside a container (its
//! environment, folder and network; a terminal when asked) and carries its streams
//! over the raw transport stream the API gateway opened, in Kubernetes' channels:
//!
//! ```text
//! +---------+--------------------+-----------+
//! | channel | length (u32 BE)    | bytes     |     0 stdin, 1 stdout, 2 stderr,
//! | 1 byte  | 4 bytes            |           |     3 status (JSON), 4 resize, 255 close
//! +---------+--------------------+-----------+
//! ```
//!
//! The gateway turns these into the websocket frames (`v5.channel.k8s.io`) kubectl
//! speaks, and back.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;

use futures_util::StreamExt;
use keelson_transport::{RecvStream, SendStream};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::cri::{AttachedExec, ContainerRuntime, ExecControl, ExecSession};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// The largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

pub async fn write_frame(send: &mut SendStream, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + data.len());
    frame.push(channel);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    send.write_all(&frame).await.map_err(std::io::Error::other)
}

/// The next frame; `None` when the stream ended.
pub async fn read_frame(recv: &mut RecvStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut data = vec![0u8; len];
    recv.read_exact(&mut data).await.ok()?;
    Some((head[0], data))
}

/// The Status that ends a session: success, or the exit code as Kubernetes reports it.
pub fn exit_status(code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: error executing command [...], exit code {code}"),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

fn failure(message: &str) -> serde_json::Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// A pseudo-terminal pair: (controller, terminal).
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers we pass; no name,
    // termios or size is given.
    let r = unsafe {
        libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened for us and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(controller), OwnedFd::from_raw_fd(terminal)) })
}

/// The terminal size a resize frame carries: (rows, columns).
fn size(data: &[u8]) -> Option<(u16, u16)> {
    let size = serde_json::from_slice::<serde_json::Value>(data).ok()?;
    Some((size["Height"].as_u64().unwrap_or(24) as u16, size["Width"].as_u64().unwrap_or(80) as u16))
}

fn resize(fd: i32, data: &[u8]) {
    let Some((rows, cols)) = size(data) else { return };
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own from the pointer.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Copies what `source` gives onto `out` as `channel` frames until it ends (a thread:
/// pipes and terminals are read blocking).
fn pump(mut source: impl Read + Send + 'static, channel: u8, out: mpsc::UnboundedSender<(u8, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match source.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.send((channel, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

type Resize = Box<dyn Fn(&[u8])>;

/// A command running for a session, however it runs: its output as frames, its exit
/// code, and the ways to reach it.
struct Running {
    /// Ends once every stream of the command has.
    output: mpsc::UnboundedReceiver<(u8, Vec<u8>)>,
    exit: oneshot::Receiver<i32>,
    /// Bytes for its stdin; `None` closes it.
    input: Box<dyn Fn(Option<Vec<u8>>)>,
    /// A resize frame.
    resize: Resize,
    /// The client went away: stdin closes, and a terminal hangs up (as when a terminal
    /// closes; a command without one runs on, as in Kubernetes).
    hang_up: Box<dyn Fn()>,
}

/// Runs `cmd` here, on a terminal of its own or with pipes.
/// `size`: the terminal's first resize frame, set before the command starts.
fn run_command(
    mut cmd: std::process::Command,
    stdin: bool,
    tty: bool,
    size: Option<&[u8]>,
) -> std::io::Result<Running> {
    let (out_tx, output) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    let mut controller_fd = None;
    let mut child = if tty {
        let (controller, terminal) = open_pty()?;
        if let Some(size) = size {
            resize(controller.as_raw_fd(), size);
        }
        let t = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        cmd.stdin(t(&terminal)?).stdout(t(&terminal)?).stderr(t(&terminal)?);
        if !cmd.get_envs().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm");
        }
        // SAFETY: setsid and TIOCSCTTY between fork and exec: the command leads a
        // session whose controlling terminal is the pty.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(terminal);
        controller_fd = Some(controller);
        child
    } else {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: setpgid only, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        cmd.spawn()?
    };
    // Where stdin goes: the terminal, or the pipe.
    let mut sink: Option<Box<dyn Write + Send>> = None;
    if let Some(controller) = &controller_fd {
        pump(std::fs::File::from(controller.try_clone()?), STDOUT, out_tx.clone());
        if stdin {
            sink = Some(Box::new(std::fs::File::from(controller.try_clone()?)));
        }
    } else {
        if let Some(o) = child.stdout.take() {
            pump(o, STDOUT, out_tx.clone());
        }
        if let Some(e) = child.stderr.take() {
            pump(e, STDERR, out_tx.clone());
        }
        sink = child.stdin.take().map(|i| Box::new(i) as Box<dyn Write + Send>);
    }
    // Stdin is written on its own thread (the command may not read it for a while).
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    if let Some(mut w) = sink {
        std::thread::spawn(move || {
            while let Ok(Some(data)) = in_rx.recv() {
                if w.write_all(&data).and_then(|()| w.flush()).is_err() {
                    return;
                }
            }
        });
    }
    let pid = child.id() as i32;
    let (exit_tx, exit) = oneshot::channel();
    std::thread::spawn(move || {
        let code = child.wait().map(|s| s.code().unwrap_or(137)).unwrap_or(1);
        let _ = exit_tx.send(code);
    });
    let closer = in_tx.clone();
    Ok(Running {
        output,
        exit,
        input: Box::new(move |data| {
            let _ = in_tx.send(data);
        }),
        resize: Box::new(move |data| {
            if let Some(fd) = &controller_fd {
                resize(fd.as_raw_fd(), data);
            }
        }),
        hang_up: Box::new(move || {
            let _ = closer.send(None);
            if tty {
                // SAFETY: signalling the command's own session (it leads it: pgid = pid).
                unsafe { libc::kill(-pid, libc::SIGHUP) };
            }
        }),
    })
}

/// A command a daemon runs for the session, its streams attached.
/// `first_size`: the terminal's first resize frame, set before any input reaches the
/// command (the daemon runs it a moment after it is attached: the size cannot be set
/// at start, and a shell reading its size before the resize would see 0×0).
fn run_attached(exec: AttachedExec, tty: bool, first_size: Option<&[u8]>) -> Running {
    let AttachedExec { mut output, mut input, control } = exec;
    let control: Arc<dyn ExecControl> = Arc::from(control);
    let sized = first_size.and_then(size).map(|(rows, cols)| control.resize(rows, cols));
    let (out_tx, frames) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    let (exit_tx, exit) = oneshot::channel();
    let asked = control.clone();
    actix_rt::spawn(async move {
        while let Some(chunk) = output.next().await {
            if out_tx.send((if chunk.stderr { STDERR } else { STDOUT }, chunk.data)).is_err() {
                break;
            }
        }
        drop(out_tx);
        let _ = exit_tx.send(asked.exit_code().await);
    });
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
    actix_rt::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if let Some(sized) = sized {
            sized.await;
        }
        while let Some(Some(data)) = in_rx.recv().await {
            if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                return;
            }
        }
        let _ = input.shutdown().await;
    });
    let closer = in_tx.clone();
    let resizer = control.clone();
    Running {
        output: frames,
        exit,
        input: Box::new(move |data| {
            let _ = in_tx.send(data);
        }),
        resize: Box::new(move |data| {
            if let Some((rows, cols)) = size(data) {
                actix_rt::spawn(resizer.resize(rows, cols));
            }
        }),
        hang_up: Box::new(move || {
            let _ = closer.send(None);
            if tty {
                actix_rt::spawn(control.hang_up());
            }
        }),
    }
}

/// Runs `argv` beside container `id` and serves its streams on `send`/`recv` until it ends.
pub async fn session(
    runtime: Arc<dyn ContainerRuntime>,
    id: &str,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    // The gateway's frames, read on a task of their own: a frame read is not cancel-safe,
    // so it must not be a branch of the select below.
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<(u8, Vec<u8>)>();
    let reader = actix_rt::spawn(async move {
        while let Some(f) = read_frame(&mut recv).await {
            if frames_tx.send(f).is_err() {
                return;
            }
        }
    });
    // A terminal's first size: kubectl sends it at once; waited for (briefly) so the
    // command starts with it rather than 0×0 (a shell's first `stty size` raced it).
    let mut early = Vec::new();
    let mut size = None;
    if tty {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while size.is_none() {
            match tokio::time::timeout_at(until, frames.recv()).await {
                Ok(Some((RESIZE, data))) => size = Some(data),
                Ok(Some(frame)) => early.push(frame),
                Ok(None) | Err(_) => break,
            }
        }
    }
    let started = match runtime.exec_session(id, argv.clone(), stdin, tty).await {
        Ok(ExecSession::Command(cmd)) => run_command(cmd, stdin, tty, size.as_deref())
            .map_err(|e| format!("cannot run {:?} in the container: {e}", argv.first().cloned().unwrap_or_default())),
        Ok(ExecSession::Attached(exec)) => Ok(run_attached(exec, tty, size.as_deref())),
        Err(e) => Err(e.to_string()),
    };
    let mut running = match started {
        Ok(r) => r,
        Err(message) => {
            reader.abort();
            let _ = write_frame(&mut send, STATUS, failure(&message).to_string().as_bytes()).await;
            let _ = send.finish();
            return;
        }
    };
    // What came before the size goes first (kubectl sends the size before any input).
    for frame in early {
        match frame {
            (STDIN, data) => (running.input)(Some(data)),
            (CLOSE, data) if data.first() == Some(&STDIN) => (running.input)(None),
            _ => {}
        }
    }
    let mut code: Option<i32> = None;
    let mut input_open = true;
    loop {
        tokio::select! {
            out = running.output.recv() => match out {
                Some((ch, data)) => {
                    if write_frame(&mut send, ch, &data).await.is_err() {
                        (running.hang_up)();
                        break;
                    }
                }
                // Every reader ended: the output is complete.
                None => {
                    if code.is_none() {
                        code = Some((&mut running.exit).await.unwrap_or(1));
                    }
                    break;
                }
            },
            frame = frames.recv(), if input_open => match frame {
                Some((STDIN, data)) => (running.input)(Some(data)),
                Some((RESIZE, data)) => (running.resize)(&data),
                Some((CLOSE, data)) if data.first() == Some(&STDIN) => (running.input)(None),
                Some(_) => {}
                None => {
                    input_open = false;
                    (running.hang_up)();
                }
            },
            c = &mut running.exit, if code.is_none() => {
                code = Some(c.unwrap_or(1));
                // Output still in flight is sent; a background process that keeps the
                // streams open does not hold the end back for long.
                while let Ok(Some((ch, data))) =
                    tokio::time::timeout(std::time::Duration::from_millis(300), running.output.recv()).await
                {
                    if write_frame(&mut send, ch, &data).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    reader.abort();
    drop(running);
    let status = exit_status(code.unwrap_or(1));
    let _ = write_frame(&mut send, STATUS, status.to_string().as_bytes()).await;
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_kubernetes_writes_them() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(
            (s["reason"].as_str(), s["details"]["causes"][0]["message"].as_str()),
            (Some("NonZeroExitCode"), Some("3"))
        );
    }

    #[test]
    fn a_pty_opens() {
        let (c, t) = open_pty().unwrap();
        resize(c.as_raw_fd(), br#"{"Width":100,"Height":40}"#);
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes into the winsize we own.
        unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_col, ws.ws_row), (100, 40));
    }
}
