//! Single-use credentials and human approval for risky actions.
//!
//! Both need state that outlives one request and is shared by the proxy's worker threads: "this
//! `jti` was used". The core has no such state (no proxy-wasm here), so a decision carries
//! obligations instead: [`Once`] says "record this key until then, and only forward if you were
//! the first". The plugin executes them with compare-and-swap in the proxy's shared data before it
//! forwards; a lost race becomes the refusal the obligation carries. This also holds for tokens
//! found in the verified-token cache, because the obligation is made per decision, not per
//! verification.
//!
//! Human approval: a `forbid` annotated `@approval("required")` can be satisfied by an approval, a
//! short-lived single-use JWT from the configured approval issuer whose digest claim names exactly
//! one request (principal, action, resource, route and — for MCP — the arguments, serialised
//! canonically and hashed). See `README.md` ("Human approval") for the loop.
//!
//! (Over 600 lines only with its tests, which stay beside the code they pin: the module is
//! 482 lines.)

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cedar_policy::PolicySet;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::authz::Evaluation;
use crate::config::IssuerConfig;
pub use crate::config::{ApprovalConfig, Webhook, APPROVAL_TYP};
use crate::error::{ConfigError, TokenError};
use crate::reply::LocalReply;
use crate::token::{self, Issuer, VerifiedToken};
use crate::verdict::Verdict;

/// JSON-RPC error code (implementation-defined server error range) of a call that needs approval.
pub const APPROVAL_REQUIRED: i64 = -32005;

/// The annotation that marks a forbid as one a human approval can satisfy.
const ANNOTATION: &str = "approval";

/// Prefix of the shared-data keys of consumed tokens and approvals.
const ONCE_PREFIX: &str = "tessera.once.";

/// Something the proxy must record in its shared data, first writer wins, before it forwards the
/// request: the first use of a single-use token or of an approval. When the key is recorded
/// already (a replay, or another worker thread won the race), the request gets `verdict`,
/// `reason` and `reply` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// Shared-data key: a digest of what is consumed (kind, issuer, `jti`), so its length is fixed.
    pub key: String,
    /// Unix seconds until which the record must be kept: the credential's `exp` plus the clock
    /// skew its issuer tolerates (until then it would still verify).
    pub until: u64,
    pub verdict: Verdict,
    pub reason: String,
    pub reply: LocalReply,
}

/// The shared-data key recording that `kind` (`token`, `approval`) `jti` of `issuer` was used.
/// Scoped by issuer: two issuers may hand out the same `jti`.
pub fn once_key(kind: &str, issuer: &str, jti: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind, issuer, jti] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    format!("{ONCE_PREFIX}{}", URL_SAFE_NO_PAD.encode(h.finalize()))
}

/// Whether a verified token declares itself single-use, and if so the key and time until which
/// its `jti` must be remembered. A token is single-use when its issuer names a
/// `single_use_claim` and the token's value of that claim is `true`; any other value than a
/// boolean is rejected (fail closed), and a single-use token without a `jti` cannot be tracked
/// and is rejected.
pub fn single_use(
    claim: Option<&str>,
    clock_skew_s: u64,
    t: &VerifiedToken,
) -> Result<Option<(String, u64)>, TokenError> {
    let Some(claim) = claim else {
        return Ok(None);
    };
    match t.claim(claim) {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => {
            let jti = t
                .jti
                .as_deref()
                .filter(|j| !j.is_empty())
                .ok_or(TokenError::SingleUseWithoutJti)?;
            Ok(Some((
                once_key("token", &t.issuer, jti),
                t.expires_at.saturating_add(clock_skew_s),
            )))
        }
        Some(_) => Err(TokenError::BadClaim(claim.to_string(), "must be a boolean")),
    }
}

/// The ids of the policies annotated `@approval("required")`. Any other value of the annotation
/// is a configuration error, so that a typo never turns an approvable rule into a hard one or
/// the reverse unnoticed. Only forbids may carry it: a permit that "needs approval" means nothing.
pub fn approval_policies(set: &PolicySet) -> Result<HashSet<String>, ConfigError> {
    let mut out = HashSet::new();
    for p in set.policies() {
        let Some(v) = p.annotation(ANNOTATION) else {
            continue;
        };
        let id = p.id().to_string();
        if v != "required" {
            return Err(ConfigError::new(
                "policies",
                format!("policy `{id}`: @approval must be \"required\", found \"{v}\""),
            ));
        }
        if p.effect() != cedar_policy::Effect::Forbid {
            return Err(ConfigError::new(
                "policies",
                format!("policy `{id}`: @approval(\"required\") is only meaningful on a forbid"),
            ));
        }
        out.insert(id);
    }
    Ok(out)
}

