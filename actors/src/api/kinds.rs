//! The `k8s-openapi` type of each served kind, for code generic over them (decoding to
//! validate, schemas for the OpenAPI documents): one table of kinds to types.

use k8s_openapi::api::{apps, batch, coordination, core, discovery};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Something to do with the type of one kind.
pub trait KindVisitor {
    type Out;
    fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Out;
}

/// Runs `v` with the type of `kind`; `None` if no such kind is served.
pub fn visit<V: KindVisitor>(kind: &str, v: V) -> Option<V::Out> {
    Some(match kind {
        "Namespace" => v.visit::<core::v1::Namespace>(),
        "Node" => v.visit::<core::v1::Node>(),
        "Pod" => v.visit::<core::v1::Pod>(),
        "Service" => v.visit::<core::v1::Service>(),
        "Endpoints" => v.visit::<core::v1::Endpoints>(),
        "ConfigMap" => v.visit::<core::v1::ConfigMap>(),
        "Secret" => v.visit::<core::v1::Secret>(),
        "Event" => v.visit::<core::v1::Event>(),
        "ServiceAccount" => v.visit::<core::v1::ServiceAccount>(),
        "Deployment" => v.visit::<apps::v1::Deployment>(),
        "ReplicaSet" => v.visit::<apps::v1::ReplicaSet>(),
        "DaemonSet" => v.visit::<apps::v1::DaemonSet>(),
        "Job" => v.visit::<batch::v1::Job>(),
        "Lease" => v.visit::<coordination::v1::Lease>(),
        "EndpointSlice" => v.visit::<discovery::v1::EndpointSlice>(),
        _ => return None,
    })
}
