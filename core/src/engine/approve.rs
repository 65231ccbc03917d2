//! Human approval (core/src/approval.rs): the hooks of the HTTP and MCP paths.

use serde_json::{json, Value};

use crate::authz::{uid, Evaluation};
use crate::mcp;
use crate::reply::LocalReply;
use crate::token::VerifiedToken;

use super::*;

impl Engine {
    /// A plain HTTP denial that approval may lift: asks for approval, or — with a valid approval
    /// of exactly this request — allows it, recording the approval before forwarding.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn approve_http(
        &self,
        d: &mut Decision,
        t: &VerifiedToken,
        route: &Route,
        req: &HttpRequest<'_>,
        now_s: u64,
        once: Option<crate::approval::Once>,
    ) {
        use crate::approval::{self, Approved};
        let Some(principal) = d.principal.clone() else {
            return;
        };
        let resource = format!("Route::{}", Value::String(route.name.clone()));
        let mut subject = approval::subject(
            &principal,
            req.method,
            &resource,
            &route.name,
            None,
            Some(req.path),
        );
        self.bind_identity(&mut subject, t);
        let evaluate = |g: &approval::Granted| {
            uid(names::ROUTE, &route.name)
                .and_then(|resource| {
                    self.evaluate(t, req.method, resource, req, now_s, None, Some(g))
                        .map_err(|e| e.to_string())
                })
                .unwrap_or_else(|reason| Evaluation::Error { reason })
        };
        let outcome = approval::approve(
            self.approval.as_ref(),
            &self.approvable,
            &d.policies,
            &subject,
            req.approval,
            now_s,
            evaluate,
        );
        match outcome {
            None => {}
            Some(Approved::Required { ask, reason }) => {
                d.reason = match &reason {
                    Some(r) => format!("approval required: {r}"),
                    None => "approval required".into(),
                };
                d.notify = approval::notification(
                    self.approval.as_ref(),
                    &d.policies,
                    req.request_id,
                    &ask,
                );
                d.reply = Some(approval::required_reply(
                    &d.policies,
                    req.request_id,
                    ask,
                    reason.as_deref(),
                ));
            }
            Some(Approved::Allowed {
                policies,
                granted,
                ask,
            }) => {
                let used = "approval already used";
                d.verdict = Verdict::Allow;
                d.reason = String::new();
                d.once.push(approval::Once {
                    key: granted.key,
                    until: granted.until,
                    verdict: Verdict::Deny,
                    reason: used.into(),
                    reply: approval::required_reply(&d.policies, req.request_id, ask, Some(used)),
                });
                d.once.extend(once);
                d.policies = policies;
                d.reply = None;
                d.set_headers = self.identity_headers(t, &principal);
            }
        }
    }

    /// An MCP call refused by policy that approval may lift (see `approve_http`). `id` is the
    /// call's id when it is the body's only message: an approval is not taken from a batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn approve_mcp(
        &self,
        refusal: Refusal,
        pending: &Pending,
        route: &Route,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        now_s: u64,
        id: Option<&Value>,
        once: &mut Vec<crate::approval::Once>,
    ) -> Result<Vec<String>, Refusal> {
        use crate::approval::{self, Approved, APPROVAL_REQUIRED};
        if refusal.code != mcp::FORBIDDEN || refusal.verdict != Verdict::Deny {
            return Err(refusal);
        }
        let action = self.policies.action_for(t.tool.as_deref(), &t.action);
        let resource = format!(
            "{}::{}",
            t.resource_type,
            Value::String(t.resource_id.clone())
        );
        let mut subject = approval::subject(
            &pending.principal,
            &action,
            &resource,
            &route.name,
            t.arguments.as_ref(),
            None,
        );
        self.bind_identity(&mut subject, &pending.token);
        let presented = id.and(pending.approval.as_deref());
        let evaluate =
            |g: &approval::Granted| match self.evaluate_mcp(&pending.token, t, req, now_s, Some(g))
            {
                Ok(policies) => Evaluation::Allow { policies },
                Err(r) if r.verdict == Verdict::Deny && r.code == mcp::FORBIDDEN => {
                    Evaluation::Deny {
                        policies: r.policies,
                    }
                }
                Err(r) => Evaluation::Error { reason: r.message },
            };
        let outcome = approval::approve(
            self.approval.as_ref(),
            &self.approvable,
            &refusal.policies,
            &subject,
            presented,
            now_s,
            evaluate,
        );
        let data = |ask: Value| json!({"policies": refusal.policies, "request_id": req.request_id, "approval": ask});
        match outcome {
            None => Err(refusal),
            Some(Approved::Allowed {
                policies,
                granted,
                ask,
            }) => {
                let used = "approval already used";
                let message = format!("{}: {used}", approval::required_message(&refusal.policies));
                let answer = mcp::error_object(
                    id.unwrap_or(&Value::Null),
                    APPROVAL_REQUIRED,
                    &message,
                    Some(data(ask)),
                );
                once.push(approval::Once {
                    key: granted.key,
                    until: granted.until,
                    verdict: Verdict::Deny,
                    reason: used.into(),
                    reply: LocalReply::json_rpc(200, answer.to_string()),
                });
                Ok(policies)
            }
            Some(Approved::Required { ask, reason }) => {
                let mut message = approval::required_message(&refusal.policies);
                if let Some(r) = &reason {
                    message = format!("{message}: {r}");
                }
                Err(Refusal {
                    code: APPROVAL_REQUIRED,
                    message,
                    approval: Some(Box::new(ask)),
                    ..refusal
                })
            }
        }
    }
}