/// The compiled approval issuer.
#[derive(Debug)]
pub struct Approval {
    issuer: Issuer,
    header: String,
    digest_claim: String,
    approver_claim: String,
    max_token_bytes: usize,
    webhook: Option<Webhook>,
    /// `approval.page` and `approval.receiver_path` (MCP 2026-07-28 clients: `input_required.rs`).
    page: Option<(String, String)>,
}

/// A verified approval, as `context.approval` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub approver: String,
    /// The approval's `iat`, Unix seconds.
    pub approved_at: u64,
    /// Shared-data key and time recording its use.
    pub key: String,
    pub until: u64,
}

impl Approval {
    pub fn compile(c: &ApprovalConfig, max_token_bytes: usize) -> Result<Approval, ConfigError> {
        let header = c.header.to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                "approval.header",
                "not a valid header name",
            ));
        }
        if header == "authorization" {
            return Err(ConfigError::new(
                "approval.header",
                "the approval cannot travel in the bearer token's header",
            ));
        }
        for (field, v) in [
            ("digest_claim", &c.digest_claim),
            ("approver_claim", &c.approver_claim),
        ] {
            if v.is_empty() {
                return Err(ConfigError::new(
                    format!("approval.{field}"),
                    "must not be empty",
                ));
            }
        }
        if let Some(w) = &c.webhook {
            if w.cluster.is_empty() {
                return Err(ConfigError::new(
                    "approval.webhook.cluster",
                    "must not be empty",
                ));
            }
            if !w.path.starts_with('/') {
                return Err(ConfigError::new(
                    "approval.webhook.path",
                    "must start with `/`",
                ));
            }
        }
        let typ = c.typ.trim().to_ascii_lowercase();
        if typ.is_empty()
            || ["jwt", "at+jwt", "application/jwt", "application/at+jwt"].contains(&typ.as_str())
        {
            return Err(ConfigError::new(
                "approval.typ",
                "must be a type of its own (default `approval+jwt`): an access token is never an approval",
            ));
        }
        if c.max_ttl_s == 0 || c.max_ttl_s > 3600 {
            return Err(ConfigError::new(
                "approval.max_ttl_s",
                "must be between 1 and 3600: an approval is for one request, now",
            ));
        }
        // The approval issuer is verified by the same code as bearer issuers; its "principal" is
        // the approver. Built through serde so that issuer fields added later keep their defaults.
        let ic: IssuerConfig = serde_json::from_value(json!({
            "issuer": c.issuer,
            "audiences": c.audiences,
            "jwks": c.jwks,
            "hmac_secret": c.hmac_secret,
            "clock_skew_s": c.clock_skew_s,
            "max_ttl_s": c.max_ttl_s,
            "required_claims": ["jti", "iat", c.digest_claim, c.approver_claim],
            "principal": {"type": "User", "claim": c.approver_claim},
            "typ": c.typ,
        }))
        .map_err(|e| ConfigError::new("approval", e.to_string()))?;
        let issuer = Issuer::compile(&ic, "approval", &crate::config::Limits::default())?;
        let page = match &c.page {
            None => None,
            Some(p) => {
                let ok = url::Url::parse(p).is_ok_and(|u| {
                    ["http", "https"].contains(&u.scheme())
                        && u.fragment().is_none()
                        && u.query().is_none()
                });
                if !ok {
                    return Err(ConfigError::new(
                        "approval.page",
                        "must be an http(s) URL without query or fragment (the filter adds \
                         `?digest=…`)",
                    ));
                }
                if !c.receiver_path.starts_with('/') || c.receiver_path.contains(['?', '#']) {
                    return Err(ConfigError::new(
                        "approval.receiver_path",
                        "must be a path starting with `/`",
                    ));
                }
                Some((p.clone(), c.receiver_path.clone()))
            }
        };
        Ok(Approval {
            issuer,
            header,
            digest_claim: c.digest_claim.clone(),
            approver_claim: c.approver_claim.clone(),
            max_token_bytes,
            webhook: c.webhook.clone(),
            page,
        })
    }

    /// The approval page for 2026-07-28 clients, if configured.
    pub fn page(&self) -> Option<&str> {
        self.page.as_ref().map(|(p, _)| p.as_str())
    }

    /// Where the approval page posts approvals, if a page is configured.
    pub fn receiver_path(&self) -> Option<&str> {
        self.page.as_ref().map(|(_, r)| r.as_str())
    }

    /// Where approval requests are announced, if configured.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// The request header (lowercase) carrying an approval.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// What a client and its approver need to know, in a denial that asks for approval.
    pub fn request_object(&self, subject: &Value, digest: &str) -> Value {
        json!({
            "digest": digest,
            "request": subject,
            "issuer": self.issuer.issuer,
            "digest_claim": self.digest_claim,
            "header": self.header,
        })
    }

    /// Verifies an approval presented for the request whose digest is `digest`. `Err` is why it
    /// does not count (for the client and the log).
    pub fn verify(&self, jwt: &str, digest: &str, now_s: u64) -> Result<Granted, String> {
        let (approved, granted) = self.verify_posted(jwt, now_s)?;
        if approved != digest {
            return Err("the approval is for another request".into());
        }
        Ok(granted)
    }

    /// Verifies an approval on its own (as the approval page posts it): the digest of the
    /// request it approves, and the grant.
    pub fn verify_posted(&self, jwt: &str, now_s: u64) -> Result<(String, Granted), String> {
        let t = token::verify(
            std::slice::from_ref(&self.issuer),
            jwt.trim(),
            now_s,
            self.max_token_bytes,
            // Approvals are Tessera's to verify (the approval issuer has keys, never jwt_authn).
            None,
        )
        .map_err(|e| format!("approval rejected: {e}"))?;
        let digest = t
            .claim(&self.digest_claim)
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| format!("approval rejected: `{}` is not a string", self.digest_claim))?
            .to_string();
        let approver = t
            .claim(&self.approver_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!(
                    "approval rejected: `{}` is not a string",
                    self.approver_claim
                )
            })?;
        let jti = t
            .jti
            .as_deref()
            .filter(|j| !j.is_empty())
            .ok_or("approval rejected: no jti")?;
        Ok((
            digest,
            Granted {
                approver: approver.to_string(),
                approved_at: t.issued_at.unwrap_or(now_s),
                key: once_key("approval", &t.issuer, jti),
                until: t.expires_at.saturating_add(self.issuer.clock_skew_s()),
            },
        ))
    }
}

