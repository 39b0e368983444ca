//! The cluster's own certificate authority and every member's identity.
//!
//! One CA per cluster, created at init and kept in the data folder. Each member (or
//! node) gets a certificate whose DNS name is `<name>.<role>.keelson`; connections are
//! mutual TLS 1.3 against that CA only, through one explicit `ring` provider (never
//! the process default, see DEPENDENCIES.md trap 1). A peer's identity is the name it
//! claims in its envelopes, accepted only if its certificate is valid for it.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

/// ALPN of keelson's transport; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"keelson/1";
const CERT_DAYS: u64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("invalid identity {0:?}: names are [a-z0-9-]+ and roles server, agent or launcher")]
    BadIdentity(String),
}

/// What a peer is: its name and role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
    Launcher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Agent => "agent",
            Self::Launcher => "launcher",
        }
    }
}

impl Identity {
    pub fn new(name: &str, role: Role) -> Result<Self, TlsError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok || name.starts_with('-') || name.ends_with('-') {
            return Err(TlsError::BadIdentity(name.to_string()));
        }
        Ok(Self { name: name.to_string(), role })
    }

    /// The DNS name its certificate carries.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.keelson", self.name, self.role.as_str())
    }
}

/// The cluster CA: certificate and key, as PEM (what the data folder keeps).
#[derive(Clone)]
pub struct ClusterCa {
    /// Part of the CA's subject, which issued certificates must repeat as their issuer.
    pub cluster: String,
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
}

/// A member's certificate chain and key, ready for rustls.
#[derive(Clone)]
pub struct Credentials {
    pub identity: Identity,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(CERT_DAYS * 86_400)).into();
}

