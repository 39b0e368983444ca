//! `keelson bench …`: benchmarks that print figures (BENCHMARKS.md has the latest).

mod actors;
mod api;
mod cpu;
mod pods;
mod proxy;
mod scheduler;
mod store;
mod transport;

pub use actors::{actors, ActorBenchArgs};
pub use api::{api, ApiBenchArgs};
pub use pods::{pods, PodsBenchArgs};
pub use proxy::{proxy, ProxyBenchArgs};
pub use scheduler::{scheduler, SchedulerBenchArgs};
pub use store::{store, StoreBenchArgs};
pub use transport::{transport, transport_peer, TransportBenchArgs, TransportPeerArgs};

/// The end of a bench that used the scratch folder `dir`: removed after a run that
/// worked; a failed run keeps it, with its members' logs (`*/keelson.log`), and says
/// where, so the failure can be looked into.
fn finish<T>(dir: &std::path::Path, result: anyhow::Result<T>) -> anyhow::Result<T> {
    match &result {
        Ok(_) => drop(std::fs::remove_dir_all(dir)),
        Err(_) => eprintln!("the bench's data folder and its members' logs are kept in {}", dir.display()),
    }
    result
}

/// Prints what the members under `dir` have warned of so far (called while the cluster
/// still runs: its stop has warnings of its own): a run whose controllers changed
/// leader, or whose store was slow to answer a keep-alive, says so beside its figures
/// rather than only in logs that are then removed.
fn print_warnings(dir: &std::path::Path) {
    let warned = warnings(dir);
    if !warned.is_empty() {
        println!("the members logged warnings or errors during the run:");
        for ((member, message), n) in &warned {
            println!("  {member}: {n} × {message}");
        }
    }
}

/// The warnings and errors in the members' logs under `dir` (`<member>/keelson.log`,
/// text format), counted by member and message (fields and timestamps left out).
fn warnings(dir: &std::path::Path) -> std::collections::BTreeMap<(String, String), usize> {
    let mut seen = std::collections::BTreeMap::new();
    let mut logs = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    // The members' folders are within two levels of the bench's folder.
    for _ in 0..3 {
        let mut next = Vec::new();
        for folder in folders {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    next.push(path);
                } else if path.file_name().is_some_and(|n| n == "keelson.log") {
                    logs.push(path);
                }
            }
        }
        folders = next;
    }
    for log in logs {
        let member = log.parent().and_then(|p| p.file_name()).map_or_else(String::new, |n| n.to_string_lossy().into());
        let Ok(text) = std::fs::read_to_string(&log) else { continue };
        for message in text.lines().filter_map(log_warning) {
            *seen.entry((member.clone(), message)).or_insert(0) += 1;
        }
    }
    seen
}

/// The message of a text-format log line at WARN or ERROR: what follows its target
/// (`keelson_…: `), up to its first `field=value`.
fn log_warning(line: &str) -> Option<String> {
    let at = line.find(" WARN ").or_else(|| line.find(" ERROR "))?;
    let rest = &line[at..];
    let target = rest.find(" keelson")?;
    let message = &rest[target..];
    let message = &message[message.find(": ")? + 2..];
    let end = message
        .match_indices(' ')
        .map(|(i, _)| i)
        .find(|&i| message[i + 1..].split_whitespace().next().is_some_and(is_field))
        .unwrap_or(message.len());
    Some(message[..end].trim().to_string())
}

/// Whether `word` is a tracing field (`name=value`).
fn is_field(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_is_counted_by_its_message_without_fields() {
        let line = "2026-12-02T18:07:10.123456Z  WARN server-1/leader{epoch=4}: keelson_actors::controllers::elector: \
                    slow controller lease keep-alive took=1.2s since=1.9s ttl=3s";
        assert_eq!(log_warning(line).as_deref(), Some("slow controller lease keep-alive"));
        let line = "2026-12-02T18:07:10Z ERROR keelson_actors::runtime: lost the controller lease (epoch 7)";
        assert_eq!(log_warning(line).as_deref(), Some("lost the controller lease (epoch 7)"));
        assert_eq!(log_warning("2026-12-02T18:07:10Z  INFO keelson_actors::x: leading the controllers"), None);
    }
}
