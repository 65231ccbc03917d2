//! An MCP POST body through the engine: every JSON-RPC message decided on its own, a batch
//! forwarded whole or not at all, arguments in their declared formats, refusals as JSON-RPC errors.

use serde_json::{json, Value};

use crate::authz::{json_to_value, uid, value_record, CedarValue, Evaluation};
use crate::config::Mode;
use crate::mcp;
use crate::reply::LocalReply;
use crate::token::VerifiedToken;

use super::*;

/// Why one MCP message is refused: its JSON-RPC error and how it is counted.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: i64,
    /// What the client reads.
    pub(super) message: String,
    /// What the log says, when more than `message`.
    pub(super) detail: String,
    pub(super) policies: Vec<String>,
    pub(super) verdict: Verdict,
    /// The approval request, when a human approval can lift the refusal (`approval.rs`). Boxed:
    /// rare, and `Refusal` travels in `Result`s.
    pub(super) approval: Option<Box<Value>>,
    /// A result that answers the call in place of an error: `input_required`, asking a
    /// 2026-07-28 client for the person's approval (`input_required.rs`).
    pub(super) result: Option<Box<Value>>,
}

impl Refusal {
    /// Not a valid message (the client's error).
    pub(super) fn invalid(code: i64, message: String) -> Refusal {
        Refusal {
            code,
            message,
            detail: String::new(),
            policies: vec![],
            verdict: Verdict::Deny,
            approval: None,
            result: None,
        }
    }

    /// The filter cannot judge the message: refused (fail closed).
    pub(super) fn cannot_judge(message: String) -> Refusal {
        Refusal {
            code: mcp::FORBIDDEN,
            message,
            detail: String::new(),
            policies: vec![],
            verdict: Verdict::Error,
            approval: None,
            result: None,
        }
    }
}

