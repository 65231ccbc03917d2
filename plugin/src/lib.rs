//! The proxy-wasm module: root and HTTP contexts over `tessera-core`. Nothing here decides: each
//! hook hands what the proxy has to `tessera_core::exchange::Exchange` and executes the
//! `Outcome` it returns, as it is.
//!
//! Fail closed: until a configuration compiled, every request gets a 503.

// Indexing panics on a bad index, and a panic aborts the VM for every later request.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use tessera_core::exchange::{self, Exchange};
use tessera_core::outcome::{Answer, Edit, Level, Next, Outcome};
use tessera_core::pop::connection::{Connection, SOURCE_ADDRESS};
use tessera_core::Engine;

mod calls;
mod root;
mod store;
use root::{Metrics, Root};
use store::SharedData;

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
    exchange: Exchange,
    /// The token of the call the request waits for: only its answer resumes anything.
    waiting_call: Option<u32>,
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// The proxy's clock in Unix seconds. A clock that cannot be read is the end of time: every
/// token is then expired (401), never valid forever (0 would pass every `exp` check).
fn now_s() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(u64::MAX, |d| d.as_secs())
}

/// Sets or removes headers of `map`. Values are set as bytes (the proxy takes any).
fn edit(map: MapType, edits: &[Edit]) {
    for (name, value) in edits {
        let _ = hostcalls::set_map_value(map, name, value.as_deref());
    }
}

impl Filter {
    fn new(
        engine: Option<Rc<Engine>>,
        metrics: Rc<Metrics>,
        next_id: Rc<Cell<u64>>,
        store: Rc<SharedData>,
    ) -> Filter {
        // The decision line is formatted only when the proxy would keep it: it is per request.
        let debug =
            hostcalls::get_log_level().map_or(true, |l| (l as u32) <= LogLevel::Debug as u32);
        Filter {
            engine,
            metrics,
            next_id,
            store,
            exchange: Exchange::new(debug),
            waiting_call: None,
        }
    }

    /// A request id when the proxy set no `x-request-id`.
    fn fresh_id(&self) -> String {
        let n = self.next_id.get().wrapping_add(1);
        self.next_id.set(n);
        let t = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("tessera-{t:x}-{n}")
    }

