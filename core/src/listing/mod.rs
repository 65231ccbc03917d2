//! MCP list filtering: `tools/list`, `resources/list` and `prompts/list` results cut down to what
//! the caller may use, in `application/json` replies and in `text/event-stream` replies.
//!
//! "May use" is decided by Cedar partial evaluation: a tool is listed unless the caller is denied
//! `call:<tool>` (or `tools/call` on `Tool::"<name>"`) for every possible argument record, which
//! is what evaluating with `context.mcp.arguments` unknown tells. Only a definite Deny hides an
//! item (a policy that errors hides it too: fail closed), so a listed tool may still be refused
//! for particular arguments, and the call itself is always decided on its own. Forbids a step-up
//! lifts (`@scope("…")`) do not hide an item: a client can only step up for a tool it can see.
//!
//! The SSE rewriter holds back only the bytes of an unfinished event and only while a list
//! answer is still awaited: complete events go out as they arrive, events that do not carry a
//! list answer go out byte for byte.
//!
//! (Over 600 lines only with its tests, which stay beside the code they pin: the module is
//! 258 lines.)

use cedar_policy::{Decision as CedarDecision, RestrictedExpression};
use serde_json::Value;

use crate::authz::uid;
pub use crate::engine::lists::{ListKind, ListRequests};
use crate::engine::{Engine, RequestParts};

/// What filtering one reply did, for the log line and the counter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// The list methods answered in this reply.
    pub methods: Vec<&'static str>,
    pub shown: usize,
    pub hidden: usize,
    /// List results marked `cacheScope: "private"` here (2026-07-28): judged for this caller, no
    /// shared cache may hand them to another.
    pub made_private: usize,
    /// Why an item could not be judged (it is hidden then), the first reason seen.
    pub error: Option<String>,
}

impl Filtered {
    pub fn log_line(&self, request_id: &str) -> String {
        use crate::reply::{log_quoted, log_safe};
        let error = self
            .error
            .as_ref()
            .map_or(String::new(), |e| format!(" error=\"{}\"", log_quoted(e)));
        format!(
            "tessera mcp_list methods=[{}] shown={} hidden={} request_id={}{error}",
            self.methods.join(","),
            self.shown,
            self.hidden,
            log_safe(request_id)
        )
    }
}

impl Engine {
    /// Filters the list answers in one JSON-RPC reply (a message or a batch), in place. `None`
    /// when it carries no awaited list answer (leave it untouched).
    pub fn filter_list_reply(
        &self,
        lists: &mut ListRequests,
        reply: &mut Value,
        now_s: u64,
    ) -> Option<Filtered> {
        let mut out = Filtered::default();
        let messages: Vec<&mut Value> = match reply {
            Value::Array(items) => items.iter_mut().collect(),
            one => vec![one],
        };
        // The principal is built once per reply, and only when there is something to judge.
        let mut judge: Option<Judge> = None;
        for m in messages {
            // Only a response answers a list request: a server's own request (elicitation,
            // sampling) may reuse the id, as ids are per sender.
            let response = m.get("method").is_none()
                && (m.get("result").is_some() || m.get("error").is_some());
            let awaited = m
                .get("id")
                .filter(|_| response)
                .and_then(|id| lists.take(id));
            let Some(kind) = awaited.or_else(|| ListKind::of_result(m)) else {
                continue;
            };
            out.methods.push(kind.method());
            let Some(items) = m
                .get_mut("result")
                .and_then(|r| r.get_mut(kind.field()))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            let judge = judge.get_or_insert_with(|| self.list_judge(lists, now_s));
            let before = items.len();
            let error = &mut out.error;
            items.retain(|item| {
                let Some(name) = item.get(kind.key()).and_then(Value::as_str) else {
                    return false;
                };
                judge.may_use(self, kind, name, true).unwrap_or_else(|e| {
                    error.get_or_insert(e);
                    false
                })
            });
            out.shown += items.len();
            out.hidden += before - items.len();
            if let Some(result) = m.get_mut("result").and_then(Value::as_object_mut) {
                let modern = result.contains_key("resultType") || result.contains_key("cacheScope");
                if modern && result.get("cacheScope").and_then(Value::as_str) != Some("private") {
                    result.insert("cacheScope".into(), Value::String("private".into()));
                    out.made_private += 1;
                }
            }
        }
        (!out.methods.is_empty()).then_some(out)
    }

