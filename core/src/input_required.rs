//! Human approval for MCP 2026-07-28 clients through multi round-trip requests: a tool call held
//! only by `@approval("required")` is answered with an `input_required` result whose URL-mode
//! elicitation sends the person to the approval page (`approval.page`), and a `requestState`
//! naming the call's digest. The page posts the signed approval to the filter
//! (`approval.receiver_path`), which keeps it in the Store under the digest. The client's retry
//! of that exact call (same digest, our `requestState`) is decided with the kept approval as if
//! it had come in the approval header: allowed once. An unmodified MCP client needs no code of
//! ours for any of it.
//!
//! What the state carries is only a hint: the digest is computed again from the retried call,
//! and the approval must be for that digest. Our `requestState` and the client's
//! `inputResponses` are removed before the call reaches the server, which never issued them.

use serde_json::{json, Value};

use crate::mcp::Message;

/// `requestState` values the filter issued start with this.
pub const STATE_PREFIX: &str = "tessera-approval.v1.";
/// The key of the elicitation in `inputRequests` (and of the client's answer).
pub const INPUT_KEY: &str = "tessera_approval";
/// Store keys of approvals the page posted start with this.
pub const GRANTED_PREFIX: &str = "tessera.approval.granted.";

/// The methods that may be answered `input_required` (MCP 2026-07-28, `basic/patterns/mrtr`).
const ELICITING_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// The Store key of the approval posted for the request whose digest is `digest`.
pub fn granted_key(digest: &str) -> String {
    format!("{GRANTED_PREFIX}{digest}")
}

/// Whether `m` may be answered with a URL-mode elicitation: a method that allows
/// `input_required`, from a client that declared URL elicitation in this request.
pub fn may_elicit(m: &Message) -> bool {
    ELICITING_METHODS.contains(&m.method.as_str())
        && m.params
            .pointer("/_meta/io.modelcontextprotocol~1clientCapabilities/elicitation/url")
            .is_some_and(Value::is_object)
}

/// The digest our `requestState` in `m` names, if it carries one of ours.
pub fn state_digest(m: &Message) -> Option<&str> {
    m.params
        .get("requestState")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix(STATE_PREFIX))
}

/// Whether the client answered our elicitation with `decline` or `cancel`: the person said no,
/// so the call is refused rather than asked again.
pub fn declined(m: &Message) -> bool {
    state_digest(m).is_some()
        && m.params
            .pointer(&format!("/inputResponses/{INPUT_KEY}/action"))
            .and_then(Value::as_str)
            .is_some_and(|a| a == "decline" || a == "cancel")
}

/// The `input_required` result that sends the person to `page` to approve the call `ask`
/// describes (`Approval::request_object`). `None` if `page` is not a URL (checked at configure
/// time: not reachable).
pub fn result(page: &str, ask: &Value, digest: &str, message: &str) -> Option<Value> {
    let mut url = url::Url::parse(page).ok()?;
    url.query_pairs_mut().append_pair("digest", digest);
    Some(json!({
        "resultType": "input_required",
        "inputRequests": {
            INPUT_KEY: {
                "method": "elicitation/create",
                "params": {"mode": "url", "url": url.as_str(), "message": message}
            }
        },
        "requestState": format!("{STATE_PREFIX}{digest}"),
        "_meta": {"tessera.dev/approval": ask},
    }))
}

/// The body to forward in place of `body` (one message), without our `requestState` and the
/// client's `inputResponses`; `None` when it carries no state of ours.
pub fn stripped(body: &Value) -> Option<Vec<u8>> {
    let params = body.get("params")?;
    let ours = params
        .get("requestState")
        .and_then(Value::as_str)
        .is_some_and(|s| s.starts_with(STATE_PREFIX));
    if !ours {
        return None;
    }
    let mut body = body.clone();
    if let Some(p) = body.get_mut("params").and_then(Value::as_object_mut) {
        p.remove("requestState");
        p.remove("inputResponses");
    }
    serde_json::to_vec(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(params: Value) -> Message {
        Message {
            kind: crate::mcp::Kind::Request { id: json!(1) },
            method: "tools/call".into(),
            params,
        }
    }

    #[test]
    fn a_client_that_declares_url_elicitation_may_be_asked() {
        let caps = |c: Value| json!({"name": "t", "_meta": {"io.modelcontextprotocol/clientCapabilities": c}});
        assert!(may_elicit(&message(caps(
            json!({"elicitation": {"url": {}}})
        ))));
        assert!(!may_elicit(&message(caps(
            json!({"elicitation": {"form": {}}})
        ))));
        assert!(!may_elicit(&message(caps(json!({})))));
        let mut listing = message(caps(json!({"elicitation": {"url": {}}})));
        listing.method = "tools/list".into();
        assert!(!may_elicit(&listing));
    }

    #[test]
    fn the_result_sends_the_person_to_the_page_and_names_the_call() {
        let r = result(
            "https://approve.example/ok",
            &json!({"digest": "d1"}),
            "d1",
            "approve?",
        )
        .unwrap();
        assert_eq!(r["resultType"], "input_required");
        let e = &r["inputRequests"][INPUT_KEY];
        assert_eq!(e["method"], "elicitation/create");
        assert_eq!(e["params"]["mode"], "url");
        assert_eq!(e["params"]["url"], "https://approve.example/ok?digest=d1");
        assert_eq!(r["requestState"], "tessera-approval.v1.d1");
        let retry = message(json!({"name": "x", "requestState": r["requestState"]}));
        assert_eq!(state_digest(&retry), Some("d1"));
        assert!(!declined(&retry));
        let no = message(json!({"name": "x", "requestState": r["requestState"],
                                "inputResponses": {INPUT_KEY: {"action": "decline"}}}));
        assert!(declined(&no));
    }

    #[test]
    fn only_our_state_and_the_answers_to_it_are_removed() {
        let ours = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "x", "arguments": {"a": 1}, "requestState": "tessera-approval.v1.d",
                       "inputResponses": {INPUT_KEY: {"action": "accept"}}}});
        let out: Value = serde_json::from_slice(&stripped(&ours).unwrap()).unwrap();
        assert_eq!(out["params"], json!({"name": "x", "arguments": {"a": 1}}));
        let theirs = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "x", "requestState": "server-state"}});
        assert_eq!(stripped(&theirs), None);
    }
}
