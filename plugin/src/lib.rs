//! The proxy-wasm module: root and HTTP contexts over `tessera-core`. Nothing here decides; it
//! reads the request from the proxy, asks the engine, and applies the answer.
//!
//! Fail closed: until a configuration compiled, every request gets a 503.

// Indexing panics on a bad index, and a panic aborts the VM for every later request.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel};
use tessera_core::{Decision, Engine, HttpRequest, LocalReply, Verdict};

mod listing;
mod root;
mod store;
use root::{Metrics, Root};
use store::SharedData;
use tessera_core::obligations::{Binding, SessionCaller};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    // A panic aborts the VM (panic = "abort"); make sure its message reaches the proxy's log.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("tessera: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

struct Filter {
    engine: Option<Rc<Engine>>,
    metrics: Rc<Metrics>,
    next_id: Rc<Cell<u64>>,
    store: Rc<SharedData>,
    /// An MCP POST waiting for its whole body.
    pending: Option<PendingBody>,
    /// An allowed MCP request: a session the response creates is bound to this caller.
    mcp_caller: Option<SessionCaller>,
    /// The list requests of an allowed MCP POST (then the filter for their answers).
    lists: Option<Lists>,
}

enum Lists {
    Awaiting(tessera_core::listing::ListRequests),
    Filtering(listing::ResponseFilter),
}

struct PendingBody {
    pending: tessera_core::Pending,
    method: String,
    path: String,
    host: String,
    request_id: String,
}

impl Context for Filter {}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

impl Filter {
    fn new(
        engine: Option<Rc<Engine>>,
        metrics: Rc<Metrics>,
        next_id: Rc<Cell<u64>>,
        store: Rc<SharedData>,
    ) -> Filter {
        Filter {
            engine,
            metrics,
            next_id,
            store,
            pending: None,
            mcp_caller: None,
            lists: None,
        }
    }

