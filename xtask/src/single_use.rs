//! The single-use rows of `cargo xtask load`: Tessera when every request carries a token never
//! used before, its redemption recorded in proxy shared data (s) or in one etcd member (s-etcd),
//! and how many create-if-absent transactions that etcd member takes straight.
//!
//! Tokens are minted before the timing by tests/peers/mint.py (joserfc, not the filter's JOSE
//! library) with the claims tests/e2e/test_fleet.py `single_use()` sends; the load comes from
//! xtask/src/churn.rs, which checks every answer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::churn::{self, Pace, Pool};
use crate::perf::{Run, RATE_CONNECTIONS, RUN_SECONDS, SATURATION_CONNECTIONS};
use crate::{free_port, step, Children};

/// The fixed rate of the open-loop rows: below what one worker verifying a fresh signature per
/// request sustains on the 2-core machine (about 800 req/s measured), so that the latencies are
/// those of a request, not of a queue.
const RATE: u32 = 300;
/// A single-use token is never answered from the token cache, so every request verifies its
/// signature: EdDSA, the cheapest asymmetric one (see the bench section).
const ALG: &str = "EdDSA";
const WARM_UP: (u32, f64) = (500, 2.0);
/// A short saturation run before the timed one, which sizes the token pool for it, and the
/// tokens it may use (10,000 req/s: far more than a worker verifying a signature a request).
const PROBE_SECONDS: f64 = 2.0;
const PROBE_TOKENS: usize = 20_000;
/// Straight transactions to etcd.
const ETCD_SECONDS: f64 = 5.0;

/// What `cargo xtask load` lends the single-use rows.
pub(crate) struct Setup<'a> {
    /// target/load: bootstraps, logs.
    pub(crate) dir: &'a Path,
    pub(crate) python: &'a Path,
    /// Renders envoy-examples/envoy-http.yaml to (bootstrap, listener port, admin port).
    pub(crate) render: &'a dyn Fn(&Path, u16, u16) -> Result<()>,
    /// Renders another example: (example, bootstrap, listener port, admin port).
    pub(crate) render_example: &'a dyn Fn(&str, &Path, u16, u16) -> Result<()>,
    /// Starts an Envoy as the other rows' (bootstrap, name of its log, base-id offset).
    pub(crate) start_envoy: &'a dyn Fn(&Path, &str, u32) -> Result<Child>,
    /// The first base-id offset free for these Envoys.
    pub(crate) first_id: u32,
}

impl Setup<'_> {
    /// Starts one Envoy per (bootstrap, name, admin port), base ids from `first_id` on, and
    /// waits until every one is ready.
    pub(crate) fn start_all(
        &self,
        envoys: &[(PathBuf, &str, u16)],
        children: &mut Children,
    ) -> Result<()> {
        for (i, (bootstrap, name, _)) in envoys.iter().enumerate() {
            children.0.push((self.start_envoy)(
                bootstrap,
                name,
                self.first_id + i as u32,
            )?);
        }
        for (_, _, admin) in envoys {
            crate::http::wait_ready(
                *admin,
                children,
                Duration::from_secs(60),
                "target/load/*.log",
            )?;
        }
        Ok(())
    }
}

/// One configuration's numbers.
pub(crate) struct Row {
    pub(crate) label: &'static str,
    pub(crate) fixed: Run,
    pub(crate) saturation: Run,
    /// The filter's counters (and etcd cluster's) after the run.
    pub(crate) evidence: Vec<String>,
}

/// The single-use rows: (s), then (s-etcd) when there was an etcd.
pub(crate) struct Rows {
    pub(crate) rows: Vec<Row>,
    /// etcd's version and the straight transactions; `Err`: why (s-etcd) was not run.
    pub(crate) etcd: std::result::Result<(String, Run), String>,
}

struct Config {
    key: &'static str,
    label: &'static str,
    port: u16,
    admin: u16,
}