    /// Filters a whole `application/json` reply body: `Some(new body)` when it changed. A body
    /// that is not JSON is replaced by [`ListRequests::unreadable`]: what the filter cannot read
    /// never reaches the client.
    pub fn filter_list_json(
        &self,
        lists: &mut ListRequests,
        body: &[u8],
        now_s: u64,
    ) -> (Option<Vec<u8>>, Filtered) {
        let unreadable = |lists: &ListRequests, why: &str| {
            let f = Filtered {
                error: Some(format!("unreadable list answer: {why}")),
                ..Filtered::default()
            };
            (Some(lists.unreadable(why)), f)
        };
        let mut reply: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return unreadable(lists, "not JSON"),
        };
        let Some(filtered) = self.filter_list_reply(lists, &mut reply, now_s) else {
            return (None, Filtered::default());
        };
        if filtered.hidden == 0 && filtered.made_private == 0 {
            return (None, filtered);
        }
        match serde_json::to_vec(&reply) {
            Ok(out) => (Some(out), filtered),
            Err(_) => unreadable(lists, "cannot be written back"),
        }
    }

    /// Filters the data of one SSE event: `Some(new data)` when it changed.
    pub fn filter_list_event(
        &self,
        lists: &mut ListRequests,
        data: &str,
        now_s: u64,
        total: &mut Filtered,
    ) -> Option<String> {
        if lists.answered() {
            return None;
        }
        let mut reply: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            // Data the filter cannot read is dropped (an event with empty data is not
            // dispatched): a more lenient client parser must not see an unfiltered list in it.
            Err(_) if data.is_empty() => return None,
            Err(_) => {
                total
                    .error
                    .get_or_insert_with(|| "an SSE event that is not JSON was dropped".into());
                return Some(String::new());
            }
        };
        let hidden_before = total.hidden;
        if lists.stream && !self.announced(lists, &mut reply, now_s, total) {
            // Nothing left to say: an event with empty data is not dispatched.
            return Some(String::new());
        }
        let unannounced = total.hidden != hidden_before;
        let Some(f) = self.filter_list_reply(lists, &mut reply, now_s) else {
            return unannounced
                .then(|| serde_json::to_string(&reply).ok())
                .flatten();
        };
        total.methods.extend(f.methods);
        total.shown += f.shown;
        total.hidden += f.hidden;
        total.made_private += f.made_private;
        if total.error.is_none() {
            total.error = f.error;
        }
        if f.hidden == 0 && f.made_private == 0 && !unannounced {
            return None;
        }
        serde_json::to_string(&reply).ok()
    }

    /// A stream's `notifications/resources/updated` for a resource the caller may not read is
    /// not announced (removed from a batch; `false` when nothing is left of the event). Other
    /// messages pass.
    fn announced(
        &self,
        lists: &ListRequests,
        reply: &mut Value,
        now_s: u64,
        total: &mut Filtered,
    ) -> bool {
        let uri_of = |m: &Value| {
            (m.get("method").and_then(Value::as_str) == Some("notifications/resources/updated"))
                .then(|| {
                    m.pointer("/params/uri")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                })
        };
        let mut judge: Option<Judge> = None;
        let mut readable = |m: &Value| -> bool {
            let Some(uri) = uri_of(m) else {
                return true;
            };
            let j = judge.get_or_insert_with(|| self.list_judge(lists, now_s));
            let ok = j
                // Not counting a step-up: a change is announced only to who may read it now.
                .may_use(self, ListKind::Resources, &uri, false)
                .unwrap_or_else(|e| {
                    total.error.get_or_insert(e);
                    false
                });
            if !ok {
                total.hidden += 1;
                if !total.methods.contains(&"notifications/resources/updated") {
                    total.methods.push("notifications/resources/updated");
                }
            }
            ok
        };
        match reply {
            Value::Array(items) => {
                items.retain(|m| readable(m));
                !items.is_empty()
            }
            one => readable(one),
        }
    }

    /// The entities and the known part of the context, built as `Engine::evaluate` builds them
    /// for a call (the same per-token parts; the request line of the list request, which a call
    /// repeats), so that the partial decision is the one a call would get.
    fn list_judge(&self, lists: &ListRequests, now_s: u64) -> Judge {
        let built = self
            .token_parts(lists.pending.token())
            .map_err(|e| e.to_string());
        Judge {
            built,
            token: lists.pending.token_arc(),
            path: lists.path.clone(),
            host: lists.host.clone(),
            facts: lists.facts.clone(),
            facts_without_address: lists.facts.clone().map(|mut f| {
                f.connection.source_ip = None;
                f
            }),
            now_s,
        }
    }
}