impl Engine {
    pub(super) fn decide_mcp(
        &self,
        pending: &Pending,
        req: &HttpRequest<'_>,
        body: &[u8],
        store: &dyn Store,
        now_s: u64,
    ) -> Decision {
        let Some(route) = self.routes.get(pending.route) else {
            // Cannot happen (a Pending comes from this engine): the call cannot be judged.
            return Decision {
                reason: "the pending request's route is gone".into(),
                reply: Some(LocalReply::cannot_judge(req.request_id)),
                ..Decision::new(Verdict::Error, None, None)
            };
        };
        let folded = route.fold(req.path);
        let req = &req.with_path(folded.as_deref());
        let mut d = Decision::new(
            Verdict::Allow,
            Some(route.name.clone()),
            Some(pending.principal.clone()),
        );
        d.session_owner = Some(self.session_owner(&pending.token));
        let rpc_reply = |status: u32, body: Value| LocalReply::json_rpc(status, body.to_string());
        // The token was checked at the headers; a body that trickles in must not outlive it.
        let skew = self
            .issuer_of(&pending.token)
            .map_or(0, |i| i.clock_skew_s());
        if now_s > pending.token.expires_at.saturating_add(skew) {
            return unauthenticated(route, &TokenError::Expired, req.request_id);
        }
        if body.len() > self.max_body_bytes {
            d.verdict = Verdict::Deny;
            d.reason = "body too large".into();
            d.reply = Some(LocalReply::json_error(
                413,
                "payload_too_large",
                Some("the MCP request body exceeds the limit"),
                &[],
                req.request_id,
            ));
            return d;
        }
        let parsed = match crate::json::parse_strict(body, self.max_json_depth) {
            Ok(v) => v,
            Err(e) => {
                d.verdict = Verdict::Deny;
                d.reason = format!("parse error: {e}");
                d.reply = Some(rpc_reply(
                    400,
                    mcp::error_object(
                        &Value::Null,
                        mcp::PARSE_ERROR,
                        &format!("parse error: {e}"),
                        None,
                    ),
                ));
                return d;
            }
        };
        let (messages, batch) = match mcp::messages(&parsed, self.max_batch_messages) {
            Ok(m) => m,
            Err((code, msg)) => {
                d.verdict = Verdict::Deny;
                d.reason = msg.clone();
                d.reply = Some(rpc_reply(
                    400,
                    mcp::error_object(&Value::Null, code, &msg, None),
                ));
                return d;
            }
        };
        // The revision the body speaks; its mirrored headers must say what it says.
        let no_headers = crate::mcp_revision::Mirrored::default();
        let revision = match crate::mcp_revision::revision(
            req.mirrored.unwrap_or(&no_headers),
            &messages,
            batch,
        ) {
            Ok(r) => r,
            Err(r) => {
                d.verdict = Verdict::Deny;
                d.reason = r.message.clone();
                d.reply = Some(rpc_reply(
                    400,
                    mcp::error_object(&r.id, r.code, &r.message, r.data),
                ));
                return d;
            }
        };
        // Per message: None = allowed; Some((id, refusal)) = refused.
        let mut refused: Vec<Option<(Value, Refusal)>> = Vec::with_capacity(messages.len());
        let mut ids: Vec<Option<Value>> = Vec::with_capacity(messages.len());
        let mut verdict = Verdict::Allow;
        let mut policies_all = Vec::new();
        for m in &messages {
            let m = match m {
                Ok(m) => m,
                Err((id, (code, msg))) => {
                    ids.push(Some(id.clone()));
                    d.reason = msg.clone();
                    refused.push(Some((id.clone(), Refusal::invalid(*code, msg.clone()))));
                    verdict = Verdict::Deny;
                    continue;
                }
            };
            let id = match &m.kind {
                mcp::Kind::Request { id } => Some(id.clone()),
                _ => None,
            };
            ids.push(id.clone());
            if m.kind == mcp::Kind::Response {
                // A client's answer to a server request carries no new request to judge.
                refused.push(None);
                continue;
            }
            let target = mcp::target(m, &route.name).map(|t| mcp::Target {
                version: revision.version.clone(),
                client: revision.client.clone(),
                ..t
            });
            let outcome = match target.and_then(|t| self.formatted(t)) {
                Err((code, msg)) => Err(Refusal::invalid(code, msg)),
                Ok(t) => self
                    .evaluate_mcp(&pending.token, &t, req, now_s, None)
                    .and_then(|p| {
                        self.subscribed(m, &t, &pending.token, req, now_s)
                            .map(|()| p)
                    })
                    .or_else(|r| {
                        // Approval is taken for the body's only message, not inside a batch.
                        let single = (!batch).then_some((m, revision.modern));
                        self.approve_mcp(
                            r,
                            pending,
                            route,
                            &t,
                            req,
                            store,
                            now_s,
                            single,
                            &mut d.once,
                        )
                    }),
            };
            match outcome {
                Ok(p) => {
                    policies_all.extend(p);
                    refused.push(None);
                }
                Err(r) => {
                    if verdict != Verdict::Error {
                        verdict = r.verdict;
                    }
                    let why = if r.detail.is_empty() {
                        &r.message
                    } else {
                        &r.detail
                    };
                    d.reason = format!("{}: {why}", m.method);
                    policies_all.extend(r.policies.iter().cloned());
                    refused.push(Some((id.unwrap_or(Value::Null), r)));
                }
            }
        }
        policies_all.sort();
        policies_all.dedup();
        d.policies = policies_all;
        if refused.iter().all(Option::is_none) {
            if revision.modern && !batch {
                // Our requestState and the answers to it are not the server's to see.
                d.body = crate::input_required::stripped(&parsed);
            }
            d.set_headers = self.identity_headers(&pending.token, &pending.principal);
            d.once.extend(pending.once.clone());
            if self.mode == Mode::Enforce {
                d.mcp_lists = lists::ListRequests::new(pending, req, &messages);
            }
            return d;
        }
        // Refused only for scopes the token lacks: the HTTP 403 an MCP client steps up on.
        let refusals: Vec<&Refusal> = refused.iter().flatten().map(|(_, r)| r).collect();
        if let Some(reply) = self.step_up(&refusals, req.request_id) {
            d.verdict = Verdict::Deny;
            d.reason = "insufficient scope".into();
            d.reply = Some(reply);
            return d;
        }
        d.verdict = verdict;
        if let Some(ask) = refused
            .iter()
            .flatten()
            .find_map(|(_, r)| r.approval.as_deref())
        {
            d.notify = crate::approval::notification(
                self.approval.as_ref(),
                &d.policies,
                req.request_id,
                ask,
            );
        }
        let data = |p: &[String]| json!({"policies": p, "request_id": req.request_id});
        let mut answers = Vec::new();
        for (r, id) in refused.iter().zip(&ids) {
            match (r, id) {
                // A notification gets no JSON-RPC answer, refused or not (JSON-RPC 2.0 §4.1).
                (Some((id, r)), Some(_)) if r.result.is_some() => {
                    answers.push(json!({"jsonrpc": "2.0", "id": id, "result": r.result.as_deref()}))
                }
                (Some((id, r)), Some(_)) => {
                    let mut data = data(&r.policies);
                    if let Some(a) = &r.approval {
                        crate::json::set(&mut data, "approval", a.as_ref().clone());
                    }
                    answers.push(mcp::error_object(id, r.code, &r.message, Some(data)))
                }
                (Some(_), None) => {}
                (None, Some(id)) => answers.push(mcp::error_object(
                    id,
                    mcp::NOT_FORWARDED,
                    "not forwarded: another message in the batch was refused",
                    Some(data(&[])),
                )),
                (None, None) => {}
            }
        }
        let reply = if batch {
            Value::Array(answers)
        } else {
            match answers.pop() {
                Some(a) => a,
                // A refused notification has no id to answer: a plain 403.
                None => {
                    d.reply = Some(LocalReply::forbidden(&d.policies, req.request_id));
                    return d;
                }
            }
        };
        // Invalid messages are the client's error (400); policy refusals are answers (200), so the
        // MCP client fails that one call and the session goes on.
        let invalid = refused.iter().flatten().all(|(_, r)| {
            ![
                mcp::FORBIDDEN,
                mcp::NOT_FORWARDED,
                crate::approval::APPROVAL_REQUIRED,
            ]
            .contains(&r.code)
        });
        d.reply = Some(rpc_reply(if invalid { 400 } else { 200 }, reply));
        d
    }

