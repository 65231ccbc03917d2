//! Human approval (core/src/approval.rs): the hooks of the HTTP and MCP paths.

use serde_json::{json, Value};

use crate::authz::{uid, Evaluation};
use crate::input_required;
use crate::mcp;
use crate::reply::LocalReply;
use crate::store::Store;
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
        once: Vec<crate::approval::Once>,
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

    /// An MCP call refused by policy that approval may lift (see `approve_http`). `single` is
    /// the call when it is the body's only message (an approval is not taken from a batch),
    /// with whether it is a 2026-07-28 request: such a client that declares URL elicitation is
    /// asked through `input_required`, and its retry carries no approval header — the approval
    /// the page posted is taken from `store` (`input_required.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn approve_mcp(
        &self,
        refusal: Refusal,
        pending: &Pending,
        route: &Route,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        store: &dyn Store,
        now_s: u64,
        single: Option<(&mcp::Message, bool)>,
        once: &mut Vec<crate::approval::Once>,
    ) -> Result<Vec<String>, Refusal> {
        let id = match single.map(|(m, _)| &m.kind) {
            Some(mcp::Kind::Request { id }) => Some(id),
            _ => None,
        };
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
        // A 2026-07-28 client that can open a URL for the person: asked through
        // `input_required`; its retry (our requestState) brings no header, the page posted the
        // approval here.
        let page = self.approval.as_ref().and_then(|a| a.page());
        let elicit = match (single, page) {
            (Some((m, true)), Some(page)) if input_required::may_elicit(m) => Some((m, page)),
            _ => None,
        };
        // The approval the page posted for this call, unless it is used already: then the person
        // is asked again (the page's next approval replaces it).
        let posted = elicit
            .filter(|(m, _)| input_required::state_digest(m).is_some())
            .and_then(|_| crate::approval::digest(&subject))
            .and_then(|digest| store.get(&input_required::granted_key(&digest), now_s))
            .and_then(|entry| String::from_utf8(entry.payload).ok())
            .filter(|jwt| {
                self.approval
                    .as_ref()
                    .and_then(|a| a.verify_posted(jwt, now_s).ok())
                    .is_some_and(|(_, g)| store.get(&g.key, now_s).is_none())
            });
        let declined = elicit.is_some_and(|(m, _)| input_required::declined(m));
        let presented = id.and(pending.approval.as_deref().or(posted.as_deref()));
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
                } else if declined {
                    message = format!("{message}: the approval was declined");
                }
                let result = elicit.filter(|_| !declined).and_then(|(_, page)| {
                    let digest = ask.get("digest").and_then(Value::as_str)?;
                    let asked = format!(
                        "A person must approve this call ({}). Open the page, approve, then go on.",
                        refusal.policies.join(", ")
                    );
                    input_required::result(page, &ask, digest, &asked).map(Box::new)
                });
                Err(Refusal {
                    code: APPROVAL_REQUIRED,
                    message,
                    approval: Some(Box::new(ask)),
                    result,
                    ..refusal
                })
            }
        }
    }

    /// An approval the approval page posts (`approval.receiver_path`): verified, then kept in
    /// the Store under the digest of the call it approves until it expires, for that call's
    /// retry. 202 with the digest; 400 with the reason; 405 to any other method.
    pub fn receive_approval(
        &self,
        method: &str,
        body: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> LocalReply {
        if method != "POST" {
            return LocalReply {
                status: 405,
                headers: vec![("allow".into(), "POST".into())],
                body: String::new(),
            };
        }
        let Some(approval) = &self.approval else {
            return LocalReply::unavailable("");
        };
        let invalid =
            |why: &str| LocalReply::json_error(400, "invalid_approval", Some(why), &[], "");
        let Ok(jwt) = std::str::from_utf8(body) else {
            return invalid("the body is not a signed approval (UTF-8 text)");
        };
        let (digest, granted) = match approval.verify_posted(jwt, now_s) {
            Ok(v) => v,
            Err(why) => return invalid(&why),
        };
        let key = input_required::granted_key(&digest);
        // A later approval for a call replaces an earlier one (whose use may be spent); an
        // unused one that outlives it stays (re-posting an old approval evicts nothing).
        let mut written = Ok(false);
        for _ in 0..4 {
            let read = store.get(&key, now_s);
            let keeps = read
                .as_ref()
                .and_then(|e| std::str::from_utf8(&e.payload).ok())
                .and_then(|old| approval.verify_posted(old, now_s).ok())
                .is_some_and(|(_, old)| {
                    old.until > granted.until && store.get(&old.key, now_s).is_none()
                });
            if keeps {
                written = Ok(true);
                break;
            }
            written = store.replace(
                &key,
                read.as_ref(),
                jwt.trim().as_bytes(),
                granted.until,
                now_s,
            );
            if !matches!(written, Ok(false)) {
                break;
            }
        }
        match written {
            Ok(true) => LocalReply {
                status: 202,
                headers: vec![("content-type".into(), "application/json".into())],
                body: json!({"digest": digest}).to_string(),
            },
            Ok(false) => LocalReply::unavailable("the approval could not be kept: try again"),
            Err(e) => LocalReply::unavailable(&format!("the approval could not be kept: {e}")),
        }
    }
}
