//! `tessera-harness`: a proxy-wasm ABI 0.2.1 host on wasmtime for driving the Tessera filter
//! (or any module built with the proxy-wasm Rust SDK 0.2.5 for `wasm32-wasip1`) from tests and
//! criterion benchmarks, without Envoy.
//!
//! It is state-based, like Envoy's and Tetrate's `proxytest` hosts: load a module, [`configure`]
//! it, drive HTTP streams ([`new_http`], [`request_headers`], [`request_body`],
//! [`response_headers`], …, [`done`]) and read back what the module did: the local reply it sent,
//! the headers and bodies after it changed them, its logs, metrics, shared data and HTTP callouts
//! (which the test answers with [`respond_to_call`]). Time is controllable ([`set_time`],
//! [`advance`]) and is the same for `proxy_get_current_time_nanoseconds` and the WASI clocks.
//!
//! Every import the harness does not implement is still linked, but traps with a message naming
//! it, so a module that starts using a new hostcall fails loudly instead of being silently faked.
//! A trap inside the module comes back as an `Err` carrying the trap and any panic message the
//! module logged; the harness then refuses further calls, as Envoy would discard the VM.
//!
//! One wasmtime `Store` and instance live as long as the [`Harness`], and compiled modules are
//! cached per process and on disk (`<target>/tessera-harness-cache`), so benchmarks measure the
//! module, not the host, and tests do not recompile an unchanged module.
//!
//! Set `TESSERA_HARNESS_LOG=1` to echo the module's log lines to stderr while debugging a test.
//!
//! [`configure`]: Harness::configure
//! [`new_http`]: Harness::new_http
//! [`request_headers`]: Harness::request_headers
//! [`request_body`]: Harness::request_body
//! [`response_headers`]: Harness::response_headers
//! [`done`]: Harness::done
//! [`respond_to_call`]: Harness::respond_to_call
//! [`set_time`]: Harness::set_time
//! [`advance`]: Harness::advance

#![forbid(unsafe_code)]

mod host;
mod wire;

pub use wire::Headers;

use anyhow::{anyhow, bail, Context as _, Result};
use host::{Clock, Host, MonotonicClock, State, Stream, WallClock};
use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{
    Engine, ExternType, Instance, Linker, Module, Store, TypedFunc, WasmParams, WasmResults,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;

// Tests and benchmarks may move a harness to another thread; keep that possible.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Harness>();
};

/// The id of the (single) root context the harness creates in [`Harness::configure`].
pub const ROOT_CONTEXT_ID: u32 = 1;

/// Finished streams kept readable after [`Harness::done`] before their storage is reused.
const KEEP_FINISHED: usize = 64;
/// Bytes of module stdout/stderr kept (panic messages land there too).
const OUTPUT_CAPACITY: usize = 1 << 20;

/// What a stream callback told the host to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Continue,
    Pause,
}

/// proxy-wasm log levels, ordered from most to least verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// One `proxy_log` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// The effective context when the module logged.
    pub context_id: u32,
}

/// A response the module sent itself with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Envoy's "response code details"; the SDK 0.2.5 always sends it empty.
    pub details: String,
    /// -1 unless the module sent a gRPC reply.
    pub grpc_status: i32,
}

impl LocalReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP callout the module started with `proxy_http_call` that the test has not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The context that made the call; its callback runs when the test answers.
    pub context_id: u32,
    /// The Envoy cluster name the call goes to.
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
}

