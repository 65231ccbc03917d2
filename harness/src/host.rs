//! Host-side state and the `env.proxy_*` imports (proxy-wasm ABI 0.2.1) the harness implements.
//!
//! Status codes and argument layouts follow the proxy-wasm Rust SDK 0.2.5 (`hostcalls.rs`) and
//! Envoy's behaviour where the SDK leaves it open. Anything a hostcall is asked to do that the
//! harness does not model (gRPC maps, network streams, …) traps with a message instead of
//! returning a made-up status, so a test notices it.

use crate::wire::{self, Headers};
use crate::{HttpCall, LocalReply, LogEntry, LogLevel, MetricKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::error::Context as _;
use wasmtime::{bail, format_err, Result};
use wasmtime::{Caller, Linker, Memory, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;

// proxy-wasm `Status` values (types.rs in the SDK).
pub(crate) const OK: u32 = 0;
pub(crate) const NOT_FOUND: u32 = 1;
pub(crate) const BAD_ARGUMENT: u32 = 2;
pub(crate) const CAS_MISMATCH: u32 = 8;

/// Logs kept before the oldest half is dropped: benchmarks push millions of requests through
/// one harness and must not grow without bound.
const MAX_LOGS: usize = 100_000;
/// Histogram samples kept per metric, for the same reason.
const MAX_SAMPLES: usize = 65_536;

/// The `T` of the wasmtime `Store`.
pub(crate) struct State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) host: Host,
}

/// One HTTP stream (proxy-wasm HTTP context) as the host sees it.
#[derive(Default)]
pub(crate) struct Stream {
    pub(crate) request_headers: Headers,
    pub(crate) request_trailers: Headers,
    pub(crate) response_headers: Headers,
    pub(crate) response_trailers: Headers,
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_body: Vec<u8>,
    /// The last body callback returned Pause: Envoy buffers, so the next chunk is appended.
    pub(crate) request_buffering: bool,
    pub(crate) response_buffering: bool,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) request_resumed: u32,
    pub(crate) response_resumed: u32,
    pub(crate) reset: bool,
    pub(crate) properties: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) finished: bool,
}

impl Stream {
    /// Empties the stream for reuse, keeping the vectors' capacity.
    pub(crate) fn reset(&mut self) {
        self.request_headers.clear();
        self.request_trailers.clear();
        self.response_headers.clear();
        self.response_trailers.clear();
        self.request_body.clear();
        self.response_body.clear();
        self.request_buffering = false;
        self.response_buffering = false;
        self.local_reply = None;
        self.request_resumed = 0;
        self.response_resumed = 0;
        self.reset = false;
        self.properties.clear();
        self.finished = false;
    }
}

/// The response to an HTTP callout while `proxy_on_http_call_response` runs.
#[derive(Default)]
pub(crate) struct CallResponse {
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
}

pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) kind: MetricKind,
    pub(crate) value: i64,
    pub(crate) samples: Vec<u64>,
}

/// Wall-clock time shared with the WASI clocks, so the module sees one controllable time
/// whichever API it reads.
#[derive(Default)]
pub(crate) struct Clock {
    /// Nanoseconds since the Unix epoch; 0 means "follow the real clock".
    fixed_nanos: AtomicU64,
    /// Total time moved forward with `advance`, added to the WASI monotonic clock.
    skew_nanos: AtomicU64,
}

impl Clock {
    pub(crate) fn now_nanos(&self) -> u64 {
        match self.fixed_nanos.load(Ordering::Relaxed) {
            0 => real_nanos(),
            n => n,
        }
    }
    pub(crate) fn set(&self, t: SystemTime) {
        let n = t.duration_since(UNIX_EPOCH).map_or(1, |d| nanos(d).max(1));
        self.fixed_nanos.store(n, Ordering::Relaxed);
    }
    pub(crate) fn advance(&self, d: Duration) {
        let now = self.now_nanos();
        self.fixed_nanos
            .store(now.saturating_add(nanos(d)).max(1), Ordering::Relaxed);
        self.skew_nanos.fetch_add(nanos(d), Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn real_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, nanos)
}

pub(crate) struct WallClock(pub(crate) Arc<Clock>);

impl wasmtime_wasi::HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.now_nanos())
    }
}

