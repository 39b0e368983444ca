//! Starting, driving and stopping `keelson` processes from tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Cluster tests run one at a time: they are heavy, and each owns its processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn keelson() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelson"));
    cmd.env_remove("KEELSON_DATA_DIR").env("RUST_LOG", "info");
    cmd
}

/// A fresh data folder, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keelson-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for Scratch {
    /// Removes the folder, unless `KEELSON_KEEP_SCRATCH` is set (to read a failed run's logs).
    /// A failing test first prints what its members logged, so a CI run that fails where
    /// the folder is gone still says why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_member_logs(&self.0);
        }
        if std::env::var_os("KEELSON_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Each member's `keelson.log` under `dir`: its warnings and errors, then its last lines.
fn print_member_logs(dir: &Path) {
    let mut logs = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == "keelson.log" || n == "up.log") {
                logs.push(p);
            }
        }
    }
    logs.sort();
    for log in logs {
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let alarms: Vec<&str> =
            lines.iter().copied().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        eprintln!("==== {} ({} lines; {} warnings and errors)", log.display(), lines.len(), alarms.len());
        for l in alarms.iter().skip(alarms.len().saturating_sub(40)) {
            eprintln!("  ! {}", cut(l));
        }
        for l in lines.iter().skip(lines.len().saturating_sub(15)) {
            eprintln!("  | {}", cut(l));
        }
    }
}

fn cut(line: &str) -> &str {
    line.char_indices().nth(400).map_or(line, |(i, _)| &line[..i])
}

