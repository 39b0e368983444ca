//! Joining with a token, end to end over QUIC (the member side is a minimal join
//! service here; the real one is an actor, exercised by the cluster tests).

use std::sync::Arc;
use std::time::Duration;

use keelson_transport::frame::{from_payload, to_payload};
use keelson_transport::join::{
    ca_hash, check, join, JoinReply, JoinRequest, JoinToken, MemberAddr, TokenRecord, JOIN_PATH,
};
use keelson_transport::tls::{ClusterCa, Identity, Role};
use keelson_transport::{Error, Reply, Transport, TransportConfig};

use crate::support::*;

/// A member that admits joiners holding one of `records`.
fn member(ca: &ClusterCa, records: Vec<TokenRecord>) -> (Transport, keelson_transport::TransportRuntime) {
    let creds = ca.issue(&Identity::new("m1", Role::Server).unwrap()).unwrap();
    let (t, mut inbox, rt) =
        Transport::start(&creds, TransportConfig { listen: loopback(), ..Default::default() }).unwrap();
    let (ca, me) = (ca.clone(), t.clone());
    tokio::spawn(async move {
        while let Some(msg) = inbox.recv().await {
            let Reply::Stream { .. } = msg.reply else { continue };
            if msg.envelope.to.path == JOIN_PATH {
                assert!(msg.from.is_none(), "a joiner has no certificate yet");
                let req: JoinRequest = from_payload(&msg.envelope.payload).unwrap();
                match check(&records, &req.token_id, &req.secret) {
                    Ok(()) => {
                        let id = Identity::new(&req.name, req.role).unwrap();
                        let cert_pem = ca.issue_for_key(&id, &req.public_key).unwrap();
                        me.add_peer(id, req.quic_addr);
                        let members = vec![MemberAddr { name: "m1".into(), role: Role::Server, addr: me.local_addr() }];
                        let reply = JoinReply { cert_pem, ca_pem: ca.cert_pem.clone(), members };
                        let _ = msg.reply.respond(to_payload(&reply).unwrap()).await;
                    }
                    Err(e) => {
                        let _ = msg.reply.fail(401, &e.to_string()).await;
                    }
                }
            } else {
                let _ = msg.reply.respond(b"member".to_vec()).await;
            }
        }
    });
    (t, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_with_a_valid_token_gets_credentials_and_talks() {
    let ca = ClusterCa::generate("t").unwrap();
    let (token, record) = TokenRecord::create(ca.cert_der(), Duration::from_secs(60), "");
    let (m1, _rt) = member(&ca, vec![record]);
    let me = Identity::new("n1", Role::Agent).unwrap();
    let socket = std::net::UdpSocket::bind(loopback()).unwrap();
    let quic = socket.local_addr().unwrap();
    let (creds, members) = join(m1.local_addr(), &token, &me, quic, Duration::from_secs(10)).await.unwrap();
    assert_eq!(members[0].name, "m1");
    // With what it got, the joiner is a member like any other, both ways.
    let (n1, mut inbox, _rt2) =
        Transport::start_with_socket(&creds, TransportConfig { listen: quic, ..Default::default() }, socket).unwrap();
    tokio::spawn(async move {
        while let Some(m) = inbox.recv().await {
            let _ = m.reply.respond(b"joiner".to_vec()).await;
        }
    });
    n1.add_peer(Identity::new("m1", Role::Server).unwrap(), m1.local_addr());
    assert_eq!(n1.request("m1", "/x", "/t", vec![], Duration::from_secs(5)).await.unwrap(), b"member");
    assert_eq!(m1.request("n1", "/x", "/t", vec![], Duration::from_secs(5)).await.unwrap(), b"joiner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_revoked_and_foreign_tokens_are_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let (expired, r1) = TokenRecord::create(ca.cert_der(), Duration::ZERO, "");
    let (revoked, r2) = TokenRecord::create(ca.cert_der(), Duration::from_secs(60), "");
    let (m1, _rt) = member(&ca, vec![r1, TokenRecord { revoked: true, ..r2 }]);
    let me = Identity::new("n1", Role::Agent).unwrap();
    let quic = loopback();
    for (token, why) in [(&expired, "token expired"), (&revoked, "token revoked")] {
        match join(m1.local_addr(), token, &me, quic, Duration::from_secs(5)).await {
            Err(Error::Remote { code: 401, message }) => assert_eq!(message, why),
            other => panic!("{why}: {:?}", other.map(|_| ())),
        }
    }
    // A token for another cluster: the joiner refuses the member (its CA is not pinned).
    let other = ClusterCa::generate("other").unwrap();
    let foreign = JoinToken { ca_hash: ca_hash(other.cert_der()), ..expired.clone() };
    let err = join(m1.local_addr(), &foreign, &me, quic, Duration::from_secs(5)).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_may_only_ask_to_join() {
    let ca = ClusterCa::generate("t").unwrap();
    let (token, record) = TokenRecord::create(ca.cert_der(), Duration::from_secs(60), "");
    let (m1, _rt) = member(&ca, vec![record]);
    // Reuse the joiner's pinned-CA client, but ask for something else than /join: the
    // member closes the connection without delivering it.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![keelson_transport::tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = ep.connect(m1.local_addr(), "m1.server.keelson").unwrap().await.unwrap();
    let env = keelson_transport::Envelope {
        to: keelson_transport::Address { member: "m1".into(), path: "/x".into() },
        from: keelson_transport::Address { member: "m1".into(), path: "/sneaky".into() },
        correlation: 1,
        kind: keelson_transport::Kind::Request { deadline_ms: 1000 },
        payload: vec![],
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&keelson_transport::frame::encode(&env, 1 << 20).unwrap()).await.unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await.unwrap();
    assert!(answer.is_err() || answer.as_ref().is_ok_and(|b| b.is_empty()), "{answer:?}");
    let _ = token;
}
