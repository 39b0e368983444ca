//! CPU time spent by the processes a benchmark runs, from `/proc`: on a shared 2-core
//! machine a rate moves by a third between runs, while the CPU each unit of work costs
//! moves far less, so it is the figure to compare changes by.

use std::time::Duration;

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and
/// may hold spaces): the state first, then the parent's pid; user and system time are
/// the 12th and 13th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User and system CPU time of process `pid` (all its threads) so far.
pub fn used(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(from_ticks(ticks))
}

/// `ticks` of the kernel's clock (`_SC_CLK_TCK` a second) as a duration.
fn from_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// CPU time the whole machine has spent busy so far (every CPU: all but idle and
/// iowait, from the first line of `/proc/stat`).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let busy: u64 = ticks.iter().enumerate().filter(|(i, _)| !matches!(i, 3 | 4)).map(|(_, t)| t).sum();
    Some(from_ticks(busy))
}

/// The processes whose parent is `pid`, with their command lines.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(*child).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .map(|child| {
            let cmd = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            (child, String::from_utf8_lossy(&cmd).replace('\0', " ").trim().to_string())
        })
        .collect()
}

/// CPU time of named processes, read at one moment.
pub struct Sample(Vec<(String, u32, Duration)>);

impl Sample {
    pub fn take(processes: &[(String, u32)]) -> Self {
        Self(processes.iter().map(|(name, pid)| (name.clone(), *pid, used(*pid).unwrap_or_default())).collect())
    }

    /// What each process used since `before`, per `units` of work: the total, then `name 123 µs` parts.
    pub fn per_unit_since(&self, before: &Sample, units: usize) -> String {
        let mut total = Duration::ZERO;
        let mut parts = Vec::new();
        for (name, pid, now) in &self.0 {
            let was = before.0.iter().find(|(_, p, _)| p == pid).map_or(Duration::ZERO, |b| b.2);
            let spent = now.saturating_sub(was);
            total += spent;
            parts.push(format!("{name} {:.0} µs", spent.as_secs_f64() * 1e6 / units.max(1) as f64));
        }
        format!("{:.0} µs in all: {}", total.as_secs_f64() * 1e6 / units.max(1) as f64, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_its_child_is_found() {
        let me = std::process::id();
        let before = used(me).expect("this process's stat");
        let began = std::time::Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(used(me).unwrap() > before, "300 ms of spinning shows in the counters");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let found = children(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|(pid, cmd)| *pid == child.id() && cmd == "sleep 5"), "{found:?}");
        assert_eq!(used(u32::MAX), None);
        let machine = machine_busy().expect("/proc/stat");
        assert!(machine >= used(me).unwrap(), "the machine has been busy at least as long as this process");
    }
}