impl HttpCall {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// proxy-wasm metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where the Tessera module is expected: `$TESSERA_WASM` if set, else
/// `<target dir>/wasm32-wasip1/release/tessera_plugin.wasm`.
pub fn tessera_wasm_path() -> PathBuf {
    match std::env::var_os("TESSERA_WASM") {
        Some(path) => PathBuf::from(path),
        None => target_dir().join("wasm32-wasip1/release/tessera_plugin.wasm"),
    }
}

/// The workspace's target directory, honouring `$CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// `proxy_on_{request,response}_{headers,body}(context, size, end_of_stream) -> Action`.
type StreamFn = TypedFunc<(u32, u32, u32), u32>;
/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The exports the harness calls, looked up once so a call costs no name lookup.
struct Exports {
    context_create: TypedFunc<(u32, u32), ()>,
    vm_start: TypedFunc<(u32, u32), u32>,
    configure: TypedFunc<(u32, u32), u32>,
    done: Option<TypedFunc<u32, u32>>,
    log: Option<TypedFunc<u32, ()>>,
    delete: Option<TypedFunc<u32, ()>>,
    tick: Option<TypedFunc<u32, ()>>,
    request_headers: Option<StreamFn>,
    request_body: Option<StreamFn>,
    request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    response_headers: Option<StreamFn>,
    response_body: Option<StreamFn>,
    response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    http_call_response: Option<CallResponseFn>,
    initialize: Option<TypedFunc<(), ()>>,
}

/// A loaded proxy-wasm module plus the host state it sees. See the crate docs.
pub struct Harness {
    store: Store<State>,
    exports: Exports,
    root_created: bool,
    configured: Option<bool>,
    next_id: u32,
    free: Vec<Stream>,
    finished: VecDeque<u32>,
    poisoned: Option<String>,
    output: MemoryOutputPipe,
    output_seen: usize,
    stubbed: Vec<String>,
}

/// The process-wide engine. Compiled code is also cached on disk under the target directory
/// (`tessera-harness-cache`), so a test run does not recompile an unchanged module; if that
/// directory cannot be used the engine simply compiles every time.
fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let mut config = wasmtime::Config::new();
    // `TESSERA_HARNESS_PERFMAP=1`: wasmtime writes /tmp/perf-<pid>.map, so that `perf report`
    // names the module's functions (build the .wasm with `CARGO_PROFILE_RELEASE_STRIP=false` to
    // keep their names). For profiling only; docs/PERFORMANCE.md says how.
    if std::env::var_os("TESSERA_HARNESS_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut cache = wasmtime::CacheConfig::new();
    cache.with_directory(target_dir().join("tessera-harness-cache"));
    if let Ok(cache) = wasmtime::Cache::new(cache) {
        config.cache(Some(cache));
    }
    let engine = Engine::new(&config)?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

/// Compiles `wasm`, reusing an earlier compilation of the same bytes in this process: every
/// test builds its own `Harness`. The lock is held while compiling so that tests starting in
/// parallel wait for one compilation instead of each doing their own.
fn compile(wasm: &[u8]) -> Result<Module> {
    static CACHE: Mutex<Vec<((u64, usize), Module)>> = Mutex::new(Vec::new());
    let mut hasher = DefaultHasher::new();
    wasm.hash(&mut hasher);
    let key = (hasher.finish(), wasm.len());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, module)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(module.clone());
    }
    let module = Module::new(&engine()?, wasm)
        .map_err(anyhow::Error::from)
        .context("compiling the wasm module")?;
    cache.push((key, module.clone()));
    Ok(module)
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<State>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>> {
    if instance.get_func(&mut *store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map(Some)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("export {name} has an unexpected signature"))
}

fn required<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<State>,
    name: &str,
) -> Result<TypedFunc<P, R>> {
    typed(instance, store, name)?.ok_or_else(|| anyhow!("the module does not export {name}"))
}

fn action(name: &str, value: u32) -> Result<Action> {
    match value {
        0 => Ok(Action::Continue),
        1 => Ok(Action::Pause),
        other => bail!("{name} returned unknown action {other}"),
    }
}

/// Fills a header map from test input, lower-casing names as Envoy does.
fn fill(map: &mut Headers, headers: &[(&str, &str)]) {
    map.clear();
    map.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string())),
    );
}

fn property_key(path: &[&str]) -> Vec<u8> {
    // The SDK serializes a property path as its segments joined by NUL.
    path.join("\0").into_bytes()
}

