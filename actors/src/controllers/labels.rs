//! Label selectors as objects carry them (`matchLabels`, `matchExpressions`), matched
//! against an object's labels; and node selector terms (node affinity).

use serde_json::Value;

/// Whether `labels` satisfy the `LabelSelector` `selector`. An empty selector matches
/// everything; a missing one (null) matches nothing, as Kubernetes reads them.
pub fn matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return false;
    }
    let by_labels = selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels[k.as_str()] == *v);
    by_labels
        && selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            expression(e["operator"].as_str().unwrap_or_default(), labels[key].as_str(), &e["values"])
        })
}

/// One requirement: `In`, `NotIn`, `Exists`, `DoesNotExist` (and `Gt`, `Lt` for nodes).
fn expression(op: &str, value: Option<&str>, values: &Value) -> bool {
    let listed = |v: &str| values.as_array().into_iter().flatten().any(|x| x == v);
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
    let bound = || number(values[0].as_str());
    match op {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((number(value), bound()), (Some(v), Some(b)) if v > b),
        "Lt" => matches!((number(value), bound()), (Some(v), Some(b)) if v < b),
        _ => false,
    }
}

/// Whether `node` satisfies a `NodeSelector` (its terms are ORed; each term's
/// expressions and fields ANDed; a term with neither matches nothing).
pub fn node_selector_matches(selector: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let name = node["metadata"]["name"].as_str();
    selector["nodeSelectorTerms"].as_array().into_iter().flatten().any(|term| {
        let exprs = term["matchExpressions"].as_array().map_or(&[][..], Vec::as_slice);
        let fields = term["matchFields"].as_array().map_or(&[][..], Vec::as_slice);
        (!exprs.is_empty() || !fields.is_empty())
            && exprs.iter().all(|e| {
                let key = e["key"].as_str().unwrap_or_default();
                expression(e["operator"].as_str().unwrap_or_default(), labels[key].as_str(), &e["values"])
            })
            && fields.iter().all(|f| {
                f["key"] == "metadata.name"
                    && expression(f["operator"].as_str().unwrap_or_default(), name, &f["values"])
            })
    })
}

/// The selector of a workload (`spec.selector`) as a `labelSelector` query string, for
/// listing its pods: `a=b,c in (d,e),!f`.
pub fn to_query(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(matches(&json!({}), &labels));
        assert!(!matches(&Value::Null, &labels));
        assert!(matches(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!matches(&json!({"matchLabels": {"app": "api"}}), &labels));
        let exprs =
            |op: &str, values: Value| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(matches(&exprs("In", json!(["front", "back"])), &labels));
        assert!(!matches(&exprs("NotIn", json!(["front"])), &labels));
        assert!(matches(&exprs("Exists", json!(null)), &labels));
        assert!(!matches(&exprs("DoesNotExist", json!(null)), &labels));
        assert_eq!(to_query(&json!({"matchLabels": {"app": "web"}})), "app=web");
    }

    #[test]
    fn node_selector_terms_are_ored_and_their_requirements_anded() {
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a", "cores": "8"}}});
        let term = |e: Value| json!({"nodeSelectorTerms": [{"matchExpressions": e}]});
        assert!(node_selector_matches(&term(json!([{"key": "zone", "operator": "In", "values": ["a"]}])), &node));
        assert!(node_selector_matches(&term(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])), &node));
        assert!(!node_selector_matches(
            &term(
                json!([{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "cores", "operator": "Lt", "values": ["4"]}])
            ),
            &node
        ));
        let by_name = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
                                                   {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]});
        assert!(node_selector_matches(&by_name, &node));
        assert!(!node_selector_matches(&json!({"nodeSelectorTerms": [{}]}), &node));
    }
}