impl ClusterCa {
    /// A new CA for a new cluster.
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cluster)?.self_signed(&key)?;
        Ok(Self {
            cluster: cluster.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// The CA as read back from the data folder; fails if the key is not the certificate's.
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        KeyPair::from_pem(key_pem)?;
        let cert_der =
            pem_certs(cert_pem).into_iter().next().ok_or_else(|| TlsError::BadIdentity("empty CA".into()))?;
        let ca = Self {
            cluster: cluster.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
        };
        let probe = Identity::new("probe", Role::Server)?;
        let creds = ca.issue(&probe)?;
        if !chains_to(&creds.chain()[0], &ca.cert_der) {
            return Err(TlsError::Verifier("the CA key does not belong to the CA certificate".into()));
        }
        Ok(ca)
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate for `identity` with a fresh key.
    pub fn issue(&self, identity: &Identity) -> Result<Credentials, TlsError> {
        let key = KeyPair::generate()?;
        let cert = self.sign(identity, &key)?;
        Ok(Credentials {
            identity: identity.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// An HTTPS serving certificate (PEM certificate, PEM key) for the API gateway of
    /// `member`, valid for `hosts` (names or IP addresses, as clients dial them).
    pub fn issue_https(&self, member: &str, hosts: &[String]) -> Result<(String, String), TlsError> {
        let issuer = Issuer::new(ca_params(&self.cluster)?, KeyPair::from_pem(&self.key_pem)?);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for h in hosts {
            params.subject_alt_names.push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(h.clone().try_into()?),
            });
        }
        params.distinguished_name.push(DnType::CommonName, format!("keelson API ({member})"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a certificate naming `identity` for `key`.
    pub(crate) fn sign(
        &self,
        identity: &Identity,
        key: &impl rcgen::PublicKeyData,
    ) -> Result<rcgen::Certificate, TlsError> {
        // The issuer is rebuilt from the same parameters as the CA (no certificate
        // parser needed): same subject, same key, so the same issuer name and key id.
        let issuer = Issuer::new(ca_params(&self.cluster)?, KeyPair::from_pem(&self.key_pem)?);
        let mut params = CertificateParams::new(vec![identity.dns_name()])?;
        params.distinguished_name.push(DnType::CommonName, identity.dns_name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params);
        Ok(params.signed_by(key, &issuer)?)
    }
}

fn ca_params(cluster: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, format!("keelson cluster CA ({cluster})"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    Ok(params)
}

/// Whether `cert` is signed by the CA `ca` and valid now.
pub fn chains_to(cert: &CertificateDer<'_>, ca: &CertificateDer<'_>) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(anchor) = webpki::anchor_from_trusted_cert(ca) else { return false };
    let algs = provider().signature_verification_algorithms.all;
    let now = rustls::pki_types::UnixTime::now();
    end_entity.verify_for_usage(algs, &[anchor], &[], now, webpki::KeyUsage::server_auth(), None, None).is_ok()
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect()
}

/// rustls for the HTTPS API: the serving certificate (and the CA after it), client
/// certificates from the CA verified when presented (certificate authentication),
/// HTTP/1.1; TLS 1.2 too, for older client libraries.
pub fn https_server_config(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut chain = pem_certs(cert_pem);
    chain.extend(pem_certs(ca_pem));
    let key = KeyPair::from_pem(key_pem)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Credentials {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        pem_certs(&self.cert_pem)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in pem_certs(&self.ca_pem) {
            roots.add(c)?;
        }
        Ok(Arc::new(roots))
    }

    /// rustls server side: our certificate (with the CA, so a joiner can pin it by
    /// hash), and client certificates from our CA verified when presented. A client
    /// without one is let through the handshake only to ask to join: the endpoint
    /// refuses it everything else.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut chain = self.chain();
        chain.extend(pem_certs(&self.ca_pem));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, self.key()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// rustls client side: the server must hold a certificate from our CA for the name we dial.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain(), self.key()?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Whether `cert` (already verified against the CA by the handshake) names `identity`.
/// The member identity a certificate names (`<name>.<role>.keelson` in its subject
/// alternative names), confirmed by the certificate itself; `None` for any other. The
/// caller has already verified that the certificate chains to the cluster CA.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    // A DNS name in a GeneralName is tagged [2] (0x82) with a short length; find the
    // ones of the keelson form, then let webpki confirm the certificate is valid for it.
    let der = cert.as_ref();
    (0..der.len().saturating_sub(2)).filter(|&i| der[i] == 0x82).find_map(|i| {
        let len = der[i + 1] as usize;
        let text = std::str::from_utf8(der.get(i + 2..i + 2 + len)?).ok()?;
        let (name, role) = text.strip_suffix(".keelson")?.rsplit_once('.')?;
        let role = match role {
            "server" => Role::Server,
            "agent" => Role::Agent,
            "launcher" => Role::Launcher,
            _ => return None,
        };
        let id = Identity::new(name, role).ok()?;
        certifies(cert, &id).then_some(id)
    })
}

pub fn certifies(cert: &CertificateDer<'_>, identity: &Identity) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(identity.dns_name()) else { return false };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_holder_only() {
        let ca = ClusterCa::generate("test").unwrap();
        let id = Identity::new("server-1", Role::Server).unwrap();
        let creds = ca.issue(&id).unwrap();
        let der = pem_certs(&creds.cert_pem).remove(0);
        assert!(certifies(&der, &id));
        assert!(!certifies(&der, &Identity::new("server-2", Role::Server).unwrap()));
        assert!(!certifies(&der, &Identity::new("server-1", Role::Agent).unwrap()));
        assert_eq!(identity_of(&der), Some(id.clone()));
        let node = ca.issue(&Identity::new("n1", Role::Agent).unwrap()).unwrap();
        assert_eq!(identity_of(&node.chain()[0]).map(|i| (i.name, i.role)), Some(("n1".to_string(), Role::Agent)));
        creds.server_config().unwrap();
        creds.client_config().unwrap();
        assert!(chains_to(&der, ca.cert_der()));
        let back = ClusterCa::from_pem("test", &ca.cert_pem, &ca.key_pem).unwrap();
        let again = pem_certs(&back.issue(&id).unwrap().cert_pem).remove(0);
        assert!(chains_to(&again, ca.cert_der()), "a CA read back issues certificates that chain to it");
        let other = ClusterCa::generate("other").unwrap();
        assert!(ClusterCa::from_pem("test", &ca.cert_pem, &other.key_pem).is_err(), "a key that is not the CA's");
        assert!(!chains_to(&der, other.cert_der()));
    }

    #[test]
    fn identities_are_checked() {
        assert!(Identity::new("Server", Role::Server).is_err());
        assert!(Identity::new("a.b", Role::Server).is_err());
        assert!(Identity::new("", Role::Agent).is_err());
        assert_eq!(Identity::new("n1", Role::Agent).unwrap().dns_name(), "n1.agent.keelson");
    }
}