/// What an approval is asked for: the canonical description of one request.
/// `arguments` are the MCP tool call's arguments; `path` is the HTTP request path with its query
/// (an HTTP approval binds the path, not the body, which the filter does not read).
pub fn subject(
    principal: &str,
    action: &str,
    resource: &str,
    route: &str,
    arguments: Option<&Value>,
    path: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("principal".into(), json!(principal));
    m.insert("action".into(), json!(action));
    m.insert("resource".into(), json!(resource));
    m.insert("route".into(), json!(route));
    if let Some(a) = arguments {
        m.insert("arguments".into(), a.clone());
    }
    if let Some(p) = path {
        m.insert("path".into(), json!(p));
    }
    Value::Object(m)
}

/// Adds the whole identity behind a request to its approval subject: the issuer, the subject on
/// whose behalf it is made (its entity id), the actor chain (earliest first) and the task id. An
/// approval obtained for alice's request through an executor does not unlock the same call made
/// for bob, by another chain, from another issuer or in another task; the approver sees all of it.
pub fn bind_identity(
    subject: &mut Value,
    issuer: &str,
    on_behalf_of: Option<&str>,
    actors: &[String],
    task: Option<&str>,
) {
    if let Some(m) = subject.as_object_mut() {
        m.insert("issuer".into(), json!(issuer));
        m.insert("on_behalf_of".into(), json!(on_behalf_of));
        m.insert("actors".into(), json!(actors));
        m.insert("task".into(), json!(task));
    }
}

/// SHA-256 (base64url, unpadded) of the RFC 8785 (JCS) serialisation of `v`; `None` when `v`
/// is not I-JSON (RFC 7493), which JCS requires: an integer beyond ±(2^53 − 1) has no exact JCS
/// form (JCS writes numbers as IEEE doubles), so two different amounts would share one digest.
pub fn digest(v: &Value) -> Option<String> {
    let bytes = canonical(v)?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&bytes)))
}

