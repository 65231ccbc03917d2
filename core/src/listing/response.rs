//! The response side of MCP list filtering: the answer to an allowed request that asked for
//! `tools/list`, `resources/list`, `resources/templates/list` or `prompts/list` (or the server's
//! GET stream) is rewritten here. A response to any other request never gets here, so it is
//! neither buffered nor touched.
//!
//! `application/json`: the body is buffered to its end (a JSON document cannot be cut short) and
//! replaced when an item was hidden. `text/event-stream`: every chunk goes on at once with the
//! complete events it finishes; only the bytes of an unfinished event wait for the next chunk,
//! and only until every list request has had its answer.
//!
//! What the filter cannot read never reaches the client whole: an encoded answer
//! (`content-encoding`), a status other than 200, another content type, or a body that is not
//! JSON is replaced by a JSON-RPC error for each list request. The request went up with
//! `accept-encoding: identity`. A body that ends with trailers is finished at the trailers.

use super::{Filtered, ListRequests, SseRewriter};
use crate::engine::Engine;
use crate::outcome::Edit;

#[derive(Debug)]
pub struct ResponseFilter {
    lists: ListRequests,
    body: Body,
    total: Filtered,
}

#[derive(Debug)]
enum Body {
    Json,
    Sse(SseRewriter),
    /// Buffered and replaced whole by an error: why the filter cannot read it.
    Unreadable(&'static str),
}

/// What one body hook came to.
#[derive(Debug, Default)]
pub struct Step {
    /// Hold the answer: the rest of a buffered body is still to come.
    pub wait: bool,
    /// Replaces the body read in this hook.
    pub body: Option<Vec<u8>>,
    /// Set once, when the filtering is over: what it hid (for the log and the counter).
    pub finished: Option<Filtered>,
}

impl ResponseFilter {
    /// At the response headers (`header` reads one, lossily: a value that is not UTF-8 names no
    /// content type or encoding the filter can read, so the answer is replaced): a filter for
    /// the body of a 2xx answer, `None` for anything else (an error status), which is then left
    /// alone; and the header edits. The body may change length, so `content-length` goes (the
    /// proxy frames the body itself).
    pub fn on_headers(
        lists: ListRequests,
        header: &dyn Fn(&str) -> Option<String>,
        end_of_stream: bool,
    ) -> (Option<ResponseFilter>, Vec<Edit>) {
        let status = header(":status").unwrap_or_default();
        if end_of_stream || !status.starts_with('2') {
            return (None, vec![]);
        }
        // 206, 203, …: a list answer in a form the filter does not judge (a range of it, a
        // rewrite): replaced, never passed.
        let encoded = header("content-encoding")
            .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
        let content_type = header("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let body = if status != "200" {
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
        let mut edits = vec![("content-length".to_string(), None)];
        if let Body::Unreadable(_) = body {
            edits.push(("content-encoding".to_string(), None));
            edits.push((
                "content-type".to_string(),
                Some("application/json".to_string()),
            ));
        }
        let filter = ResponseFilter {
            lists,
            body,
            total: Filtered::default(),
        };
        (Some(filter), edits)
    }

    pub fn request_id(&self) -> &str {
        self.lists.request_id()
    }

    /// A body hook: `read` gives the body the proxy holds now (a buffered body: all of it so
    /// far; a stream: this chunk). It is read only when it is judged.
    pub fn on_body(
        &mut self,
        engine: &Engine,
        end_of_stream: bool,
        now_s: u64,
        read: &mut dyn FnMut() -> Vec<u8>,
    ) -> Step {
        match &mut self.body {
            Body::Json | Body::Unreadable(_) if !end_of_stream => Step {
                // The proxy buffers; the whole body comes with the last hook.
                wait: true,
                ..Step::default()
            },
            Body::Json | Body::Unreadable(_) => self.finish_buffered(engine, read(), now_s),
            Body::Sse(rewriter) => {
                let chunk = read();
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
                Step {
                    wait: false,
                    body: (out != chunk).then_some(out),
                    finished: over.then(|| std::mem::take(&mut self.total)),
                }
            }
        }
    }

    /// The response ended with trailers: a buffered body is complete and is judged now; the
    /// held bytes of an unfinished SSE event are dropped (nothing can be added to the body at
    /// the trailers, and a client discards an unfinished event).
    pub fn on_trailers(
        &mut self,
        engine: &Engine,
        now_s: u64,
        read: &mut dyn FnMut() -> Vec<u8>,
    ) -> Step {
        match &mut self.body {
            Body::Json | Body::Unreadable(_) => self.finish_buffered(engine, read(), now_s),
            Body::Sse(rewriter) => {
                let _ = rewriter.finish(&mut |_| None);
                Step {
                    finished: Some(std::mem::take(&mut self.total)),
                    ..Step::default()
                }
            }
        }
    }

    /// The whole buffered `body`: filtered, or replaced by the error when it cannot be read.
    fn finish_buffered(&mut self, engine: &Engine, body: Vec<u8>, now_s: u64) -> Step {
        let replacement = match self.body {
            Body::Unreadable(why) => {
                self.total.error = Some(format!("unreadable list answer: {why}"));
                Some(self.lists.unreadable(why))
            }
            _ => {
                let (out, f) = engine.filter_list_json(&mut self.lists, &body, now_s);
                self.total = f;
                out
            }
        };
        Step {
            wait: false,
            body: replacement,
            finished: Some(std::mem::take(&mut self.total)),
        }
    }
}