pub(crate) fn measure(setup: &Setup) -> Result<Rows> {
    step("single-use tokens: (s) shared data, (s-etcd) one etcd member");
    let mut children = Children(Vec::new());
    let etcd = match crate::etcd() {
        Ok(bin) => Some(EtcdMember::start(&bin, setup.dir)?),
        Err(e) if !crate::in_ci() => {
            println!("SKIPPED (s-etcd): {e:#} (with CI=true this is a failure)");
            None
        }
        Err(e) => return Err(e),
    };
    let prefix = format!(
        "tessera-load-{}-{}/",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let mut configs = vec![Config {
        key: "s",
        label: "(s) Tessera, single-use tokens, shared data",
        port: free_port()?,
        admin: free_port()?,
    }];
    if etcd.is_some() {
        configs.push(Config {
            key: "s-etcd",
            label: "(s-etcd) the same with store.etcd",
            port: free_port()?,
            admin: free_port()?,
        });
    }
    let mut envoys = Vec::new();
    for c in &configs {
        let bootstrap = setup.dir.join(format!("{}.json", c.key));
        (setup.render)(&bootstrap, c.port, c.admin)?;
        if let (Some(member), "s-etcd") = (&etcd, c.key) {
            // As tests/e2e/test_fleet.py STORE, with this run's own prefix.
            crate::perf::with_cluster_and_plugin(&bootstrap, "etcd", member.port, |plugin| {
                plugin["store"] = json!({"etcd": {"cluster": "etcd", "authority": "etcd",
                    "prefix": prefix, "timeout_ms": 500, "lease_bucket_s": 60}});
            })?;
        }
        envoys.push((bootstrap, c.key, c.admin));
    }
    setup.start_all(&envoys, &mut children)?;

    // tests/e2e/test_fleet.py single_use(): agent("orders:read", single_use=True, jti=…), an
    // hour long as the other rows' tokens (the run takes minutes).
    let mut mint: Vec<&str> = crate::orders_agent(ALG, "agent-7", "orders:read").to_vec();
    mint.extend(["--claim", "single_use=true", "--ttl", "3600"]);
    let mut pool = Pool::new(setup.python, &mint, "single-use tokens (EdDSA)");
    // One mint for the checks, warm-ups and fixed-rate runs; saturation tops it up.
    pool.ensure(configs.len() * (RATE * RUN_SECONDS + RATE) as usize)?;

    step("checking that a single-use token is forwarded once, then refused");
    for c in &configs {
        let before = etcd.as_ref().map(|m| m.count(&prefix)).transpose()?;
        let token = pool.take()?;
        let first = crate::http::get(c.port, "/orders/42", Some(&token))?;
        let again = crate::http::get(c.port, "/orders/42", Some(&token))?;
        println!(
            "{}: a fresh token {}, the same token again {}",
            c.label, first.0, again.0
        );
        if first.0 != 200 || again.0 != 401 || !again.1.contains("token already used") {
            bail!(
                "{}: a fresh single-use token got {}, the same again {} {:?}; expected 200, then 401 \
                 \"token already used\"",
                c.label,
                first.0,
                again.0,
                again.1
            );
        }
        // The redemption is where the row says: in etcd for (s-etcd) only.
        if let (Some(member), Some(before)) = (&etcd, before) {
            let after = member.count(&prefix)?;
            if (after > before) != (c.key == "s-etcd") {
                bail!(
                    "{}: etcd held {before} keys under {prefix} before the token's redemption, \
                     {after} after",
                    c.label
                );
            }
        }
    }

    step(&format!(
        "warm-up: {} s at {} req/s each, single-use tokens",
        WARM_UP.1, WARM_UP.0
    ));
    let (open, closed) = (Pace::at, Pace::saturation());
    for c in &configs {
        drive(&mut pool, c, open(WARM_UP.0), WARM_UP.1)?;
    }

    let mut fixed = Vec::new();
    for c in &configs {
        step(&format!(
            "{}: {RATE} req/s for {RUN_SECONDS} s, every token new",
            c.label
        ));
        pool.ensure((RATE * RUN_SECONDS + RATE) as usize)?;
        let r = drive(&mut pool, c, open(RATE), f64::from(RUN_SECONDS))?;
        println!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, {:.0} req/s, {} non-200",
            r.p50, r.p90, r.p99, r.rps, r.other
        );
        fixed.push(r);
    }
    let mut saturation = Vec::new();
    for c in &configs {
        step(&format!(
            "{}: saturation, {SATURATION_CONNECTIONS} connections, {RUN_SECONDS} s, every token new",
            c.label
        ));
        pool.ensure(PROBE_TOKENS)?;
        let probe = drive(&mut pool, c, closed, PROBE_SECONDS)?;
        pool.ensure((probe.rps * f64::from(RUN_SECONDS) * 1.5) as usize + 1_000)?;
        let r = drive(&mut pool, c, closed, f64::from(RUN_SECONDS))?;
        println!(
            "{:.0} req/s, p50 {:.3} ms, {} non-200",
            r.rps, r.p50, r.other
        );
        saturation.push(r);
    }

    let etcd_numbers = match &etcd {
        Some(member) => {
            step(&format!(
                "etcd straight: create-if-absent txns to /v3/kv/txn, {SATURATION_CONNECTIONS} connections, {ETCD_SECONDS} s"
            ));
            let r = member.txns(&format!("{prefix}straight/"), closed, ETCD_SECONDS)?;
            println!(
                "{:.0} txn/s, p50 {:.3} ms, p99 {:.3} ms, {} not created",
                r.rps, r.p50, r.p99, r.other
            );
            Ok((member.version.clone(), r))
        }
        None => Err("no etcd found (cargo xtask etcd)".to_string()),
    };

    let mut rows = Vec::new();
    for ((c, fixed), saturation) in configs.iter().zip(fixed).zip(saturation) {
        let stats = crate::http::get(
            c.admin,
            "/stats?filter=(tessera.decisions|cluster.etcd.upstream_rq_)",
            None,
        )?
        .1;
        let evidence = stats
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.ends_with(": 0") && !l.contains("upstream_rq_time") && !l.contains("_per_")
            })
            .map(String::from)
            .collect();
        rows.push(Row {
            label: c.label,
            fixed,
            saturation,
            evidence,
        });
    }
    drop(children);
    Ok(Rows {
        rows,
        etcd: etcd_numbers,
    })
}

