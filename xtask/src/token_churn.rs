//! The token-churn rows of `cargo xtask load` (issue 16 (d)): agent tokens new on every request,
//! or used 10 times each, against Envoy's `jwt_authn` + `rbac` without its token cache (d-b0),
//! Tessera verifying the signatures itself (d-c), and Tessera taking the payload a `jwt_authn` in
//! front of it verified (d-j, `issuers[].jwt_authn_payload`).
//!
//! Tokens are minted before the timing by tests/peers/mint.py (joserfc), each with a `jti` of its
//! own; the load comes from xtask/src/churn.rs, which checks every answer.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::churn::{self, Pace, Pool};
use crate::perf::{Run, RATE_CONNECTIONS, RUN_SECONDS, SATURATION_CONNECTIONS};
use crate::single_use::Setup;
use crate::{free_port, step, Children};

/// The open-loop rate: the "added p99 at 1,000 req/s".
pub(crate) const RATE: u32 = 1_000;
/// EdDSA, as the single-use rows: the cheapest asymmetric signature for every configuration.
const ALG: &str = "EdDSA";
/// Each token is sent this many times (1: every request a new token).
pub(crate) const REUSE: [usize; 2] = [1, 10];
/// A short saturation run sizes the token pool for the timed one.
const PROBE_SECONDS: f64 = 2.0;
const PROBE_REQUESTS: usize = 30_000;

struct Config {
    key: &'static str,
    label: &'static str,
    port: u16,
    admin: u16,
}

/// One configuration at one reuse.
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) reuse: usize,
    pub(crate) fixed: Run,
    pub(crate) saturation: Run,
}

