//! Printing trees and events for people (`keelson tree`, `keelson events`).

use std::fmt::Write;

use keelson_actors::runtime::{ActorInfo, ActorState, Event, EventKind, TreeSnapshot};

/// A tree like `pstree`, with one row per actor and columns for what an operator
/// watches: state, incarnation, restarts, backlog, messages handled, uptime, last exit.
pub fn tree(snapshot: &TreeSnapshot) -> String {
    let mut rows: Vec<[String; 9]> = Vec::new();
    for (i, a) in snapshot.actors.iter().enumerate() {
        rows.push([
            label(&snapshot.actors, i),
            state(a.state).to_string(),
            a.incarnation.to_string(),
            format!("{}/{}", a.restarts, a.restarts_in_window),
            a.backlog.to_string(),
            a.handled.to_string(),
            a.uptime_ms.map(duration).unwrap_or_else(|| "-".into()),
            a.last_exit.as_ref().map(|e| e.reason.to_string()).unwrap_or_else(|| "-".into()),
            a.info.clone().unwrap_or_default(),
        ]);
    }
    let head = ["ACTOR", "STATE", "INC", "RESTARTS", "BACKLOG", "HANDLED", "UPTIME", "LAST EXIT", "DETAIL"];
    let mut widths = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("{} (pid {})\n", snapshot.member, snapshot.pid);
    let mut line = |cells: &[String]| {
        let start = out.len();
        for (c, w) in cells.iter().zip(widths) {
            let _ = write!(out, "{c}{}  ", " ".repeat(w - c.chars().count()));
        }
        out.truncate(start + out[start..].trim_end().len());
        out.push('\n');
    };
    line(&head.map(String::from));
    for r in &rows {
        line(r);
    }
    out
}

/// The tree-drawing prefix and name of actor `i` (actors are sorted by path).
fn label(actors: &[ActorInfo], i: usize) -> String {
    let path = actors[i].path.as_str();
    let depth = path.matches('/').count() - 1;
    if depth == 0 {
        return path.to_string();
    }
    let mut prefix = String::new();
    // For each ancestor level, draw a bar if that ancestor has a later sibling.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for level in 1..depth {
        let ancestor = format!("/{}", segments[..=level].join("/"));
        prefix.push_str(if has_later_sibling(actors, &ancestor) { "│  " } else { "   " });
    }
    prefix.push_str(if has_later_sibling(actors, path) { "├─ " } else { "└─ " });
    prefix + actors[i].path.name()
}

fn has_later_sibling(actors: &[ActorInfo], path: &str) -> bool {
    let Some((parent, _)) = path.rsplit_once('/') else { return false };
    let depth = path.matches('/').count();
    actors.iter().any(|a| {
        let p = a.path.as_str();
        p > path && p.matches('/').count() == depth && p.rsplit_once('/').is_some_and(|(par, _)| par == parent)
    })
}

fn state(s: ActorState) -> &'static str {
    match s {
        ActorState::Starting => "starting",
        ActorState::Running => "running",
        ActorState::Restarting => "restarting",
        ActorState::Stopped => "stopped",
        ActorState::Failed => "failed",
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// One event as a line: time, path, incarnation, what happened.
pub fn event(e: &Event) -> String {
    let what = match &e.event {
        EventKind::Started => "started".to_string(),
        EventKind::Exited { reason } => format!("exited: {reason}"),
        EventKind::Restarting { delay_ms } => format!("restarting in {delay_ms} ms"),
        EventKind::Escalated { reason } => format!("gave up: {reason}"),
        EventKind::Removed => "removed".to_string(),
    };
    let secs = e.at_ms / 1000;
    let (h, m, s, ms) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60, e.at_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}  {}  #{}  {what}", e.path, e.incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_actors::runtime::ActorPath;

    fn actor(p: &str) -> ActorInfo {
        ActorInfo {
            path: ActorPath::parse(p).unwrap(),
            kind: "X".into(),
            restart: "permanent".into(),
            state: ActorState::Running,
            incarnation: 1,
            restarts: 0,
            restarts_in_window: 0,
            kills: 0,
            crashes: 0,
            last_exit: None,
            uptime_ms: Some(65_000),
            handled: 3,
            backlog: 0,
            handler_us: 0,
            info: None,
        }
    }

    #[test]
    fn draws_a_tree_with_columns() {
        let snap = TreeSnapshot {
            member: "m".into(),
            pid: 1,
            at_ms: 0,
            actors: ["/m", "/m/a", "/m/a/x", "/m/a/y", "/m/b"].map(actor).to_vec(),
        };
        let out = tree(&snap);
        let names: Vec<&str> = out.lines().skip(2).map(|l| l.split("  running").next().unwrap().trim_end()).collect();
        assert_eq!(names, ["/m", "├─ a", "│  ├─ x", "│  └─ y", "└─ b"]);
        assert!(out.lines().nth(1).unwrap().starts_with("ACTOR"));
        assert!(out.contains("1m5s"));
    }
}
