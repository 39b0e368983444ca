//! The API gateway's streams to a node's kubelet (`kubelet/serve.rs`): opened on the
//! transport to `/<node>/kubelet` with the request in the opening envelope; the
//! kubelet's header line says whether it serves it (what follows is the log, or the
//! exec session's channels).

use keelson_transport::{RecvStream, SendStream};

use super::http::ApiState;
use super::status::Failure;
use crate::kubelet::{Header, KubeletRequest, KUBELET_PATH};

/// How long opening the stream to the node's kubelet may take.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a stream to `node`'s kubelet for `request`; after its header, or the refusal
/// the header carried (with its code).
pub async fn open(state: &ApiState, node: &str, request: &KubeletRequest) -> Result<(SendStream, RecvStream), Failure> {
    let transport = state.transport.clone().ok_or_else(|| Failure::unavailable("this member does not reach nodes"))?;
    let payload = keelson_transport::frame::to_payload(request).map_err(|e| Failure::internal(e.to_string()))?;
    let (to, from) = (format!("/{node}/{KUBELET_PATH}"), format!("/{}/api", state.member));
    let (send, mut recv) = transport
        .open(node, &to, &from, payload, OPEN_WAIT)
        .await
        .map_err(|e| Failure::internal(format!("cannot reach the kubelet of node {node}: {e}")))?;
    // The header line, a byte at a time: what follows is the caller's.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < 64 * 1024 {
        match recv.read_exact(&mut byte).await {
            Ok(()) if byte[0] == b'\n' => break,
            Ok(()) => head.push(byte[0]),
            Err(e) => return Err(Failure::internal(format!("the kubelet of node {node} did not answer: {e}"))),
        }
    }
    let h: Header = serde_json::from_slice(&head)
        .map_err(|e| Failure::internal(format!("a bad answer from the kubelet of node {node}: {e}")))?;
    if h.code != 200 {
        return Err(Failure::new(h.code, "BadRequest", h.message.unwrap_or_default()));
    }
    Ok((send, recv))
}