    /// A `subscriptions/listen` is allowed only if every resource it subscribes to is:
    /// each is judged as `resources/subscribe` of it, so that a policy on subscriptions holds
    /// for both revisions.
    fn subscribed(
        &self,
        m: &mcp::Message,
        listen: &mcp::Target,
        token: &VerifiedToken,
        req: &HttpRequest<'_>,
        now_s: u64,
    ) -> Result<(), Refusal> {
        if m.method != "subscriptions/listen" {
            return Ok(());
        }
        let uris = mcp::subscriptions(m, self.max_batch_messages)
            .map_err(|(code, msg)| Refusal::invalid(code, msg))?;
        for uri in uris {
            let t = mcp::Target {
                action: "resources/subscribe".into(),
                resource_type: crate::names::RESOURCE,
                resource_id: uri.clone(),
                uri: Some(uri.clone()),
                ..listen.clone()
            };
            self.evaluate_mcp(token, &t, req, now_s, None)
                .map_err(|r| Refusal {
                    message: format!("subscription to {uri}: {}", r.message),
                    ..r
                })?;
        }
        Ok(())
    }

    /// A tool call's arguments with their declared formats in canonical form (`formats.rs`).
    pub(super) fn formatted(&self, mut t: mcp::Target) -> Result<mcp::Target, mcp::RpcError> {
        if let (Some(tool), Some(args)) = (&t.tool, &t.arguments) {
            if let Some(canonical) = self
                .formats
                .apply(tool, args)
                .map_err(|e| (mcp::INVALID_PARAMS, e))?
            {
                t.arguments = Some(canonical);
            }
        }
        Ok(t)
    }

