//! The response side of MCP list filtering: the answer to an allowed POST that asked for
//! `tools/list`, `resources/list` or `prompts/list` is rewritten by `tessera_core::listing`.
//! A response to any other request never gets here, so it is neither buffered nor touched.
//!
//! `application/json`: the body is buffered to its end (a JSON document cannot be cut short) and
//! replaced when an item was hidden. `text/event-stream`: every chunk goes on at once with the
//! complete events it finishes; only the bytes of an unfinished event wait for the next chunk,
//! and only until every list request has had its answer.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, MapType};
use tessera_core::listing::{Filtered, ListRequests, SseRewriter};
use tessera_core::Engine;

pub struct ResponseFilter {
    lists: ListRequests,
    body: Body,
    total: Filtered,
}

enum Body {
    Json,
    Sse(SseRewriter),
}

/// What one body callback did.
pub struct Step {
    pub action: Action,
    /// Set once, when the filtering is over: what it hid (for the log and the counter).
    pub finished: Option<Filtered>,
}

impl ResponseFilter {
    /// At the response headers: a filter for a JSON or SSE body, `None` for anything else (an
    /// error status, 202, another content type), which is then left alone. The body may change
    /// length, so `content-length` goes (the proxy frames the body itself).
    pub fn on_headers(lists: ListRequests, end_of_stream: bool) -> Option<ResponseFilter> {
        if end_of_stream {
            return None;
        }
        let header = |name: &str| {
            hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
        };
        if header(":status").as_deref() != Some("200") {
            return None;
        }
        let content_type = header("content-type")?;
        let media = content_type.split(';').next().unwrap_or("").trim();
        let body = if media.eq_ignore_ascii_case("application/json") {
            Body::Json
        } else if media.eq_ignore_ascii_case("text/event-stream") {
            Body::Sse(SseRewriter::new())
        } else {
            return None;
        };
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "content-length", None);
        Some(ResponseFilter {
            lists,
            body,
            total: Filtered::default(),
        })
    }

    pub fn request_id(&self) -> &str {
        self.lists.request_id()
    }

    pub fn on_body(
        &mut self,
        engine: &Engine,
        body_size: usize,
        end_of_stream: bool,
        now_s: u64,
    ) -> Step {
        match &mut self.body {
            Body::Json if !end_of_stream => Step {
                // The proxy buffers; the whole body comes with the last callback.
                action: Action::Pause,
                finished: None,
            },
            Body::Json => {
                let body = read_body(body_size);
                if let Some((out, f)) = engine.filter_list_json(&mut self.lists, &body, now_s) {
                    if f.hidden > 0 {
                        replace_body(body_size, &out);
                    }
                    self.total = f;
                }
                Step {
                    action: Action::Continue,
                    finished: Some(std::mem::take(&mut self.total)),
                }
            }
            Body::Sse(rewriter) => {
                let chunk = read_body(body_size);
                let (lists, total) = (&mut self.lists, &mut self.total);
                let mut out = rewriter.push(&chunk, &mut |data| {
                    engine.filter_list_event(lists, data, now_s, total)
                });
                let over = end_of_stream || self.lists.answered();
                if over {
                    // Nothing more to rewrite: what was held goes now, the rest passes as is.
                    out.extend(rewriter.finish());
                }
                if out != chunk {
                    replace_body(body_size, &out);
                }
                Step {
                    action: Action::Continue,
                    finished: over.then(|| std::mem::take(&mut self.total)),
                }
            }
        }
    }
}

fn read_body(size: usize) -> Vec<u8> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn replace_body(size: usize, with: &[u8]) {
    let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, with);
}
