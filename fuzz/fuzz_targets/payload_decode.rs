//! Payloads of keelson's own messages (join requests, probe requests) from untrusted
//! peers: typed errors only.
#![no_main]

use keelson_transport::frame::from_payload;
use keelson_transport::join::JoinRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = from_payload::<JoinRequest>(data);
    let _ = from_payload::<Vec<String>>(data);
});
