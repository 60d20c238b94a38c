//! `ferrule discover opcua`: connects to a server (security None, anonymous or a user),
//! browses every variable under a node and prints a ready-to-paste `[sources.<name>]` block
//! with one `[[sources.<name>.nodes]]` per variable, node ids in the portable `nsu=` form.

use std::path::PathBuf;
use std::time::Duration;

use opcua::client::{ClientBuilder, IdentityToken};
use opcua::types::{MessageSecurityMode, NodeId, ObjectId, UserTokenPolicy};

use super::browse::{portable_id, toml_str, variables_under};
use super::node_ref::NodeRef;
use super::Runner;

/// What to discover and how to name it.
#[derive(Clone, Debug)]
pub struct DiscoverOptions {
    pub endpoint: String,
    /// The node to browse under (default: the Objects folder).
    pub under: Option<String>,
    /// The source name in the printed block.
    pub source: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Where the client keeps its certificate.
    pub pki_dir: PathBuf,
}

/// The config block for every variable under the node.
pub async fn discover(o: &DiscoverOptions) -> Result<String, String> {
    let mut client = ClientBuilder::new()
        .application_name("Ferrule discover")
        .application_uri("urn:ferrule:client")
        .product_uri("urn:ferrule")
        .pki_dir(&o.pki_dir)
        .create_sample_keypair(true)
        .session_retry_limit(0)
        .client()
        .map_err(|e| format!("client config: {}", e.join("; ")))?;
    let identity = match (&o.username, &o.password) {
        (Some(u), Some(p)) => IdentityToken::new_user_name(u.clone(), p.clone()),
        _ => IdentityToken::Anonymous,
    };
    let endpoint = (
        o.endpoint.as_str(),
        "None",
        MessageSecurityMode::None,
        UserTokenPolicy::anonymous(),
    );
    let (session, event_loop) = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect_to_matching_endpoint(endpoint, identity),
    )
    .await
    .map_err(|_| format!("{}: no answer within 10 s", o.endpoint))?
    .map_err(|e| format!("{}: {e}", o.endpoint))?;
    let event_loop = event_loop.spawn();
    let result = async {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), session.wait_for_connection()).await,
            Ok(true)
        ) {
            return Err(format!(
                "{}: the session could not be activated",
                o.endpoint
            ));
        }
        let namespaces = Runner::namespaces(&session).await?;
        let root = match &o.under {
            None => NodeId::from(ObjectId::ObjectsFolder),
            Some(s) => NodeRef::parse(s)?.resolve(&namespaces)?,
        };
        let found = variables_under(&session, &root).await?;
        Ok(render(o, &root, &namespaces, &found))
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
    event_loop.abort();
    result
}

fn render(
    o: &DiscoverOptions,
    root: &NodeId,
    namespaces: &[String],
    found: &[super::browse::Found],
) -> String {
    let name = &o.source;
    let mut out = format!(
        "# {} variables under {} on {} (ferrule discover opcua)\n[sources.{name}]\ntype = \"opcua\"\nendpoint = {}\n",
        found.len(),
        portable_id(root, namespaces),
        o.endpoint,
        toml_str(&o.endpoint)
    );
    for f in found {
        out += &format!(
            "\n[[sources.{name}.nodes]]\ntag = {}\nnode_id = {}\n",
            toml_str(&f.path),
            toml_str(&portable_id(&f.node_id, namespaces))
        );
    }
    out
}