/// Runs `keelson ARGS --data-dir DATA` to completion.
pub fn run(data: &Path, args: &[&str]) -> Output {
    let out = keelson().args(args).arg("--data-dir").arg(data).output().expect("keelson runs");
    if !out.status.success() {
        eprintln!("keelson {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub fn run_ok(data: &Path, args: &[&str]) -> String {
    let out = run(data, args);
    assert!(out.status.success(), "keelson {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every member's tree, from `keelson tree --json`.
pub fn trees(data: &Path) -> Vec<Value> {
    serde_json::from_str(&run_ok(data, &["tree", "--json"])).expect("tree --json is JSON")
}

pub fn actor(data: &Path, path: &str) -> Option<Value> {
    trees(data)
        .into_iter()
        .flat_map(|t| t["actors"].as_array().cloned().unwrap_or_default())
        .find(|a| a["path"] == path)
}

pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let began = Instant::now();
    while began.elapsed() < limit {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never happened within {limit:?}: {what}");
}

/// A long-running `keelson` process (up, server), killed if the test fails.
pub struct Running {
    pub child: Child,
    pub stdout: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(data: &Path, args: &[&str], log: &Path) -> Self {
        let err = std::fs::File::create(log).unwrap();
        let mut child = keelson()
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("keelson starts");
        let out = child.stdout.take().unwrap();
        let (tx, stdout) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stdout, seen: Vec::new() }
    }

    /// Waits for a line of standard output that contains `text`.
    pub fn wait_for_line(&mut self, text: &str, limit: Duration) -> String {
        let began = Instant::now();
        while began.elapsed() < limit {
            if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
        }
        panic!("no line with {text:?} within {limit:?}; saw {:?}", self.seen);
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Ctrl-C, as a user stops `up`: asserts a clean exit (code 0) within `limit`.
    pub fn stop(&mut self, limit: Duration) {
        self.signal(libc::SIGINT);
        assert_eq!(self.wait(limit), 0, "{} stops cleanly on SIGINT", self.child.id());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let began = Instant::now();
        while began.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {} did not exit within {limit:?}", self.child.id());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let began = Instant::now();
            while began.elapsed() < Duration::from_secs(20) {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// A bare HTTP/1.1 POST (to check what the door answers a client without the CLI).
pub fn http_post(url: &str, path: &str, body: &str, bearer: Option<&str>) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A bare HTTP/1.1 GET; returns the body.
pub fn http_get(url: &str, path: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

pub fn door(data: &Path, member: &str) -> Value {
    try_door(data, member).unwrap_or_else(|| panic!("no door file for {member}"))
}

/// The member's door file, if it is there right now (a restarting member removes it).
pub fn try_door(data: &Path, member: &str) -> Option<Value> {
    let bytes = std::fs::read(data.join(member).join("admin.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One authenticated HTTP call to a member's door: (status, JSON body); `None` when
/// the member is not there or gives no answer within `timeout`.
pub fn door_call(
    data: &Path,
    member: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Option<(u16, Value)> {
    let door = try_door(data, member)?;
    let token = std::fs::read_to_string(data.join("admin-token")).ok()?;
    let addr: std::net::SocketAddr = door["url"].as_str()?.trim_start_matches("http://").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token.trim(),
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let json = resp.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    Some((code, json))
}

/// What `source` gives, as it comes, on a thread of its own (until it ends).
fn chunks(mut source: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = source.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
    });
    output
}

/// `kubectl exec` into `pod` as a person uses it, on any runtime: a command's stdout,
/// stderr and exit code (3 → kubectl's 3), and a shell on a terminal that starts at the
/// terminal's size, follows a resize, and whose exit code (4) is kubectl's.
pub fn exec_checks(kubeconfig: &Path, pod: &str) {
    let out =
        crate::kubectl::kubectl(kubeconfig, &["exec", pod, "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));
    let mut shell = Terminal::run(kubeconfig, &["exec", "-it", pod, "--", "sh"]);
    shell.type_line("echo hello-$((6*7)); stty size");
    shell.expect("hello-42");
    shell.expect("24 80");
    shell.resize(30, 100);
    std::thread::sleep(Duration::from_millis(500));
    shell.type_line("stty size");
    shell.expect("30 100");
    shell.type_line("exit 4");
    assert_eq!(shell.wait(), Some(4), "the shell's exit code is kubectl's");
}

/// kubectl on a terminal of its own (a pseudo-terminal the test holds), as a person runs it.
pub struct Terminal {
    controller: std::fs::File,
    child: std::process::Child,
    seen: String,
    output: std::sync::mpsc::Receiver<String>,
}

impl Terminal {
    pub fn run(kubeconfig: &Path, args: &[&str]) -> Self {
        use std::os::fd::FromRawFd;
        let (mut c, mut t) = (0, 0);
        let size = libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: openpty fills in two descriptors we then own.
        assert_eq!(unsafe { libc::openpty(&mut c, &mut t, std::ptr::null_mut(), std::ptr::null(), &size) }, 0);
        // SAFETY: both descriptors are ours.
        let (controller, terminal) = unsafe { (std::fs::File::from_raw_fd(c), std::fs::File::from_raw_fd(t)) };
        let mut cmd = std::process::Command::new("kubectl");
        cmd.args(args).env("KUBECONFIG", kubeconfig);
        cmd.stdin(terminal.try_clone().unwrap()).stdout(terminal.try_clone().unwrap()).stderr(terminal);
        // SAFETY: setsid and TIOCSCTTY between fork and exec: the terminal becomes kubectl's.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let output = chunks(controller.try_clone().unwrap());
        Self { controller, child, seen: String::new(), output }
    }

    pub fn type_line(&mut self, line: &str) {
        write!(self.controller, "{line}\r").unwrap();
    }

    pub fn expect(&mut self, text: &str) {
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(10) {
            if let Some(i) = self.seen.find(text) {
                self.seen.drain(..i + text.len());
                return;
            }
            if let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(100)) {
                self.seen.push_str(&chunk);
            }
        }
        panic!("the terminal never showed {text:?}; it showed {:?}", self.seen);
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads the winsize we own; the kernel tells kubectl (SIGWINCH).
        unsafe { libc::ioctl(self.controller.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }

    pub fn wait(&mut self) -> Option<i32> {
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(15) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

/// A command whose output is read as it comes (`kubectl logs -f`).
pub struct Follower {
    child: Child,
    output: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    pub fn start(kubeconfig: &Path, args: &[&str]) -> Self {
        let mut child =
            Command::new("kubectl").args(args).env("KUBECONFIG", kubeconfig).stdout(Stdio::piped()).spawn().unwrap();
        let output = chunks(child.stdout.take().unwrap());
        Self { child, output }
    }

    /// Waits (10 s at most) for `text` in what the command printed.
    pub fn expect(&mut self, text: &str) {
        let began = Instant::now();
        let mut seen = String::new();
        while !seen.contains(text) && began.elapsed() < Duration::from_secs(10) {
            if let Ok(chunk) = self.output.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&chunk);
            }
        }
        assert!(seen.contains(text), "{text:?} never came; the command printed: {seen}");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
