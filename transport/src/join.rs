//! Joining a cluster with a token, as kubeadm's discovery tokens work.
//!
//! A token is `keelson1.<ca-sha256>.<id>.<secret>`: the hash of the cluster CA's
//! certificate lets the joiner check whom it talks to before it holds any credential
//! (members present their CA in their chain; the joiner pins it by hash), and the id
//! and secret let the member check the joiner. The joiner sends its name, role, QUIC
//! address and a fresh public key; the member answers with a certificate for that key,
//! signed by the CA, and the current members. Tokens expire and can be revoked; the
//! member keeps only a hash of each secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::frame::{self, from_payload, to_payload, Address, Envelope, Kind};
use crate::tls::{chains_to, ClusterCa, Credentials, Identity, Role, TlsError, ALPN};
use crate::Error;

/// The path join requests are sent to on any member.
pub const JOIN_PATH: &str = "/join";
const PREFIX: &str = "keelson1";

/// A join token as the joiner holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        match parts[..] {
            [PREFIX, ca, id, secret] if hex(ca, 64) && hex(id, 6) && hex(secret, 32) => {
                Ok(Self { ca_hash: ca.to_string(), id: id.to_string(), secret: secret.to_string() })
            }
            _ => Err("not a keelson join token (keelson1.<ca sha256>.<id>.<secret>)".into()),
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA hash a token carries.
pub fn ca_hash(ca: &CertificateDer<'_>) -> String {
    sha256_hex(ca.as_ref())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("the OS has randomness");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a member keeps about a token: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
}

impl TokenRecord {
    /// A new token for the cluster of `ca`, valid for `ttl`; returns it and its record.
    pub fn create(ca: &CertificateDer<'_>, ttl: Duration, description: &str) -> (JoinToken, TokenRecord) {
        let token = JoinToken { ca_hash: ca_hash(ca), id: random_hex(3), secret: random_hex(16) };
        let created_ms = now_ms();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: sha256_hex(token.secret.as_bytes()),
            created_ms,
            expires_ms: created_ms + ttl.as_millis() as u64,
            revoked: false,
            description: description.to_string(),
        };
        (token, record)
    }
}

/// Why a join was refused (also what the joiner is told).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JoinRefusal {
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
    #[error("wrong secret")]
    WrongSecret,
    #[error("bad request: {0}")]
    Bad(String),
}

/// Checks a presented token against the kept records.
pub fn check(records: &[TokenRecord], id: &str, secret: &str) -> Result<(), JoinRefusal> {
    let r = records.iter().find(|r| r.id == id).ok_or(JoinRefusal::Unknown)?;
    if r.revoked {
        return Err(JoinRefusal::Revoked);
    }
    if now_ms() >= r.expires_ms {
        return Err(JoinRefusal::Expired);
    }
    let given = sha256_hex(secret.as_bytes());
    let same = given.len() == r.secret_sha256.len()
        && given.bytes().zip(r.secret_sha256.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(JoinRefusal::WrongSecret)
    }
}

/// The joiner's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token_id: String,
    pub secret: String,
    pub name: String,
    pub role: Role,
    /// Where the joiner's own endpoint will listen, so members can reach it.
    pub quic_addr: SocketAddr,
    /// Raw public key (uncompressed P-256 point) to certify.
    pub public_key: Vec<u8>,
}

/// A member, as the join reply lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberAddr {
    pub name: String,
    pub role: Role,
    pub addr: SocketAddr,
}

/// The member's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    pub cert_pem: String,
    pub ca_pem: String,
    pub members: Vec<MemberAddr>,
}

/// A raw P-256 public key, for rcgen to certify.
struct RawKey(Vec<u8>);

impl PublicKeyData for RawKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl ClusterCa {
    /// Issues a certificate for `identity` on a key the holder generated (join).
    pub fn issue_for_key(&self, identity: &Identity, public_key: &[u8]) -> Result<String, TlsError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(TlsError::Verifier("the public key must be an uncompressed P-256 point".into()));
        }
        Ok(self.sign(identity, &RawKey(public_key.to_vec()))?.pem())
    }
}

