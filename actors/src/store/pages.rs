//! Reading across shards: cursors (one revision per shard) and pages of a key range
//! that all read one snapshot. Shared by the KV API and the Kubernetes API.

use super::replica::Execute;
use super::types::{ClientOp, ClientReply, Item};
use super::Replica;
use crate::runtime::Ref;

/// A cursor as text: one revision per shard, `r0.r1.…` (a plain number with one shard).
pub fn cursor_text(c: &[u64]) -> String {
    c.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// A cursor over `shards` from its text; `shard_hint` is the one shard a reader of one
/// shard reads, where a plain number (one key's revision) will do.
pub fn parse_cursor(text: &str, shards: usize, shard_hint: Option<usize>) -> Option<Vec<u64>> {
    let parts: Vec<u64> = text.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
    match (parts.len(), shard_hint) {
        (n, _) if n == shards => Some(parts),
        (1, Some(s)) if s < shards => {
            let mut c = vec![0; shards];
            c[s] = parts[0];
            Some(c)
        }
        _ => None,
    }
}

/// A continue token: the revision each shard was first read at, and the last key
/// returned, hex-encoded (opaque, and safe in a query string).
fn continue_token(cursor: &[u64], last_key: &str) -> String {
    format!("{}\n{last_key}", cursor_text(cursor)).bytes().map(|b| format!("{b:02x}")).collect()
}

fn parse_continue(token: &str, shards: usize) -> Option<(Vec<u64>, String)> {
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()?;
    let text = String::from_utf8(bytes).ok()?;
    let (cursor, key) = text.split_once('\n')?;
    Some((parse_cursor(cursor, shards, None)?, key.to_string()))
}

/// One page of a range over several shards.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Item>,
    /// The revision each shard was read at (the first page's, for every page of a list).
    pub cursor: Vec<u64>,
    /// The continue token of the next page, if there is one.
    pub next: Option<String>,
}

/// Why a page could not be read.
#[derive(Debug)]
pub enum PageError {
    /// The continue token is not one this store gave out.
    BadToken,
    /// The snapshot the token reads has left a shard's event window.
    Expired { shard: usize, asked: u64, oldest: u64 },
    /// The store did not answer with items (no leader, an error…).
    Store(ClientReply),
}

/// The next `limit` keys in `[start, end)` over `shards` (of `replicas`), after the
/// continue `token` of the page before: each shard's next page after the same key,
/// merged in key order, so the first `limit` of them are the next `limit` keys overall.
pub async fn read_page(
    replicas: &[Ref<Replica>],
    shards: &[usize],
    start: &str,
    end: &str,
    limit: usize,
    token: Option<&str>,
) -> Result<Page, PageError> {
    let n = replicas.len();
    let (at, after) = match token {
        None => (None, None),
        Some(t) => parse_continue(t, n).map(|(c, k)| (Some(c), Some(k))).ok_or(PageError::BadToken)?,
    };
    let mut items = Vec::new();
    let mut read_at = vec![0u64; n];
    let mut more = false;
    for &shard in shards {
        let op = ClientOp::Range {
            start: start.to_string(),
            end: end.to_string(),
            after: after.clone(),
            limit,
            at: at.as_ref().map(|c: &Vec<u64>| c[shard]),
        };
        let reply = replicas[shard]
            .send(Execute(op))
            .await
            .unwrap_or_else(|e| ClientReply::Error(format!("the store replica: {e}")));
        match reply {
            ClientReply::Items { revision, items: page, more: m } => {
                read_at[shard] = revision;
                more |= m;
                items.extend(page);
            }
            ClientReply::Expired { asked, oldest } => return Err(PageError::Expired { shard, asked, oldest }),
            other => return Err(PageError::Store(other)),
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    more |= items.len() > limit;
    items.truncate(limit);
    let cursor = at.unwrap_or(read_at);
    let next = if more { items.last().map(|i| continue_token(&cursor, &i.key)) } else { None };
    Ok(Page { items, cursor, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_as_lists_and_single_keys_give_them() {
        assert_eq!(parse_cursor("5.7.9", 3, None), Some(vec![5, 7, 9]));
        assert_eq!(parse_cursor("12", 1, None), Some(vec![12]));
        assert_eq!(parse_cursor("12", 3, Some(1)), Some(vec![0, 12, 0]), "a key's revision on a one-shard reader");
        assert_eq!(parse_cursor("12", 3, None), None, "a reader of every shard needs one revision per shard");
        assert_eq!(parse_cursor("x", 1, None), None);
        assert_eq!(cursor_text(&[3, 4]), "3.4");
    }

    #[test]
    fn continue_tokens_round_trip_and_refuse_forgeries() {
        let t = continue_token(&[3, 9], "/registry/core/pods/ns/p");
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(parse_continue(&t, 2), Some((vec![3, 9], "/registry/core/pods/ns/p".to_string())));
        assert_eq!(parse_continue(&t, 3), None, "another shard count");
        assert_eq!(parse_continue("zz", 2), None);
    }
}
