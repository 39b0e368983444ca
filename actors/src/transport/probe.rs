//! `/<member>/transport/probe`: answers pings and streamed counts from peers, so an
//! operator (`keelson ping`) and the tests can check any link end to end.

use actix::Message;
use keelson_transport::frame::{from_payload, to_payload};
use keelson_transport::Reply;
use serde::{Deserialize, Serialize};

use super::remote::Delivered;
use crate::runtime::{Actor, ActorPath, ChildContext, Ctx, Handler};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ProbeRequest {
    /// One reply.
    Ping,
    /// A streamed reply of `n` items.
    Count(u32),
    /// A one-way note: no reply; counted, and the count shows in later replies.
    Note,
    /// A one-way greeting a link keeper sends when its link comes up (its arrival is
    /// what lets a member learn a peer it did not know).
    Hello,
}

/// Who answered: the probe's path and incarnation, and the item's number in a stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Message)]
#[rtype(result = "()")]
pub struct ProbeReply {
    pub path: String,
    pub incarnation: u64,
    pub seq: u32,
    /// One-way notes this incarnation has received.
    pub notes: u64,
}

pub struct Probe {
    path: ActorPath,
    incarnation: u64,
    notes: u64,
}

impl Probe {
    pub fn new(cx: &ChildContext) -> Self {
        Self { path: cx.path.clone(), incarnation: cx.incarnation, notes: 0 }
    }

    fn reply(&self, seq: u32) -> Vec<u8> {
        let r = ProbeReply { path: self.path.to_string(), incarnation: self.incarnation, seq, notes: self.notes };
        to_payload(&r).unwrap_or_default()
    }
}

impl Actor for Probe {}

impl Handler<Delivered> for Probe {
    type Result = ();

    fn handle(&mut self, Delivered(inbound): Delivered, _: &mut Ctx<Self>) {
        let request = from_payload::<ProbeRequest>(&inbound.envelope.payload);
        let mut reply = inbound.reply;
        match request {
            Ok(ProbeRequest::Ping) => {
                let bytes = self.reply(0);
                actix::spawn(async move {
                    let _caller_gone = reply.respond(bytes).await;
                });
            }
            Ok(ProbeRequest::Note) => self.notes += 1,
            Ok(ProbeRequest::Hello) => {}
            Ok(ProbeRequest::Count(n)) => {
                let items: Vec<Vec<u8>> = (1..=n).map(|i| self.reply(i)).collect();
                actix::spawn(async move {
                    for (i, item) in items.into_iter().enumerate() {
                        if reply.item(i as u64 + 1, item).await.is_err() {
                            return;
                        }
                    }
                    let _caller_gone = reply.end().await;
                });
            }
            Err(e) => {
                if let Reply::Stream { .. } = reply {
                    let msg = format!("not a probe request: {e}");
                    actix::spawn(async move {
                        let _caller_gone = reply.fail(400, &msg).await;
                    });
                }
            }
        }
    }
}