pub(crate) struct MonotonicClock(pub(crate) Arc<Clock>, pub(crate) Instant);

impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        nanos(self.1.elapsed()).saturating_add(self.0.skew_nanos.load(Ordering::Relaxed))
    }
}

/// Everything the proxy-wasm hostcalls read and write.
pub(crate) struct Host {
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<u32, u32>>,
    /// The effective context: set before each call into the module, changed by
    /// `proxy_set_effective_context`.
    pub(crate) current: u32,
    pub(crate) root_id: u32,
    pub(crate) streams: HashMap<u32, Stream>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) logs: Vec<LogEntry>,
    /// Log entries ever recorded (including dropped ones), to find what one call logged.
    pub(crate) logs_total: u64,
    pub(crate) log_level: LogLevel,
    pub(crate) echo_logs: bool,
    pub(crate) clock: Arc<Clock>,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) metric_ids: HashMap<String, u32>,
    pub(crate) shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub(crate) next_cas: u32,
    pub(crate) calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    pub(crate) call_response: Option<CallResponse>,
    pub(crate) tick_period: Option<Duration>,
    pub(crate) done_called: bool,
    /// Reused for every value handed to the module, so hostcalls do not allocate per call.
    pub(crate) scratch: Vec<u8>,
}

impl Host {
    pub(crate) fn new(clock: Arc<Clock>, root_id: u32, echo_logs: bool) -> Self {
        Host {
            memory: None,
            alloc: None,
            current: root_id,
            root_id,
            streams: HashMap::new(),
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            properties: HashMap::new(),
            logs: Vec::new(),
            logs_total: 0,
            log_level: LogLevel::Trace,
            echo_logs,
            clock,
            metrics: Vec::new(),
            metric_ids: HashMap::new(),
            shared: HashMap::new(),
            next_cas: 1,
            calls: Vec::new(),
            next_token: 1,
            call_response: None,
            tick_period: None,
            done_called: false,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        if level < self.log_level {
            return;
        }
        if self.echo_logs {
            eprintln!("[wasm {level:?} ctx {}] {message}", self.current);
        }
        if self.logs.len() >= MAX_LOGS {
            self.logs.drain(..MAX_LOGS / 2);
        }
        self.logs.push(LogEntry {
            level,
            message,
            context_id: self.current,
        });
        self.logs_total += 1;
    }

    /// Log entries recorded since `logs_total` was `mark`.
    pub(crate) fn logs_since(&self, mark: u64) -> &[LogEntry] {
        let new = usize::try_from(self.logs_total.saturating_sub(mark)).unwrap_or(usize::MAX);
        &self.logs[self.logs.len().saturating_sub(new)..]
    }

    pub(crate) fn set_shared(&mut self, key: &[u8], value: &[u8]) {
        let cas = self.bump_cas();
        match self.shared.get_mut(key) {
            Some(slot) => {
                slot.0.clear();
                slot.0.extend_from_slice(value);
                slot.1 = cas;
            }
            None => {
                self.shared.insert(key.to_vec(), (value.to_vec(), cas));
            }
        }
    }

    fn bump_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        // 0 means "no CAS" in the ABI, so never hand it out.
        self.next_cas = self.next_cas.checked_add(1).unwrap_or(1);
        cas
    }

    fn stream(&self) -> Result<&Stream> {
        let id = self.current;
        self.streams.get(&id).ok_or_else(|| {
            format_err!("HTTP stream data used outside an HTTP context (effective context {id})")
        })
    }

    fn stream_mut(&mut self) -> Result<&mut Stream> {
        let id = self.current;
        self.streams.get_mut(&id).ok_or_else(|| {
            format_err!("HTTP stream data used outside an HTTP context (effective context {id})")
        })
    }

