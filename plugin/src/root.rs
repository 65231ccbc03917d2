//! The root context: one per VM and worker thread. It compiles the configuration into an
//! `Engine` (or leaves none: every request then gets 503), defines the counters, sweeps expired
//! shared-data entries on its tick, and creates the HTTP contexts (`Filter`, `lib.rs`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use tessera_core::outcome::Counter;
use tessera_core::Engine;

use crate::store::SharedData;
use crate::{log, Filter};

/// How often each worker clears the shared-data entries it created that have expired.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);

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
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.metrics = Rc::new(Metrics::define());
        self.set_tick_period(SWEEP_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.store.sweep(now);
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
