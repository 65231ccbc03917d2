//! The proof-of-possession row of `cargo xtask load`: (p) Tessera with a DPoP-bound agent token
//! and a DPoP proof never sent before on every request, as an agent sends them (RFC 9449): the
//! token is answered from the cache after its first request, the proof's signature is verified
//! and its `jti` recorded on every one.
//!
//! The token is minted by tests/peers/mint.py and the proofs by tests/peers/dpop.py (joserfc,
//! not the filter's JOSE code) with tests/keys/holder-p256.pem, right before each run (a proof is
//! accepted for `dpop.max_age_s`, 60 s); the load comes from xtask/src/churn.rs, which checks
//! every answer.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::churn::{self, Pace};
use crate::perf::{Run, RUN_SECONDS, SATURATION_CONNECTIONS};
use crate::single_use::{Row, Setup};
use crate::{free_port, step, Children};

/// As the single-use rows: below what one worker verifying a signature a request sustains.
const RATE: u32 = 300;
const HOLDER_KEY: &str = "tests/keys/holder-p256.pem";
const WARM_UP: (u32, f64) = (500, 2.0);
const PROBE_SECONDS: f64 = 2.0;
const PROBE_PROOFS: usize = 20_000;
pub(crate) const LABEL: &str = "(p) Tessera, DPoP-bound token, a fresh proof a request";

/// Proofs for one URL, minted just before the run that sends them, each sent once.
struct Proofs<'a> {
    python: &'a Path,
    htu: String,
    token: String,
    minted: Vec<String>,
}

impl Proofs<'_> {
    /// Exactly `n` proofs minted now (older ones are dropped: they may be past `max_age_s`).
    fn mint(&mut self, n: usize) -> Result<()> {
        let started = Instant::now();
        let out = Command::new(self.python)
            .args(["tests/peers/dpop.py", "--key-pem", HOLDER_KEY])
            .args(["--count", &n.to_string(), "GET", &self.htu, &self.token])
            .output()
            .context("running tests/peers/dpop.py")?;
        if !out.status.success() {
            bail!("dpop.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.minted = String::from_utf8(out.stdout)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if self.minted.len() != n {
            bail!("dpop.py --count {n} printed {} proofs", self.minted.len());
        }
        println!(
            "minted {n} DPoP proofs (ES256) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn request(&self, port: u16, proof: &str) -> Vec<u8> {
        format!(
            "GET /orders/42 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: DPoP {}\r\ndpop: {proof}\r\n\r\n",
            self.token
        )
        .into_bytes()
    }

    /// One run with `n` fresh proofs, one a request; every answer must be 200.
    fn drive(&mut self, port: u16, n: usize, pace: Pace, seconds: f64) -> Result<Run> {
        self.mint(n)?;
        let minted = &self.minted;
        let requests = |i: usize| minted.get(i).map(|p| self.request(port, p));
        let outcome = churn::run(port, pace, seconds, &requests, &|status, _| status == 200)?;
        if outcome.ran_out {
            bail!(
                "{LABEL}: the proofs ran out ({n} minted, {pace:?}, {seconds} s): each is sent \
                 once, so the run stops here; the numbers would be a shorter run's"
            );
        }
        Ok(outcome.run)
    }
}

pub(crate) fn measure(setup: &Setup) -> Result<Row> {
    step("DPoP: (p) a DPoP-bound token and a fresh proof on every request");
    let mut children = Children(Vec::new());
    let (port, admin) = (free_port()?, free_port()?);
    let bootstrap = setup.dir.join("p.json");
    (setup.render)(&bootstrap, port, admin)?;
    crate::perf::with_plugin(&bootstrap, |plugin| plugin["dpop"] = json!({}))?;
    children
        .0
        .push((setup.start_envoy)(&bootstrap, "p", setup.first_id)?);
    crate::http::wait_ready(
        admin,
        &mut children,
        Duration::from_secs(60),
        "target/load/*.log",
    )?;

    let jkt = crate::peer_output(
        setup.python,
        "tests/peers/dpop.py",
        &["--key-pem", HOLDER_KEY, "--jkt"],
    )?;
    let cnf = format!("cnf={{\"jkt\":\"{jkt}\"}}");
    let token = crate::peer_output(
        setup.python,
        "tests/peers/mint.py",
        &[
            &crate::orders_agent("ES256", "agent-7", "orders:read")[..],
            &["--ttl", "3600", "--claim", &cnf],
        ]
        .concat(),
    )?;
    let mut proofs = Proofs {
        python: setup.python,
        htu: format!("http://127.0.0.1:{port}/orders/42"),
        token,
        minted: Vec::new(),
    };

    step("checking that a proof is taken once, then refused");
    proofs.mint(1)?;
    let proof = proofs.minted.first().cloned().context("no proof minted")?;
    let auth = format!("DPoP {}", proofs.token);
    let send = |proof: &str| {
        crate::http::get_with(
            port,
            "/orders/42",
            &[("authorization", auth.as_str()), ("dpop", proof)],
        )
    };
    let first = send(&proof)?;
    let again = send(&proof)?;
    println!(
        "{LABEL}: a fresh proof {}, the same proof again {}",
        first.0, again.0
    );
    if first.0 != 200 || again.0 != 401 || !again.1.contains("already used") {
        bail!(
            "a fresh DPoP proof got {}, the same again {} {:?}; expected 200, then 401 \"DPoP proof \
             already used\"",
            first.0,
            again.0,
            again.1
        );
    }

    step(&format!(
        "warm-up: {} s at {} req/s, fresh proofs",
        WARM_UP.1, WARM_UP.0
    ));
    let (open, closed) = (Pace::at, Pace::saturation());
    let n = |rate: u32, seconds: f64| (f64::from(rate) * seconds) as usize + rate as usize;
    proofs.drive(port, n(WARM_UP.0, WARM_UP.1), open(WARM_UP.0), WARM_UP.1)?;

    step(&format!("{LABEL}: {RATE} req/s for {RUN_SECONDS} s"));
    let fixed = proofs.drive(
        port,
        n(RATE, f64::from(RUN_SECONDS)),
        open(RATE),
        f64::from(RUN_SECONDS),
    )?;
    println!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, {:.0} req/s, {} non-200",
        fixed.p50, fixed.p90, fixed.p99, fixed.rps, fixed.other
    );

    step(&format!(
        "{LABEL}: saturation, {SATURATION_CONNECTIONS} connections, {RUN_SECONDS} s"
    ));
    let probe = proofs.drive(port, PROBE_PROOFS, closed, PROBE_SECONDS)?;
    let saturation = proofs.drive(
        port,
        (probe.rps * f64::from(RUN_SECONDS) * 1.5) as usize + 1_000,
        closed,
        f64::from(RUN_SECONDS),
    )?;
    println!(
        "{:.0} req/s, p50 {:.3} ms, {} non-200",
        saturation.rps, saturation.p50, saturation.other
    );

    let stats = crate::http::get(admin, "/stats?filter=tessera.decisions", None)?.1;
    let evidence = stats
        .lines()
        .map(str::trim)
        .filter(|l| !l.ends_with(": 0") && !l.contains("_per_"))
        .map(String::from)
        .collect();
    drop(children);
    Ok(Row {
        label: LABEL,
        fixed,
        saturation,
        evidence,
    })
}

