//! The proxy-wasm module: root and HTTP contexts over `tessera-core`. Nothing here decides; it
//! reads the request from the proxy, asks the engine, and applies the answer.
//!
//! Fail closed: until a configuration compiled, every request gets a 503.

use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use tessera_core::{Decision, Engine, HttpRequest, LocalReply, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    // A panic aborts the VM (panic = "abort"); make sure its message reaches the proxy's log.
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("tessera: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counter ids, defined once per VM.
#[derive(Default)]
struct Metrics {
    allow: u32,
    deny: u32,
    unauthenticated: u32,
    error: u32,
    public: u32,
    unavailable: u32,
}

impl Metrics {
    fn define() -> Metrics {
        let def = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        Metrics {
            allow: def("tessera.decisions.allow"),
            deny: def("tessera.decisions.deny"),
            unauthenticated: def("tessera.decisions.unauthenticated"),
            error: def("tessera.decisions.error"),
            public: def("tessera.decisions.public"),
            unavailable: def("tessera.decisions.unavailable"),
        }
    }

    fn count(&self, id: u32) {
        if id != 0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

#[derive(Default)]
struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Rc<Metrics>,
    /// For request ids when the proxy did not set `x-request-id`.
    next_id: Rc<Cell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.metrics = Rc::new(Metrics::define());
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // A failed reconfiguration must not leave the previous policies in force unnoticed:
        // drop them, so that requests are refused until a valid configuration arrives.
        self.engine = None;
        let Some(config) = self.get_plugin_configuration() else {
            log(LogLevel::Critical, "tessera: no plugin configuration");
            return false;
        };
        match Engine::from_json(&config) {
            Ok(engine) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "tessera: configured with {} policies",
                        engine.policy_count()
                    ),
                );
                self.engine = Some(Rc::new(engine));
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("tessera: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            next_id: self.next_id.clone(),
            pending: None,
            mcp_caller: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    engine: Option<Rc<Engine>>,
    metrics: Rc<Metrics>,
    next_id: Rc<Cell<u64>>,
    /// An MCP POST waiting for its whole body.
    pending: Option<PendingBody>,
    /// An allowed MCP request: (route, principal), to bind a session the response creates.
    mcp_caller: Option<(String, String)>,
}

/// Shared-data key of an MCP session: shared by the proxy's worker threads.
fn session_key(route: &str, session: &str) -> String {
    format!("tessera.mcp.session.{route}.{session}")
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
    fn send(&self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
    }

    fn request_id(&self) -> String {
        match self.get_http_request_header("x-request-id") {
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
    /// An `Mcp-Session-Id` is bound to the principal whose `initialize` created it: another
    /// principal presenting it is refused, and an id this proxy never saw created gets 404, which
    /// tells an MCP client to start a new session.
    fn check_session(&mut self, engine: &Engine, decision: &mut Decision, request_id: &str) {
        let (Some(route), Some(principal)) = (decision.route.clone(), decision.principal.clone())
        else {
            return;
        };
        if decision.reply.is_some() || !engine.is_mcp_route(&route) {
            return;
        }
        self.mcp_caller = Some((route.clone(), principal.clone()));
        let Some(session) = self.get_http_request_header("mcp-session-id") else {
            return;
        };
        let (status, error, reason) = match self.get_shared_data(&session_key(&route, &session)) {
            (Some(owner), _) if owner == principal.as_bytes() => return,
            (Some(_), _) => (
                403,
                "forbidden",
                "the MCP session belongs to another principal",
            ),
            (None, _) => (404, "not_found", "unknown MCP session"),
        };
        decision.verdict = Verdict::Deny;
        decision.reason = reason.to_string();
        decision.set_headers.clear();
        decision.reply = Some(LocalReply::json_error(
            status,
            error,
            Some(reason),
            &[],
            request_id,
        ));
        self.mcp_caller = None;
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
            self.send(reply);
            return Action::Pause;
        }
        for (name, value) in &decision.set_headers {
            self.set_http_request_header(name, Some(value));
        }
        if engine.drop_authorization() && decision.verdict == Verdict::Allow {
            self.set_http_request_header("authorization", None);
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
        };
        let mut decision = engine.check_mcp(&p.pending, &request, body, self.now_s());
        self.check_session(&engine, &mut decision, &p.request_id);
        self.finish(&engine, &decision, &p.method, &p.path, &p.request_id)
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let request_id = self.request_id();
        let Some(engine) = self.engine.clone() else {
            self.metrics.count(self.metrics.unavailable);
            log(
                LogLevel::Warn,
                &format!("tessera decision=unavailable request_id={request_id}"),
            );
            self.send(&LocalReply::unavailable(&request_id));
            return Action::Pause;
        };
        // Client-sent copies of the identity headers never reach the upstream.
        for name in engine.owned_headers() {
            self.set_http_request_header(name, None);
        }
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let host = self
            .get_http_request_header(":authority")
            .unwrap_or_default();
        let authorization = self.get_http_request_header("authorization");
        let content_type = self.get_http_request_header("content-type");
        let request = HttpRequest {
            method: &method,
            path: &path,
            host: &host,
            authorization: authorization.as_deref(),
            request_id: &request_id,
            content_type: content_type.as_deref(),
        };
        let mut decision = engine.check(&request, self.now_s());
        if let Some(pending) = decision.pending.take() {
            let declared = self
                .get_http_request_header("content-length")
                .and_then(|l| l.trim().parse::<usize>().ok());
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
        self.check_session(&engine, &mut decision, &request_id);
        self.finish(&engine, &decision, &method, &path, &request_id)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The server created a session for this caller (on `initialize`): bind it.
        if let Some((route, principal)) = self.mcp_caller.take() {
            if let Some(session) = self.get_http_response_header("mcp-session-id") {
                let key = session_key(&route, &session);
                if self.get_shared_data(&key).0.is_none() {
                    if let Err(e) = self.set_shared_data(&key, Some(principal.as_bytes()), None) {
                        log(
                            LogLevel::Error,
                            &format!("tessera: cannot bind MCP session: {e:?}"),
                        );
                    }
                }
            }
        }
        Action::Continue
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
    fn refuse_oversize(&mut self) -> Action {
        let (Some(engine), Some(_)) = (self.engine.clone(), self.pending.as_ref()) else {
            return Action::Pause;
        };
        // The engine's own size check produces the 413 and the log line.
        let oversize = vec![b' '; engine.max_body_bytes() + 1];
        self.decide_body(&oversize)
    }
}
