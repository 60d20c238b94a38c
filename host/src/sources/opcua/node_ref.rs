//! Node ids as configured: with a namespace index (`ns=2;s=…`, or none for namespace 0) or a
//! namespace URI (`nsu=urn:…;i=…`), in every identifier form (numeric, string, GUID, opaque).
//! URIs are resolved against the server's namespace array on every (re)connect, because a
//! restarted server may number its namespaces differently.

use std::str::FromStr;

use opcua::types::NodeId;

#[derive(Clone, Debug, PartialEq)]
pub enum NodeRef {
    Index(NodeId),
    Uri { uri: String, identifier: String },
}

fn check_identifier(s: &str) -> Result<(), String> {
    NodeId::from_str(s)
        .map(|_| ())
        .map_err(|_| format!("`{s}` is not an identifier (i=, s=, g= or b=)"))
}

impl NodeRef {
    pub fn parse(s: &str) -> Result<NodeRef, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("nsu=") {
            let (uri, identifier) = rest
                .split_once(';')
                .ok_or_else(|| format!("`{s}`: expected nsu=<uri>;<identifier>"))?;
            if uri.is_empty() {
                return Err(format!("`{s}`: empty namespace URI"));
            }
            check_identifier(identifier)?;
            return Ok(NodeRef::Uri {
                uri: uri.to_string(),
                identifier: identifier.to_string(),
            });
        }
        NodeId::from_str(s)
            .map(NodeRef::Index)
            .map_err(|_| format!("`{s}` is not a node id (e.g. ns=2;s=Line1.Press1.Bar, ns=2;i=1001, nsu=urn:x;g=<guid>)"))
    }

    /// The node id on a server with namespace array `namespaces`.
    pub fn resolve(&self, namespaces: &[String]) -> Result<NodeId, String> {
        match self {
            NodeRef::Index(id) => Ok(id.clone()),
            NodeRef::Uri { uri, identifier } => {
                let index = namespaces
                    .iter()
                    .position(|n| n == uri)
                    .ok_or_else(|| format!("the server has no namespace `{uri}`"))?;
                let mut id = NodeId::from_str(identifier)
                    .map_err(|_| format!("`{identifier}` is not an identifier"))?;
                id.namespace = index as u16;
                Ok(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_parses_and_uris_resolve() {
        let ns = vec![
            "http://opcfoundation.org/UA/".to_string(),
            "urn:other".into(),
            "urn:ferrule:test".into(),
        ];
        for s in [
            "ns=2;s=Line1.Press1.Bar",
            "ns=2;i=1001",
            "i=2258",
            "ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            "ns=2;b=b3BhcXVlLWlk",
        ] {
            let r = NodeRef::parse(s).unwrap();
            assert_eq!(r.resolve(&ns).unwrap().to_string(), s, "{s}");
        }
        let r = NodeRef::parse("nsu=urn:ferrule:test;s=Counter").unwrap();
        assert_eq!(r.resolve(&ns).unwrap().to_string(), "ns=2;s=Counter");
        let shifted: Vec<String> =
            vec![ns[0].clone(), ns[1].clone(), "urn:x".into(), ns[2].clone()];
        assert_eq!(r.resolve(&shifted).unwrap().to_string(), "ns=3;s=Counter");
        assert!(r
            .resolve(&ns[..2])
            .unwrap_err()
            .contains("urn:ferrule:test"));
        for bad in [
            "ns=2;x=1",
            "nsu=;i=1",
            "nsu=urn:a",
            "Line1.Press1",
            "ns=;i=1",
        ] {
            assert!(NodeRef::parse(bad).is_err(), "{bad}");
        }
    }
}