/// Judges the items of the list answers in one reply.
struct Judge {
    /// The principal and the per-token context, or why they could not be built (then every
    /// item is hidden: fail closed).
    built: Result<RequestParts, String>,
    /// The token, the list request's line and connection: the per-action part of the context
    /// (`Engine::request_context`).
    token: std::sync::Arc<crate::token::VerifiedToken>,
    path: String,
    host: String,
    facts: Option<crate::pop::connection::RequestFacts>,
    /// `facts` without the source address: for judgements with unknown arguments (`may_use`).
    facts_without_address: Option<crate::pop::connection::RequestFacts>,
    now_s: u64,
}

impl Judge {
    /// Whether the caller may be allowed to use this item for some arguments; `Err` when that
    /// cannot be judged (the caller hides the item).
    /// Whether the caller may use the item `name`: some arguments could be allowed, counting a
    /// step-up (`after_step_up`: forbids a step-up lifts do not count) for a listing.
    fn may_use(
        &self,
        engine: &Engine,
        kind: ListKind,
        name: &str,
        after_step_up: bool,
    ) -> Result<bool, String> {
        let (entities, context) = self.built.as_ref().map_err(Clone::clone)?;
        let (generic, resource_type, field) = kind.usage();
        // A resource is judged by the URI a read of it is judged by (formats.rs).
        let canonical;
        let name = if matches!(kind, ListKind::Resources | ListKind::Templates) {
            canonical = crate::formats::canonical_resource_uri(name)
                .map_err(|e| format!("listed resource URI: {e}"))?;
            canonical.as_str()
        } else {
            name
        };
        let tool = (kind == ListKind::Tools).then_some(name);
        let action = engine.policies().action_for(tool, generic);
        let per_tool = action != generic;
        let action = action.as_str();
        if !engine.policies().has_action(action) {
            return Err(format!("action `{action}` is not declared in the schema"));
        }
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let mut mcp_fields = vec![
            ("method".to_string(), s(generic)),
            (field.to_string(), s(name)),
        ];
        // The arguments of a per-tool action are what the listing cannot know: unknown.
        if per_tool {
            mcp_fields.push((
                "arguments".to_string(),
                RestrictedExpression::new_unknown("arguments"),
            ));
        }
        let mcp_record = RestrictedExpression::new_record(mcp_fields).map_err(|e| e.to_string())?;
        let mut pairs = context.clone();
        // With an unknown in the context Cedar keeps the whole context as an expression, and
        // projects attributes out of it only when it holds nothing but literals, records and
        // sets: an `ip(…)` value anywhere would leave every `context.…` of every policy
        // undecided, and so list every tool. The source address is left out of per-tool
        // listings (a policy sees `context.request has source_ip` false); the call itself is
        // judged with it.
        let facts = if per_tool {
            self.facts_without_address.as_ref()
        } else {
            self.facts.as_ref()
        };
        let line = crate::engine::RequestLine {
            method: "POST",
            path: &self.path,
            host: &self.host,
            facts,
        };
        let mut values = Vec::new();
        engine
            .request_context(
                Some(&self.token.binding),
                action,
                &line,
                self.now_s,
                &mut values,
                &mut String::new(),
            )
            .map_err(|e| e.to_string())?;
        // As expressions: partial evaluation takes the context's unknowns among them.
        pairs.extend(
            values
                .into_iter()
                .map(|(name, v)| (name, crate::authz::expression_of(v))),
        );
        pairs.push(("mcp".to_string(), mcp_record));
        let resource = uid(resource_type, name)?;
        // Listed when some arguments could be allowed, counting a step-up: a tool held back
        // only by `@scope` forbids is listed, so that the client can call it, get the 403
        // `insufficient_scope` challenge and step up (as the MCP authorization spec expects).
        let decision = engine.policies().evaluate_partial(
            entities.clone(),
            action,
            resource,
            pairs,
            after_step_up,
        )?;
        Ok(decision != Some(CedarDecision::Deny))
    }
}

mod response;
mod sse;
pub use response::{ResponseFilter, Step};
pub use sse::SseRewriter;