    fn call_response(&self) -> Result<&CallResponse> {
        self.call_response.as_ref().ok_or_else(|| {
            format_err!("HTTP call response read outside proxy_on_http_call_response")
        })
    }

    fn call_response_mut(&mut self) -> Result<&mut CallResponse> {
        self.call_response.as_mut().ok_or_else(|| {
            format_err!("HTTP call response used outside proxy_on_http_call_response")
        })
    }

    fn map(&self, map_type: u32) -> Result<&Headers> {
        Ok(match map_type {
            0 => &self.stream()?.request_headers,
            1 => &self.stream()?.request_trailers,
            2 => &self.stream()?.response_headers,
            3 => &self.stream()?.response_trailers,
            6 => &self.call_response()?.headers,
            7 => &self.call_response()?.trailers,
            other => bail!("header map type {other} is not implemented by tessera-harness"),
        })
    }

    fn map_mut(&mut self, map_type: u32) -> Result<&mut Headers> {
        Ok(match map_type {
            0 => &mut self.stream_mut()?.request_headers,
            1 => &mut self.stream_mut()?.request_trailers,
            2 => &mut self.stream_mut()?.response_headers,
            3 => &mut self.stream_mut()?.response_trailers,
            6 => &mut self.call_response_mut()?.headers,
            7 => &mut self.call_response_mut()?.trailers,
            other => bail!("header map type {other} is not implemented by tessera-harness"),
        })
    }

    fn buffer(&self, buffer_type: u32) -> Result<&[u8]> {
        Ok(match buffer_type {
            0 => &self.stream()?.request_body,
            1 => &self.stream()?.response_body,
            4 => &self.call_response()?.body,
            6 => &self.vm_config,
            7 => &self.plugin_config,
            other => bail!("buffer type {other} is not implemented by tessera-harness"),
        })
    }

    fn buffer_mut(&mut self, buffer_type: u32) -> Result<&mut Vec<u8>> {
        Ok(match buffer_type {
            0 => &mut self.stream_mut()?.request_body,
            1 => &mut self.stream_mut()?.response_body,
            4 => &mut self.call_response_mut()?.body,
            6 => &mut self.vm_config,
            7 => &mut self.plugin_config,
            other => bail!("buffer type {other} is not implemented by tessera-harness"),
        })
    }

    fn property(&self, path: &[u8]) -> Option<&[u8]> {
        if let Some(stream) = self.streams.get(&self.current) {
            if let Some((_, v)) = stream.properties.iter().find(|(k, _)| k == path) {
                return Some(v);
            }
        }
        self.properties.get(path).map(Vec::as_slice)
    }

    fn metric_mut(&mut self, id: u32) -> Option<&mut Metric> {
        self.metrics
            .get_mut(usize::try_from(id).ok()?.checked_sub(1)?)
    }
}

/// Envoy's `getHeaderMapValue` returns the first value when a name repeats.
fn find<'a>(map: &'a [(String, String)], key: &str) -> Option<&'a str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

fn memory(caller: &Caller<'_, State>) -> Result<Memory> {
    caller
        .data()
        .host
        .memory
        .ok_or_else(|| format_err!("the module exports no memory"))
}

fn slice(data: &[u8], ptr: u32, len: u32) -> Result<&[u8]> {
    let start = ptr as usize;
    data.get(start..start + len as usize)
        .ok_or_else(|| format_err!("out-of-bounds read of {len} bytes at {ptr:#x}"))
}

fn text(data: &[u8], ptr: u32, len: u32) -> Result<String> {
    Ok(String::from_utf8_lossy(slice(data, ptr, len)?).into_owned())
}

fn put(data: &mut [u8], ptr: u32, bytes: &[u8]) -> Result<()> {
    let start = ptr as usize;
    data.get_mut(start..start + bytes.len())
        .ok_or_else(|| format_err!("out-of-bounds write of {} bytes at {ptr:#x}", bytes.len()))?
        .copy_from_slice(bytes);
    Ok(())
}

