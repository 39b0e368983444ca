//! Container logs in the CRI format, as Kubernetes' runtimes write them:
//!
//! ```text
//! 2026-11-29T23:59:59.123456789Z stdout F a whole line
//! 2026-11-29T23:59:59.123456790Z stderr P the first part of a long line
//! ```
//!
//! and the reading `kubectl logs` asks for: the last N lines, those since a time,
//! with or without their timestamps, and following new ones until the container ends.

use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Now, with nanoseconds, in UTC (`2026-11-29T23:59:59.123456789Z`).
pub fn timestamp_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = crate::api::rfc3339(now.as_secs());
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), now.subsec_nanos())
}

/// One log entry: `<time> <stream> <F|P> <text>\n`.
pub fn cri_line(time: &str, stream: &str, full: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(time.len() + text.len() + 12);
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// An entry read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    /// Whether the line ends here (`F`) or continues in the next entry (`P`).
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses one entry (without its newline); `None` for a malformed one.
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Entry { time, stream, full, text: parts.next().unwrap_or_default() })
}

/// What `kubectl logs` asks for (the `log` subresource's query).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last this many lines.
    pub tail: Option<usize>,
    /// Only lines written at or after this time (seconds since the epoch).
    pub since: Option<f64>,
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// How an entry is shown: its text (with its time before it, if asked), and the newline
/// of a whole line.
fn render(entry: &Entry<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(entry.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(entry.text);
    if entry.full {
        out.push(b'\n');
    }
}

fn wanted(entry: &Entry<'_>, since: Option<f64>) -> bool {
    since.is_none_or(|s| crate::api::parse_time(entry.time).is_some_and(|t| t >= s))
}

/// The log as asked for from the complete entries of `data` (a trailing entry without
/// its newline is left for later): the rendered bytes, and how far `data` was read.
pub fn select(data: &[u8], opts: &LogOptions) -> (Vec<u8>, usize) {
    let consumed = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let entries: Vec<Entry<'_>> =
        data[..consumed].split(|b| *b == b'\n').filter_map(parse).filter(|e| wanted(e, opts.since)).collect();
    // The last N lines: N whole lines, counting a line's parts as one.
    let start = match opts.tail {
        None => 0,
        Some(n) => {
            let mut lines = 0;
            let mut start = entries.len();
            for (i, e) in entries.iter().enumerate().rev() {
                if e.full {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                start = i;
            }
            start
        }
    };
    let mut out = Vec::new();
    for e in &entries[start..] {
        render(e, opts.timestamps, &mut out);
    }
    (out, consumed)
}

/// Writes the log at `path` to `out` as `opts` asks; when following, keeps writing new
/// entries until `ended()` is true and the file has nothing more. A log not made yet
/// (its container has written nothing) is empty, and followed once it is made.
pub async fn copy<W: AsyncWrite + Unpin>(
    path: &Path,
    opts: &LogOptions,
    ended: impl Fn() -> bool,
    out: &mut W,
) -> std::io::Result<()> {
    let mut file = loop {
        let finished = ended();
        match tokio::fs::File::open(path).await {
            Ok(f) => break f,
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Err(_) if !opts.follow || finished => return Ok(()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    let (first, mut offset) = select(&data, opts);
    let mut left = opts.limit_bytes.unwrap_or(u64::MAX);
    let send = |bytes: &[u8], left: &mut u64| {
        let n = (bytes.len() as u64).min(*left) as usize;
        *left -= n as u64;
        bytes[..n].to_vec()
    };
    out.write_all(&send(&first, &mut left)).await?;
    out.flush().await?;
    if !opts.follow {
        return Ok(());
    }
    let follow = LogOptions { tail: None, since: None, ..opts.clone() };
    loop {
        if left == 0 {
            return Ok(());
        }
        let finished = ended();
        file.seek(SeekFrom::Start(offset as u64)).await?;
        let mut more = Vec::new();
        file.read_to_end(&mut more).await?;
        let (bytes, used) = select(&more, &follow);
        offset += used;
        if !bytes.is_empty() {
            out.write_all(&send(&bytes, &mut left)).await?;
            out.flush().await?;
        } else if finished {
            return Ok(());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Vec<u8> {
        let mut data = Vec::new();
        data.extend(cri_line("2026-11-29T10:00:00.000000001Z", "stdout", true, b"one"));
        data.extend(cri_line("2026-11-29T10:00:01.000000000Z", "stderr", false, b"tw"));
        data.extend(cri_line("2026-11-29T10:00:01.000000001Z", "stderr", true, b"o"));
        data.extend(cri_line("2026-11-29T10:00:02.000000000Z", "stdout", true, b"three"));
        data.extend_from_slice(b"2026-11-29T10:00:03.000000000Z stdout F unfinish");
        data
    }

    #[test]
    fn entries_round_trip() {
        let line = cri_line("2026-11-29T10:00:00.5Z", "stdout", false, b"a b c");
        let e = parse(&line[..line.len() - 1]).unwrap();
        assert_eq!(e, Entry { time: "2026-11-29T10:00:00.5Z", stream: "stdout", full: false, text: b"a b c" });
        assert!(parse(b"garbage").is_none());
        assert_eq!(parse(b"t stdout F ").unwrap().text, b"");
    }

    #[test]
    fn selects_tail_since_and_timestamps() {
        let data = log();
        let (all, used) = select(&data, &LogOptions::default());
        assert_eq!(all, b"one\ntwo\nthree\n");
        assert_eq!(&data[used..], b"2026-11-29T10:00:03.000000000Z stdout F unfinish", "partial entry left");
        let tail = |n| select(&data, &LogOptions { tail: Some(n), ..Default::default() }).0;
        assert_eq!(tail(1), b"three\n");
        assert_eq!(tail(2), b"two\nthree\n", "a line's parts count once");
        assert_eq!(tail(0), b"");
        assert_eq!(tail(9), b"one\ntwo\nthree\n");
        let since = parse_time_of("2026-11-29T10:00:01Z");
        assert_eq!(select(&data, &LogOptions { since: Some(since), ..Default::default() }).0, b"two\nthree\n");
        let stamped = select(&data, &LogOptions { tail: Some(1), timestamps: true, ..Default::default() }).0;
        assert_eq!(stamped, b"2026-11-29T10:00:02.000000000Z three\n");
    }

    fn parse_time_of(s: &str) -> f64 {
        crate::api::parse_time(s).unwrap()
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        let t = timestamp_now();
        assert_eq!(t.len(), "2026-11-29T23:59:59.123456789Z".len(), "{t}");
        assert!(crate::api::parse_time(&t).is_some());
    }

    #[tokio::test]
    async fn follows_until_the_container_ends() {
        let dir = std::env::temp_dir().join(format!("keelson-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, cri_line("2026-11-29T10:00:00Z", "stdout", true, b"first")).unwrap();
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, e) = (path.clone(), ended.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            std::io::Write::write_all(&mut f, &cri_line("2026-11-29T10:00:01Z", "stdout", true, b"second")).unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
            e.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut out = Vec::new();
        let opts = LogOptions { follow: true, ..Default::default() };
        copy(&path, &opts, || ended.load(std::sync::atomic::Ordering::SeqCst), &mut out).await.unwrap();
        writer.await.unwrap();
        assert_eq!(out, b"first\nsecond\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_log_not_made_yet_is_empty_and_followed_once_made() {
        let dir = std::env::temp_dir().join(format!("keelson-logs-late-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut out = Vec::new();
        copy(&path, &LogOptions::default(), || false, &mut out).await.unwrap();
        assert!(out.is_empty(), "no log yet: nothing, at once");

        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, e) = (path.clone(), ended.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            std::fs::write(&p, cri_line("2026-11-29T10:00:00Z", "stdout", true, b"late")).unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            e.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let opts = LogOptions { follow: true, ..Default::default() };
        copy(&path, &opts, || ended.load(std::sync::atomic::Ordering::SeqCst), &mut out).await.unwrap();
        writer.await.unwrap();
        assert_eq!(out, b"late\n", "followed from the moment it was made");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