/// The RFC 8785 (JCS) serialisation of `v` (`serde_json_canonicalizer`); `None` when `v` is not
/// I-JSON ([`digest`]).
pub fn canonical(v: &Value) -> Option<Vec<u8>> {
    if !i_json(v) {
        return None;
    }
    serde_json_canonicalizer::to_vec(v).ok()
}

/// Every number of `v` is exact as an IEEE double (RFC 7493 §2.2).
fn i_json(v: &Value) -> bool {
    const MAX_EXACT: u64 = (1 << 53) - 1;
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u <= MAX_EXACT,
            (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT,
            // A float (or an integer literal beyond 64 bits, which the parser reads as one):
            // two different literals of 2^53 or more can be the same double, so share a digest.
            (None, None) => n.as_f64().is_some_and(|f| f.abs() < MAX_EXACT as f64),
        },
        Value::Array(a) => a.iter().all(i_json),
        Value::Object(m) => m.values().all(i_json),
        _ => true,
    }
}

/// What approval does for a denied request.
#[derive(Debug)]
pub enum Approved {
    /// A valid approval of exactly this request lifts the denial: the policies that allow it now,
    /// and the approval, to be recorded as used before forwarding.
    Allowed {
        policies: Vec<String>,
        granted: Granted,
        ask: Value,
    },
    /// An approval would lift it: ask for one. `reason` says why a presented approval did not
    /// count.
    Required { ask: Value, reason: Option<String> },
}

/// Human approval for a request denied by `denying`. `subject` describes the request
/// ([`subject`]); `presented` is the approval header; `evaluate` evaluates the same request with
/// `context.approval` set. `None`: approval cannot lift this denial and it stands — approval is
/// not configured, a policy without `@approval("required")` takes part, or even with an approval
/// the request would not be allowed (no permit, or another forbid).
///
/// Whether an approval could lift it is found by evaluating the request with a placeholder
/// approval (approver `""`, approved now): approval is offered when that evaluation allows the
/// request, or denies it only by `@approval("required")` forbids — those that judge the approval
/// itself (e.g. who may approve), which the placeholder cannot satisfy.
pub fn approve<E>(
    approval: Option<&Approval>,
    approvable: &HashSet<String>,
    denying: &[String],
    subject: &Value,
    presented: Option<&str>,
    now_s: u64,
    evaluate: E,
) -> Option<Approved>
where
    E: Fn(&Granted) -> Evaluation,
{
    let approval = approval?;
    if !only_approval_policies(denying, approvable) {
        return None;
    }
    // Not I-JSON (an integer JCS cannot write exactly): no digest names this request alone, so
    // no approval can lift the denial.
    let digest = digest(subject)?;
    let ask = approval.request_object(subject, &digest);
    let reason = match presented {
        None => None,
        Some(jwt) => match approval.verify(jwt, &digest, now_s) {
            Ok(granted) => match evaluate(&granted) {
                Evaluation::Allow { policies } => {
                    return Some(Approved::Allowed {
                        policies,
                        granted,
                        ask,
                    })
                }
                // E.g. a policy that accepts only some approvers: another approval may do.
                _ => Some("the policies do not accept this approval".to_string()),
            },
            Err(why) => Some(why),
        },
    };
    let placeholder = Granted {
        approver: String::new(),
        approved_at: now_s,
        key: String::new(),
        until: 0,
    };
    match evaluate(&placeholder) {
        Evaluation::Allow { .. } => Some(Approved::Required { ask, reason }),
        Evaluation::Deny { policies } if only_approval_policies(&policies, approvable) => {
            Some(Approved::Required { ask, reason })
        }
        _ => None,
    }
}

/// The denial that asks for approval (HTTP): 403 `approval_required` with the approval request.
pub fn required_reply(
    policies: &[String],
    request_id: &str,
    approval: Value,
    reason: Option<&str>,
) -> LocalReply {
    let mut r = LocalReply::json_error(403, "approval_required", reason, policies, request_id);
    let mut body: Value = serde_json::from_str(&r.body).unwrap_or_else(|_| json!({}));
    crate::json::set(&mut body, "approval", approval);
    r.body = body.to_string();
    r
}

