//! The supervision runtime with real actix actors, in one process.
//!
//! What these check:
//! - a panic in a sync handler, an async handler, `started` or `stopping` crashes only
//!   that actor; it comes back as incarnation + 1, and a sibling busy at the same time
//!   loses no message;
//! - a `Ref` held across a restart reaches the new incarnation, and gets `NotRunning`
//!   (not silence) while none runs;
//! - strategies, restart types, back-off growth, escalation up the tree, ordered
//!   shutdown with a child that ignores its stop, dynamic children;
//! - a storm of 1,000 kills in a tree of 200 under load is absorbed below the root,
//!   with every message answered or failed and the registry's counts exact.

mod support;

mod crashes;
mod storm;
mod strategies;
