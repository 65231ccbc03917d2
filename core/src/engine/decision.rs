//! What a decision says: the verdict, who and which policies, and what the proxy must do (reply,
//! header edits, wait for the body, filter the answer, obligations). Made by the stages in
//! `mod.rs`; turned into an `Outcome` by `exchange.rs`.

use std::sync::Arc;

use super::{lists, Route};
use crate::error::TokenError;
use crate::reply::LocalReply;
use crate::token::VerifiedToken;
use crate::verdict::Verdict;

#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    pub route: Option<String>,
    pub principal: Option<String>,
    pub policies: Vec<String>,
    /// Why (for the log line); empty on allow.
    pub reason: String,
    /// The reply to send instead of forwarding; `None` forwards (always `None` in shadow mode).
    pub reply: Option<LocalReply>,
    /// Headers to set on the forwarded request.
    pub set_headers: Vec<(String, String)>,
    /// Set on an MCP POST whose token verified: the body decides (`Engine::check_mcp`). The
    /// proxy buffers the body and forwards nothing until then.
    pub pending: Option<Pending>,
    /// Set on an allowed MCP POST with `tools/list`, `resources/list` or `prompts/list`
    /// requests: the proxy filters their answers (`Engine::filter_list_json`, `listing.rs`).
    pub mcp_lists: Option<lists::ListRequests>,
    /// Credentials to record as used before forwarding (single-use tokens, approvals): the
    /// proxy records each in its shared data, first writer wins, and sends the obligation's
    /// refusal instead when it was recorded already (`approval::Once`).
    pub once: Vec<crate::approval::Once>,
    /// An approval request to POST to the approval webhook (`approval.webhook`) with the reply.
    pub notify: Option<String>,
    /// On an MCP route: who an MCP session is bound to — a digest of the principal, on whose
    /// behalf, the actor chain and the task (as an approval binds them). A session is used only
    /// by the identity that created it.
    pub session_owner: Option<String>,
    /// The request waits for this call (keys fetched again for an unknown `kid`, a status list
    /// not yet fetched); its answer goes to `Engine::answered`, then the request is decided
    /// again.
    pub call: Option<crate::outcome::Call>,
    /// The request pushes something to the filter itself (a security event, or an approval
    /// the approval page posts): its body goes to `Engine::receive_pushed`, which answers it.
    pub receive_pushed: bool,
    /// The body to forward in place of the client's (an MCP call's retry without the
    /// `requestState` the filter issued: `input_required.rs`).
    pub body: Option<Vec<u8>>,
}

/// An authenticated MCP request waiting for its body.
#[derive(Debug, Clone)]
pub struct Pending {
    pub(super) route: usize,
    pub(super) token: Arc<VerifiedToken>,
    pub(super) principal: String,
    /// The token is single-use: recorded if the body is forwarded.
    pub(super) once: Vec<crate::approval::Once>,
    /// The approval header, for a call that needs one.
    pub(super) approval: Option<String>,
}

impl Decision {
    /// A decision with nothing to send and no headers to set yet.
    pub(super) fn new(
        verdict: Verdict,
        route: Option<String>,
        principal: Option<String>,
    ) -> Decision {
        Decision {
            verdict,
            route,
            principal,
            policies: vec![],
            reason: String::new(),
            reply: None,
            set_headers: vec![],
            pending: None,
            mcp_lists: None,
            once: vec![],
            notify: None,
            session_owner: None,
            call: None,
            receive_pushed: false,
            body: None,
        }
    }

    /// One line for the proxy's debug log. Every value that can come from a request or a token
    /// is escaped (`crate::reply::log_safe`), so that nothing a client sends starts a line.
    pub fn log_line(&self, method: &str, path: &str, request_id: &str) -> String {
        use crate::reply::log_safe as e;
        format!(
            "tessera decision={} route={} principal={} method={} path={} policies=[{}] request_id={}{}",
            self.verdict.name(),
            e(self.route.as_deref().unwrap_or("-")),
            e(self.principal.as_deref().unwrap_or("-")),
            e(method),
            e(path),
            e(&self.policies.join(",")),
            e(request_id),
            if self.reason.is_empty() { String::new() } else { format!(" reason=\"{}\"", crate::reply::log_quoted(&self.reason)) }
        )
    }
}

impl Decision {
    /// Denied by Cedar: by the forbids named (none: no permit).
    pub(super) fn denied(&mut self, policies: Vec<String>, request_id: &str) {
        self.verdict = Verdict::Deny;
        self.reason = if policies.is_empty() {
            "no permit".into()
        } else {
            "forbidden by policy".into()
        };
        self.reply = Some(LocalReply::forbidden(&policies, request_id));
        self.policies = policies;
    }

    /// Cedar could not judge the request (`reason`): denied.
    pub(super) fn cannot_judge(&mut self, reason: String, request_id: &str) {
        self.verdict = Verdict::Error;
        self.reply = Some(LocalReply::cannot_judge(request_id));
        self.reason = reason;
    }
}

impl Pending {
    pub(crate) fn token(&self) -> &VerifiedToken {
        &self.token
    }

    pub(crate) fn token_arc(&self) -> Arc<VerifiedToken> {
        self.token.clone()
    }
}

pub(super) fn cannot_judge(route: &Route, reason: String, request_id: &str) -> Decision {
    Decision {
        reason,
        reply: Some(LocalReply::cannot_judge(request_id)),
        ..Decision::new(Verdict::Error, Some(route.name.clone()), None)
    }
}

pub(super) fn unauthenticated(route: &Route, e: &TokenError, request_id: &str) -> Decision {
    if e.is_unavailable() {
        // The filter cannot judge the token now (keys or status list missing): 503, not 401.
        return Decision {
            reason: e.to_string(),
            reply: Some(LocalReply::retry_later(&e.to_string(), request_id)),
            ..Decision::new(Verdict::Error, Some(route.name.clone()), None)
        };
    }
    Decision {
        reason: e.to_string(),
        reply: Some(LocalReply::invalid_token(&e.to_string(), request_id)),
        ..Decision::new(Verdict::Unauthenticated, Some(route.name.clone()), None)
    }
}

/// The request waits for `call`, then is decided again.
pub(super) fn wait_for(route: &Route, call: crate::outcome::Call) -> Decision {
    Decision {
        call: Some(call),
        ..Decision::new(Verdict::Allow, Some(route.name.clone()), None)
    }
}

pub(super) fn deny_reply(
    verdict: Verdict,
    route: Option<String>,
    reason: &str,
    request_id: &str,
    status: u32,
) -> Decision {
    Decision {
        reason: reason.to_string(),
        reply: Some(LocalReply::json_error(
            status,
            "forbidden",
            Some(reason),
            &[],
            request_id,
        )),
        ..Decision::new(verdict, route, None)
    }
}