/// The body POSTed to the approval webhook when a request needs approval; `None` without a
/// webhook.
pub fn notification(
    approval: Option<&Approval>,
    policies: &[String],
    request_id: &str,
    ask: &Value,
) -> Option<String> {
    approval?.webhook.as_ref()?;
    Some(
        json!({"event": "approval_required", "policies": policies, "request_id": request_id,
               "approval": ask})
        .to_string(),
    )
}

/// The message of an MCP call that needs approval.
pub fn required_message(policies: &[String]) -> String {
    format!("approval required by policy {}", policies.join(", "))
}

/// Whether a denial is one that approval can lift: determined by at least one policy, all of
/// them `@approval("required")`.
pub fn only_approval_policies(denying: &[String], approvable: &HashSet<String>) -> bool {
    !denying.is_empty() && denying.iter().all(|p| approvable.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_members_and_drops_whitespace() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1, {"z": true, "a": null}], "a": "x\u0001\"", "é": 2.0, "A": 1e3}"#,
        )
        .expect("json");
        let s = String::from_utf8(canonical(&v).expect("I-JSON")).expect("UTF-8");
        assert_eq!(
            s,
            r#"{"A":1000,"a":"x\u0001\"","b":[1,{"a":null,"z":true}],"é":2}"#
        );
    }

    /// Integer literals past 64 bits are read as doubles: two of them can be one double, so
    /// share a digest. Such a request is not approvable (its denial stands).
    #[test]
    fn numbers_a_double_cannot_hold_exactly_have_no_digest() {
        for text in [
            r#"{"account": 123456789012345678901234}"#,
            r#"{"account": 123456789012345678901235}"#,
            r#"{"x": 1e300}"#,
            r#"{"x": -9007199254740993.0}"#,
        ] {
            let v: Value = serde_json::from_str(text).expect("json");
            assert_eq!(canonical(&v), None, "{text}");
        }
        let v: Value = serde_json::from_str(r#"{"x": 2.5, "y": -1e3}"#).expect("json");
        assert!(canonical(&v).is_some());
    }

    /// RFC 8785 §3.2.3: members sorted by UTF-16 code units, so U+1F600 (D83D DE00) comes
    /// before U+FB01; sorting by code points (Python's `sort_keys`) would put it after.
    #[test]
    fn members_are_sorted_by_utf16_code_units() {
        let v = json!({"\u{fb01}": 1, "\u{1f600}": 2, "\u{80}": 3});
        let s = String::from_utf8(canonical(&v).expect("I-JSON")).expect("UTF-8");
        assert_eq!(s, "{\"\u{80}\":3,\"\u{1f600}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn an_integer_jcs_cannot_write_exactly_has_no_digest() {
        let exact = (1_u64 << 53) - 1;
        assert!(digest(&json!({"amount": exact})).is_some());
        assert!(digest(&json!({"amount": -(exact as i64)})).is_some());
        assert_eq!(digest(&json!({"amount": exact + 1})), None);
        assert_eq!(
            digest(&json!({"n": [{"amount": -(exact as i64) - 1}]})),
            None
        );
        // A double of 2^53 or more could be an integer literal past 64 bits, which a server
        // reads exactly but the parser here rounds: not approvable either.
        assert_eq!(digest(&json!({"amount": 1e300})), None);
        assert!(
            digest(&json!({"amount": 0.25})).is_some(),
            "a small double is exact"
        );
    }

    #[test]
    fn the_digest_is_sha256_of_the_canonical_form_and_changes_with_the_arguments() {
        let a = subject(
            "Agent::\"agent-7\"",
            "call:transfer_funds",
            "Tool::\"transfer_funds\"",
            "tools",
            Some(&json!({"to_account": "DE89", "amount": 500})),
            None,
        );
        // Cross-checked with Python: base64url(sha256(jcs.canonicalize(a))).
        let s = String::from_utf8(canonical(&a).expect("I-JSON")).expect("UTF-8");
        assert_eq!(
            s,
            r#"{"action":"call:transfer_funds","arguments":{"amount":500,"to_account":"DE89"},"principal":"Agent::\"agent-7\"","resource":"Tool::\"transfer_funds\"","route":"tools"}"#
        );
        let b = subject(
            "Agent::\"agent-7\"",
            "call:transfer_funds",
            "Tool::\"transfer_funds\"",
            "tools",
            Some(&json!({"to_account": "DE89", "amount": 501})),
            None,
        );
        assert_eq!(
            digest(&a).as_deref(),
            Some("7dTTMHhkF6NPstRQajR62recqYBQw8WIxzgxhagTXKk")
        );
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&a.clone()));
    }

    #[test]
    fn once_keys_are_scoped_by_issuer_and_kind() {
        let k = once_key("token", "https://a", "j1");
        assert!(k.starts_with(ONCE_PREFIX));
        assert_ne!(k, once_key("token", "https://b", "j1"));
        assert_ne!(k, once_key("approval", "https://a", "j1"));
        // Length-prefixed parts: moving a separator does not give the same key.
        assert_ne!(once_key("token", "ab", "c"), once_key("token", "a", "bc"));
    }

    #[test]
    fn a_denial_is_approvable_only_when_every_denying_policy_is_annotated() {
        let approvable: HashSet<String> = ["needs-approval".to_string()].into();
        assert!(only_approval_policies(
            &["needs-approval".into()],
            &approvable
        ));
        assert!(!only_approval_policies(
            &["needs-approval".into(), "hard".into()],
            &approvable
        ));
        // No permit (no determining policy): approval cannot help.
        assert!(!only_approval_policies(&[], &approvable));
    }

    // ---- through the engine (natively): tokens are HS256, signed here by hand (HMAC-SHA256 from
    // sha2), not by the jwt-simple the filter verifies with.

    const SECRET: &[u8] = b"tessera-approval-unit-test-secret-32+bytes";
    const AGENTS: &str = "https://agents.test";
    const APPROVALS: &str = "https://approvals.test";

    fn hs256(claims: &Value) -> String {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let input = format!(
            "{}.{}",
            b64(if claims["iss"] == APPROVALS {
                br#"{"alg":"HS256","typ":"approval+jwt"}"#.as_slice()
            } else {
                br#"{"alg":"HS256","typ":"JWT"}"#.as_slice()
            }),
            b64(claims.to_string().as_bytes())
        );
        // HMAC (RFC 2104) over SHA-256.
        let mut key = [0u8; 64];
        key[..SECRET.len()].copy_from_slice(SECRET);
        let pad = |b: u8| key.iter().map(|k| k ^ b).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(input.as_bytes())
            .finalize();
        let mac = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        format!("{input}.{}", b64(&mac))
    }

    fn engine() -> crate::Engine {
        let secret = URL_SAFE_NO_PAD.encode(SECRET);
        let config = json!({
            "issuers": [{
                "issuer": AGENTS, "audiences": ["api"], "hmac_secret": secret,
                "principal": {"type": "Agent"}, "single_use_claim": "single_use"
            }],
            "schema": include_str!("../../policies/tessera.cedarschema"),
            "policies": r#"
                @id("agents-post") permit (principal is Agent, action == Action::"POST", resource);
                @id("refunds-need-approval") @approval("required")
                forbid (principal, action == Action::"POST", resource)
                when { context.request.path like "*/refund" } unless { context has approval };
                @id("big-refunds-forbidden")
                forbid (principal, action == Action::"POST", resource)
                when { context.request.path like "/big/*" };
                @id("approver-must-be-staff") @approval("required")
                forbid (principal, action == Action::"POST", resource)
                when { context has approval && context.request.path like "/staff-only/*" }
                unless { context.approval.approver like "*@example.com" };
            "#,
            "routes": [{"name": "orders", "prefix": "/"}],
            "approval": {"issuer": APPROVALS, "audiences": ["tessera"], "hmac_secret": secret}
        });
        crate::Engine::from_json(config.to_string().as_bytes()).expect("the test config compiles")
    }

    const NOW: u64 = 1_800_000_000;

    fn bearer(extra: Value) -> String {
        let mut c =
            json!({"iss": AGENTS, "sub": "agent-1", "aud": "api", "iat": NOW, "exp": NOW + 300});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        format!("Bearer {}", hs256(&c))
    }

    fn approval_for(digest: &str, approver: &str, jti: &str) -> String {
        hs256(
            &json!({"iss": APPROVALS, "aud": "tessera", "sub": approver, "iat": NOW,
                      "exp": NOW + 60, "jti": jti, "approval_digest": digest}),
        )
    }

    fn post(e: &crate::Engine, path: &str, auth: &str, approval: Option<&str>) -> crate::Decision {
        let req = crate::HttpRequest {
            method: "POST",
            path,
            host: "h",
            authorization: Some(auth),
            request_id: "r",
            approval,
            ..crate::HttpRequest::default()
        };
        e.check(&req, &crate::store::MemoryStore::new(), NOW)
    }

    fn body(d: &crate::Decision) -> Value {
        d.reply
            .as_ref()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn a_denial_only_by_approval_policies_asks_for_approval_with_the_digest_of_the_request() {
        let e = engine();
        let d = post(&e, "/orders/1/refund", &bearer(json!({})), None);
        assert_eq!(d.verdict, Verdict::Deny);
        let b = body(&d);
        assert_eq!(b["error"], "approval_required", "{b}");
        assert_eq!(b["policies"], json!(["refunds-need-approval"]));
        let asked = &b["approval"];
        assert_eq!(
            asked["request"],
            json!({"principal": "Agent::\"https://agents.test|agent-1\"", "action": "POST",
                   "resource": "Route::\"orders\"", "route": "orders", "path": "/orders/1/refund",
                   "issuer": AGENTS, "on_behalf_of": "https://agents.test|agent-1", "actors": [],
                   "task": null})
        );
        assert_eq!(asked["digest"], json!(digest(&asked["request"])));
        assert!(d.once.is_empty(), "nothing is recorded for a denial");
        // With a hard forbid alongside, no approval is offered.
        let d = post(&e, "/big/refund", &bearer(json!({})), None);
        assert_eq!(body(&d)["error"], "forbidden");
    }

    #[test]
    fn a_matching_approval_allows_once_recording_the_approval_before_the_single_use_token() {
        let e = engine();
        let auth = bearer(json!({"single_use": true, "jti": "t-1"}));
        let asked = body(&post(&e, "/orders/1/refund", &auth, None));
        let digest = asked["approval"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let approval = approval_for(&digest, "bob@example.com", "a-1");
        let d = post(&e, "/orders/1/refund", &auth, Some(&approval));
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.reply);
        assert_eq!(d.policies, vec!["agents-post".to_string()]);
        let keys: Vec<&str> = d.once.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                once_key("approval", APPROVALS, "a-1").as_str(),
                once_key("token", AGENTS, "t-1").as_str()
            ]
        );
        assert_eq!(d.once[0].until, NOW + 60 + 60, "exp plus clock skew");
        let replay: Value = serde_json::from_str(&d.once[0].reply.body).unwrap_or_default();
        assert_eq!(replay["reason"], "approval already used");
        assert_eq!(d.once[1].reply.status, 401);

        // The same approval for another path is not this request's.
        let d = post(&e, "/orders/2/refund", &auth, Some(&approval));
        assert_eq!(body(&d)["reason"], "the approval is for another request");
        assert!(d.once.is_empty());
    }

    #[test]
    fn policies_see_the_approver_in_context_approval() {
        let e = engine();
        let auth = bearer(json!({}));
        let digest = body(&post(&e, "/staff-only/refund", &auth, None))["approval"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let outsider = approval_for(&digest, "eve@evil.example", "a-2");
        let d = post(&e, "/staff-only/refund", &auth, Some(&outsider));
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            (body(&d)["error"].as_str(), body(&d)["reason"].as_str()),
            (
                Some("approval_required"),
                Some("the policies do not accept this approval")
            )
        );
        assert!(d.once.is_empty(), "a refused approval is not used up");
        let staff = approval_for(&digest, "bob@example.com", "a-3");
        assert_eq!(
            post(&e, "/staff-only/refund", &auth, Some(&staff)).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn the_annotation_must_say_required_and_sit_on_a_forbid() {
        let ok: PolicySet =
            r#"@id("a") @approval("required") forbid (principal, action, resource);"#
                .parse()
                .expect("parse");
        assert_eq!(
            approval_policies(&ok).map(|s| s.into_iter().collect::<Vec<_>>()),
            Ok(vec!["policy0".to_string()])
        );
        let typo: PolicySet = r#"@approval("requried") forbid (principal, action, resource);"#
            .parse()
            .expect("parse");
        assert!(approval_policies(&typo).is_err());
        let permit: PolicySet = r#"@approval("required") permit (principal, action, resource);"#
            .parse()
            .expect("parse");
        assert!(approval_policies(&permit).is_err());
    }
}