    /// Executes `o` on the message of a request hook (`headers`) or a response hook.
    fn apply(&mut self, o: Outcome, headers: MapType, body: (BufferType, usize)) -> Action {
        edit(headers, &o.headers);
        edit(MapType::HttpRequestTrailers, &o.trailers);
        if let Some(replacement) = &o.body {
            // Outside a body hook (a call's answer settled the request) the size is unknown
            // here: what the proxy holds now is replaced.
            let held = match body.1 {
                0 => hostcalls::get_buffer(body.0, 0, usize::MAX)
                    .ok()
                    .flatten()
                    .map_or(0, |b| b.len()),
                n => n,
            };
            let _ = hostcalls::set_buffer(body.0, 0, held, replacement);
        }
        for (counter, n) in o.counters {
            self.metrics.count(counter, n);
        }
        for (level, line) in &o.logs {
            log(
                match level {
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                },
                line,
            );
        }
        for c in &o.callouts {
            let _ = calls::dispatch(self, c);
        }
        match o.next {
            Next::Forward => Action::Continue,
            Next::WaitForBody => Action::Pause,
            Next::Call(call) => {
                if let Ok(token) = calls::dispatch(self, &call.callout) {
                    self.waiting_call = Some(token);
                    return Action::Pause;
                }
                // Not sent (no such cluster …): the request is decided on what it has.
                let o = self.answer_call(Answer::default());
                self.apply(o, headers, body)
            }
            Next::Reply(reply) => {
                let headers = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                self.send_http_response(
                    reply.status,
                    headers.collect(),
                    Some(reply.body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    /// Runs one hook on the exchange and executes its outcome; `read_max` bounds a body read
    /// (`None`: no body in this hook). Before a configuration compiled, `unconfigured` is the
    /// answer (the request itself got 503 at its headers).
    fn run(
        &mut self,
        unconfigured: Action,
        message: (MapType, BufferType),
        read_max: usize,
        hook: impl FnOnce(&mut Exchange, &Engine, &SharedData, &mut dyn FnMut() -> Vec<u8>) -> Outcome,
    ) -> Action {
        let Some(engine) = self.engine.clone() else {
            return unconfigured;
        };
        let mut read_len = 0;
        let mut read = || {
            let body = hostcalls::get_buffer(message.1, 0, read_max)
                .ok()
                .flatten()
                .unwrap_or_default();
            // A replacement covers what the proxy holds (`read_max`, the size it reported), even
            // if the read returned less; unbounded reads (trailers) cover what was read.
            read_len = if read_max == usize::MAX {
                body.len()
            } else {
                read_max.max(body.len())
            };
            body
        };
        let o = hook(&mut self.exchange, &engine, &self.store, &mut read);
        self.apply(o, message.0, (message.1, read_len))
    }
}

impl Filter {
    /// The exchange takes the answer to the call its request waits for.
    fn answer_call(&mut self, answer: Answer) -> Outcome {
        let Some(engine) = self.engine.clone() else {
            return Outcome::forward();
        };
        self.exchange
            .on_call_answer(&engine, &*self.store, &answer, now_s())
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // Another call's answer (the approval webhook's) resumes nothing.
        if self.waiting_call != Some(token_id) || !self.exchange.is_waiting() {
            return;
        }
        self.waiting_call = None;
        let answer = calls::answer(body_size);
        let o = self.answer_call(answer);
        // A reply is sent by `apply`; only a final forward resumes the request. A body still
        // to come is never a reason to resume: resuming would pass on what the proxy buffered
        // so far, and the body hooks (`allow_on_headers_stop_iteration`) decide once it is whole.
        if self.apply(o, REQUEST.0, (REQUEST.1, 0)) == Action::Continue {
            self.resume_http_request();
        }
    }

    fn on_done(&mut self) -> bool {
        // The stream ended while its request waited: the call will not be answered here.
        if let (Some(engine), true) = (self.engine.clone(), self.exchange.is_waiting()) {
            self.exchange.abandon(&engine);
        }
        true
    }
}

const REQUEST: (MapType, BufferType) = (MapType::HttpRequestHeaders, BufferType::HttpRequestBody);
const RESPONSE: (MapType, BufferType) =
    (MapType::HttpResponseHeaders, BufferType::HttpResponseBody);

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // As bytes: the SDK's string accessors panic (and abort the VM) on a value that is not
        // UTF-8.
        let headers = self.get_http_request_headers_bytes();
        let request_id = exchange::request_id(&headers, &|| self.fresh_id());
        if self.engine.is_none() {
            let o = exchange::unavailable(&request_id);
            return self.apply(o, REQUEST.0, (REQUEST.1, 0));
        }
        self.run(Action::Pause, REQUEST, 0, |x, engine, store, _| {
            // The connection's attributes: the client certificate (what a certificate-bound
            // token is checked against), the source address only when a policy may read it.
            let source = engine.reads_source_address();
            x.set_connection(Connection::from_attributes(&|path: &[&str]| {
                if path == SOURCE_ADDRESS && !source {
                    return None;
                }
                hostcalls::get_property(path.to_vec()).ok().flatten()
            }));
            if engine.reads_jwt_authn() {
                let path = tessera_core::jwt_authn::ATTRIBUTE.to_vec();
                x.set_jwt_authn(hostcalls::get_property(path).ok().flatten());
            }
            x.on_request_headers(engine, store, &headers, request_id, end_of_stream, now_s())
        })
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(
            Action::Pause,
            REQUEST,
            body_size,
            |x, engine, store, read| {
                x.on_request_body(
                    engine,
                    store,
                    body_size,
                    end_of_stream,
                    now_s(),
                    &mut |_| read(),
                )
            },
        )
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let max = self
            .engine
            .as_ref()
            .map_or(0, |e| e.max_body_bytes().saturating_add(1));
        self.run(Action::Pause, REQUEST, max, |x, engine, store, read| {
            x.on_request_trailers(engine, store, now_s(), &mut |_| read())
        })
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // As bytes: the upstream chooses these.
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                .ok()
                .flatten()
        };
        self.run(Action::Continue, RESPONSE, 0, |x, engine, store, _| {
            x.on_response_headers(engine, store, &header, end_of_stream, now_s())
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(
            Action::Continue,
            RESPONSE,
            body_size,
            |x, engine, _, read| x.on_response_body(engine, end_of_stream, now_s(), read),
        )
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.run(
            Action::Continue,
            RESPONSE,
            usize::MAX,
            |x, engine, _, read| x.on_response_trailers(engine, now_s(), read),
        )
    }
}
