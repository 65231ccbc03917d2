//! `cargo xtask demo`: the example gateways on localhost with demo upstreams, and what to `curl`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{build_wasm, free_port, http, render, venv, Children};

pub(crate) fn demo(root: &Path) -> Result<()> {
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
            // The examples name files relative to the repository (envoy-mtls.yaml's PKI).
            .current_dir(root)
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
    // The mutual-TLS gateway: envoy-examples/envoy-mtls.yaml, whose listener wants a client
    // certificate from a throwaway CA (tests/peers/pki.py, in target/demo/pki/ where the example
    // looks), in front of the same upstream.
    let pki = Command::new(&python)
        .arg("tests/peers/pki.py")
        .arg(dir.join("pki"))
        .output()
        .context("making the demo PKI")?;
    if !pki.status.success() {
        bail!(
            "tests/peers/pki.py failed: {}",
            String::from_utf8_lossy(&pki.stderr)
        );
    }
    let thumbprints: serde_json::Value =
        serde_json::from_slice(&pki.stdout).context("tests/peers/pki.py output")?;
    let planner_x5t = thumbprints["planner"]
        .as_str()
        .context("tests/peers/pki.py made no planner certificate")?
        .to_string();
    let (mtls_listener, mtls_admin) = (10002, free_port()?);
    let mtls_json = dir.join("envoy-mtls.json");
    example(
        "envoy-examples/envoy-mtls.yaml",
        &mtls_json,
        [mtls_listener, upstream, mtls_admin],
    )?;
    children.0.push(envoy(&mtls_json, std::process::id() + 2)?);

    println!(
        "waiting for Envoy: V8 compiles the 4-5 MB module first (10-60 s on a busy 2-core machine)"
    );
    for port in [admin, mcp_admin, mtls_admin] {
        http::wait_ready(
            port,
            &mut children,
            Duration::from_secs(120),
            "its output above",
        )?;
    }

    let mint = |args: &[&str]| crate::peer_output(&python, "tests/peers/mint.py", args);
    // An agent token of the demo agents issuer for the orders API, with more claims if given.
    let agent = |alg: &str, sub: &str, scope: &str, claims: &[&str]| -> Result<String> {
        let mut args = crate::orders_agent(alg, sub, scope).to_vec();
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
    let cnf = format!("cnf={{\"x5t#S256\":\"{planner_x5t}\"}}");
    let cert_bound = agent("ES256", "agent-7", "orders:read", &[&cnf])?;
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
\n"
    );
    let mtls = format!("https://127.0.0.1:{mtls_listener}");
    let pki = "target/demo/pki";
    let ca = format!("--cacert {pki}/ca.pem");
    println!(
        "Mutual TLS (envoy-examples/envoy-mtls.yaml) on {mtls}, admin on 127.0.0.1:{mtls_admin}: \
         the listener wants a client certificate from the demo CA in {pki}/ (planner.pem carries \
         the SPIFFE ID spiffe://example.org/ns/agents/sa/planner), and its issuer requires tokens \
         bound to a certificate (RFC 8705) or a DPoP key (RFC 9449).\n\
         BOUND={cert_bound}   # cnf x5t#S256 of {pki}/planner.pem\n\n\
         # allow: the bound token over a connection with its certificate\n\
         curl -i {mtls}/orders/42 {ca} --cert {pki}/planner.pem --key {pki}/planner.key.pem -H \"authorization: Bearer $BOUND\"\n\
         # 401: the same token from another workload's certificate\n\
         curl -i {mtls}/orders/42 {ca} --cert {pki}/executor.pem --key {pki}/executor.key.pem -H \"authorization: Bearer $BOUND\"\n\
         # 401: a bearer token (not bound) is refused here: proof of possession required\n\
         curl -i {mtls}/orders/42 {ca} --cert {pki}/planner.pem --key {pki}/planner.key.pem -H 'authorization: Bearer {reader}'\n\
         # no client certificate: the TLS handshake fails, nothing reaches the filter\n\
         curl -i {mtls}/orders/42 {ca}\n\n\
         Ctrl-C stops the three Envoys, the upstream, the MCP server and the approval page."
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
