//! `/<agent>/kubelet`: a node's agent. Today the hollow kubelet (simulated nodes for
//! scale tests); the kubelet with real container runtimes is issue P7's.

pub mod hollow;

pub use hollow::{HollowConfig, HollowKubelet, HOLLOW_KEY, PHASE_ANNOTATION};
