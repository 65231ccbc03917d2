//! The names Tessera gives Cedar: the entity types and actions of the requests it builds. They
//! are written here only; the schema a policy author writes must declare them
//! (`engine/compile.rs` says which one is missing).

/// The principal of a request its peer's X.509-SVID authenticates (`auth: workload`).
pub const WORKLOAD: &str = "Workload";
/// The identity namespace of those principals (`identity.rs`): `Workload::"spiffe|<SPIFFE ID>"`.
/// An issuer of JWT-SVIDs with this `identity_namespace` names the same workloads.
pub const SPIFFE_NAMESPACE: &str = "spiffe";
/// The HTTP methods that are Cedar actions on routes.
pub const HTTP_METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];
/// A protected route (`resource` of an HTTP request).
pub const ROUTE: &str = "Route";
/// A group from a token's groups claim (a parent of the principal).
pub const GROUP: &str = "Group";
/// The one a delegated token acts on behalf of (`context.delegation`).
pub const ON_BEHALF_OF: &str = "User";
/// An MCP server (`resource` of an MCP request that names no tool, resource or prompt).
pub const MCP_SERVER: &str = "McpServer";
pub const TOOL: &str = "Tool";
pub const RESOURCE: &str = "Resource";
pub const PROMPT: &str = "Prompt";
/// The entity types an MCP route needs.
pub const MCP_ENTITY_TYPES: [&str; 4] = [MCP_SERVER, TOOL, RESOURCE, PROMPT];

/// The per-tool action of a call of `tool` (`Action::"call:<tool>"`), used instead of
/// `tools/call` when the schema declares it.
pub fn call_action(tool: &str) -> String {
    format!("call:{tool}")
}
