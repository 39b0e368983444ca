//! Who may talk: certificates from the cluster CA only, naming who they claim to be.

use std::sync::Arc;
use std::time::Duration;

use keelson_transport::frame::{encode, Address, Envelope, Kind, DEFAULT_MAX_FRAME};
use keelson_transport::tls::{ClusterCa, Identity, Role, ALPN};
use keelson_transport::Error;

use crate::support::*;

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_ca_is_refused_both_ways() {
    let ca = ClusterCa::generate("t").unwrap();
    let stranger_ca = ClusterCa::generate("elsewhere").unwrap();
    let a = Node::start(&ca, "a");
    let x = Node::start(&stranger_ca, "x");
    a.link(&x);
    // x dials a: a's server refuses x's client certificate.
    let err = x.transport.request("a", "/echo", "/t", vec![], SECOND).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. } | Error::Closed(_) | Error::Unreachable { .. }), "{err}");
    // a dials x: a's client refuses x's server certificate.
    let err = a.transport.request("x", "/echo", "/t", vec![], SECOND).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(a.seen.requests.lock().unwrap().is_empty() && x.seen.requests.lock().unwrap().is_empty());
}

/// A raw quinn client, to do what a keelson endpoint never would.
fn raw_client(client_auth: Option<&keelson_transport::tls::Credentials>, ca: &ClusterCa) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut tls = match client_auth {
        Some(c) => {
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                rcgen::KeyPair::from_pem(&c.key_pem).unwrap().serialize_der().into(),
            );
            builder.with_client_auth_cert(c.chain(), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

fn envelope(from: &str) -> Envelope {
    Envelope {
        to: Address { member: "a".into(), path: "/echo".into() },
        from: Address { member: from.into(), path: "/raw".into() },
        correlation: 1,
        kind: Kind::Request { deadline_ms: 1000 },
        payload: b"hi".to_vec(),
    }
}

async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    tokio::time::timeout(SECOND, recv.read_to_end(1 << 20)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Node::start(&ca, "a");
    let ep = raw_client(None, &ca);
    let outcome = async {
        let conn = ep
            .connect(a.transport.local_addr(), &Identity::new("a", Role::Server).unwrap().dns_name())
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        raw_request(&conn, &encode(&envelope("a"), DEFAULT_MAX_FRAME).unwrap()).await
    }
    .await;
    assert!(outcome.is_err(), "a client without a certificate got {outcome:?}");
    assert!(a.seen.requests.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_another_name_is_cut_off_and_garbage_closes_only_its_stream() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = Node::start(&ca, "a");
    let b_creds = ca.issue(&Identity::new("b", Role::Server).unwrap()).unwrap();
    let ep = raw_client(Some(&b_creds), &ca);
    let name = Identity::new("a", Role::Server).unwrap().dns_name();

    // Garbage, a frame of an unknown version, and an oversized length: each closes
    // its own stream; the same connection then carries a good request.
    let conn = ep.connect(a.transport.local_addr(), &name).unwrap().await.unwrap();
    for bad in [vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2], vec![9, 0, 0, 0, 1, 0], vec![1, 0xff, 0xff, 0xff, 0xff]] {
        let r = raw_request(&conn, &bad).await;
        assert!(r.is_err() || r.as_ref().is_ok_and(|b| b.is_empty()), "garbage answered: {r:?}");
    }
    let good = raw_request(&conn, &encode(&envelope("b"), DEFAULT_MAX_FRAME).unwrap()).await.unwrap();
    let (reply, _) = keelson_transport::frame::decode(&good, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(reply.payload, b"ih");

    // b's certificate, claiming to be c: the connection is closed, nothing delivered.
    let conn = ep.connect(a.transport.local_addr(), &name).unwrap().await.unwrap();
    let r = raw_request(&conn, &encode(&envelope("c"), DEFAULT_MAX_FRAME).unwrap()).await;
    assert!(r.is_err() || r.as_ref().is_ok_and(|b| b.is_empty()), "{r:?}");
    assert_eq!(a.seen.requests.lock().unwrap().get(&b"hi"[..]).copied(), Some(1), "only b's honest request arrived");
}
