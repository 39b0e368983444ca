//! The door's routes against a live tree, through actix-web's in-process test server.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{test, App};
use keelson_config::SupervisorConfig;

use super::http::{routes, DoorState, Killed};
use crate::runtime::{start_root, ActorPath, ActorState, ChildSpec, Registry, Restart, Strategy, SupervisorSpec};

const TOKEN: &str = "0123456789abcdef0123";

struct Idle;
impl crate::runtime::Actor for Idle {}

async fn tree() -> (Registry, crate::runtime::Root) {
    let registry = Registry::new("m");
    let (spec, _) = ChildSpec::new("idle", Restart::Permanent, |_| Idle);
    let spec = SupervisorSpec::new(Strategy::OneForOne, SupervisorConfig::default()).child(spec);
    let root = start_root(&registry, spec);
    for _ in 0..400 {
        if registry.info(&ActorPath::parse("/m/idle").unwrap()).is_some_and(|i| i.state == ActorState::Running) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    (registry, root)
}

#[actix_rt::test]
async fn the_door_shows_the_tree_and_kills_only_with_the_token() {
    let (registry, _root) = tree().await;
    let state = DoorState { registry: registry.clone(), token: Arc::from(TOKEN), transport: None, store: Vec::new() };
    let app = test::init_service(App::new().configure(routes(state))).await;

    let snapshot: crate::runtime::TreeSnapshot =
        test::call_and_read_body_json(&app, test::TestRequest::get().uri("/tree").to_request()).await;
    let paths: Vec<&str> = snapshot.actors.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["/m", "/m/idle"]);

    let kill = |auth: Option<&str>, body: &str| {
        let mut req = test::TestRequest::post().uri("/chaos/kill").insert_header(("content-type", "application/json"));
        if let Some(a) = auth {
            req = req.insert_header(("authorization", a.to_string()));
        }
        req.set_payload(body.to_string()).to_request()
    };
    let body = r#"{"path":"/m/idle","mode":"stop"}"#;
    for auth in [None, Some("Bearer wrong-token-wrong-toke"), Some(TOKEN)] {
        let resp = test::call_service(&app, kill(auth, body)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let status: serde_json::Value = test::read_body_json(resp).await;
        assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("Unauthorized")));
    }
    assert_eq!(registry.info(&ActorPath::parse("/m/idle").unwrap()).unwrap().kills, 0, "killed without the token");

    let bearer = format!("Bearer {TOKEN}");
    let resp = test::call_service(&app, kill(Some(&bearer), body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let killed: Killed = test::read_body_json(resp).await;
    assert_eq!(killed, Killed { path: "/m/idle".into(), incarnation: 1 });

    for (body, code) in [
        (r#"{"path":"/m/nope"}"#, StatusCode::NOT_FOUND),
        (r#"{"path":"m/idle"}"#, StatusCode::BAD_REQUEST),
        (r#"{"path":"/m/idle","mode":"explode"}"#, StatusCode::BAD_REQUEST),
        ("not json", StatusCode::BAD_REQUEST),
    ] {
        let resp = test::call_service(&app, kill(Some(&bearer), body)).await;
        assert_eq!(resp.status(), code, "{body}");
    }
}
