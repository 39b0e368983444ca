//! `GET …/pods/<name>/exec` upgraded to a websocket (`v5.channel.k8s.io`, or v4): the
//! API gateway's half of `kubectl exec`. It opens a raw transport stream to the pod's
//! kubelet (`kubelet/exec.rs`) and carries the channels both ways: a websocket binary
//! message `[channel, bytes…]` is a frame there, and back.

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::auth::{authorize, Request as AuthzRequest, Verb};
use super::http::{authenticate, ApiState};
use super::resources::find;
use super::status::Failure;
use crate::kubelet::exec::{read_frame, write_frame};
use crate::kubelet::KubeletRequest;

/// The subprotocols served, most preferred first (both carry the same channels; v5
/// adds the close channel, 255).
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

fn truthy(q: &[(String, String)], name: &str) -> bool {
    q.iter().any(|(k, v)| k == name && (v == "true" || v == "1"))
}

pub async fn handle(req: HttpRequest, body: web::Payload, state: web::Data<ApiState>) -> HttpResponse {
    match open(&req, &state).await {
        Ok((protocol, send, recv)) => upgrade(&req, body, protocol, send, recv),
        Err(f) => f.response(),
    }
}

/// Checks the request and opens the kubelet's side; the subprotocol chosen.
async fn open(
    req: &HttpRequest,
    state: &ApiState,
) -> Result<(&'static str, keelson_transport::SendStream, keelson_transport::RecvStream), Failure> {
    let user = authenticate(req, state).await?;
    let (ns, name) = (req.match_info().get("ns").unwrap_or_default(), req.match_info().get("name").unwrap_or_default());
    let pods = find("", "v1", "pods").expect("pods are served");
    authorize(
        &user,
        &AuthzRequest { verb: Verb::Create, res: pods, namespace: Some(ns), name: Some(name), bound_to: None },
    )?;
    let q: Vec<(String, String)> =
        web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default();
    let command: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if command.is_empty() {
        return Err(Failure::bad_request("you must specify at least 1 command"));
    }
    let offered = req.headers().get(SEC_WEBSOCKET_PROTOCOL).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let upgrade = req.headers().get("upgrade").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let protocol = PROTOCOLS.into_iter().find(|p| offered.split(',').any(|o| o.trim() == *p));
    let Some(protocol) = protocol.filter(|_| upgrade.eq_ignore_ascii_case("websocket")) else {
        return Err(Failure::bad_request(format!(
            "Upgrade request required: exec is served over a websocket with one of {PROTOCOLS:?}"
        )));
    };
    let pod = state.objects.get(pods, Some(ns), name).await?;
    let container_param = q.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str());
    let (container, status) = super::logs::container(&pod, container_param)?;
    if !status["state"]["running"].is_object() {
        return Err(Failure::bad_request(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        )));
    }
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
    let request = KubeletRequest::Exec {
        pod_uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        container,
        command,
        stdin: truthy(&q, "stdin"),
        tty: truthy(&q, "tty"),
    };
    let (send, recv) = super::kubelet::open(state, &node, &request).await?;
    Ok((protocol, send, recv))
}

/// Answers 101 and carries the session both ways until either side ends it.
fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    protocol: &'static str,
    mut send: keelson_transport::SendStream,
    mut recv: keelson_transport::RecvStream,
) -> HttpResponse {
    let (mut response, mut session, mut messages) = match actix_ws::handle(req, body) {
        Ok(x) => x,
        Err(e) => return Failure::bad_request(format!("cannot upgrade: {e}")).response(),
    };
    response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    let mut to_client = session.clone();
    // Kubelet → client.
    actix_rt::spawn(async move {
        while let Some((channel, data)) = read_frame(&mut recv).await {
            let mut msg = Vec::with_capacity(1 + data.len());
            msg.push(channel);
            msg.extend_from_slice(&data);
            if to_client.binary(msg).await.is_err() {
                return;
            }
        }
        // A normal closure: kubectl reads it as the end of every stream (1005, no
        // status, would be an error to it).
        let normal = actix_ws::CloseReason { code: actix_ws::CloseCode::Normal, description: None };
        let _ = to_client.close(Some(normal)).await;
    });
    // Client → kubelet.
    actix_rt::spawn(async move {
        while let Some(Ok(msg)) = messages.next().await {
            match msg {
                actix_ws::Message::Binary(b)
                    if !b.is_empty() && write_frame(&mut send, b[0], &b[1..]).await.is_err() =>
                {
                    return;
                }
                actix_ws::Message::Ping(p) => {
                    let _ = session.pong(&p).await;
                }
                actix_ws::Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = send.finish();
    });
    response
}
