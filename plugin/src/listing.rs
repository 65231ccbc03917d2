//! The response side of MCP list filtering: the answer to an allowed POST that asked for
//! `tools/list`, `resources/list`, `resources/templates/list` or `prompts/list` is rewritten by
//! `tessera_core::listing`. A response to any other request never gets here, so it is neither
//! buffered nor touched.
//!
//! `application/json`: the body is buffered to its end (a JSON document cannot be cut short) and
//! replaced when an item was hidden. `text/event-stream`: every chunk goes on at once with the
//! complete events it finishes; only the bytes of an unfinished event wait for the next chunk,
//! and only until every list request has had its answer.
//!
//! What the filter cannot read never reaches the client whole: an encoded answer
//! (`content-encoding`), another content type, or a body that is not JSON is replaced by a
//! JSON-RPC error for each list request. The request went up with `accept-encoding: identity`.
//! A body that ends with trailers is finished at the trailers.

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
    /// Buffered and replaced whole by an error: why the filter cannot read it.
    Unreadable(&'static str),
}

/// What one body callback did.
pub struct Step {
    pub action: Action,
    /// Set once, when the filtering is over: what it hid (for the log and the counter).
    pub finished: Option<Filtered>,
}

/// A response header, read as bytes: the SDK's string accessor panics (and aborts the VM) on a
/// value that is not UTF-8, and the upstream chooses it. Such a value is read lossily, so it
/// names no content type or encoding the filter can read: the answer is replaced (fail closed).
fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}

impl ResponseFilter {
    /// At the response headers: a filter for the body of a 200 answer, `None` for anything else
    /// (an error status, 202), which is then left alone. The body may change length, so
    /// `content-length` goes (the proxy frames the body itself).
    pub fn on_headers(lists: ListRequests, end_of_stream: bool) -> Option<ResponseFilter> {
        let status = response_header(":status").unwrap_or_default();
        if end_of_stream || !status.starts_with('2') {
            return None;
        }
        // 206, 203, …: a list answer in a form the filter does not judge (a range of it, a
        // rewrite): replaced, never passed.
        let other_success = status != "200";
        let encoded = response_header("content-encoding")
            .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
        let content_type = response_header("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let body = if other_success {
            Body::Unreadable("its status is not 200")
        } else if encoded {
            Body::Unreadable("it is encoded (content-encoding)")
        } else if media.eq_ignore_ascii_case("application/json") {
            Body::Json
        } else if media.eq_ignore_ascii_case("text/event-stream") {
            Body::Sse(SseRewriter::new())
        } else {
            Body::Unreadable("its content type is neither JSON nor SSE")
        };
        set_response_header("content-length", None);
        if let Body::Unreadable(_) = body {
            set_response_header("content-encoding", None);
            set_response_header("content-type", Some("application/json"));
        }
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
            Body::Json | Body::Unreadable(_) if !end_of_stream => Step {
                // The proxy buffers; the whole body comes with the last callback.
                action: Action::Pause,
                finished: None,
            },
            Body::Json | Body::Unreadable(_) => {
                self.finish_buffered(engine, read_body(body_size), now_s)
            }
            Body::Sse(rewriter) => {
                let chunk = read_body(body_size);
                let (lists, total) = (&mut self.lists, &mut self.total);
                let mut rewrite = |data: &str| engine.filter_list_event(lists, data, now_s, total);
                let mut out = rewriter.push(&chunk, &mut rewrite);
                let over = end_of_stream || self.lists.answered();
                if over {
                    // Nothing more to rewrite: what was held goes now, the rest passes as is.
                    let (lists, total) = (&mut self.lists, &mut self.total);
                    out.extend(rewriter.finish(&mut |data: &str| {
                        engine.filter_list_event(lists, data, now_s, total)
                    }));
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

    /// The response ended with trailers: a buffered body is complete and is judged now; the
    /// held bytes of an unfinished SSE event are dropped (nothing can be added to the body at
    /// the trailers, and a client discards an unfinished event).
    pub fn on_trailers(&mut self, engine: &Engine, now_s: u64) -> Step {
        match &mut self.body {
            Body::Json | Body::Unreadable(_) => {
                self.finish_buffered(engine, read_body(usize::MAX), now_s)
            }
            Body::Sse(rewriter) => {
                let _ = rewriter.finish(&mut |_| None);
                Step {
                    action: Action::Continue,
                    finished: Some(std::mem::take(&mut self.total)),
                }
            }
        }
    }

    /// The whole buffered `body`: filtered, or replaced by the error when it cannot be read.
    fn finish_buffered(&mut self, engine: &Engine, body: Vec<u8>, now_s: u64) -> Step {
        match self.body {
            Body::Unreadable(why) => {
                replace_body(body.len(), &self.lists.unreadable(why));
                self.total.error = Some(format!("unreadable list answer: {why}"));
            }
            _ => {
                let (out, f) = engine.filter_list_json(&mut self.lists, &body, now_s);
                if let Some(out) = out {
                    replace_body(body.len(), &out);
                }
                self.total = f;
            }
        }
        Step {
            action: Action::Continue,
            finished: Some(std::mem::take(&mut self.total)),
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