/// The list filter and the scope step-up through a whole engine: tokens, policies, partial
/// evaluation.
#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::engine::{Decision, HttpRequest, Verdict};
    use crate::mcp;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const SECRET: &[u8] = b"listing-tests-secret-of-32-bytes!";
    const ISS: &str = "https://issuer.test";

    const SCHEMA: &str = r#"
        entity Group; entity User in [Group]; entity Agent in [Group];
        entity Route; entity McpServer; entity Tool; entity Resource; entity Prompt;
        type Claims = {};
        type Token = { issuer: String, subject: String, audience: Set<String>, scopes: Set<String>,
                       client_id?: String, issued_at?: Long, expires_at: Long, claims: Claims };
        type HttpRequest = { method: String, path: String, host: String };
        type Delegation = { on_behalf_of: User, subject: String, actor: String,
                            actors: Set<String>, chain: String, depth: Long };
        type Task = { id?: String, intent?: String, types?: Set<String>, tools?: Set<String>,
                      detail?: { argument_domains: Set<String> } };
        type HttpContext = { token: Token, request: HttpRequest, now: Long,
                             delegation: Delegation, task?: Task };
        action "GET", "POST" appliesTo { principal: [User, Agent], resource: [Route], context: HttpContext };
        type McpCall = { method: String, tool?: String, uri?: String, prompt?: String };
        type McpContext = { token: Token, request: HttpRequest, now: Long, mcp: McpCall,
                            delegation: Delegation, task?: Task };
        action "tools/list", "resources/list", "resources/templates/list", "prompts/list" appliesTo
            { principal: [User, Agent], resource: [McpServer], context: McpContext };
        action "tools/call" appliesTo { principal: [User, Agent], resource: [Tool], context: McpContext };
        action "resources/read" appliesTo { principal: [User, Agent], resource: [Resource], context: McpContext };
        action "prompts/get" appliesTo { principal: [User, Agent], resource: [Prompt], context: McpContext };
        type PayArgs = { amount: Long };
        action "call:pay" in ["tools/call"] appliesTo { principal: [User, Agent], resource: [Tool],
            context: { token: Token, request: HttpRequest, now: Long, delegation: Delegation,
                       task?: Task, mcp: { method: String, tool: String, arguments: PayArgs } } };
        action "call:boom" in ["tools/call"] appliesTo { principal: [User, Agent], resource: [Tool],
            context: { token: Token, request: HttpRequest, now: Long, delegation: Delegation,
                       task?: Task, mcp: { method: String, tool: String, arguments: PayArgs } } };
    "#;

    const POLICIES: &str = r#"
        permit (principal, action in [Action::"tools/list", Action::"resources/list",
                                      Action::"resources/templates/list", Action::"prompts/list"], resource);
        @id("read-tools") permit (principal, action in Action::"tools/call", resource);
        @id("small-payments") forbid (principal, action == Action::"call:pay", resource)
            when { context.mcp.arguments.amount > 100 };
        @id("pay-needs-scope") @scope("pay:write")
            forbid (principal, action == Action::"call:pay", resource)
            unless { context.token.scopes.contains("pay:write") };
        @id("no-delete") forbid (principal, action in Action::"tools/call", resource == Tool::"delete");
        @id("boom") forbid (principal, action == Action::"call:boom", resource)
            when { context.now * 9223372036854775807 > 0 };
        @id("docs") permit (principal, action == Action::"resources/read", resource)
            when { resource == Resource::"file:///docs" };
        @id("prompts") permit (principal, action == Action::"prompts/get", resource == Prompt::"summary");
        @id("get-needs-scope") @scope("orders:read orders:list")
            forbid (principal, action == Action::"GET", resource) unless { context.token.scopes.contains("orders:read") };
        permit (principal, action == Action::"GET", resource);
    "#;

    fn engine() -> Engine {
        let config = json!({
            "issuers": [{"issuer": ISS, "audiences": ["t"],
                         "hmac_secret": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET),
                         "principal": {"type": "User"}}],
            "schema": SCHEMA,
            "policies": POLICIES,
            "routes": [{"name": "tools", "prefix": "/mcp", "kind": "mcp"},
                       {"name": "orders", "prefix": "/orders"}],
            "resource_metadata": {"resource": "https://api.test/mcp", "authorization_servers": [ISS]}
        });
        match Engine::from_json(config.to_string().as_bytes()) {
            Ok(e) => e,
            Err(e) => panic!("config: {e}"),
        }
    }

    fn bearer(scope: &str) -> String {
        let claims = Claims::with_custom_claims(json!({"scope": scope}), Duration::from_secs(300))
            .with_issuer(ISS)
            .with_subject("alice")
            .with_audience("t");
        let token = HS256Key::from_bytes(SECRET)
            .authenticate(claims)
            .unwrap_or_default();
        format!("Bearer {token}")
    }

    fn now() -> u64 {
        Clock::now_since_epoch().as_secs()
    }

    /// An MCP POST through the engine: headers, then the body.
    fn post(e: &Engine, scope: &str, body: &Value) -> Decision {
        let auth = bearer(scope);
        let req = HttpRequest {
            method: "POST",
            path: "/mcp",
            host: "api.test",
            authorization: Some(&auth),
            request_id: "r-1",
            content_type: Some("application/json"),
            ..HttpRequest::default()
        };
        let d = e.check(&req, &crate::store::MemoryStore::new(), now());
        let Some(pending) = d.pending else {
            panic!("not pending: {d:?}");
        };
        e.check_mcp(
            &pending,
            &req,
            body.to_string().as_bytes(),
            &crate::store::MemoryStore::new(),
            now(),
        )
    }

    fn list(id: i64, method: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": method})
    }

    fn names(reply: &Value, field: &str, key: &str) -> Vec<String> {
        reply["result"][field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i[key].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn tools_reply(id: i64) -> Value {
        let tools: Vec<Value> = ["read", "pay", "delete", "boom", "unknown"]
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect();
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools, "nextCursor": "c2"}})
    }

    #[test]
    fn a_tool_is_hidden_only_when_no_arguments_could_allow_it() {
        let e = engine();
        let d = post(&e, "", &list(1, "tools/list"));
        assert_eq!(d.verdict, Verdict::Allow);
        let mut lists = d.mcp_lists.expect("a list request is announced");
        let body = tools_reply(1).to_string();
        let (out, f) = e.filter_list_json(&mut lists, body.as_bytes(), now());
        let out = out.expect("filtered");
        let out: Value = serde_json::from_slice(&out).expect("json");
        // pay: without pay:write only its `@scope` forbid holds it back, so it is listed (the
        // call gets the step-up challenge); delete: forbidden outright; boom: its forbid errors
        // (overflow), so it is hidden (fail closed).
        assert_eq!(names(&out, "tools", "name"), ["read", "pay", "unknown"]);
        assert_eq!(
            out["result"]["nextCursor"], "c2",
            "the rest of the result is kept"
        );
        assert_eq!((f.shown, f.hidden, f.methods), (3, 2, vec!["tools/list"]));
        assert!(
            f.error
                .as_deref()
                .is_some_and(|e| e.contains("`boom` errored")),
            "{:?}",
            f.error
        );
        assert!(lists.answered());

        // With the scope, `pay` is listed too: only some amounts are forbidden.
        let mut lists = post(&e, "pay:write", &list(1, "tools/list"))
            .mcp_lists
            .expect("lists");
        let (out, _) = e.filter_list_json(&mut lists, body.as_bytes(), now());
        let out = out.expect("filtered");
        let out: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(names(&out, "tools", "name"), ["read", "pay", "unknown"]);
    }

    #[test]
    fn the_partial_decision_agrees_with_the_call() {
        let e = engine();
        let call = |scope: &str, amount: i64| {
            let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                              "params": {"name": "pay", "arguments": {"amount": amount}}});
            post(&e, scope, &body).reply.is_none()
        };
        // Listed with pay:write, and some call is allowed. Listed without it too, because every
        // call then gets the step-up challenge for exactly that scope.
        assert!(call("pay:write", 10) && !call("pay:write", 1000));
        assert!(!call("", 10) && !call("", 1000));
        let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                          "params": {"name": "pay", "arguments": {"amount": 10}}});
        let reply = post(&e, "", &body).reply.expect("refused");
        assert_eq!(reply.status, 403);
        let challenge = reply
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        assert!(
            challenge.contains(r#"error="insufficient_scope", scope="pay:write""#),
            "{challenge}"
        );
    }

    #[test]
    fn resources_and_prompts_are_filtered_in_a_batch_reply() {
        let e = engine();
        let d = post(
            &e,
            "",
            &json!([list(1, "resources/list"), list(2, "prompts/list"), {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "read"}}]),
        );
        let mut lists = d.mcp_lists.expect("lists");
        let mut reply = json!([
            {"jsonrpc": "2.0", "id": 3, "result": {"content": []}},
            {"jsonrpc": "2.0", "id": 1, "result": {"resources": [{"uri": "file:///docs", "name": "d"}, {"uri": "file:///hr", "name": "h"}]}},
            {"jsonrpc": "2.0", "id": 2, "result": {"prompts": [{"name": "summary"}, {"name": "jailbreak"}, {"title": "no name"}]}}
        ]);
        let f = e
            .filter_list_reply(&mut lists, &mut reply, now())
            .expect("filtered");
        assert_eq!(names(&reply[1], "resources", "uri"), ["file:///docs"]);
        assert_eq!(names(&reply[2], "prompts", "name"), ["summary"]);
        assert_eq!(
            reply[0]["result"],
            json!({"content": []}),
            "other answers are untouched"
        );
        assert_eq!((f.shown, f.hidden), (2, 3));
    }

    #[test]
    fn no_list_request_no_filtering() {
        let e = engine();
        let d = post(
            &e,
            "",
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read"}}),
        );
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(d.mcp_lists.is_none());
    }

    #[test]
    fn a_list_answer_is_filtered_whatever_id_it_carries() {
        let e = engine();
        // A server that echoes an id in another form ("1" for 1, 1 for 1.0) still gets its
        // answer filtered: the filter goes by the shape of the result, not only by the id.
        for body in [
            tools_reply(2).to_string(),
            tools_reply(1)
                .to_string()
                .replace("\"id\":1", "\"id\":\"1\""),
        ] {
            let mut lists = post(&e, "", &list(1, "tools/list"))
                .mcp_lists
                .expect("lists");
            let (out, f) = e.filter_list_json(&mut lists, body.as_bytes(), now());
            let out: Value = serde_json::from_slice(&out.expect("filtered")).expect("json");
            assert_eq!(names(&out, "tools", "name"), ["read", "pay", "unknown"]);
            assert_eq!(f.hidden, 2);
        }
        // The answer of a tool call is not a list: left alone.
        let mut lists = post(&e, "", &list(1, "tools/list"))
            .mcp_lists
            .expect("lists");
        let call = json!({"jsonrpc": "2.0", "id": 2, "result": {"content": []}}).to_string();
        assert!(e
            .filter_list_json(&mut lists, call.as_bytes(), now())
            .0
            .is_none());
        assert!(!lists.answered());
    }

    #[test]
    fn an_unreadable_list_answer_never_reaches_the_client() {
        let e = engine();
        let mut lists = post(
            &e,
            "",
            &json!([list(1, "tools/list"), list(2, "prompts/list")]),
        )
        .mcp_lists
        .expect("lists");
        // NaN is JSON to some parsers (Python's), not to serde_json: refused, not passed.
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete"}],"x":NaN}}"#;
        let (out, f) = e.filter_list_json(&mut lists, body.as_bytes(), now());
        let out: Value = serde_json::from_slice(&out.expect("replaced")).expect("json");
        let ids: Vec<&Value> = out
            .as_array()
            .expect("batch")
            .iter()
            .map(|m| &m["id"])
            .collect();
        assert_eq!(ids, [&json!(1), &json!(2)]);
        assert_eq!(out[0]["error"]["code"], mcp::INTERNAL_ERROR);
        assert!(!out.to_string().contains("delete"));
        assert!(f.error.is_some());
        // In an SSE stream, an event whose data is not JSON is dropped while lists are awaited.
        let stream = format!("data: {body}\n\ndata: {}\n\n", tools_reply(2));
        let mut lists = post(&e, "", &list(2, "tools/list"))
            .mcp_lists
            .expect("lists");
        let mut total = Filtered::default();
        let mut r = SseRewriter::new();
        let mut rewrite = |d: &str| e.filter_list_event(&mut lists, d, now(), &mut total);
        let mut out = r.push(stream.as_bytes(), &mut rewrite);
        out.extend(r.finish(&mut rewrite));
        let out = String::from_utf8(out).expect("utf-8");
        assert!(!out.contains("NaN") && !out.contains("delete"), "{out}");
        assert!(out.contains("\"read\""), "{out}");
    }

    #[test]
    fn resource_templates_are_filtered() {
        let e = engine();
        let mut lists = post(&e, "", &list(4, "resources/templates/list"))
            .mcp_lists
            .expect("lists");
        let body = json!({"jsonrpc": "2.0", "id": 4, "result": {"resourceTemplates": [
            {"uriTemplate": "file:///docs", "name": "d"}, {"uriTemplate": "file:///hr", "name": "h"}]}});
        let (out, f) = e.filter_list_json(&mut lists, body.to_string().as_bytes(), now());
        let out: Value = serde_json::from_slice(&out.expect("filtered")).expect("json");
        assert_eq!(
            names(&out, "resourceTemplates", "uriTemplate"),
            ["file:///docs"]
        );
        assert_eq!(f.methods, vec!["resources/templates/list"]);
    }

    #[test]
    fn sse_list_answer_is_rewritten_and_other_events_pass() {
        let e = engine();
        let mut lists = post(&e, "", &list(7, "tools/list"))
            .mcp_lists
            .expect("lists");
        let note = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n";
        let answer = format!(
            "event: message\r\nid: ev-1\r\ndata: {}\r\n\r\n",
            tools_reply(7)
        );
        let after = ": keepalive\r\n\r\n";
        let stream = format!("{note}{answer}{after}");
        let mut total = Filtered::default();
        let mut r = SseRewriter::new();
        let mut out = Vec::new();
        // One byte at a time: the worst split there is.
        for b in stream.as_bytes() {
            out.extend(r.push(std::slice::from_ref(b), &mut |d| {
                e.filter_list_event(&mut lists, d, now(), &mut total)
            }));
        }
        out.extend(r.finish(&mut |d| e.filter_list_event(&mut lists, d, now(), &mut total)));
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.starts_with(note), "{out}");
        assert!(out.ends_with(after), "{out}");
        let event = &out[note.len()..out.len() - after.len()];
        assert!(
            event.starts_with("event: message\r\nid: ev-1\r\ndata: {"),
            "{event}"
        );
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data");
        let reply: Value = serde_json::from_str(data).expect("json");
        assert_eq!(names(&reply, "tools", "name"), ["read", "pay", "unknown"]);
        assert_eq!(total.hidden, 2);
        assert!(lists.answered());
    }

    #[test]
    fn an_mcp_call_refused_for_a_scope_is_a_403_step_up() {
        let e = engine();
        let body = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                          "params": {"name": "pay", "arguments": {"amount": 5}}});
        let d = post(&e, "", &body);
        let reply = d.reply.expect("refused");
        assert_eq!(reply.status, 403);
        let challenge = reply
            .headers
            .iter()
            .find(|(k, _)| k == "www-authenticate")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            challenge,
            Some("Bearer error=\"insufficient_scope\", scope=\"pay:write\", error_description=\"the token lacks a scope this request needs\", resource_metadata=\"https://api.test/.well-known/oauth-protected-resource/mcp\"")
        );
        // Another forbid too (amount over 100): not only a scope, so a JSON-RPC error.
        let body = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                          "params": {"name": "pay", "arguments": {"amount": 500}}});
        let reply = post(&e, "", &body).reply.expect("refused");
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains("-32003"), "{}", reply.body);
        // No permit at all is not a scope matter either.
        let reply = post(&e, "", &json!({"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "file:///hr"}}))
            .reply
            .expect("refused");
        assert_eq!(reply.status, 200);
    }

    #[test]
    fn an_http_request_refused_for_a_scope_is_a_403_step_up() {
        let e = engine();
        let get = |scope: &str| {
            let auth = bearer(scope);
            e.check(
                &HttpRequest {
                    method: "GET",
                    path: "/orders/1",
                    host: "api.test",
                    authorization: Some(&auth),
                    request_id: "r-2",
                    content_type: None,
                    ..HttpRequest::default()
                },
                &crate::store::MemoryStore::new(),
                now(),
            )
        };
        let d = get("");
        let reply = d.reply.expect("refused");
        assert_eq!(reply.status, 403);
        let challenge = reply
            .headers
            .iter()
            .find(|(k, _)| k == "www-authenticate")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            challenge.starts_with(
                "Bearer error=\"insufficient_scope\", scope=\"orders:list orders:read\""
            ),
            "{challenge}"
        );
        assert!(
            reply.body.contains("\"scope\":\"orders:list orders:read\""),
            "{}",
            reply.body
        );
        assert!(get("orders:read").reply.is_none());
    }
}