fn put_u32(caller: &mut Caller<'_, State>, ptr: u32, value: u32) -> Result<()> {
    let mem = memory(caller)?;
    put(mem.data_mut(caller), ptr, &value.to_le_bytes())
}

fn put_u64(caller: &mut Caller<'_, State>, ptr: u32, value: u64) -> Result<()> {
    let mem = memory(caller)?;
    put(mem.data_mut(caller), ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (it frees it with `Vec::from_raw_parts`), and
/// writes its address and size to the two return pointers. Empty values are returned as a null
/// pointer, like proxy-wasm-cpp-host does.
fn hand_over(
    caller: &mut Caller<'_, State>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> Result<()> {
    let mem = memory(caller)?;
    let len = u32::try_from(bytes.len()).context("value too large for wasm32")?;
    let addr = if bytes.is_empty() {
        0
    } else {
        // Moved out and back rather than cloned: cloning a TypedFunc costs several atomics.
        let alloc = caller.data_mut().host.alloc.take().ok_or_else(|| {
            format_err!("the module exports neither proxy_on_memory_allocate nor malloc")
        })?;
        let result = alloc.call(&mut *caller, len);
        caller.data_mut().host.alloc = Some(alloc);
        let addr = result.context("proxy_on_memory_allocate")?;
        if addr == 0 {
            bail!("proxy_on_memory_allocate({len}) returned null");
        }
        addr
    };
    let data = mem.data_mut(&mut *caller);
    put(data, addr, bytes)?;
    put(data, ptr_ptr, &addr.to_le_bytes())?;
    put(data, size_ptr, &len.to_le_bytes())
}

/// Runs `fill` to produce a value in the reusable scratch buffer, then hands it to the module.
/// `fill` returns the status to report; nothing is handed over unless it is `OK`.
fn respond(
    caller: &mut Caller<'_, State>,
    ptr_ptr: u32,
    size_ptr: u32,
    fill: impl FnOnce(&[u8], &Host, &mut Vec<u8>) -> Result<u32>,
) -> Result<u32> {
    let mut out = std::mem::take(&mut caller.data_mut().host.scratch);
    out.clear();
    let mem = memory(caller)?;
    let status = fill(mem.data(&*caller), &caller.data().host, &mut out)?;
    let result = if status == OK {
        hand_over(caller, &out, ptr_ptr, size_ptr)
    } else {
        Ok(())
    };
    caller.data_mut().host.scratch = out;
    result.map(|()| status)
}

/// Reads module memory while mutating host state.
fn with_host<R>(
    caller: &mut Caller<'_, State>,
    f: impl FnOnce(&[u8], &mut Host) -> Result<R>,
) -> Result<R> {
    let mem = memory(caller)?;
    let (data, state) = mem.data_and_store_mut(caller);
    f(data, &mut state.host)
}

fn log_level(n: u32) -> Result<LogLevel> {
    Ok(match n {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        5 => LogLevel::Critical,
        other => bail!("proxy_log: invalid log level {other}"),
    })
}

fn stream_name(n: u32) -> &'static str {
    match n {
        0 => "HttpRequest",
        1 => "HttpResponse",
        2 => "Downstream",
        3 => "Upstream",
        _ => "unknown",
    }
}

type C<'a> = Caller<'a, State>;

/// Defines every `env.proxy_*` import the harness implements.
pub(crate) fn add_to_linker(linker: &mut Linker<State>) -> Result<()> {
    const ENV: &str = "env";

    // --- logging -------------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: C, level: u32, ptr: u32, len: u32| -> Result<u32> {
            let level = log_level(level)?;
            with_host(&mut c, |data, host| {
                if level >= host.log_level {
                    let message = text(data, ptr, len)?;
                    host.push_log(level, message);
                }
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_log_level",
        |mut c: C, ret: u32| -> Result<u32> {
            let level = c.data().host.log_level as u32;
            put_u32(&mut c, ret, level)?;
            Ok(OK)
        },
    )?;

    // --- time and timers -----------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C, ret: u32| -> Result<u32> {
            let now = c.data().host.clock.now_nanos();
            put_u64(&mut c, ret, now)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C, ms: u32| -> Result<u32> {
            c.data_mut().host.tick_period = (ms > 0).then(|| Duration::from_millis(ms.into()));
            Ok(OK)
        },
    )?;

    // --- buffers -------------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: C,
         buffer_type: u32,
         start: u32,
         max: u32,
         ptr_ptr: u32,
         size_ptr: u32|
         -> Result<u32> {
            respond(&mut c, ptr_ptr, size_ptr, |_, host, out| {
                let buf = host.buffer(buffer_type)?;
                let start = (start as usize).min(buf.len());
                let end = start.saturating_add(max as usize).min(buf.len());
                // proxy-wasm-cpp-host answers NotFound for an empty range; the SDK maps it to None.
                if start == end {
                    return Ok(NOT_FOUND);
                }
                out.extend_from_slice(&buf[start..end]);
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: C, buffer_type: u32, start: u32, size: u32, ptr: u32, len: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let value = slice(data, ptr, len)?;
                let buf = host.buffer_mut(buffer_type)?;
                // Replace [start, start+size) clamped to the buffer: covers Envoy's prepend
                // (0,0), replace-all (0,len) and append (len,_) cases.
                let start = (start as usize).min(buf.len());
                let end = start.saturating_add(size as usize).min(buf.len());
                buf.splice(start..end, value.iter().copied());
                Ok(OK)
            })
        },
    )?;

    // --- header maps ---------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: C, map_type: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            respond(&mut c, ptr_ptr, size_ptr, |_, host, out| {
                wire::serialize_map(out, host.map(map_type)?);
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: C, map_type: u32, ptr: u32, len: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let map = wire::deserialize_map(slice(data, ptr, len)?)
                    .context("proxy_set_header_map_pairs")?;
                *host.map_mut(map_type)? = map;
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: C,
         map_type: u32,
         kptr: u32,
         klen: u32,
         ptr_ptr: u32,
         size_ptr: u32|
         -> Result<u32> {
            respond(&mut c, ptr_ptr, size_ptr, |data, host, out| {
                let key = std::str::from_utf8(slice(data, kptr, klen)?).unwrap_or_default();
                match find(host.map(map_type)?, key) {
                    Some(v) => {
                        out.extend_from_slice(v.as_bytes());
                        Ok(OK)
                    }
                    None => Ok(NOT_FOUND),
                }
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |mut c: C, map_type: u32, kptr: u32, klen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let key = text(data, kptr, klen)?.to_ascii_lowercase();
                let value = text(data, vptr, vlen)?;
                let map = host.map_mut(map_type)?;
                // Envoy's setCopy: the first occurrence takes the value, later ones go.
                match map.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        map[i].1 = value;
                        let mut index = 0;
                        map.retain(|(k, _)| {
                            let keep = index <= i || *k != key;
                            index += 1;
                            keep
                        });
                    }
                    None => map.push((key, value)),
                }
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |mut c: C, map_type: u32, kptr: u32, klen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let key = text(data, kptr, klen)?.to_ascii_lowercase();
                let value = text(data, vptr, vlen)?;
                host.map_mut(map_type)?.push((key, value));
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: C, map_type: u32, kptr: u32, klen: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let key = slice(data, kptr, klen)?;
                host.map_mut(map_type)?
                    .retain(|(k, _)| !k.as_bytes().eq_ignore_ascii_case(key));
                Ok(OK)
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_size",
        |mut c: C, map_type: u32, ret: u32| -> Result<u32> {
            let size: usize = c
                .data()
                .host
                .map(map_type)?
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            put_u32(&mut c, ret, wire::len32(size))?;
            Ok(OK)
        },
    )?;

    // --- properties ----------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: C, pptr: u32, plen: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            respond(&mut c, ptr_ptr, size_ptr, |data, host, out| {
                match host.property(slice(data, pptr, plen)?) {
                    Some(v) => {
                        out.extend_from_slice(v);
                        Ok(OK)
                    }
                    None => Ok(NOT_FOUND),
                }
            })
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: C, pptr: u32, plen: u32, vptr: u32, vlen: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let path = slice(data, pptr, plen)?.to_vec();
                let value = slice(data, vptr, vlen)?.to_vec();
                host.properties.insert(path, value);
                Ok(OK)
            })
        },
    )?;

    // --- shared data ---------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: C,
         kptr: u32,
         klen: u32,
         ptr_ptr: u32,
         size_ptr: u32,
         cas_ptr: u32|
         -> Result<u32> {
            let mut cas = 0;
            let status = respond(&mut c, ptr_ptr, size_ptr, |data, host, out| {
                match host.shared.get(slice(data, kptr, klen)?) {
                    Some((value, c)) => {
                        out.extend_from_slice(value);
                        cas = *c;
                        Ok(OK)
                    }
                    None => Ok(NOT_FOUND),
                }
            })?;
            if status == OK {
                put_u32(&mut c, cas_ptr, cas)?;
            }
            Ok(status)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: C, kptr: u32, klen: u32, vptr: u32, vlen: u32, cas: u32| -> Result<u32> {
            with_host(&mut c, |data, host| {
                let key = slice(data, kptr, klen)?;
                let value = slice(data, vptr, vlen)?;
                // cas 0 writes unconditionally; otherwise it must match the stored version.
                if cas != 0 {
                    if let Some((_, current)) = host.shared.get(key) {
                        if *current != cas {
                            return Ok(CAS_MISMATCH);
                        }
                    }
                }
                host.set_shared(key, value);
                Ok(OK)
            })
        },
    )?;

    // --- metrics -------------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C, kind: u32, nptr: u32, nlen: u32, ret: u32| -> Result<u32> {
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                other => bail!("proxy_define_metric: invalid metric type {other}"),
            };
            let id = with_host(&mut c, |data, host| {
                let name = text(data, nptr, nlen)?;
                // Envoy hands back the same metric when a name is defined again.
                if let Some(id) = host.metric_ids.get(&name) {
                    return Ok(*id);
                }
                host.metrics.push(Metric {
                    name: name.clone(),
                    kind,
                    value: 0,
                    samples: Vec::new(),
                });
                let id = wire::len32(host.metrics.len());
                host.metric_ids.insert(name, id);
                Ok(id)
            })?;
            put_u32(&mut c, ret, id)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |mut c: C, id: u32, offset: i64| -> Result<u32> {
            let Some(m) = c.data_mut().host.metric_mut(id) else {
                return Ok(NOT_FOUND);
            };
            match m.kind {
                MetricKind::Counter if offset < 0 => Ok(BAD_ARGUMENT),
                MetricKind::Counter | MetricKind::Gauge => {
                    m.value = m.value.saturating_add(offset);
                    Ok(OK)
                }
                MetricKind::Histogram => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |mut c: C, id: u32, value: u64| -> Result<u32> {
            let Some(m) = c.data_mut().host.metric_mut(id) else {
                return Ok(NOT_FOUND);
            };
            let v = i64::try_from(value).unwrap_or(i64::MAX);
            match m.kind {
                // Envoy adds a recorded value to a counter and sets a gauge.
                MetricKind::Counter => m.value = m.value.saturating_add(v),
                MetricKind::Gauge => m.value = v,
                MetricKind::Histogram => {
                    m.value = m.value.saturating_add(1);
                    if m.samples.len() < MAX_SAMPLES {
                        m.samples.push(value);
                    }
                }
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C, id: u32, ret: u32| -> Result<u32> {
            let value = match c.data_mut().host.metric_mut(id) {
                None => return Ok(NOT_FOUND),
                Some(m) if m.kind == MetricKind::Histogram => return Ok(BAD_ARGUMENT),
                Some(m) => m.value as u64,
            };
            put_u64(&mut c, ret, value)?;
            Ok(OK)
        },
    )?;

    // --- stream control ------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_continue_stream",
        |mut c: C, stream: u32| -> Result<u32> {
            let s = c
                .data_mut()
                .host
                .stream_mut()
                .context("proxy_continue_stream")?;
            match stream {
                0 => s.request_resumed += 1,
                1 => s.response_resumed += 1,
                other => bail!(
                    "proxy_continue_stream({}) is not implemented by tessera-harness",
                    stream_name(other)
                ),
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_close_stream",
        |mut c: C, stream: u32| -> Result<u32> {
            let s = c
                .data_mut()
                .host
                .stream_mut()
                .context("proxy_close_stream")?;
            match stream {
                0 | 1 => s.reset = true,
                other => bail!(
                    "proxy_close_stream({}) is not implemented by tessera-harness",
                    stream_name(other)
                ),
            }
            Ok(OK)
        },
    )?;
    // ABI 0.1 spellings; harmless to define, and some SDK builds still import them.
    linker.func_wrap(ENV, "proxy_continue_request", |mut c: C| -> Result<u32> {
        c.data_mut()
            .host
            .stream_mut()
            .context("proxy_continue_request")?
            .request_resumed += 1;
        Ok(OK)
    })?;
    linker.func_wrap(ENV, "proxy_continue_response", |mut c: C| -> Result<u32> {
        c.data_mut()
            .host
            .stream_mut()
            .context("proxy_continue_response")?
            .response_resumed += 1;
        Ok(OK)
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: C,
         status: u32,
         dptr: u32,
         dlen: u32,
         bptr: u32,
         blen: u32,
         hptr: u32,
         hlen: u32,
         grpc_status: i32|
         -> Result<u32> {
            with_host(&mut c, |data, host| {
                let reply = LocalReply {
                    status,
                    details: text(data, dptr, dlen)?,
                    body: slice(data, bptr, blen)?.to_vec(),
                    headers: wire::deserialize_map(slice(data, hptr, hlen)?)
                        .context("proxy_send_local_response headers")?,
                    grpc_status,
                };
                host.stream_mut()
                    .context("proxy_send_local_response")?
                    .local_reply = Some(reply);
                Ok(OK)
            })
        },
    )?;

    // --- HTTP callouts -------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: C,
         uptr: u32,
         ulen: u32,
         hptr: u32,
         hlen: u32,
         bptr: u32,
         blen: u32,
         tptr: u32,
         tlen: u32,
         timeout_ms: u32,
         token_ptr: u32|
         -> Result<u32> {
            let token = with_host(&mut c, |data, host| {
                let headers = wire::deserialize_map(slice(data, hptr, hlen)?)
                    .context("proxy_http_call headers")?;
                // Envoy refuses a callout without these pseudo-headers.
                for required in [":method", ":path", ":authority"] {
                    if find(&headers, required).is_none() {
                        return Ok(None);
                    }
                }
                let token = host.next_token;
                host.next_token = host.next_token.wrapping_add(1).max(1);
                host.calls.push(HttpCall {
                    token,
                    context_id: host.current,
                    upstream: text(data, uptr, ulen)?,
                    headers,
                    body: slice(data, bptr, blen)?.to_vec(),
                    trailers: wire::deserialize_map(slice(data, tptr, tlen)?)
                        .context("proxy_http_call trailers")?,
                    timeout: Duration::from_millis(timeout_ms.into()),
                });
                Ok(Some(token))
            })?;
            match token {
                Some(token) => {
                    put_u32(&mut c, token_ptr, token)?;
                    Ok(OK)
                }
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;

    // --- contexts ------------------------------------------------------------------------
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C, id: u32| -> Result<u32> {
            let host = &mut c.data_mut().host;
            if id == host.root_id || host.streams.contains_key(&id) {
                host.current = id;
                Ok(OK)
            } else {
                Ok(BAD_ARGUMENT)
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut c: C| -> Result<u32> {
        c.data_mut().host.done_called = true;
        Ok(OK)
    })?;
    Ok(())
}