impl Harness {
    /// Loads the `.wasm` file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&wasm).with_context(|| format!("loading {}", path.display()))
    }

    /// Loads the Tessera module from [`tessera_wasm_path`], with a clear error if it is missing.
    pub fn load_tessera() -> Result<Self> {
        let path = tessera_wasm_path();
        if !path.is_file() {
            bail!(
                "Tessera module not found at {}: build it with \
                 `cargo build --release --target wasm32-wasip1 -p tessera-plugin` \
                 or point TESSERA_WASM at it",
                path.display()
            );
        }
        Self::load(path)
    }

    /// Compiles (or reuses a compilation of) `wasm` and instantiates it: WASI preview 1, the
    /// proxy-wasm imports, trapping stubs for everything else; then runs `_initialize`/`_start`.
    pub fn from_bytes(wasm: &[u8]) -> Result<Self> {
        let module = compile(wasm)?;
        let engine = module.engine().clone();
        let clock = Arc::new(Clock::default());
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(WallClock(clock.clone()))
            .monotonic_clock(MonotonicClock(clock.clone(), Instant::now()))
            .build_p1();
        let echo =
            std::env::var_os("TESSERA_HARNESS_LOG").is_some_and(|v| !v.is_empty() && v != "0");
        let host = Host::new(clock, ROOT_CONTEXT_ID, echo);
        let mut store = Store::new(&engine, State { wasi, host });

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)?;
        host::add_to_linker(&mut linker)?;
        let mut stubbed = Vec::new();
        for import in module.imports() {
            if linker.get_by_import(&mut store, &import).is_some() {
                continue;
            }
            let (m, n) = (import.module().to_string(), import.name().to_string());
            match import.ty() {
                ExternType::Func(ty) => {
                    let message = format!("hostcall {m}::{n} is not implemented by tessera-harness");
                    linker.func_new(&m, &n, ty, move |_, _, _| Err(wasmtime::format_err!("{message}")))?;
                    stubbed.push(format!("{m}::{n}"));
                }
                other => bail!("the module imports {m}::{n} ({other:?}), which tessera-harness does not provide"),
            }
        }
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(anyhow::Error::from)
            .context("instantiating the module")?;

        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
            && instance
                .get_func(&mut store, "proxy_abi_version_0_2_0")
                .is_none()
        {
            bail!(
                "the module does not export proxy_abi_version_0_2_1: not a proxy-wasm 0.2 module"
            );
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("the module exports no memory"))?;
        let alloc = match typed::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<u32, u32>(&instance, &mut store, "malloc")?,
        };
        store.data_mut().host.memory = Some(memory);
        store.data_mut().host.alloc = alloc;

        let exports = Exports {
            context_create: required(&instance, &mut store, "proxy_on_context_create")?,
            vm_start: required(&instance, &mut store, "proxy_on_vm_start")?,
            configure: required(&instance, &mut store, "proxy_on_configure")?,
            done: typed(&instance, &mut store, "proxy_on_done")?,
            log: typed(&instance, &mut store, "proxy_on_log")?,
            delete: typed(&instance, &mut store, "proxy_on_delete")?,
            tick: typed(&instance, &mut store, "proxy_on_tick")?,
            request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            request_body: typed(&instance, &mut store, "proxy_on_request_body")?,
            request_trailers: typed(&instance, &mut store, "proxy_on_request_trailers")?,
            response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            response_body: typed(&instance, &mut store, "proxy_on_response_body")?,
            response_trailers: typed(&instance, &mut store, "proxy_on_response_trailers")?,
            http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response")?,
            initialize: typed(&instance, &mut store, "_initialize")?,
        };
        let start = typed::<(), ()>(&instance, &mut store, "_start")?;

        let mut harness = Harness {
            store,
            exports,
            root_created: false,
            configured: None,
            next_id: ROOT_CONTEXT_ID + 1,
            free: Vec::new(),
            finished: VecDeque::new(),
            poisoned: None,
            output,
            output_seen: 0,
            stubbed,
        };
        // A reactor (cdylib) runs its constructors and `main!` block in `_initialize`; a command
        // module runs `_start`, which ends in proc_exit(0).
        if harness.exports.initialize.is_some() {
            harness.invoke(
                ROOT_CONTEXT_ID,
                "_initialize",
                |e| e.initialize.as_ref(),
                (),
            )?;
        } else if let Some(start) = start {
            if let Err(e) = start.call(&mut harness.store, ()) {
                if e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|x| x.0) != Some(0) {
                    return Err(harness.trapped("_start", ROOT_CONTEXT_ID, e, 0));
                }
            }
        }
        Ok(harness)
    }

    fn host(&self) -> &Host {
        &self.store.data().host
    }

    fn host_mut(&mut self) -> &mut Host {
        &mut self.store.data_mut().host
    }

    /// Calls the export `pick` selects, for context `ctx` (made the effective context first).
    /// `pick` borrows the export instead of cloning it: a `TypedFunc` clone costs atomics.
    fn invoke<P: WasmParams, R: WasmResults>(
        &mut self,
        ctx: u32,
        name: &'static str,
        pick: fn(&Exports) -> Option<&TypedFunc<P, R>>,
        params: P,
    ) -> Result<R> {
        if let Some(reason) = &self.poisoned {
            bail!("the module trapped earlier, so the harness refuses {name}: {reason}");
        }
        let Some(func) = pick(&self.exports) else {
            bail!("the module does not export {name}");
        };
        let host = &mut self.store.data_mut().host;
        host.current = ctx;
        let mark = host.logs_total;
        match func.call(&mut self.store, params) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.trapped(name, ctx, e, mark)),
        }
    }

    /// Builds the error for a trap (with the panic message the SDK logs at Critical and any new
    /// stdout/stderr output) and poisons the harness.
    fn trapped(&mut self, name: &str, ctx: u32, err: wasmtime::Error, mark: u64) -> anyhow::Error {
        let mut message = format!("{name}(context {ctx}) trapped: {}", err.root_cause());
        let critical: Vec<&str> = self
            .host()
            .logs_since(mark)
            .iter()
            .filter(|l| l.level == LogLevel::Critical)
            .map(|l| l.message.as_str())
            .collect();
        if !critical.is_empty() {
            message.push_str("; module logged: ");
            message.push_str(&critical.join(" | "));
        }
        let output = self.output.contents();
        if let Some(new) = output.get(self.output_seen..) {
            let new = String::from_utf8_lossy(new);
            let new = new.trim();
            if !new.is_empty() {
                // Keep the end: that is where a panic message or the last words are.
                let start = new.char_indices().rev().nth(1999).map_or(0, |(i, _)| i);
                let tail = &new[start..];
                message.push_str("; module output: ");
                message.push_str(tail);
            }
        }
        self.output_seen = output.len();
        self.poisoned = Some(message.clone());
        anyhow::Error::from(err.context(message))
    }

    fn stream(&self, ctx: u32) -> Option<&Stream> {
        self.host().streams.get(&ctx)
    }

    fn live_stream(&mut self, ctx: u32) -> Result<&mut Stream> {
        match self.host_mut().streams.get_mut(&ctx) {
            Some(s) if !s.finished => Ok(s),
            Some(_) => bail!("HTTP context {ctx} is already done"),
            None => bail!("no HTTP context {ctx} (create one with new_http)"),
        }
    }

    // ------------------------------------------------------------------------------------
    // Configuration and environment
    // ------------------------------------------------------------------------------------

    /// Sets the VM configuration handed to `proxy_on_vm_start` (empty by default).
    pub fn set_vm_config(&mut self, config: &str) {
        self.host_mut().vm_config = config.as_bytes().to_vec();
    }

    /// Creates the root context (first call only: `proxy_on_context_create(1, 0)` and
    /// `proxy_on_vm_start`), then calls `proxy_on_configure` with `plugin_config`. Returns what
    /// the module returned (false if `proxy_on_vm_start` refused).
    pub fn configure(&mut self, plugin_config: &str) -> Result<bool> {
        self.configure_bytes(plugin_config.as_bytes())
    }

    /// [`configure`](Self::configure) with a non-UTF-8 configuration.
    pub fn configure_bytes(&mut self, plugin_config: &[u8]) -> Result<bool> {
        let root = ROOT_CONTEXT_ID;
        if !self.root_created {
            self.invoke(
                root,
                "proxy_on_context_create",
                |e| Some(&e.context_create),
                (root, 0),
            )?;
            self.root_created = true;
            let size = wire::len32(self.host().vm_config.len());
            if self.invoke(
                root,
                "proxy_on_vm_start",
                |e| Some(&e.vm_start),
                (root, size),
            )? == 0
            {
                self.configured = Some(false);
                return Ok(false);
            }
        }
        self.host_mut().plugin_config = plugin_config.to_vec();
        let size = wire::len32(plugin_config.len());
        let ok = self.invoke(
            root,
            "proxy_on_configure",
            |e| Some(&e.configure),
            (root, size),
        )? != 0;
        self.configured = Some(ok);
        Ok(ok)
    }

    /// What the last [`configure`](Self::configure) returned; `None` before the first.
    pub fn configured(&self) -> Option<bool> {
        self.configured
    }

    /// Only messages at or above `level` are recorded (default: everything). Also what
    /// `proxy_get_log_level` reports. Benchmarks set this to keep logging cheap.
    pub fn set_log_level(&mut self, level: LogLevel) {
        self.host_mut().log_level = level;
    }

    /// Also print every module log line to stderr (as does `TESSERA_HARNESS_LOG=1`).
    pub fn echo_logs(&mut self, on: bool) {
        self.host_mut().echo_logs = on;
    }

    /// Sets a property for `proxy_get_property`; `path` is dotted, as Envoy attributes are
    /// written (`"source.address"`, `"plugin_root_id"`).
    pub fn set_property(&mut self, path: &str, value: impl AsRef<[u8]>) {
        let key = property_key(&path.split('.').collect::<Vec<_>>());
        self.host_mut()
            .properties
            .insert(key, value.as_ref().to_vec());
    }

    /// Sets a property by explicit segments, for names that contain dots.
    pub fn set_property_path(&mut self, path: &[&str], value: impl AsRef<[u8]>) {
        self.host_mut()
            .properties
            .insert(property_key(path), value.as_ref().to_vec());
    }

    /// Sets a property seen only while context `ctx` is effective (e.g. a per-request
    /// `source.address`); it overrides the global one.
    pub fn set_stream_property(
        &mut self,
        ctx: u32,
        path: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<()> {
        self.set_stream_property_path(ctx, &path.split('.').collect::<Vec<_>>(), value)
    }

    /// Sets a per-stream property by explicit segments, for names that contain dots (Envoy's
    /// `metadata.filter_metadata["envoy.filters.http.jwt_authn"]…`).
    pub fn set_stream_property_path(
        &mut self,
        ctx: u32,
        path: &[&str],
        value: impl AsRef<[u8]>,
    ) -> Result<()> {
        let key = property_key(path);
        let stream = self.live_stream(ctx)?;
        stream.properties.retain(|(k, _)| *k != key);
        stream.properties.push((key, value.as_ref().to_vec()));
        Ok(())
    }

    /// A global property (including any the module set with `proxy_set_property`).
    pub fn property(&self, path: &str) -> Option<Vec<u8>> {
        let key = property_key(&path.split('.').collect::<Vec<_>>());
        self.host().properties.get(&key).cloned()
    }

    /// Freezes the clock at `time` (module time and WASI wall clock).
    pub fn set_time(&mut self, time: SystemTime) {
        self.host().clock.set(time);
    }

    /// Moves the clock forward (freezing it if it was following real time).
    pub fn advance(&mut self, by: Duration) {
        self.host().clock.advance(by);
    }

    /// The time the module sees.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.host().clock.now_nanos())
    }

    // ------------------------------------------------------------------------------------
    // Driving HTTP streams
    // ------------------------------------------------------------------------------------

    /// Creates an HTTP context under the root context (`proxy_on_context_create`) and returns
    /// its id. Requires [`configure`](Self::configure) first.
    pub fn new_http(&mut self) -> Result<u32> {
        if !self.root_created {
            bail!("call configure() before new_http()");
        }
        let id = self.next_id;
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or_else(|| anyhow!("context ids exhausted"))?;
        let mut stream = self.free.pop().unwrap_or_default();
        stream.reset();
        self.host_mut().streams.insert(id, stream);
        self.invoke(
            id,
            "proxy_on_context_create",
            |e| Some(&e.context_create),
            (id, ROOT_CONTEXT_ID),
        )?;
        Ok(id)
    }

    /// Delivers request headers (`proxy_on_request_headers`).
    pub fn request_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        fill(&mut self.live_stream(ctx)?.request_headers, headers);
        let n = wire::len32(headers.len());
        let r = self.invoke(
            ctx,
            "proxy_on_request_headers",
            |e| e.request_headers.as_ref(),
            (ctx, n, u32::from(end_of_stream)),
        )?;
        action("proxy_on_request_headers", r)
    }

    /// Delivers a request body chunk (`proxy_on_request_body`). As in Envoy, if the previous
    /// body callback paused, the chunk is appended to the buffered body and the module sees
    /// the whole buffer.
    pub fn request_body(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let stream = self.live_stream(ctx)?;
        if !stream.request_buffering {
            stream.request_body.clear();
        }
        stream.request_body.extend_from_slice(chunk);
        let size = wire::len32(stream.request_body.len());
        let r = self.invoke(
            ctx,
            "proxy_on_request_body",
            |e| e.request_body.as_ref(),
            (ctx, size, u32::from(end_of_stream)),
        )?;
        let a = action("proxy_on_request_body", r)?;
        self.live_stream(ctx)?.request_buffering = a == Action::Pause;
        Ok(a)
    }

    /// Delivers request trailers (`proxy_on_request_trailers`).
    pub fn request_trailers(&mut self, ctx: u32, trailers: &[(&str, &str)]) -> Result<Action> {
        fill(&mut self.live_stream(ctx)?.request_trailers, trailers);
        let r = self.invoke(
            ctx,
            "proxy_on_request_trailers",
            |e| e.request_trailers.as_ref(),
            (ctx, wire::len32(trailers.len())),
        )?;
        action("proxy_on_request_trailers", r)
    }

    /// Delivers response headers (`proxy_on_response_headers`).
    pub fn response_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        fill(&mut self.live_stream(ctx)?.response_headers, headers);
        let n = wire::len32(headers.len());
        let r = self.invoke(
            ctx,
            "proxy_on_response_headers",
            |e| e.response_headers.as_ref(),
            (ctx, n, u32::from(end_of_stream)),
        )?;
        action("proxy_on_response_headers", r)
    }

    /// Delivers a response body chunk (`proxy_on_response_body`), buffering like
    /// [`request_body`](Self::request_body).
    pub fn response_body(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let stream = self.live_stream(ctx)?;
        if !stream.response_buffering {
            stream.response_body.clear();
        }
        stream.response_body.extend_from_slice(chunk);
        let size = wire::len32(stream.response_body.len());
        let r = self.invoke(
            ctx,
            "proxy_on_response_body",
            |e| e.response_body.as_ref(),
            (ctx, size, u32::from(end_of_stream)),
        )?;
        let a = action("proxy_on_response_body", r)?;
        self.live_stream(ctx)?.response_buffering = a == Action::Pause;
        Ok(a)
    }

    /// Delivers response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers(&mut self, ctx: u32, trailers: &[(&str, &str)]) -> Result<Action> {
        fill(&mut self.live_stream(ctx)?.response_trailers, trailers);
        let r = self.invoke(
            ctx,
            "proxy_on_response_trailers",
            |e| e.response_trailers.as_ref(),
            (ctx, wire::len32(trailers.len())),
        )?;
        action("proxy_on_response_trailers", r)
    }

    /// Ends the stream: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. Its pending HTTP
    /// calls are cancelled (as Envoy does). What the stream recorded stays readable until
    /// `KEEP_FINISHED` (64) later streams have finished.
    pub fn done(&mut self, ctx: u32) -> Result<()> {
        self.live_stream(ctx)?;
        self.invoke(ctx, "proxy_on_done", |e| e.done.as_ref(), ctx)?;
        self.invoke(ctx, "proxy_on_log", |e| e.log.as_ref(), ctx)?;
        self.invoke(ctx, "proxy_on_delete", |e| e.delete.as_ref(), ctx)?;
        self.live_stream(ctx)?.finished = true;
        let host = self.host_mut();
        host.calls.retain(|c| c.context_id != ctx);
        host.current = ROOT_CONTEXT_ID;
        self.finished.push_back(ctx);
        while self.finished.len() > KEEP_FINISHED {
            if let Some(old) = self.finished.pop_front() {
                if let Some(stream) = self.host_mut().streams.remove(&old) {
                    self.free.push(stream);
                }
            }
        }
        Ok(())
    }

    /// Answers the pending HTTP call `token`: `:status` plus `headers`, `body`, no trailers;
    /// runs `proxy_on_http_call_response` in the calling context.
    pub fn respond_to_call(
        &mut self,
        token: u32,
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let mut response = host::CallResponse::default();
        response
            .headers
            .push((":status".to_string(), status.to_string()));
        response.headers.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string())),
        );
        response.body = body.to_vec();
        self.deliver_call(token, response)
    }

    /// Fails the pending HTTP call `token` (timeout, reset, no healthy upstream): Envoy then calls
    /// `proxy_on_http_call_response` with no headers, body or trailers.
    pub fn fail_call(&mut self, token: u32) -> Result<()> {
        self.deliver_call(token, host::CallResponse::default())
    }

    fn deliver_call(&mut self, token: u32, response: host::CallResponse) -> Result<()> {
        let host = self.host_mut();
        let index = host
            .calls
            .iter()
            .position(|c| c.token == token)
            .ok_or_else(|| anyhow!("no pending HTTP call with token {token}"))?;
        let call = host.calls.remove(index);
        let sizes = (
            wire::len32(response.headers.len()),
            wire::len32(response.body.len()),
            wire::len32(response.trailers.len()),
        );
        host.call_response = Some(response);
        let ctx = call.context_id;
        let result = self.invoke(
            ctx,
            "proxy_on_http_call_response",
            |e| e.http_call_response.as_ref(),
            (ctx, token, sizes.0, sizes.1, sizes.2),
        );
        self.host_mut().call_response = None;
        result
    }

    /// Fires the root context's timer (`proxy_on_tick`), whatever the period.
    pub fn tick(&mut self) -> Result<()> {
        self.invoke(
            ROOT_CONTEXT_ID,
            "proxy_on_tick",
            |e| e.tick.as_ref(),
            ROOT_CONTEXT_ID,
        )
    }

    /// The period the module asked for with `proxy_set_tick_period_milliseconds` (None = off).
    pub fn tick_period(&self) -> Option<Duration> {
        self.host().tick_period
    }

    /// Whether the module called `proxy_done` (it finished after `proxy_on_done` returned false).
    pub fn done_called(&self) -> bool {
        self.host().done_called
    }

    // ------------------------------------------------------------------------------------
    // Reading back what the module did
    // ------------------------------------------------------------------------------------

    /// The local reply the module sent on stream `ctx` (the last one if it sent several).
    pub fn local_reply(&self, ctx: u32) -> Option<LocalReply> {
        self.stream(ctx)?.local_reply.clone()
    }

    /// Request headers as the module left them (empty for an unknown context).
    pub fn request_headers_of(&self, ctx: u32) -> Headers {
        self.stream(ctx)
            .map(|s| s.request_headers.clone())
            .unwrap_or_default()
    }

    /// One request header as the module left it (first value, case-insensitive name).
    pub fn request_header(&self, ctx: u32, name: &str) -> Option<String> {
        header_in(&self.stream(ctx)?.request_headers, name).map(str::to_string)
    }

    /// Response headers as the module left them.
    pub fn response_headers_of(&self, ctx: u32) -> Headers {
        self.stream(ctx)
            .map(|s| s.response_headers.clone())
            .unwrap_or_default()
    }

    /// One response header as the module left it.
    pub fn response_header(&self, ctx: u32, name: &str) -> Option<String> {
        header_in(&self.stream(ctx)?.response_headers, name).map(str::to_string)
    }

    /// Request trailers as the module left them.
    pub fn request_trailers_of(&self, ctx: u32) -> Headers {
        self.stream(ctx)
            .map(|s| s.request_trailers.clone())
            .unwrap_or_default()
    }

    /// Response trailers as the module left them.
    pub fn response_trailers_of(&self, ctx: u32) -> Headers {
        self.stream(ctx)
            .map(|s| s.response_trailers.clone())
            .unwrap_or_default()
    }

    /// The request body buffer after the last body callback (what goes upstream on Continue).
    pub fn request_body_of(&self, ctx: u32) -> Vec<u8> {
        self.stream(ctx)
            .map(|s| s.request_body.clone())
            .unwrap_or_default()
    }

    /// The response body buffer after the last body callback.
    pub fn response_body_of(&self, ctx: u32) -> Vec<u8> {
        self.stream(ctx)
            .map(|s| s.response_body.clone())
            .unwrap_or_default()
    }

    /// Whether the module resumed the paused request (`proxy_continue_stream(HttpRequest)`).
    pub fn request_resumed(&self, ctx: u32) -> bool {
        self.stream(ctx).is_some_and(|s| s.request_resumed > 0)
    }

    /// Whether the module resumed the paused response.
    pub fn response_resumed(&self, ctx: u32) -> bool {
        self.stream(ctx).is_some_and(|s| s.response_resumed > 0)
    }

    /// Whether the module reset the stream (`proxy_close_stream`).
    pub fn stream_reset(&self, ctx: u32) -> bool {
        self.stream(ctx).is_some_and(|s| s.reset)
    }

    /// Recorded log lines, oldest first (the oldest are dropped past 100 000).
    pub fn logs(&self) -> &[LogEntry] {
        &self.host().logs
    }

    /// Forgets recorded log lines.
    pub fn clear_logs(&mut self) {
        self.host_mut().logs.clear();
    }

    /// The first log line containing `needle`.
    pub fn find_log(&self, needle: &str) -> Option<&LogEntry> {
        self.logs().iter().find(|l| l.message.contains(needle))
    }

    /// Whether a line at exactly `level` contains `needle`.
    pub fn has_log(&self, level: LogLevel, needle: &str) -> bool {
        self.logs()
            .iter()
            .any(|l| l.level == level && l.message.contains(needle))
    }

    /// Messages logged at exactly `level`.
    pub fn logs_at(&self, level: LogLevel) -> Vec<&str> {
        self.logs()
            .iter()
            .filter(|l| l.level == level)
            .map(|l| l.message.as_str())
            .collect()
    }

    /// A counter's or gauge's value; for a histogram, how many values were recorded.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let id = *self.host().metric_ids.get(name)?;
        self.host()
            .metrics
            .get((id as usize).checked_sub(1)?)
            .map(|m| m.value)
    }

    /// The values recorded in a histogram (the first 65 536).
    pub fn histogram(&self, name: &str) -> Option<&[u64]> {
        let id = *self.host().metric_ids.get(name)?;
        let metric = self.host().metrics.get((id as usize).checked_sub(1)?)?;
        (metric.kind == MetricKind::Histogram).then_some(metric.samples.as_slice())
    }

    /// Every defined metric: name, kind, value (as [`metric`](Self::metric)).
    pub fn metrics(&self) -> Vec<(String, MetricKind, i64)> {
        self.host()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.kind, m.value))
            .collect()
    }

    /// A shared-data value.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.host()
            .shared
            .get(key.as_bytes())
            .map(|(v, _)| v.clone())
    }

    /// A shared-data value with its CAS version.
    pub fn shared_data_cas(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.host().shared.get(key.as_bytes()).cloned()
    }

    /// Writes shared data as another VM (or a test) would; bumps its CAS version.
    pub fn set_shared_data(&mut self, key: &str, value: impl AsRef<[u8]>) {
        self.host_mut().set_shared(key.as_bytes(), value.as_ref());
    }

    /// HTTP callouts not yet answered, oldest first.
    pub fn http_calls(&self) -> &[HttpCall] {
        &self.host().calls
    }

    /// The size of the module's linear memory in bytes: what it has grown to, never shrinking
    /// (wasm memories only grow), so the high-water mark of everything the module allocated.
    pub fn memory_bytes(&self) -> usize {
        self.store
            .data()
            .host
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// The module's imports that the harness linked to trapping stubs (`module::name`): the
    /// hostcalls it would need to implement before the module could use them.
    pub fn stubbed_imports(&self) -> &[String] {
        &self.stubbed
    }

    /// Everything the module wrote to stdout/stderr (the first MiB).
    pub fn module_output(&self) -> String {
        String::from_utf8_lossy(&self.output.contents()).into_owned()
    }
}
