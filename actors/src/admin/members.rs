//! Store membership on the door: add a member to a shard (as a learner, promoted to
//! voter once it caught up) or remove one. One shard per call, so a caller changing
//! every shard can report progress shard by shard.
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | POST | `/members/<name>/add?shard=K` | `{"shard","voters","learners"}` once the member votes |
//! | POST | `/members/<name>/remove?shard=K` | `{"shard","voters","learners"}` |

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::http::{status, DoorState};
use super::kv::{bad, failure, gate, run};
use crate::store::{ClientOp, ClientReply};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/members/{name}/{change}", web::post().to(change));
}

#[derive(Deserialize)]
struct ShardQuery {
    shard: u32,
}

async fn change(
    req: HttpRequest,
    state: web::Data<DoorState>,
    path: web::Path<(String, String)>,
    q: web::Query<ShardQuery>,
) -> HttpResponse {
    if let Some(r) = gate(&req, &state) {
        return r;
    }
    let (name, change) = path.into_inner();
    if let Err(e) = keelson_config::validate_name(&name) {
        return bad(&e.to_string());
    }
    if q.shard as usize >= state.store.len() {
        return bad(&format!("shard {} does not exist (there are {})", q.shard, state.store.len()));
    }
    let op = match change.as_str() {
        "add" => ClientOp::AddMember { name },
        "remove" => ClientOp::RemoveMember { name },
        other => return status(StatusCode::NOT_FOUND, "NotFound", &format!("no such change {other:?}: add or remove")),
    };
    match run(&state, q.shard, op).await {
        ClientReply::Members { voters, learners } => {
            HttpResponse::Ok().json(serde_json::json!({"shard": q.shard, "voters": voters, "learners": learners}))
        }
        ClientReply::Error(e) if e.contains("not a voter") || e.contains("last voter") => {
            status(StatusCode::CONFLICT, "Conflict", &e)
        }
        other => failure(other),
    }
}