/// `TESSERA_LOAD_ONLY=p`: `cargo xtask load` measures the DPoP row only, and writes it to
/// target/load/dpop.md, not to the report (which would lose the other rows).
pub(crate) fn only() -> bool {
    std::env::var("TESSERA_LOAD_ONLY").as_deref() == Ok("p")
}

/// The row of a `TESSERA_LOAD_ONLY=p` run: printed and written to `dir`/dpop.md.
pub(crate) fn write_alone(dir: &Path, row: &Row) -> Result<()> {
    let text = section(row, None, None)?;
    let out = dir.join("dpop.md");
    std::fs::write(&out, &text)?;
    println!("\n{text}\n{}\n  {}", row.label, row.evidence.join("\n  "));
    println!(
        "TESSERA_LOAD_ONLY=p: wrote {}; docs/PERFORMANCE.md untouched",
        out.display()
    );
    Ok(())
}

/// The DPoP paragraph and table of the load section; `cached` is the saturation of row (c) (the
/// same example, a cached bearer token, no proof), `single_use` that of row (s) (a signature
/// verified and a `jti` recorded a request), when measured.
pub(crate) fn section(row: &Row, cached: Option<f64>, single_use: Option<f64>) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "#### DPoP proofs\n")?;
    writeln!(
        s,
        "{LABEL}: `envoy-examples/envoy-http.yaml` with `dpop: {{}}`, one ES256 agent token \
         bound to `tests/keys/holder-p256.pem` (`cnf.jkt`, minted by `tests/peers/mint.py`), and \
         on every request `Authorization: DPoP` and a proof never sent before (ES256, \
         `tests/peers/dpop.py`, minted right before each run). The token is answered from the \
         cache after its first request; each proof is parsed, its thumbprint, `htm`, `htu`, \
         `iat` and `ath` checked, its signature verified and its `jti` recorded. Load from \
         `xtask/src/churn.rs` as the single-use rows; before the timing a proof was forwarded \
         once and refused the second time (401 \"DPoP proof already used\").\n"
    )?;
    writeln!(
        s,
        "| configuration | p50 at {RATE} req/s | p99 | 200 / other | saturation req/s | p50 at saturation | non-200 at saturation |"
    )?;
    writeln!(s, "|---|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        s,
        "| {} | {:.3} | {:.3} | {} / {} | {:.0} | {:.3} | {} |\n",
        row.label,
        row.fixed.p50,
        row.fixed.p99,
        row.fixed.ok,
        row.fixed.other,
        row.saturation.rps,
        row.saturation.p50,
        row.saturation.other
    )?;
    if let Some(c) = cached {
        writeln!(
            s,
            "Saturation against (c) (the same example, a cached bearer token, no proof): {c:.0} → \
             {:.0} req/s.\n",
            row.saturation.rps
        )?;
    }
    if let Some(u) = single_use {
        writeln!(
            s,
            "Against (s) (a single-use EdDSA token: a signature verified and a `jti` recorded a \
             request): {u:.0} → {:.0} req/s.\n",
            row.saturation.rps
        )?;
    }
    Ok(s)
}
