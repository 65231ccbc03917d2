//! Identity is scoped by issuer: the Cedar entity ids of a token's principal, its groups, its
//! actors and `context.delegation.on_behalf_of` are `"<namespace>|<id>"`, where the namespace is
//! the issuer's `identity_namespace` (default: its `iss`). So `Agent::"agents|agent-7"` of one
//! issuer is never `Agent::"legacy|agent-7"` of another, unless the configuration gives both
//! issuers the same namespace. The scheme is the one Amazon Verified Permissions uses for
//! identity sources (`<user pool id>|<sub>`), and a namespace cannot contain `|`, so the first `|`
//! of an id always ends its namespace: no choice of ids makes two identities collide.
//!
//! Everything keyed by a principal (MCP session bindings, approval digests, log lines) uses
//! these ids, so it is keyed by issuer too.

/// The separator between a namespace and an id.
pub const SEPARATOR: char = '|';

/// The Cedar entity id of `id` in `namespace`.
pub fn entity_id(namespace: &str, id: &str) -> String {
    let mut s = String::with_capacity(namespace.len() + 1 + id.len());
    s.push_str(namespace);
    s.push(SEPARATOR);
    s.push_str(id);
    s
}

/// `Err(why)` when `namespace` cannot be one.
pub fn check_namespace(namespace: &str) -> Result<(), &'static str> {
    if namespace.is_empty() {
        return Err("must not be empty");
    }
    if namespace.contains(SEPARATOR) || namespace.chars().any(char::is_control) {
        return Err("must not contain `|` or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_two_namespaces_never_collide() {
        // ("a", "b|c") and ("a|b", "c") would both be "a|b|c": the second namespace is refused.
        assert_eq!(entity_id("a", "b|c"), "a|b|c");
        assert!(check_namespace("a|b").is_err());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("https://idp.example.com").is_ok());
        assert_ne!(
            entity_id("agents", "agent-7"),
            entity_id("legacy", "agent-7")
        );
    }
}
