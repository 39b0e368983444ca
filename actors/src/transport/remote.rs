//! Messages across processes: the inbound side (`Delivered`) and the outbound side
//! (`RemoteRef`, used like a local `Ref`).

use std::time::Duration;

use actix::Message;
use futures_util::Stream;
use keelson_transport::frame::{from_payload, to_payload};
use keelson_transport::{Inbound, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::runtime::ActorPath;

/// A message from another process, delivered to the actor its path names. The actor
/// answers through `inbound.reply` (respond, fail, or stream items).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivered(pub Inbound);

/// What a remote call can run into.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Transport(#[from] keelson_transport::Error),
    #[error("cannot decode the reply: {0}")]
    Decode(keelson_transport::frame::Error),
}

/// A reference to an actor in another process: `(member, path)`.
#[derive(Clone)]
pub struct RemoteRef {
    transport: Transport,
    member: String,
    path: ActorPath,
    from: ActorPath,
}

impl RemoteRef {
    /// `from` is the calling actor's path (it travels in the envelope, for logs).
    pub fn new(transport: Transport, path: ActorPath, from: ActorPath) -> Self {
        Self { member: path.member().to_string(), transport, path, from }
    }

    pub fn path(&self) -> &ActorPath {
        &self.path
    }

    /// Sends `request` and waits for the reply, or a typed error, within `deadline`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        deadline: Duration,
    ) -> Result<R, RemoteError> {
        let payload = to_payload(request).map_err(keelson_transport::Error::from)?;
        let reply =
            self.transport.request(&self.member, self.path.as_str(), self.from.as_str(), payload, deadline).await?;
        from_payload(&reply).map_err(RemoteError::Decode)
    }

    /// Sends a one-way message.
    pub async fn tell<Q: Serialize>(&self, message: &Q, deadline: Duration) -> Result<(), RemoteError> {
        let payload = to_payload(message).map_err(keelson_transport::Error::from)?;
        Ok(self.transport.tell(&self.member, self.path.as_str(), self.from.as_str(), payload, deadline).await?)
    }

    /// Sends `request` and yields each item of the streamed reply.
    pub async fn stream<Q: Serialize, R: DeserializeOwned>(
        &self,
        request: &Q,
        deadline: Duration,
    ) -> Result<impl Stream<Item = Result<R, RemoteError>>, RemoteError> {
        let payload = to_payload(request).map_err(keelson_transport::Error::from)?;
        let rx = self
            .transport
            .request_stream(&self.member, self.path.as_str(), self.from.as_str(), payload, deadline)
            .await?;
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            let item =
                item.map_err(RemoteError::from).and_then(|bytes| from_payload(&bytes).map_err(RemoteError::Decode));
            Some((item, rx))
        }))
    }
}
