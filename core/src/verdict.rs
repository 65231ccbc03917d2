//! What a decision came to: the verdict counted (`tessera.decisions.<name>`) and logged.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A Cedar permit, no forbid.
    Allow,
    /// A public route (`auth: none`).
    Public,
    /// Cedar denied, or no route matched.
    Deny,
    /// No token, or a token that did not verify.
    Unauthenticated,
    /// The filter could not judge the request (schema mismatch, evaluation error): denied.
    Error,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Public => "public",
            Verdict::Deny => "deny",
            Verdict::Unauthenticated => "unauthenticated",
            Verdict::Error => "error",
        }
    }
}
