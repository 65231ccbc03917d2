//! The names Tessera gives Cedar: the entity types and actions of the requests it builds. They
//! are written here only; the schema a policy author writes must declare them
//! (`engine/compile.rs` says which one is missing).

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