    /// One MCP message through Cedar: the determining policies when allowed.
    pub(super) fn evaluate_mcp(
        &self,
        token: &VerifiedToken,
        t: &mcp::Target,
        req: &HttpRequest<'_>,
        now_s: u64,
        approval: Option<&crate::approval::Granted>,
    ) -> Result<Vec<String>, Refusal> {
        let action = self.policies.action_for(t.tool.as_deref(), &t.action);
        let per_tool = action != t.action;
        if !self.policies.has_action(&action) {
            return Err(Refusal::cannot_judge(format!(
                "method `{}` is not declared in the schema",
                t.action
            )));
        }
        let resource = uid(t.resource_type, &t.resource_id).map_err(Refusal::cannot_judge)?;
        // Built as Cedar values, not expressions to evaluate (`authz::json_to_value`).
        let s = |v: &str| CedarValue::from(v.to_string());
        // The record's shape (`PerRequest::Shaped`): one letter per member present, in this
        // order, then the arguments' shape. Every other member is a string.
        let mut shape = String::from("m");
        let mut fields = vec![("method".to_string(), s(&t.action))];
        if let Some(v) = &t.tool {
            fields.push(("tool".to_string(), s(v)));
            shape.push('t');
        }
        if let Some(v) = &t.uri {
            fields.push(("uri".to_string(), s(v)));
            shape.push('u');
        }
        if let Some(v) = &t.prompt {
            fields.push(("prompt".to_string(), s(v)));
            shape.push('p');
        }
        // What the schema does not declare is left out: a schema written before these existed
        // still accepts the request.
        if let (Some(v), true) = (
            &t.version,
            self.policies.mcp_declares(&action, "protocol_version"),
        ) {
            fields.push(("protocol_version".to_string(), s(v)));
            shape.push('v');
        }
        if let (Some((name, version)), true) =
            (&t.client, self.policies.mcp_declares(&action, "client"))
        {
            shape.push('c');
            shape.push(if name.is_some() { 'n' } else { '-' });
            shape.push(if version.is_some() { 'r' } else { '-' });
            let parts = [("name", name), ("version", version)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), s(v))));
            let client = value_record(parts.collect()).map_err(Refusal::cannot_judge)?;
            fields.push(("client".to_string(), client));
        }
        // Arguments are typed only by a per-tool action's schema; the generic action has none.
        if let (true, Some(args)) = (per_tool, &t.arguments) {
            let a = json_to_value(args)
                .map_err(|e| Refusal::invalid(mcp::INVALID_PARAMS, format!("arguments: {e}")))?;
            fields.push(("arguments".to_string(), a));
            shape.push('a');
            crate::authz::json_shape(args, &mut shape);
        }
        let mcp_record = value_record(fields).map_err(Refusal::cannot_judge)?;
        match self.evaluate(
            token,
            &action,
            resource,
            req,
            now_s,
            Some((mcp_record, t, Some(&shape))),
            approval,
        ) {
            // A claim or a request the policies cannot be asked about: cannot judge the call.
            Err(e) => Err(Refusal::cannot_judge(e.to_string())),
            Ok(Evaluation::Allow { policies }) => Ok(policies),
            Ok(Evaluation::Deny { policies }) => Err(Refusal {
                code: mcp::FORBIDDEN,
                detail: String::new(),
                message: if policies.is_empty() {
                    "forbidden: no policy permits this call".to_string()
                } else {
                    format!("forbidden by policy {}", policies.join(", "))
                },
                policies,
                verdict: Verdict::Deny,
                approval: None,
                result: None,
            }),
            // With a per-tool action, a request that does not fit the schema means arguments that
            // do not fit the tool's declared type: the client's error, said briefly. The Cedar
            // detail goes to the log only.
            Ok(Evaluation::Error { reason })
                if per_tool && reason.starts_with("request does not fit the schema") =>
            {
                Err(Refusal {
                    detail: reason,
                    ..Refusal::invalid(
                        mcp::INVALID_PARAMS,
                        "arguments do not match the tool's schema".into(),
                    )
                })
            }
            Ok(Evaluation::Error { reason }) => Err(Refusal {
                detail: reason,
                ..Refusal::cannot_judge("the call could not be evaluated".into())
            }),
        }
    }

    /// RFC 6750 §3.1 `insufficient_scope` (403) when every refusal is by forbid policies that
    /// all name the scope they need (`@scope("…")`): the client can get a token with those
    /// scopes and retry. `None` when any refusal is something else.
    pub(super) fn step_up(&self, refusals: &[&Refusal], request_id: &str) -> Option<LocalReply> {
        let mut policies = Vec::new();
        for r in refusals {
            if r.verdict != Verdict::Deny || r.code != mcp::FORBIDDEN || r.policies.is_empty() {
                return None;
            }
            policies.extend(r.policies.iter().cloned());
        }
        self.step_up_for(&policies, request_id)
    }
}
