//! The list requests of an allowed MCP POST (or the server's GET stream) whose answers the proxy
//! must filter: part of the `Decision`. The filtering itself is `listing.rs`.

use serde_json::Value;

use super::{HttpRequest, Pending};
use crate::mcp;
use crate::names;

/// The list methods whose results are filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Resources,
    /// `resources/templates/list`: a template is judged as a read of its URI template.
    Templates,
    Prompts,
}

impl ListKind {
    pub fn of(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "resources/list" => Some(ListKind::Resources),
            "resources/templates/list" => Some(ListKind::Templates),
            "prompts/list" => Some(ListKind::Prompts),
            _ => None,
        }
    }

    const ALL: [ListKind; 4] = [
        ListKind::Tools,
        ListKind::Resources,
        ListKind::Templates,
        ListKind::Prompts,
    ];

    /// The kind of list a result holds, by its shape: an answer whose id matches no awaited
    /// list request (a server that rewrote the id) is still filtered.
    pub(crate) fn of_result(message: &Value) -> Option<ListKind> {
        let result = message.get("result")?;
        ListKind::ALL
            .into_iter()
            .find(|k| result.get(k.field()).is_some_and(Value::is_array))
    }

    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Resources => "resources/list",
            ListKind::Templates => "resources/templates/list",
            ListKind::Prompts => "prompts/list",
        }
    }

    /// The member of `result` that holds the items.
    pub(crate) fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
            ListKind::Prompts => "prompts",
        }
    }

    /// The member of an item that names it (and the `context.mcp` field it goes to).
    pub(crate) fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::Templates => "uriTemplate",
        }
    }

    /// The request that uses an item: its generic action (the MCP method), resource type and
    /// `context.mcp` field.
    pub(crate) fn usage(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools/call", names::TOOL, "tool"),
            ListKind::Resources | ListKind::Templates => ("resources/read", names::RESOURCE, "uri"),
            ListKind::Prompts => ("prompts/get", names::PROMPT, "prompt"),
        }
    }
}

/// The list requests of an allowed MCP POST whose answers are still awaited, with what judging
/// their items needs: the caller's token and the request's path and host.
#[derive(Debug, Clone)]
pub struct ListRequests {
    pub(crate) pending: Pending,
    pub(crate) path: String,
    pub(crate) host: String,
    /// The connection and listed headers of the list request (`context.request`).
    pub(crate) facts: Option<crate::pop::connection::RequestFacts>,
    pub(crate) request_id: String,
    pub(crate) ids: Vec<(Value, ListKind)>,
    /// The answer to a GET on an MCP route (the server's SSE stream, which a client can resume
    /// with `Last-Event-ID` and so have list answers sent again), or to a `subscriptions/listen`:
    /// every list result in it is filtered by its shape, and a resource's change is announced
    /// only to a caller who may read it, until the stream ends.
    pub(crate) stream: bool,
}

impl ListRequests {
    /// The list requests among `messages` (all allowed); `None` when there are none, so that
    /// the response to any other request is never looked at.
    pub fn new(
        pending: &Pending,
        req: &HttpRequest<'_>,
        messages: &[mcp::Parsed],
    ) -> Option<ListRequests> {
        let ids: Vec<(Value, ListKind)> = messages
            .iter()
            .flatten()
            .filter_map(|m| match (&m.kind, ListKind::of(&m.method)) {
                (mcp::Kind::Request { id }, Some(kind)) => Some((id.clone(), kind)),
                _ => None,
            })
            .collect();
        // 2026-07-28's `subscriptions/listen` is answered with a stream of change notifications:
        // filtered as the server's GET stream is, until it ends.
        let listens = messages
            .iter()
            .flatten()
            .any(|m| m.method == "subscriptions/listen");
        (listens || !ids.is_empty()).then(|| ListRequests::of(pending.clone(), req, ids, listens))
    }

    /// The filter of the server's SSE stream (a GET on an MCP route).
    pub(crate) fn stream(pending: Pending, req: &HttpRequest<'_>) -> ListRequests {
        ListRequests::of(pending, req, Vec::new(), true)
    }

    /// The path and host as policies see them (`path.rs`), as a call repeating the request
    /// would see them.
    fn of(
        pending: Pending,
        req: &HttpRequest<'_>,
        ids: Vec<(Value, ListKind)>,
        stream: bool,
    ) -> ListRequests {
        ListRequests {
            pending,
            path: crate::path::for_policy(req.path).to_string(),
            host: crate::path::host_for_policy(req.host),
            facts: req.facts.cloned(),
            request_id: req.request_id.to_string(),
            ids,
            stream,
        }
    }

    /// Every list request has had its answer: the rest of the response is not looked at (never,
    /// on the server's stream).
    pub fn answered(&self) -> bool {
        !self.stream && self.ids.is_empty()
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The answer that replaces a list answer the filter cannot read (not JSON, encoded, an
    /// unexpected content type): a JSON-RPC error for every list request still awaited, so that
    /// nothing unfiltered reaches the client.
    pub fn unreadable(&self, why: &str) -> Vec<u8> {
        let message = format!("the list answer could not be filtered: {why}");
        let data = serde_json::json!({"request_id": self.request_id});
        let mut answers: Vec<Value> = self
            .ids
            .iter()
            .map(|(id, _)| mcp::error_object(id, mcp::INTERNAL_ERROR, &message, Some(data.clone())))
            .collect();
        let body = match answers.len() {
            0 => mcp::error_object(&Value::Null, mcp::INTERNAL_ERROR, &message, Some(data)),
            1 => answers.remove(0),
            _ => Value::Array(answers),
        };
        body.to_string().into_bytes()
    }

    /// Takes the list request with this JSON-RPC id, if it is one.
    pub(crate) fn take(&mut self, id: &Value) -> Option<ListKind> {
        let i = self.ids.iter().position(|(x, _)| x == id)?;
        Some(self.ids.swap_remove(i).1)
    }
}
