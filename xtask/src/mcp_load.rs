//! The MCP rows of `cargo xtask load` (issue 16 (f)): one agent's `tools/call` of `read_file`
//! through Tessera's MCP route (envoy-examples/envoy-mcp.yaml, policies/mcp.cedar) against Envoy's
//! native MCP gateway for the same rule (envoy-examples/load/mcp-rbac.yaml: `jwt_authn`, the MCP
//! filter, `rbac` on the tool name, the path argument and the token's scope), and against the same
//! POST through no filter at all.
//!
//! The rows run in the load run's loop (xtask/src/perf.rs) like the GET rows; this module is what
//! differs: the request, the tokens and the check made before the timing.

use anyhow::{bail, Result};

/// The JSON-RPC call every MCP row sends: allowed for an agent whose token holds `files:read`.
pub(crate) const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/notes.txt"}}}"#;
/// The same call for a path both configurations refuse whatever the token holds.
const SECRET: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/srv/secret.txt"}}}"#;
/// The MCP endpoint of envoy-mcp.yaml.
pub(crate) const PATH: &str = "/mcp";
/// The headers of a Streamable HTTP POST (besides `authorization`).
pub(crate) const HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];
/// `tests/peers/mint.py` arguments of the agent tokens the rows send (ES256, like the GET rows),
/// besides `--scope`: `SCOPE` for the timed calls, `OTHER_SCOPE` for the refused one.
pub(crate) const TOKEN: [&str; 6] = ["--alg", "ES256", "--sub", "agent-7", "--aud", "mcp-tools"];
pub(crate) const SCOPE: &str = "files:read";
pub(crate) const OTHER_SCOPE: &str = "email:send";

/// `TESSERA_LOAD_ONLY=f`: `cargo xtask load` measures the MCP rows only.
pub(crate) fn only() -> bool {
    std::env::var("TESSERA_LOAD_ONLY").as_deref() == Ok("f")
}

/// How one answer to a `tools/call` came out.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Forwarded: the upstream's 200.
    Forwarded,
    /// 401.
    Unauthenticated,
    /// Refused: Envoy's rbac answers 403; Tessera answers a JSON-RPC error (-32003) in a 200.
    Refused,
    Other(u16),
}

fn answer(status: u16, body: &str) -> Answer {
    match status {
        200 if body.contains("\"code\":-32003") => Answer::Refused,
        200 if body.trim() == "ok" => Answer::Forwarded,
        401 => Answer::Unauthenticated,
        403 => Answer::Refused,
        s => Answer::Other(s),
    }
}

/// Before the timing: the call with `token` is forwarded, without a token 401, with `other` (no
/// `files:read`) refused, and the secret path refused even with `token` (`filters`: a
/// configuration that decides; one without forwards all four).
pub(crate) fn check(port: u16, label: &str, filters: bool, token: &str, other: &str) -> Result<()> {
    let post = |bearer: Option<&str>, body: &str| -> Result<Answer> {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = HEADERS.to_vec();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let (status, body) = crate::http::post_with(port, PATH, &headers, body)?;
        Ok(answer(status, &body))
    };
    let got = [
        post(Some(token), CALL)?,
        post(None, CALL)?,
        post(Some(other), CALL)?,
        post(Some(token), SECRET)?,
    ];
    println!(
        "{label}: tools/call read_file with files:read {:?}, no token {:?}, {OTHER_SCOPE} only {:?}, a secret path {:?}",
        got[0], got[1], got[2], got[3]
    );
    let want = if filters {
        [
            Answer::Forwarded,
            Answer::Unauthenticated,
            Answer::Refused,
            Answer::Refused,
        ]
    } else {
        [
            Answer::Forwarded,
            Answer::Forwarded,
            Answer::Forwarded,
            Answer::Forwarded,
        ]
    };
    if got != want {
        bail!("{label} answered {got:?}, expected {want:?}");
    }
    Ok(())
}

/// The configurations' description in the load section.
pub(crate) fn describe() -> String {
    format!(
        "- (f-a), (f-b), (f-c): MCP, `POST {PATH}` with one JSON-RPC `tools/call` of `read_file` \
         (`{CALL}`) and one ES256 agent token (audience `mcp-tools`, scope `files:read`). (f-a) \
         `envoy-examples/load/no-filter.yaml`: no filter. (f-b) \
         `envoy-examples/load/mcp-rbac.yaml`: Envoy's own MCP gateway, `jwt_authn` (token cache \
         on) + `envoy.filters.http.mcp` (`REJECT_NO_MCP`, method, `params.name` and \
         `params.arguments.path` into dynamic metadata) + `rbac` (a `tools/call` of `read_file`, \
         the path neither under /etc nor holding \"secret\", the token's scope holding \
         `files:read`). (f-c) `envoy-examples/envoy-mcp.yaml`: Tessera with the example policies \
         (`agents-read-files`, `no-reading-secrets` and the rest of policies/; the arguments \
         checked against the tool's schema). Before the timing each answered the call 200 \
         (forwarded), no token 401, a token without `files:read` and a secret path refused \
         (rbac 403; Tessera a JSON-RPC error -32003). Their \"+\" columns are over (f-a)."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart() {
        assert_eq!(answer(200, "ok\n"), Answer::Forwarded);
        assert_eq!(
            answer(
                200,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32003,"message":"forbidden"}}"#
            ),
            Answer::Refused
        );
        assert_eq!(answer(200, "{}"), Answer::Other(200));
        assert_eq!(answer(403, "RBAC: access denied"), Answer::Refused);
        assert_eq!(answer(401, ""), Answer::Unauthenticated);
        assert_eq!(answer(503, ""), Answer::Other(503));
    }
}
