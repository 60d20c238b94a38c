//! Browsing a server's address space: every variable under a node (through folders and
//! objects, not into variables' properties), named by its browse path below that node. Used
//! by `ferrule discover opcua` and by the source's `browse` option (at every session start).
//! The Server object (the server's own diagnostics) is skipped.

use std::collections::HashSet;

use opcua::client::Session;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, NodeClass, NodeId, ObjectId,
    ReferenceTypeId,
};

/// A variable found under the browsed node.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Browse names from below the root to the variable, joined with `.`.
    pub path: String,
    pub node_id: NodeId,
}

/// Most nodes visited in one browse (a guard against a server with cycles or huge trees).
const MAX_NODES: usize = 200_000;

/// Every variable under `root`, depth first, in the server's order.
pub async fn variables_under(session: &Session, root: &NodeId) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    seen.insert(root.clone());
    // (node, its path) still to browse; a stack, so the order is depth first.
    let mut stack: Vec<(NodeId, String)> = vec![(root.clone(), String::new())];
    while let Some((node, path)) = stack.pop() {
        let mut children = Vec::new();
        let desc = BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: NodeClass::Object as u32 | NodeClass::Variable as u32,
            result_mask: BrowseResultMask::All as u32,
        };
        let mut results = session
            .browse(&[desc], 1000, None)
            .await
            .map_err(|e| format!("browse of {node}: {e}"))?;
        while let Some(r) = results.pop() {
            if r.status_code.is_bad() {
                return Err(format!("browse of {node}: {}", r.status_code));
            }
            children.extend(r.references.unwrap_or_default());
            if r.continuation_point.is_null() {
                break;
            }
            results = session
                .browse_next(false, &[r.continuation_point])
                .await
                .map_err(|e| format!("browse of {node} (continued): {e}"))?;
        }
        let mut next = Vec::new();
        for c in children {
            // Properties (HasProperty) describe their parent; they are not tags.
            if c.reference_type_id == ReferenceTypeId::HasProperty {
                continue;
            }
            if c.node_id.server_index != 0 {
                continue;
            }
            let id = c.node_id.node_id.clone();
            // The Server object's diagnostics are the server's own, not plant data.
            if id == ObjectId::Server {
                continue;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if seen.len() > MAX_NODES {
                return Err(format!("more than {MAX_NODES} nodes under {root}"));
            }
            let name = c.browse_name.name.as_ref().to_string();
            let child_path = if path.is_empty() {
                name
            } else {
                format!("{path}.{name}")
            };
            match c.node_class {
                NodeClass::Variable => found.push(Found {
                    path: child_path,
                    node_id: id,
                }),
                NodeClass::Object => next.push((id, child_path)),
                _ => {}
            }
        }
        // Reversed onto the stack so that the first child is browsed first.
        stack.extend(next.into_iter().rev());
    }
    Ok(found)
}

/// `nsu=<uri>;<identifier>` for a node in a namespace other than 0 (stable when a restarted
/// server numbers its namespaces differently), else the plain node id.
pub fn portable_id(id: &NodeId, namespaces: &[String]) -> String {
    match namespaces.get(id.namespace as usize) {
        Some(uri) if id.namespace != 0 => format!("nsu={uri};{}", id.identifier),
        _ => id.to_string(),
    }
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