/// Accepts a server whose chain holds a CA with the pinned hash and whose certificate
/// that CA signed: all a joiner can know before it holds the CA itself.
#[derive(Debug)]
struct PinnedCa {
    hash: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| ca_hash(c) == self.hash);
        match ca {
            Some(ca) if chains_to(end_entity, ca) => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General("the member's certificate is not from the pinned CA".into())),
            None => Err(rustls::Error::General("no CA with the token's hash: not this cluster".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Joins through the member at `addr`: returns credentials for `identity` and the
/// members to add as peers. `quic_addr` is where the joiner will listen.
pub async fn join(
    addr: SocketAddr,
    token: &JoinToken,
    identity: &Identity,
    quic_addr: SocketAddr,
    deadline: Duration,
) -> Result<(Credentials, Vec<MemberAddr>), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::from)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { hash: token.ca_hash.clone(), provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| Error::Config(e.to_string()))?;
    let bind = if addr.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
    let bind = if addr.ip().is_loopback() { SocketAddr::new(addr.ip(), 0) } else { bind };
    let endpoint = quinn::Endpoint::client(bind).map_err(Error::Io)?;
    let key = rcgen::KeyPair::generate().map_err(TlsError::from)?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        name: identity.name.clone(),
        role: identity.role,
        quic_addr,
        public_key: key.public_key_raw().to_vec(),
    };
    let peer = addr.to_string();
    let exchange = async {
        let conn = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, "join.keelson")
            .map_err(|e| Error::Unreachable { peer: peer.clone(), reason: e.to_string() })?
            .await
            .map_err(|e| Error::Refused { peer: peer.clone(), reason: e.to_string() })?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| Error::Closed(e.to_string()))?;
        let env = Envelope {
            to: Address { member: String::new(), path: JOIN_PATH.into() },
            from: Address { member: identity.name.clone(), path: "/join".into() },
            correlation: 1,
            kind: Kind::Request { deadline_ms: deadline.as_millis() as u32 },
            payload: to_payload(&request)?,
        };
        send.write_all(&frame::encode(&env, frame::DEFAULT_MAX_FRAME)?)
            .await
            .map_err(|e| Error::Closed(e.to_string()))?;
        let _already_finished = send.finish();
        let bytes = recv.read_to_end(frame::DEFAULT_MAX_FRAME).await.map_err(|e| Error::Closed(e.to_string()))?;
        conn.close(0u32.into(), b"joined");
        let (reply, _) = frame::decode(&bytes, frame::DEFAULT_MAX_FRAME)?;
        match reply.kind {
            Kind::Response => Ok(from_payload::<JoinReply>(&reply.payload)?),
            Kind::Failure { code } => {
                Err(Error::Remote { code, message: String::from_utf8_lossy(&reply.payload).into() })
            }
            other => Err(Error::Closed(format!("unexpected reply {other:?}"))),
        }
    };
    let reply = tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or_else(|_| Err(Error::Timeout { peer: addr.to_string(), after: deadline }))?;
    endpoint.wait_idle().await;
    let creds = Credentials {
        identity: identity.clone(),
        cert_pem: reply.cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: reply.ca_pem,
    };
    if !creds.chain().first().is_some_and(|c| crate::tls::certifies(c, identity)) {
        return Err(Error::Refused {
            peer: addr.to_string(),
            reason: "the issued certificate does not name us".into(),
        });
    }
    Ok((creds, reply.members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_check() {
        let ca = ClusterCa::generate("t").unwrap();
        let (token, record) = TokenRecord::create(ca.cert_der(), Duration::from_secs(60), "test");
        let text = token.to_string();
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert!("keelson1.abc.def.ghi".parse::<JoinToken>().is_err());
        assert!(!text.contains(&record.secret_sha256));
        let records = vec![record.clone()];
        assert_eq!(check(&records, &token.id, &token.secret), Ok(()));
        assert_eq!(check(&records, &token.id, "00"), Err(JoinRefusal::WrongSecret));
        assert_eq!(check(&records, "ffffff", &token.secret), Err(JoinRefusal::Unknown));
        let revoked = vec![TokenRecord { revoked: true, ..record.clone() }];
        assert_eq!(check(&revoked, &token.id, &token.secret), Err(JoinRefusal::Revoked));
        let expired = vec![TokenRecord { expires_ms: 1, ..record }];
        assert_eq!(check(&expired, &token.id, &token.secret), Err(JoinRefusal::Expired));
    }
}