    fn send(&self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    fn request_id(&self) -> String {
        let id = self
            .get_http_request_header_bytes("x-request-id")
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        match id {
            Some(id) if !id.is_empty() => id,
            _ => {
                let n = self.next_id.get().wrapping_add(1);
                self.next_id.set(n);
                let t = self
                    .get_current_time()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("tessera-{t:x}-{n}")
            }
        }
    }
}

impl Filter {
    fn now_s(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
    /// The `Mcp-Session-Id` an allowed MCP request presents must be the caller's (core:
    /// `obligations.rs`); a session its answer creates is bound to the caller.
    fn check_session(
        &mut self,
        engine: &Engine,
        decision: &mut Decision,
        method: &str,
        request_id: &str,
    ) {
        let session = self.get_http_request_header_bytes("mcp-session-id");
        let now = self.now_s();
        self.mcp_caller = engine.check_session(
            &*self.store,
            decision,
            method,
            session.as_deref(),
            request_id,
            now,
        );
    }

    /// Binds the session the server just created (`obligations.rs`). Past a limit, the answer
    /// becomes a 503 without its session id, so that the client tries again later.
    fn bind_session(&self, engine: &Engine, caller: &SessionCaller, session: &str) {
        match engine.bind_session(&*self.store, caller, session, self.now_s()) {
            Binding::Bound => {}
            Binding::Refused { limit, enforce } => {
                log(
                    LogLevel::Warn,
                    &format!("tessera: MCP session refused: {limit}"),
                );
                if enforce {
                    self.set_http_response_header("mcp-session-id", None);
                    self.set_http_response_header(":status", Some("503"));
                    self.set_http_response_header("retry-after", Some("60"));
                }
            }
            Binding::Failed(e) => log(
                LogLevel::Error,
                &format!("tessera: cannot bind MCP session: {e}"),
            ),
        }
    }

    /// Announces an approval request to the approval webhook: fire and forget (the reply to the
    /// client does not wait for it; a failure is logged).
    fn notify_approvers(&self, engine: &Engine, body: &str) {
        let Some(w) = engine.approval_webhook() else {
            return;
        };
        let authority = w.authority.as_deref().unwrap_or(&w.cluster);
        let headers = vec![
            (":method", "POST"),
            (":path", w.path.as_str()),
            (":authority", authority),
            ("content-type", "application/json"),
        ];
        let timeout = Duration::from_millis(w.timeout_ms);
        if let Err(e) =
            self.dispatch_http_call(&w.cluster, headers, Some(body.as_bytes()), vec![], timeout)
        {
            log(
                LogLevel::Warn,
                &format!("tessera: cannot notify the approval webhook: {e:?}"),
            );
        }
    }

    /// Counts, logs and applies a final decision.
    fn finish(
        &mut self,
        engine: &Engine,
        decision: &Decision,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Action {
        let redeemed = engine.redeem(&*self.store, decision, self.now_s());
        if redeemed.is_some() {
            // Refused after all: no response of the server to follow up on.
            self.mcp_caller = None;
        }
        let decision = redeemed.as_ref().unwrap_or(decision);
        let m = &self.metrics;
        m.count(match decision.verdict {
            Verdict::Allow => m.allow,
            Verdict::Public => m.public,
            Verdict::Deny => m.deny,
            Verdict::Unauthenticated => m.unauthenticated,
            Verdict::Error => m.error,
        });
        // The decision line is formatted only when the proxy would keep it: it is per request.
        let debug =
            hostcalls::get_log_level().map_or(true, |l| (l as u32) <= LogLevel::Debug as u32);
        if debug {
            let mut line = decision.log_line(method, path, request_id);
            if engine.mode() == tessera_core::Mode::Shadow {
                line.push_str(" mode=shadow");
            }
            log(LogLevel::Debug, &line);
        }
        if let Some(reply) = &decision.reply {
            if let Some(body) = &decision.notify {
                self.notify_approvers(engine, body);
            }
            self.send(reply);
            return Action::Pause;
        }
        for (name, value) in &decision.set_headers {
            self.set_http_request_header(name, Some(value));
        }
        if engine.drop_authorization() && decision.verdict == Verdict::Allow {
            self.set_http_request_header("authorization", None);
        }
        // An approval is for the filter; once used it means nothing upstream.
        if let Some(h) = engine.approval_header() {
            self.set_http_request_header(h, None);
        }
        Action::Continue
    }

    /// Decides a buffered MCP body (or an absent one).
    fn decide_body(&mut self, body: &[u8]) -> Action {
        let (Some(engine), Some(p)) = (self.engine.clone(), self.pending.take()) else {
            return Action::Continue;
        };
        let request = HttpRequest {
            method: &p.method,
            path: &p.path,
            host: &p.host,
            authorization: None,
            request_id: &p.request_id,
            content_type: None,
            approval: None,
            repeated: None,
        };
        let mut decision = engine.check_mcp(&p.pending, &request, body, self.now_s());
        self.check_session(&engine, &mut decision, &p.method, &p.request_id);
        let lists = decision.mcp_lists.take();
        let action = self.finish(&engine, &decision, &p.method, &p.path, &p.request_id);
        self.await_lists(action, lists);
        action
    }

    /// A forwarded request whose answer carries list results (list requests in a POST, or the
    /// server's GET stream): its answer is filtered, and must come back readable (an encoded
    /// one is refused, listing.rs).
    fn await_lists(&mut self, action: Action, lists: Option<tessera_core::listing::ListRequests>) {
        if let (Action::Continue, Some(lists)) = (action, lists) {
            self.lists = Some(Lists::Awaiting(lists));
            self.set_http_request_header("accept-encoding", Some("identity"));
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let request_id = self.request_id();
        let Some(engine) = self.engine.clone() else {
            self.metrics.count(self.metrics.unavailable);
            log(
                LogLevel::Warn,
                &format!(
                    "tessera decision=unavailable request_id={}",
                    tessera_core::reply::log_safe(&request_id)
                ),
            );
            self.send(&LocalReply::unavailable(&request_id));
            return Action::Pause;
        };
        // Client-sent copies of the identity headers never reach the upstream.
        for name in engine.owned_headers() {
            self.set_http_request_header(name, None);
        }
        // One read of the whole map: the values the engine needs, and whether a header that
        // must be single came twice (the upstream could read the other copy).
        // As bytes: the SDK's string accessors panic (and abort the VM) on a value that is not
        // UTF-8. A header the engine reads must be UTF-8, or the request is refused.
        let headers = self.get_http_request_headers_bytes();
        let engine_reads = [
            ":method",
            ":path",
            ":authority",
            "authorization",
            "content-type",
        ];
        if headers.iter().any(|(k, v)| {
            (engine_reads.contains(&k.as_str()) || Some(k.as_str()) == engine.approval_header())
                && std::str::from_utf8(v).is_err()
        }) {
            self.metrics.count(self.metrics.deny);
            self.send(&LocalReply::json_error(
                400,
                "bad_request",
                Some("a header the filter reads is not UTF-8"),
                &[],
                &request_id,
            ));
            return Action::Pause;
        }
        let first = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let method = first(":method").unwrap_or_default();
        let path = first(":path").unwrap_or_default();
        let host = first(":authority").unwrap_or_default();
        let authorization = first("authorization");
        let content_type = first("content-type");
        let approval_header = engine.approval_header();
        let approval = approval_header.and_then(first);
        let repeated = tessera_core::engine::SINGLE_HEADERS
            .iter()
            .copied()
            .chain(approval_header)
            .find(|name| headers.iter().filter(|(k, _)| k == name).count() > 1);
        let request = HttpRequest {
            method: &method,
            path: &path,
            host: &host,
            authorization: authorization.as_deref(),
            request_id: &request_id,
            content_type: content_type.as_deref(),
            approval: approval.as_deref(),
            repeated,
        };
        let mut decision = engine.check(&request, self.now_s());
        if let Some(pending) = decision.pending.take() {
            let declared = self
                .get_http_request_header_bytes("content-length")
                .and_then(|l| String::from_utf8_lossy(&l).trim().parse::<usize>().ok());
            self.pending = Some(PendingBody {
                pending,
                method,
                path,
                host,
                request_id,
            });
            if declared.is_some_and(|l| l > engine.max_body_bytes()) {
                // Refuse before buffering anything: the decision sees an over-size body.
                return self.refuse_oversize();
            }
            if end_of_stream {
                return self.decide_body(&[]);
            }
            // Nothing is forwarded until the body has been judged.
            return Action::Pause;
        }
        self.check_session(&engine, &mut decision, &method, &request_id);
        let lists = decision.mcp_lists.take();
        let action = self.finish(&engine, &decision, &method, &path, &request_id);
        self.await_lists(action, lists);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(Lists::Awaiting(lists)) = self.lists.take() {
            self.lists =
                listing::ResponseFilter::on_headers(lists, end_of_stream).map(Lists::Filtering);
        }
        // The server created a session for this caller (on `initialize`): bind it. Or it
        // ended the caller's session (DELETE): unbind it.
        // Header values are read as bytes: the SDK's string accessor panics (and aborts the VM)
        // on a value that is not UTF-8, and the upstream chooses these.
        if let (Some(caller), Some(engine)) = (self.mcp_caller.take(), self.engine.clone()) {
            let header = |name| {
                self.get_http_response_header_bytes(name)
                    .and_then(|s| String::from_utf8(s).ok())
            };
            let status = header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
            if caller.ends_session() {
                // A DELETE answer that repeats the session id does not bind it again.
                engine.end_session(&*self.store, &caller, status);
            } else if let Some(session) = header("mcp-session-id") {
                self.bind_session(&engine, &caller, &session);
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let now = self.now_s();
        let (Some(engine), Some(Lists::Filtering(f))) = (self.engine.clone(), self.lists.as_mut())
        else {
            return Action::Continue;
        };
        let step = f.on_body(&engine, body_size, end_of_stream, now);
        self.finish_lists(step)
    }

    /// A stream may end with trailers instead of a last body chunk (HTTP/2, chunked HTTP/1.1):
    /// the body is then complete, and it is judged exactly as at the end of the body. Trailers
    /// never carry the headers the filter owns to the upstream.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(engine) = self.engine.clone() else {
            return Action::Pause;
        };
        for name in engine.owned_headers() {
            self.set_http_request_trailer(name, None);
        }
        if let Some(h) = engine.approval_header() {
            self.set_http_request_trailer(h, None);
        }
        if self.pending.is_none() {
            return Action::Continue;
        }
        let limit = engine.max_body_bytes();
        let body = self
            .get_http_request_body(0, limit.saturating_add(1))
            .unwrap_or_default();
        if body.len() > limit {
            return self.refuse_oversize();
        }
        self.decide_body(&body)
    }

    /// A list answer that ends with trailers: its filtering finishes here (it never passes
    /// unfiltered).
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let now = self.now_s();
        let (Some(engine), Some(Lists::Filtering(f))) = (self.engine.clone(), self.lists.as_mut())
        else {
            return Action::Continue;
        };
        let step = f.on_trailers(&engine, now);
        self.finish_lists(step)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(engine) = self.engine.clone() else {
            return Action::Pause;
        };
        if self.pending.is_none() {
            return Action::Continue;
        }
        if body_size > engine.max_body_bytes() {
            return self.refuse_oversize();
        }
        if !end_of_stream {
            // Buffer: the proxy holds the chunks until we answer at end of stream.
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.decide_body(&body)
    }
}

impl Filter {
    /// Counts and logs what list filtering hid once it is over.
    fn finish_lists(&mut self, step: listing::Step) -> Action {
        if let Some(done) = step.finished {
            if done.hidden > 0 {
                let hidden = i64::try_from(done.hidden).unwrap_or(i64::MAX);
                let _ = hostcalls::increment_metric(self.metrics.list_items_hidden, hidden);
            }
            if !done.methods.is_empty() || done.error.is_some() {
                if let Some(Lists::Filtering(f)) = &self.lists {
                    log(LogLevel::Debug, &done.log_line(f.request_id()));
                }
            }
            self.lists = None;
        }
        step.action
    }

    fn refuse_oversize(&mut self) -> Action {
        let (Some(engine), Some(_)) = (self.engine.clone(), self.pending.as_ref()) else {
            return Action::Pause;
        };
        // The engine's own size check produces the 413 and the log line.
        let oversize = vec![b' '; engine.max_body_bytes() + 1];
        self.decide_body(&oversize)
    }
}
