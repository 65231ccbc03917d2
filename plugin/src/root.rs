//! The root context: one per VM and worker thread. It compiles the configuration into an
//! `Engine` (or leaves none: every request then gets 503), defines the counters, and on its tick
//! starts the calls that are due (keys and status lists to refresh, events to poll; their
//! answers go to the engine) and sweeps expired shared-data entries. It creates the HTTP
//! contexts (`Filter`, `lib.rs`).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use tessera_core::outcome::{Counter, Purpose};
use tessera_core::Engine;

use crate::calls;
use crate::store::SharedData;
use crate::{log, Filter};

/// How often each worker looks for due calls and clears the shared-data entries it created that
/// have expired (a sweep only compares times until one has).
const TICK_PERIOD: Duration = Duration::from_secs(1);

/// Counter ids, defined once per VM, in the order of `Counter::ALL`.
#[derive(Default)]
pub(crate) struct Metrics {
    ids: Vec<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let def = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        Metrics {
            ids: Counter::ALL.iter().map(|(_, name)| def(name)).collect(),
        }
    }

    pub(crate) fn count(&self, counter: Counter, n: u64) {
        match self.ids.get(counter.index()) {
            Some(&id) if id != 0 && n > 0 => {
                let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
            _ => {}
        }
    }
}

#[derive(Default)]
pub(crate) struct Root {
    engine: Option<Rc<Engine>>,
    metrics: Rc<Metrics>,
    /// For request ids when the proxy did not set `x-request-id`.
    next_id: Rc<Cell<u64>>,
    /// Expiring shared-data entries (consumed tokens, MCP sessions) this worker created.
    store: Rc<SharedData>,
    /// The root's calls in flight: what each fetches.
    calls: HashMap<u32, Purpose>,
}

impl Root {
    fn now(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Starts `calls`; one that cannot be sent is answered with nothing at once.
    fn start(&mut self, engine: &Engine, mut calls: Vec<tessera_core::outcome::Call>) {
        // Bounded: an answer leads to one call at most (discovery to its JWKS).
        for _ in 0..64 {
            let Some(call) = calls.pop() else {
                return;
            };
            match calls::dispatch(self, &call.callout) {
                Ok(token) => {
                    self.calls.insert(token, call.purpose);
                }
                Err(_) => {
                    let now = self.now();
                    let answer = tessera_core::outcome::Answer::default();
                    let (next, failed) = engine.answered(&call.purpose, &answer, &*self.store, now);
                    if let Some(line) = failed {
                        log(LogLevel::Warn, &line);
                    }
                    calls.extend(next);
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(purpose), Some(engine)) = (self.calls.remove(&token_id), self.engine.clone())
        else {
            return;
        };
        let answer = calls::answer(body_size);
        let (next, failed) = engine.answered(&purpose, &answer, &*self.store, self.now());
        if let Some(line) = failed {
            log(LogLevel::Warn, &line);
        }
        self.start(&engine, next);
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.metrics = Rc::new(Metrics::define());
        self.set_tick_period(TICK_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        let now = self.now();
        self.store.sweep(now);
        if let Some(engine) = self.engine.clone() {
            let due = engine.due_calls(now);
            self.start(&engine, due);
        }
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
                let engine = Rc::new(engine);
                self.engine = Some(engine.clone());
                // The first keys are fetched now, not a tick later.
                let due = engine.due_calls(self.now());
                self.start(&engine, due);
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("tessera: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter::new(
            self.engine.clone(),
            self.metrics.clone(),
            self.next_id.clone(),
            self.store.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
