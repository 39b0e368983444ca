//! Kubeconfigs for the Kubernetes API: the admin's (written by `keelson up`) and others
//! with their own token and role (`keelson kubeconfig --role read-only`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use keelson_actors::api::{token_hash, Role, TokenRecord, TOKENS_PREFIX};

use crate::cli::KubeconfigArgs;
use crate::client::DoorClient;
use crate::datadir::DataDir;

/// How a kubeconfig's user proves who it is.
pub enum Credential {
    Token(String),
    /// A client certificate and key from the cluster CA (PEM files).
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Writes a kubeconfig (0600) for `user`, naming the cluster CA by path;
/// `<data>/kubeconfig` for the admin, `<data>/kubeconfig-<user>` otherwise.
pub fn write(data: &DataDir, api: &str, user: &str, credential: &Credential, out: Option<PathBuf>) -> Result<PathBuf> {
    let root = std::fs::canonicalize(data.root())?;
    let path = out.unwrap_or_else(|| match user {
        "admin" => root.join("kubeconfig"),
        u => root.join(format!("kubeconfig-{u}")),
    });
    let auth = match credential {
        Credential::Token(t) => format!("    token: {t}\n"),
        Credential::Certificate { cert, key } => {
            format!("    client-certificate: {}\n    client-key: {}\n", cert.display(), key.display())
        }
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: https://{api}\n    \
         certificate-authority: {ca}\ncontexts:\n- name: keelson-{user}\n  context:\n    cluster: keelson\n    \
         user: keelson-{user}\n    namespace: default\ncurrent-context: keelson-{user}\nusers:\n- name: \
         keelson-{user}\n  user:\n{auth}",
        ca = root.join("ca.crt").display()
    );
    crate::pki::write_secret(&path, &text)?;
    Ok(path)
}

/// `keelson kubeconfig`: a new token with a role, kept (hashed) in the store through a
/// member's door, and a kubeconfig that carries it.
pub async fn make(data: &DataDir, args: KubeconfigArgs) -> Result<PathBuf> {
    let role = match (args.role.as_str(), &args.node) {
        ("admin", _) => Role::Admin,
        ("read-only", _) => Role::ReadOnly,
        ("node", Some(n)) => Role::Node { node: n.clone() },
        ("node", None) => bail!("--role node needs --node NAME"),
        (other, _) => bail!("unknown role {other:?}: admin, read-only or node"),
    };
    let user = match (&args.user, &role) {
        (Some(u), _) => u.clone(),
        (None, Role::Node { node }) => format!("system:node:{node}"),
        (None, _) => args.role.clone(),
    };
    let file_user: String = user.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let door = data.server_door(None)?;
    let api = std::fs::read_to_string(data.root().join(&door.member).join("api-addr"))
        .with_context(|| format!("{} serves no Kubernetes API", door.member))?;
    if args.cert {
        // A node identity's certificate from the cluster CA: `<node>.agent.keelson`.
        let Role::Node { node } = &role else { bail!("--cert makes node identities (--role node --node NAME)") };
        let ca = crate::pki::ca(data)?;
        let id = keelson_transport::tls::Identity::new(node, keelson_transport::tls::Role::Agent)?;
        let creds = ca.issue(&id)?;
        let root = std::fs::canonicalize(data.root())?;
        let (cert, key) =
            (root.join(format!("kubeconfig-{file_user}.crt")), root.join(format!("kubeconfig-{file_user}.key")));
        std::fs::write(&cert, &creds.cert_pem)?;
        crate::pki::write_secret(&key, &creds.key_pem)?;
        return write(data, api.trim(), &file_user, &Credential::Certificate { cert, key }, args.out);
    }
    let token: String = crate::datadir::random_bytes::<32>()?.iter().map(|b| format!("{b:02x}")).collect();
    let client = DoorClient::new(data.token()?);
    let record = serde_json::to_vec(&TokenRecord { user: user.clone(), role })?;
    let key = format!("/kv/key{TOKENS_PREFIX}{}", token_hash(&token));
    match client.call(&door, "PUT", &key, Some(record)).await? {
        (200, _) => {}
        (code, v) => bail!("storing the token: {code}: {}", v["message"]),
    }
    write(data, api.trim(), &file_user, &Credential::Token(token), args.out)
}
