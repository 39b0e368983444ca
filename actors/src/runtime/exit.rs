//! Why an incarnation ended. Supervisors branch on this (normal or not) and the
//! tree shows it; it is the "exit signal" of an Erlang link.

use serde::{Deserialize, Serialize};

use super::ActorPath;

/// How an actor was killed on purpose (chaos, or an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillMode {
    /// Panic inside the actor's task: the real crash path.
    Panic,
    /// Ask it to stop (its `stopping` runs), recorded as an abnormal exit.
    Stop,
}

impl std::str::FromStr for KillMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "panic" => Ok(Self::Panic),
            "stop" => Ok(Self::Stop),
            _ => Err(format!("kill mode {s:?} is not panic or stop")),
        }
    }
}

/// The end of one incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitReason {
    /// The actor stopped by its own decision.
    Normal,
    /// Its supervisor stopped it (shutdown or a sibling's restart); `forced` when it
    /// did not stop within its shutdown timeout and was aborted.
    Shutdown { forced: bool },
    /// Killed on purpose through the chaos door.
    Killed { mode: KillMode },
    /// A panic in a handler, in `started` or `stopping`, or in an async handler.
    Panic { message: String },
    /// The actor gave up on its own with a reason (a child process died, a port is gone).
    Failed { message: String },
    /// A supervisor exceeded its restart intensity because of `child`.
    Escalated { child: ActorPath, cause: Box<ExitReason> },
}

impl ExitReason {
    /// Abnormal exits restart transient children; normal ones do not.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Self::Normal | Self::Shutdown { .. })
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into() }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Normal => f.write_str("normal"),
            Self::Shutdown { forced: false } => f.write_str("shutdown"),
            Self::Shutdown { forced: true } => f.write_str("shutdown (forced)"),
            Self::Killed { mode } => write!(f, "killed ({})", if *mode == KillMode::Panic { "panic" } else { "stop" }),
            Self::Panic { message } => write!(f, "panic: {message}"),
            Self::Failed { message } => write!(f, "failed: {message}"),
            Self::Escalated { child, cause } => {
                write!(f, "restart intensity exceeded by {child} ({cause})")
            }
        }
    }
}
