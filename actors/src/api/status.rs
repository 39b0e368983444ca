//! Kubernetes `Status` answers: every error the API gives is one, with the reason and
//! message kubectl prints (`Error from server (NotFound): pods "x" not found`).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

use super::resources::Resource;

/// A failure as the API answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl Failure {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn about(mut self, res: &Resource, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        self
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", res.qualified())).about(res, name)
    }

    pub fn already_exists(res: &Resource, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", res.qualified())).about(res, name)
    }

    pub fn conflict(res: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                res.qualified()
            ),
        )
        .about(res, name)
    }

    /// 422: `<Kind> "<name>" is invalid: <field>: <problem>` with one cause per field.
    pub fn invalid(res: &Resource, name: &str, causes: &[(String, String)]) -> Self {
        let mut f = Self::invalid_named(res.kind, name, causes);
        if let Some(d) = f.details.as_mut() {
            d["group"] = res.group.into();
        }
        f
    }

    /// Invalid (422) for a `kind` that is not a served resource (`PatchOptions.meta.k8s.io`).
    pub fn invalid_named(kind: &str, name: &str, causes: &[(String, String)]) -> Self {
        let text: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = match text.len() {
            1 => format!("{kind} \"{name}\" is invalid: {}", text[0]),
            _ => format!("{kind} \"{name}\" is invalid: [{}]", text.join(", ")),
        };
        let causes: Vec<Value> =
            causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect();
        Self {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(json!({"name": name, "group": "", "kind": kind, "causes": causes})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// A write whose outcome is unknown: 504 Timeout, as kube-apiserver answers when
    /// etcd times out, which clients (client-go, kubectl) do not retry blindly.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }

    pub fn response(&self) -> HttpResponse {
        HttpResponse::build(StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .json(self.to_value())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(m) => Self::unavailable(m),
            crate::store::StoreError::Unknown(m) => Self::timeout(m),
        }
    }
}

impl From<Failure> for HttpResponse {
    fn from(f: Failure) -> Self {
        f.response()
    }
}
