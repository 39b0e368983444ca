//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `1e3`) as numbers:
//! CPU in millicores, everything else in units (bytes for memory).

/// The quantity's value in units; `None` if it is not a quantity.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (number, suffix) = match suffix.strip_prefix(['e', 'E']) {
        Some(exp) if !exp.is_empty() && exp.trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit()) => {
            (q, "")
        }
        _ => (number, suffix),
    };
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(value * scale)
}

/// CPU in millicores (`250m` → 250, `2` → 2000); 0 if absent or not a quantity.
pub fn millicores(v: &serde_json::Value) -> u64 {
    quantity(v).map_or(0, |q| (q * 1000.0).ceil() as u64)
}

/// Bytes or counts (`128Mi`, `110`); 0 if absent or not a quantity.
pub fn units(v: &serde_json::Value) -> u64 {
    quantity(v).map_or(0, |q| q.ceil() as u64)
}

fn quantity(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(millicores(&json!("100m")), 100);
        assert_eq!(millicores(&json!("0.5")), 500);
        assert_eq!(millicores(&json!(2)), 2000);
        assert_eq!(units(&json!("128Mi")), 128 * 1024 * 1024);
        assert_eq!(units(&json!("1G")), 1_000_000_000);
        assert_eq!(units(&json!("1e3")), 1000);
        assert_eq!(units(&json!("110")), 110);
        assert_eq!(parse("12Q"), None);
        assert_eq!(units(&json!(null)), 0);
    }
}