pub(crate) struct Rows {
    pub(crate) rows: Vec<Row>,
    /// Each configuration's counters after the runs.
    pub(crate) evidence: Vec<(&'static str, Vec<String>)>,
}

pub(crate) fn measure(setup: &Setup) -> Result<Rows> {
    step("token churn: (d-b0) jwt_authn + rbac without cache, (d-c) Tessera, (d-j) jwt_authn + Tessera taking its payload");
    let configs = [
        ("d-a", "(d-a) no filter"),
        ("d-b0", "(d-b0) jwt_authn + rbac, no token cache"),
        ("d-c", "(d-c) Tessera verifying"),
        ("d-j", "(d-j) jwt_authn + Tessera, jwt_authn_payload"),
    ]
    .into_iter()
    .map(|(key, label)| {
        Ok(Config {
            key,
            label,
            port: free_port()?,
            admin: free_port()?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    let mut children = Children(Vec::new());
    let mut envoys = Vec::new();
    for c in &configs {
        let bootstrap = setup.dir.join(format!("{}.json", c.key));
        match c.key {
            "d-a" | "d-b0" => (setup.render_example)(
                if c.key == "d-a" {
                    "envoy-examples/load/no-filter.yaml"
                } else {
                    "envoy-examples/load/jwt-rbac.yaml"
                },
                &bootstrap,
                c.port,
                c.admin,
            )?,
            _ => (setup.render)(&bootstrap, c.port, c.admin)?,
        }
        if c.key == "d-j" {
            with_jwt_authn(&bootstrap)?;
        }
        envoys.push((bootstrap, c.key, c.admin));
    }
    setup.start_all(&envoys, &mut children)?;

    let mut mint: Vec<&str> = crate::orders_agent(ALG, "agent-7", "orders:read").to_vec();
    mint.extend(["--ttl", "3600"]);
    let mut pool = Pool::new(setup.python, &mint, "agent tokens (EdDSA)");
    let mut writers = Pool::new(
        setup.python,
        &crate::orders_agent(ALG, "agent-7", "orders:write"),
        "orders:write agent tokens (EdDSA)",
    );

    step("checking that every configuration verifies and decides");
    for c in &configs {
        let ok = crate::http::get(c.port, "/orders/42", Some(&pool.take()?))?.0;
        let none = crate::http::get(c.port, "/orders/42", None)?.0;
        let writer = crate::http::get(c.port, "/orders/42", Some(&writers.take()?))?.0;
        let forged = crate::http::get(c.port, "/orders/42", Some(&tampered(&pool.take()?)?))?;
        println!(
            "{}: token {ok}, no token {none}, scope orders:write only {writer}, a tampered signature {}",
            c.label, forged.0
        );
        let want = if c.key == "d-a" {
            (200, 200, 200, 200)
        } else {
            (200, 401, 403, 401)
        };
        if (ok, none, writer, forged.0) != want {
            bail!(
                "{} answered {ok}/{none}/{writer}/{} {:?}, expected {want:?}",
                c.label,
                forged.0,
                forged.1
            );
        }
    }

    let mut rows = Vec::new();
    for reuse in REUSE {
        step(&format!(
            "warm-up: 2 s at 500 req/s each, each token sent {reuse} time(s)"
        ));
        for c in &configs {
            drive(&mut pool, c, reuse, Pace::at(500), 2.0)?;
        }
        let mut fixed = Vec::new();
        for c in &configs {
            step(&format!(
                "{}: {RATE} req/s for {RUN_SECONDS} s, each token sent {reuse} time(s)",
                c.label
            ));
            let r = drive(&mut pool, c, reuse, Pace::at(RATE), f64::from(RUN_SECONDS))?;
            println!(
                "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, {:.0} req/s, {} non-200",
                r.p50, r.p90, r.p99, r.rps, r.other
            );
            fixed.push(r);
        }
        for (c, fixed) in configs.iter().zip(fixed) {
            step(&format!(
                "{}: saturation, {SATURATION_CONNECTIONS} connections, {RUN_SECONDS} s, each token sent {reuse} time(s)",
                c.label
            ));
            // The probe sizes the pool for the run; a probe that used every token before its
            // time was up says too little, so it runs again with twice as many.
            let mut tokens = PROBE_REQUESTS.div_ceil(reuse);
            let probe = loop {
                pool.ensure(tokens)?;
                match drive_until(&mut pool, c, reuse, Pace::saturation(), PROBE_SECONDS, true)? {
                    Some(probe) => break probe,
                    None => tokens *= 2,
                }
            };
            let needed = (probe.rps * f64::from(RUN_SECONDS) * 1.5) as usize + 1_000;
            pool.ensure(needed.div_ceil(reuse))?;
            let r = drive(
                &mut pool,
                c,
                reuse,
                Pace::saturation(),
                f64::from(RUN_SECONDS),
            )?;
            println!(
                "{:.0} req/s, p50 {:.3} ms, {} non-200",
                r.rps, r.p50, r.other
            );
            rows.push(Row {
                key: c.key,
                label: c.label,
                reuse,
                fixed,
                saturation: r,
            });
        }
    }

    let mut evidence = Vec::new();
    for c in &configs {
        let stats = crate::http::get(
            c.admin,
            "/stats?filter=(jwt_authn|rbac|tessera.decisions)",
            None,
        )?
        .1;
        let lines = stats
            .lines()
            .map(str::trim)
            .filter(|l| {
                [
                    "jwt_authn.allowed",
                    "jwt_authn.denied",
                    "jwt_authn.jwt_cache",
                    "rbac.allowed",
                    "rbac.denied",
                    "tessera.decisions.",
                ]
                .iter()
                .any(|k| l.contains(k))
                    && !l.ends_with(": 0")
            })
            .map(String::from)
            .collect();
        evidence.push((c.label, lines));
    }
    drop(children);
    Ok(Rows { rows, evidence })
}

/// `GET /orders/42` with `token`, on one connection of the driver.
fn get_orders(port: u16, token: &str) -> Vec<u8> {
    format!(
        "GET /orders/42 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// One run against `c`, request `i` carrying unused token `i / reuse`; every answer must be 200.
fn drive(pool: &mut Pool, c: &Config, reuse: usize, pace: Pace, seconds: f64) -> Result<Run> {
    drive_until(pool, c, reuse, pace, seconds, false)?.context("the tokens ran out")
}

/// [`drive`]; with `may_run_out`, a run that used every token is `None` instead of an error.
fn drive_until(
    pool: &mut Pool,
    c: &Config,
    reuse: usize,
    pace: Pace,
    seconds: f64,
    may_run_out: bool,
) -> Result<Option<Run>> {
    let most = match pace {
        Pace::Open { rate, .. } => (f64::from(rate) * seconds) as usize + rate as usize,
        Pace::Closed { .. } => PROBE_REQUESTS,
    };
    pool.ensure(most.div_ceil(reuse))?;
    let outcome = {
        let tokens = pool.unused();
        let requests = |i: usize| tokens.get(i / reuse).map(|t| get_orders(c.port, t));
        churn::run(c.port, pace, seconds, &requests, &|status, _| status == 200)?
    };
    pool.consume(outcome.used.div_ceil(reuse));
    if outcome.ran_out && may_run_out {
        return Ok(None);
    }
    if outcome.ran_out {
        bail!(
            "{}: the tokens ran out ({} minted, {pace:?}, {seconds} s, reuse {reuse})",
            c.label,
            pool.minted()
        );
    }
    Ok(Some(outcome.run))
}

/// `token` with the first byte of its signature changed.
fn tampered(token: &str) -> Result<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (signed, sig) = token.rsplit_once('.').context("not a JWS")?;
    let mut raw = URL_SAFE_NO_PAD.decode(sig)?;
    raw[0] ^= 1;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// The rendered envoy-http.yaml at `bootstrap` with Envoy's `jwt_authn` before Tessera (a provider
/// for the agents issuer with its keys, `payload_in_metadata` the issuer, failed tokens let
/// through so that Tessera is the one refusing them), and the agents issuer in Tessera without
/// keys, taking `jwt_authn`'s payload.
fn with_jwt_authn(bootstrap: &Path) -> Result<()> {
    let mut jwks = None;
    crate::perf::with_plugin(bootstrap, |plugin| {
        if let Some(agents) = plugin["issuers"]
            .as_array_mut()
            .and_then(|a| a.iter_mut().find(|i| i["issuer"] == AGENTS))
        {
            jwks = agents.as_object_mut().and_then(|a| a.remove("jwks"));
            agents["jwt_authn_payload"] = json!(AGENTS);
            agents["jwt_authn_header"] = json!("agents-header");
        }
    })?;
    let jwks = jwks.context("the example's agents issuer has no inline jwks")?;
    let jwt_authn = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"agents": {
                "issuer": AGENTS, "audiences": ["orders-api"], "forward": true,
                "payload_in_metadata": AGENTS, "header_in_metadata": "agents-header",
                "local_jwks": {"inline_string": jwks.to_string()},
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing_or_failed": {}}}],
        },
    });
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(bootstrap)?)?;
    let placed = crate::perf::visit_json(&mut doc, &mut |v| {
        let Some(filters) = v.get_mut("http_filters").and_then(Value::as_array_mut) else {
            return Ok(false);
        };
        let at = filters
            .iter()
            .position(|f| f["name"] == "envoy.filters.http.wasm");
        if let Some(at) = at {
            filters.insert(at, jwt_authn.clone());
        }
        Ok(at.is_some())
    })?;
    if !placed {
        bail!("no Wasm filter in {}", bootstrap.display());
    }
    std::fs::write(bootstrap, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

const AGENTS: &str = "https://agents.demo.tessera.dev";

/// `TESSERA_LOAD_ONLY=d`: `cargo xtask load` measures the token-churn rows only.
pub(crate) fn only() -> bool {
    std::env::var("TESSERA_LOAD_ONLY").as_deref() == Ok("d")
}

/// The rows of a `TESSERA_LOAD_ONLY=d` run: printed and written to `dir`/token-churn.md.
pub(crate) fn write_alone(dir: &Path, rows: &Rows) -> Result<()> {
    let text = section(rows)?;
    let out = dir.join("token-churn.md");
    std::fs::write(&out, &text)?;
    println!("\n{text}");
    for (label, lines) in &rows.evidence {
        println!("{label}\n  {}", lines.join("\n  "));
    }
    println!(
        "TESSERA_LOAD_ONLY=d: wrote {}; docs/PERFORMANCE.md untouched",
        out.display()
    );
    Ok(())
}

/// The "token churn" table of the load section.
pub(crate) fn section(rows: &Rows) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "#### Token churn (issue 16 (d))\n")?;
    writeln!(
        s,
        "Agent tokens ({ALG}, scope `orders:read`, a `jti` of their own, minted before the timing by \
         `tests/peers/mint.py --count`), each sent once (every request a token never seen before) \
         or 10 times, from `xtask/src/churn.rs` as the single-use rows: open loop at {RATE} req/s \
         on {RATE_CONNECTIONS} connections, timed from when each request was due; saturation on \
         {SATURATION_CONNECTIONS} connections; {RUN_SECONDS} s each. Before the timing each \
         configuration answered a token 200, none 401, an `orders:write` token 403 and a tampered \
         signature 401.\n"
    )?;
    writeln!(
        s,
        "- (d-a) `envoy-examples/load/no-filter.yaml`: no authorization filter (the floor).\n\
         - (d-b0) `envoy-examples/load/jwt-rbac.yaml`: `jwt_authn` without its token cache + `rbac`.\n\
         - (d-c) `envoy-examples/envoy-http.yaml`: Tessera verifying every new token (its token \
         cache answers the repeats).\n\
         - (d-j) the same with Envoy's `jwt_authn` in front (the agents issuer's keys, \
         `payload_in_metadata`, `header_in_metadata`, `allow_missing_or_failed`) and the agents issuer in Tessera \
         taking its payload and header (`issuers[].jwt_authn_payload`, `jwt_authn_header`, no keys).\n"
    )?;
    writeln!(
        s,
        "| configuration | each token sent | p50 at {RATE} req/s | p99 | + p99 over (d-a) | 200 / other | saturation req/s | ÷ (d-b0) | p50 at saturation | non-200 at saturation |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let of = |key: &str, reuse: usize| rows.rows.iter().find(|b| b.key == key && b.reuse == reuse);
    for r in &rows.rows {
        let base = of("d-b0", r.reuse).map(|b| b.saturation.rps);
        let floor = of("d-a", r.reuse).map(|b| b.fixed.p99);
        writeln!(
            s,
            "| {} | {}× | {:.3} | {:.3} | {} | {} / {} | {:.0} | {} | {:.3} | {} |",
            r.label,
            r.reuse,
            r.fixed.p50,
            r.fixed.p99,
            floor.map_or("—".into(), |f| format!("{:+.3}", r.fixed.p99 - f)),
            r.fixed.ok,
            r.fixed.other,
            r.saturation.rps,
            base.map_or("—".into(), |b| format!("{:.2}", r.saturation.rps / b)),
            r.saturation.p50,
            r.saturation.other
        )?;
    }
    Ok(s)
}
