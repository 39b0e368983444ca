//! Real QUIC between endpoints in one process, each on its own runtime and port.
//!
//! What these check:
//! - request/response, one-way, streamed replies and raw bidirectional streams between
//!   named actors on two and three endpoints;
//! - a peer with a certificate from another CA, or with none, is refused; a peer whose
//!   certificate does not name who it claims to be is cut off;
//! - a joiner with a valid token gets a certificate and talks both ways; an expired,
//!   revoked or foreign token is refused, and a peer without a certificate may ask for
//!   nothing but to join;
//! - garbage on a stream closes that stream only: the endpoint keeps serving;
//! - with 20% loss, 50 ms ± 20 ms delay and 5% duplication, 10,000 requests all
//!   complete, each handled exactly once, each with its own reply;
//! - a partitioned link gives errors within the caller's deadline, and traffic resumes
//!   after healing without a restart;
//! - a bidirectional stream carries 100 MB each way under 5% loss intact.

mod support;

mod faults;
mod join;
mod patterns;
mod security;
