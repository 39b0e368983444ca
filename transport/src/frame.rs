//! Envelopes and their frames (see the crate docs for the layout).

use serde::{Deserialize, Serialize};

/// The frame format version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Version byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;
/// Largest body accepted unless configured otherwise (snapshots are streamed in chunks).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// bincode's own allocation bound; the frame length check comes first, this is a backstop.
const BINCODE_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not enough bytes yet: read more and try again (not a fault).
    #[error("incomplete frame: need {needed} more bytes")]
    Incomplete { needed: usize },
    #[error("unknown wire version {0} (this build speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An actor somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub member: String,
    pub path: String,
}

/// What an envelope is, so the receiver knows whether a reply is owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Expects exactly one `Response` or `Failure` before `deadline_ms` (sender's clock, relative).
    Request {
        deadline_ms: u32,
    },
    Response,
    /// No reply.
    OneWay,
    /// The `seq`-th item of a streamed reply (watches), then `StreamEnd`.
    StreamItem {
        seq: u64,
    },
    StreamEnd,
    /// The request failed remotely; the payload is a UTF-8 reason.
    Failure {
        code: u16,
    },
    /// Opens a raw bidirectional stream: after this frame, bytes flow both ways.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub to: Address,
    pub from: Address,
    pub correlation: u64,
    pub kind: Kind,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<BINCODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<BINCODE_LIMIT>()
}

/// Encodes a keelson message (not a Kubernetes object: those ride as JSON) as a payload.
pub fn to_payload<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a payload made by [`to_payload`]; trailing bytes are an error.
pub fn from_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| Error::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(Error::Malformed(format!("{} trailing bytes in a payload", bytes.len() - used)));
    }
    Ok(value)
}