/// `TESSERA_LOAD_ONLY=s`: `cargo xtask load` measures the single-use rows only, and writes them
/// to target/load/single-use.md, not to the report (which would lose the other rows).
pub(crate) fn only() -> Result<bool> {
    match std::env::var("TESSERA_LOAD_ONLY").as_deref() {
        Err(_) | Ok("") => Ok(false),
        Ok("s") => Ok(true),
        Ok("p" | "d" | "f") => Ok(false),
        Ok(other) => {
            bail!(
                "TESSERA_LOAD_ONLY={other:?}: the values are `s` (the single-use rows), `p` \
                 (the DPoP row), `d` (the token-churn rows) and `f` (the MCP rows)"
            )
        }
    }
}

/// The rows of a `TESSERA_LOAD_ONLY=s` run: printed and written to `dir`/single-use.md.
pub(crate) fn write_alone(dir: &Path, rows: &Rows) -> Result<()> {
    let text = section(rows)?;
    let out = dir.join("single-use.md");
    std::fs::write(&out, &text)?;
    println!("\n{text}");
    for r in &rows.rows {
        println!("{}\n  {}", r.label, r.evidence.join("\n  "));
    }
    println!(
        "TESSERA_LOAD_ONLY=s: wrote {}; docs/PERFORMANCE.md untouched",
        out.display()
    );
    Ok(())
}

