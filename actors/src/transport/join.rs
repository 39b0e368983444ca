//! `/<member>/transport/join`: lets a new member in with a join token.
//!
//! Reached at the well-known path `/join` (the joiner does not know our name yet),
//! through a connection that carries no certificate: the endpoint lets such a peer ask
//! for nothing else. A valid token gets the joiner a certificate for its own key, signed
//! by the cluster CA, and the list of members; the joiner becomes a peer here at once
//! (and so gets a link keeper, through the endpoint's new-peer hook).

use std::sync::Arc;
use std::time::Duration;

use keelson_transport::frame::{from_payload, to_payload};
use keelson_transport::join::{check, JoinReply, JoinRequest, MemberAddr, TokenRecord};
use keelson_transport::tls::{ClusterCa, Identity};
use keelson_transport::{Reply, Transport};

use super::remote::Delivered;
use crate::runtime::{Actor, ChildContext, Ctx, Handler};

/// Where the tokens are kept (a file in the data folder today; the store later).
pub trait TokenBook: Send + Sync {
    fn records(&self) -> Result<Vec<TokenRecord>, String>;
}

pub struct JoinService {
    ca: ClusterCa,
    tokens: Arc<dyn TokenBook>,
    transport: Transport,
}

impl JoinService {
    pub fn new(_cx: &ChildContext, ca: ClusterCa, tokens: Arc<dyn TokenBook>, transport: Transport) -> Self {
        Self { ca, tokens, transport }
    }

    fn admit(&self, req: &JoinRequest) -> Result<JoinReply, (u16, String)> {
        let records = self.tokens.records().map_err(|e| (503, format!("cannot read join tokens: {e}")))?;
        check(&records, &req.token_id, &req.secret).map_err(|e| (401, e.to_string()))?;
        let identity = Identity::new(&req.name, req.role).map_err(|e| (400, e.to_string()))?;
        if identity.name == self.transport.identity().name || self.transport.peers().contains(&identity.name) {
            return Err((409, format!("a member named {:?} is already in the cluster", identity.name)));
        }
        let cert_pem = self.ca.issue_for_key(&identity, &req.public_key).map_err(|e| (400, e.to_string()))?;
        let me = self.transport.identity().clone();
        let mut members = vec![MemberAddr { name: me.name, role: me.role, addr: self.transport.local_addr() }];
        members.extend(self.transport.peer_list().into_iter().map(|(id, addr)| MemberAddr {
            name: id.name,
            role: id.role,
            addr,
        }));
        self.transport.add_peer(identity, req.quic_addr);
        Ok(JoinReply { cert_pem, ca_pem: self.ca.cert_pem.clone(), members })
    }
}

impl Actor for JoinService {}

impl Handler<Delivered> for JoinService {
    type Result = ();

    fn handle(&mut self, Delivered(inbound): Delivered, _: &mut Ctx<Self>) {
        let reply = inbound.reply;
        if !matches!(reply, Reply::Stream { .. }) {
            return;
        }
        let outcome = from_payload::<JoinRequest>(&inbound.envelope.payload)
            .map_err(|e| (400, format!("not a join request: {e}")))
            .and_then(|req| self.admit(&req).map(|r| (req, r)));
        match outcome {
            Ok((req, answer)) => {
                tracing::info!(member = %req.name, role = ?req.role, addr = %req.quic_addr, "admitted a new member");
                let bytes = to_payload(&answer).unwrap_or_default();
                actix::spawn(async move {
                    let _joiner_gone = reply.respond(bytes).await;
                });
            }
            Err((code, message)) => {
                tracing::warn!(code, %message, "refused a join");
                actix::spawn(async move {
                    let _joiner_gone = reply.fail(code, &message).await;
                });
            }
        }
    }
}

/// How long a join may take end to end.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(10);