/// Encodes `value` as [`to_payload`] does, into `w` (a file: no buffer of the whole
/// payload's size is built); the bytes written.
pub fn write_payload<T: Serialize, W: std::io::Write>(value: &T, w: &mut W) -> Result<usize> {
    bincode::serde::encode_into_std_write(value, w, config()).map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a value [`write_payload`] or [`to_payload`] wrote from `r` — the first one
/// there, if more follows (a record's leading field alone, say). Without the 64 MiB
/// bound of payloads off the wire (which counts every byte read, not only what is
/// allocated): for what this member saved itself, a store snapshot that outgrew it.
pub fn read_payload<T: serde::de::DeserializeOwned, R: std::io::Read>(r: &mut R) -> Result<T> {
    bincode::serde::decode_from_std_read(r, bincode::config::standard()).map_err(|e| Error::Malformed(e.to_string()))
}

/// Encodes one envelope as a frame.
pub fn encode(env: &Envelope, max: usize) -> Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(env, config()).map_err(|e| Error::Encode(e.to_string()))?;
    if body.len() > max {
        return Err(Error::TooLarge { len: body.len(), max });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes the frame at the start of `buf`; returns it and how many bytes it used.
pub fn decode(buf: &[u8], max: usize) -> Result<(Envelope, usize)> {
    if buf.is_empty() {
        return Err(Error::Incomplete { needed: HEADER_LEN });
    }
    if buf[0] != WIRE_VERSION {
        return Err(Error::UnknownVersion(buf[0]));
    }
    if buf.len() < HEADER_LEN {
        return Err(Error::Incomplete { needed: HEADER_LEN - buf.len() });
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Err(Error::Incomplete { needed: end - buf.len() });
    }
    let (env, used) = bincode::serde::decode_from_slice::<Envelope, _>(&buf[HEADER_LEN..end], config())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    if used != len {
        return Err(Error::Malformed(format!("{} trailing bytes inside the frame", len - used)));
    }
    Ok((env, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_past_the_wire_bound_stream_to_and_from_files() {
        // 70 MiB in all: more than a payload off the wire may be.
        let big: Vec<serde_bytes::ByteBuf> =
            (0..70).map(|i| serde_bytes::ByteBuf::from(vec![i as u8; 1 << 20])).collect();
        let mut file = Vec::new();
        let written = write_payload(&("meta", &big), &mut file).unwrap();
        assert_eq!(written, file.len());
        assert!(from_payload::<(String, Vec<serde_bytes::ByteBuf>)>(&file).is_err(), "the wire's bound holds");
        let (meta, back): (String, Vec<serde_bytes::ByteBuf>) = read_payload(&mut &file[..]).unwrap();
        assert_eq!((meta.as_str(), &back), ("meta", &big));
        // The leading field alone, the rest unread.
        let mut r = &file[..];
        assert_eq!(read_payload::<String, _>(&mut r).unwrap(), "meta");
        assert!(r.len() > 70 << 20);
    }

    #[test]
    fn byte_runs_encode_as_sequences_of_u8_did() {
        // Logs and snapshots on disk were written before byte fields were `serde_bytes`:
        // both encodings must be the same bytes, both ways.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Seq(Vec<u8>, Option<Vec<u8>>);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Run(#[serde(with = "serde_bytes")] Vec<u8>, #[serde(with = "serde_bytes")] Option<Vec<u8>>);
        let data: Vec<u8> = (0..=255).chain(0..=255).collect();
        let seq = to_payload(&Seq(data.clone(), Some(data.clone()))).unwrap();
        let run = to_payload(&Run(data.clone(), Some(data.clone()))).unwrap();
        assert_eq!(seq, run);
        assert_eq!(from_payload::<Run>(&seq).unwrap(), Run(data.clone(), Some(data)));
        assert_eq!(to_payload(&Seq(vec![], None)).unwrap(), to_payload(&Run(vec![], None)).unwrap());
    }

    fn sample(payload: usize) -> Envelope {
        Envelope {
            to: Address { member: "server-2".into(), path: "/server-2/store/shard-0".into() },
            from: Address { member: "server-1".into(), path: "/server-1/api".into() },
            correlation: 42,
            kind: Kind::Request { deadline_ms: 5000 },
            payload: (0..payload).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn round_trips_and_reports_what_it_used() {
        let e = sample(300);
        let mut buf = encode(&e, DEFAULT_MAX_FRAME).unwrap();
        let first = buf.len();
        buf.extend(encode(&Envelope { correlation: 43, kind: Kind::OneWay, ..e.clone() }, DEFAULT_MAX_FRAME).unwrap());
        let (a, used) = decode(&buf, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!((a, used), (e.clone(), first));
        let (b, _) = decode(&buf[used..], DEFAULT_MAX_FRAME).unwrap();
        assert_eq!((b.correlation, b.kind), (43, Kind::OneWay));
    }

    #[test]
    fn kubernetes_objects_ride_as_json_bytes() {
        let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-0"}}"#.to_vec();
        let e = Envelope { payload: pod.clone(), ..sample(0) };
        let (back, _) = decode(&encode(&e, DEFAULT_MAX_FRAME).unwrap(), DEFAULT_MAX_FRAME).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&back.payload).unwrap();
        assert_eq!(v["metadata"]["name"], "web-0");
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let frame = encode(&sample(10), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(decode(&frame[..3], DEFAULT_MAX_FRAME), Err(Error::Incomplete { needed: 2 }));
        assert!(matches!(decode(&frame[..frame.len() - 1], DEFAULT_MAX_FRAME), Err(Error::Incomplete { needed: 1 })));
        let mut v2 = frame.clone();
        v2[0] = 2;
        assert_eq!(decode(&v2, DEFAULT_MAX_FRAME), Err(Error::UnknownVersion(2)));
        let mut huge = frame.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&huge, DEFAULT_MAX_FRAME), Err(Error::TooLarge { .. })));
        assert!(matches!(encode(&sample(2000), 1000), Err(Error::TooLarge { .. })));
        let mut garbage = vec![WIRE_VERSION, 0, 0, 0, 4];
        garbage.extend([0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(decode(&garbage, DEFAULT_MAX_FRAME), Err(Error::Malformed(_))));
    }

    /// 100,000 random and mutated frames: every one decodes or fails with a typed
    /// error; none panics or allocates past the limit.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x6b65656c);
        let good = encode(&sample(64), DEFAULT_MAX_FRAME).unwrap();
        let mut decoded = 0;
        for i in 0..100_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                (0..rng.usize(0..128)).map(|_| rng.u8(..)).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..b.len());
                    match rng.u8(..3) {
                        0 => b[at] = rng.u8(..),
                        1 => b.truncate(at.max(1)),
                        _ => b.insert(at, rng.u8(..)),
                    }
                }
                b
            };
            if decode(&buf, 4096).is_ok() {
                decoded += 1;
            }
        }
        assert!(decoded < 100_000);
    }
}