/// `GET /orders/42` with `token`, on one connection of the driver.
fn get_orders(port: u16, token: &str) -> Vec<u8> {
    format!(
        "GET /orders/42 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// One run against `c` with the pool's unused tokens, one a request; every answer must be 200.
fn drive(pool: &mut Pool, c: &Config, pace: Pace, seconds: f64) -> Result<Run> {
    let outcome = {
        let tokens = pool.unused();
        let requests = |i: usize| tokens.get(i).map(|t| get_orders(c.port, t));
        churn::run(c.port, pace, seconds, &requests, &|status, _| status == 200)?
    };
    pool.consume(outcome.used);
    if outcome.ran_out {
        bail!(
            "{}: the single-use tokens ran out ({} minted, {:?}, {seconds} s): each token is sent \
             once, so the run stops here; the numbers would be a shorter run's",
            c.label,
            pool.minted(),
            pace
        );
    }
    Ok(outcome.run)
}

/// One etcd member on 127.0.0.1 (free client and peer ports, data in a temporary directory),
/// started as tests/e2e/conftest.py `Etcd` does; stopped and its data removed when dropped.
struct EtcdMember {
    child: Child,
    port: u16,
    data: PathBuf,
    version: String,
}

impl EtcdMember {
    fn start(bin: &Path, dir: &Path) -> Result<EtcdMember> {
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("etcd Version:"))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let (port, peer_port) = (free_port()?, free_port()?);
        let name = format!("tessera-load-{}", std::process::id());
        let data = std::env::temp_dir().join(format!("{name}.etcd"));
        let _ = std::fs::remove_dir_all(&data);
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &name])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // etcd reads ETCD_* variables as flags: only the flags above count.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut member = EtcdMember {
            child,
            port,
            data,
            version,
        };
        // A single member elects itself in about a second; 30 s is a safety net.
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.count("tessera-load-ready").is_err() {
            if let Ok(Some(status)) = member.child.try_wait() {
                bail!("etcd exited ({status}); see target/load/etcd.log");
            }
            if Instant::now() > deadline {
                bail!("etcd not answering on {client} after 30 s; see target/load/etcd.log");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("etcd {} on {client}", member.version);
        Ok(member)
    }

    /// `POST /v3/<path>` of etcd's JSON gateway; fails unless 2xx.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let mut resp = ureq::post(format!("http://127.0.0.1:{}/v3/{path}", self.port))
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .header("content-type", "application/json")
            .send(body.to_string())?;
        Ok(serde_json::from_str(&resp.body_mut().read_to_string()?)?)
    }

    /// How many keys start with `prefix`.
    fn count(&self, prefix: &str) -> Result<u64> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let r = self.post(
            "kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end), "count_only": true}),
        )?;
        // proto3 JSON: an int64 is a string, and left out when 0.
        Ok(r["count"].as_str().unwrap_or("0").parse()?)
    }

    /// Create-if-absent transactions (tests/e2e/conftest.py `Etcd.create`), each on a new key
    /// under `prefix`; only a transaction that created its key counts as done.
    fn txns(&self, prefix: &str, pace: Pace, seconds: f64) -> Result<Run> {
        let port = self.port;
        let requests = |i: usize| {
            let key = b64(format!("{prefix}{i}").as_bytes());
            let body = json!({
                "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": key, "value": b64(b"used")}}],
            })
            .to_string();
            Some(
                format!(
                    "POST /v3/kv/txn HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        };
        let created = |status: u16, body: &[u8]| {
            status == 200
                && serde_json::from_slice::<Value>(body)
                    .is_ok_and(|v| v["succeeded"].as_bool() == Some(true))
        };
        Ok(churn::run(port, pace, seconds, &requests, &created)?.run)
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Standard base64 with padding, as etcd's JSON gateway takes keys and values.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The "single-use tokens" table of the load section, and what the rows measured.
pub(crate) fn section(rows: &Rows) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "#### Single-use tokens\n")?;
    writeln!(
        s,
        "Every request carries a token never sent before: {ALG} agent tokens with the claims \
         `tests/e2e/test_fleet.py` `single_use()` sends (scope `orders:read`, `single_use: true`, \
         a `jti` of its own), minted before the timing by `tests/peers/mint.py --count`. A \
         single-use token is never answered from the token cache, so each request verifies a \
         signature and records the token's redemption. oha sends one set of headers, so the load \
         comes from `xtask/src/churn.rs`: open loop at {RATE} req/s on {RATE_CONNECTIONS} \
         connections, each request timed from when it was due (as `--latency-correction`); \
         saturation on {SATURATION_CONNECTIONS} connections; {RUN_SECONDS} s each. Every answer \
         is checked (200 counted, anything else is \"other\"); before the timing, each \
         configuration forwarded a fresh token and answered its second use with 401 \"token \
         already used\".\n"
    )?;
    writeln!(
        s,
        "- (s) `envoy-examples/envoy-http.yaml` (the issuer's `single_use_claim`): redemptions in \
         proxy shared data only."
    )?;
    match &rows.etcd {
        Ok((version, _)) => writeln!(
            s,
            "- (s-etcd) the same with `store.etcd` (a key prefix of the run's own, `timeout_ms` \
             500), through a STATIC cluster to one etcd {version} member on 127.0.0.1 (data in a \
             temporary directory): the redemption is a create-if-absent transaction, checked to \
             land in etcd.\n"
        )?,
        Err(why) => writeln!(s, "- (s-etcd) not run: {why}.\n")?,
    }
    writeln!(
        s,
        "| configuration | p50 at {RATE} req/s | p99 | + p50 over (s) | + p99 over (s) | 200 / other | saturation req/s | p50 at saturation | non-200 at saturation |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let base = rows
        .rows
        .first()
        .map(|r| r.fixed.clone())
        .unwrap_or_default();
    for (i, r) in rows.rows.iter().enumerate() {
        let added = |v: f64| {
            if i == 0 {
                "—".to_string()
            } else {
                format!("{v:+.3}")
            }
        };
        writeln!(
            s,
            "| {} | {:.3} | {:.3} | {} | {} | {} / {} | {:.0} | {:.3} | {} |",
            r.label,
            r.fixed.p50,
            r.fixed.p99,
            added(r.fixed.p50 - base.p50),
            added(r.fixed.p99 - base.p99),
            r.fixed.ok,
            r.fixed.other,
            r.saturation.rps,
            r.saturation.p50,
            r.saturation.other
        )?;
    }
    if let Ok((_, txn)) = &rows.etcd {
        writeln!(
            s,
            "| etcd alone: create-if-absent txns to `/v3/kv/txn`, {SATURATION_CONNECTIONS} \
             connections, {ETCD_SECONDS} s | — | — | — | — | — | {:.0} txn/s | {:.3} | {} |",
            txn.rps, txn.p50, txn.other
        )?;
    }
    writeln!(s)?;
    if let (Ok((_, txn)), Some(through)) = (&rows.etcd, rows.rows.get(1)) {
        writeln!(
            s,
            "Single-use redemptions one etcd member sustains here: {:.0} req/s through Envoy \
             ((s-etcd) at saturation, one Envoy worker); {:.0} transactions a second straight to \
             its JSON gateway (`create_revision == 0` then put, a new key each, as \
             `tests/e2e/conftest.py` `Etcd.create`; p99 {:.3} ms; \"non-200\" counts those \
             that did not create their key).\n",
            through.saturation.rps, txn.rps, txn.p99
        )?;
    }
    for r in rows
        .rows
        .iter()
        .filter(|r| r.saturation.rps < f64::from(RATE))
    {
        writeln!(
            s,
            "{} saturates at {:.0} req/s, below {RATE}: at {RATE} req/s its requests queue, and \
             its latencies there (and what it adds) are mostly that wait.\n",
            r.label.split(' ').next().unwrap_or(r.label),
            r.saturation.rps
        )?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p50: f64, p99: f64, rps: f64) -> Run {
        Run {
            rps,
            p50,
            p90: p99,
            p99,
            ok: 10_000,
            other: 0,
        }
    }

    #[test]
    fn the_table_shows_what_etcd_adds_and_what_it_sustains() {
        let row = |label, fixed, saturation| Row {
            label,
            fixed,
            saturation,
            evidence: Vec::new(),
        };
        let rows = Rows {
            rows: vec![
                row(
                    "(s) shared",
                    run(0.5, 1.0, 1_000.0),
                    run(20.0, 40.0, 1_500.0),
                ),
                row(
                    "(s-etcd) etcd",
                    run(1.5, 4.0, 1_000.0),
                    run(30.0, 60.0, 250.0),
                ),
            ],
            etcd: Ok(("3.4.23".into(), run(6.0, 24.0, 4_398.0))),
        };
        let text = match section(&rows) {
            Ok(t) => t,
            Err(e) => unreachable!("{e}"),
        };
        assert!(
            text.contains("| (s) shared | 0.500 | 1.000 | — | — | 10000 / 0 | 1500 | 20.000 | 0 |")
        );
        assert!(text.contains(
            "| (s-etcd) etcd | 1.500 | 4.000 | +1.000 | +3.000 | 10000 / 0 | 250 | 30.000 | 0 |"
        ));
        assert!(text.contains("| 4398 txn/s | 6.000 | 0 |"));
        assert!(text.contains("250 req/s through Envoy"));
        assert!(text.contains("(s-etcd) saturates at 250 req/s, below 300"));
        assert!(!text.contains("(s) saturates"));
    }
}
