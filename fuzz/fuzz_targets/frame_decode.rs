//! Any bytes a peer may send: decoding must end in a frame or a typed error, never a
//! panic, a hang or an allocation past the frame limit; a decoded frame re-encodes to
//! the same bytes.
#![no_main]

use keelson_transport::frame::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((env, used)) = decode(data, 64 * 1024) {
        assert!(used <= data.len());
        let again = encode(&env, 64 * 1024).expect("a decoded envelope encodes");
        let (back, _) = decode(&again, 64 * 1024).expect("an encoded envelope decodes");
        assert_eq!(back, env);
    }
});
