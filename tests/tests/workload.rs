//! Workloads authenticated by their X.509-SVID (issue 15, `auth: workload`): the verified client
//! certificate's SPIFFE ID is the principal, `Workload::"spiffe|<SPIFFE ID>"`, with no token. The
//! connection's properties are set as Envoy reports them; the Envoy end-to-end counterpart, with
//! certificates made by Python's `cryptography`, is `tests/e2e/test_workload.py`. And a workload
//! presenting a user's token as its outermost actor (`issuers[].workload_actor`).

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};
use tessera_core::Engine;
use tessera_harness::{Harness, LocalReply};
use tessera_tests::{harness_with, mint, test_config, AGENTS};

const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const REPORTS: &str = "spiffe://example.org/ns/shop/sa/reports";

/// The reference schema with `token`, `delegation` and `pop` optional in `HttpContext`: what a
/// schema for workload routes declares (README "Workloads").
fn mesh_schema(reference: &str) -> String {
    let start = reference.find("type HttpContext").expect("HttpContext");
    let end = start + reference[start..].find("};").expect("end of HttpContext");
    let context = reference[start..end]
        .replace("  token: Token,", "  token?: Token,")
        .replace("  delegation: Delegation,", "  delegation?: Delegation,")
        .replace("  pop: Pop,", "  pop?: Pop,");
    format!("{}{context}{}", &reference[..start], &reference[end..])
}

/// The test configuration for a mesh: client certificates verified, trust domain example.org, a
/// workload route `/inventory` and the token route `/orders`; the policies are `policies` only
/// (the example policies read `context.token` unguarded, which an optional token refuses).
fn mesh(policies: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = test_config().expect("test config");
    c["schema"] = json!(mesh_schema(c["schema"].as_str().unwrap()));
    c["policies"] = json!({ "mesh.cedar": policies });
    c["connection"] = json!({
        "client_certificates": "verified",
        "spiffe_trust_domains": ["example.org"],
    });
    c["routes"] = json!([
        {"name": "inventory", "prefix": "/inventory", "auth": "workload"},
        {"name": "orders", "prefix": "/orders"},
    ]);
    edit(&mut c);
    c
}

const POLICIES: &str = r#"
@id("checkout-reads-inventory")
permit (principal == Workload::"spiffe|spiffe://example.org/ns/shop/sa/checkout",
        action == Action::"GET", resource == Route::"inventory")
when { context.request has tls && context.request.tls.verified &&
       context.request.tls has trust_domain && context.request.tls.trust_domain == "example.org" };

@id("reports-never-writes")
forbid (principal == Workload::"spiffe|spiffe://example.org/ns/shop/sa/reports",
        action == Action::"POST", resource);

@id("workloads-post")
permit (principal is Workload, action == Action::"POST", resource == Route::"inventory");

@id("tokens-read-orders")
permit (principal, action == Action::"GET", resource == Route::"orders")
when { context has token && context.token.scopes.contains("orders:read") };
"#;

fn gateway() -> Harness {
    harness_with(|c| *c = mesh(POLICIES, |_| {})).expect("the module takes the configuration")
}

/// `method path` on a connection whose peer presented a certificate with `uri_san` (none: no
/// certificate), with `authorization` if given: the local reply, and the forwarded request's
/// `x-tessera-principal`.
fn send(
    h: &mut Harness,
    method: &str,
    path: &str,
    uri_san: Option<&str>,
    authorization: Option<&str>,
) -> (Option<LocalReply>, Option<String>) {
    let ctx = h.new_http().unwrap();
    if let Some(san) = uri_san {
        for (name, value) in [
            ("connection.mtls", &[1u8][..]),
            (
                "connection.sha256_peer_certificate_digest",
                "07".repeat(32).as_bytes(),
            ),
            ("connection.uri_san_peer_certificate", san.as_bytes()),
        ] {
            h.set_stream_property(ctx, name, value).unwrap();
        }
    }
    let mut headers = vec![
        (":method", method),
        (":scheme", "https"),
        (":path", path),
        (":authority", "api.example.com"),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    h.request_headers(ctx, &headers, true).unwrap();
    let reply = h.local_reply(ctx);
    let principal = h.request_header(ctx, "x-tessera-principal");
    h.done(ctx).unwrap();
    (reply, principal)
}

fn refused(reply: Option<LocalReply>, status: u32, words: &str) {
    let reply = reply.expect("a local reply");
    assert_eq!(reply.status, status, "{}", reply.body_text());
    assert!(
        reply.body_text().contains(words),
        "expected {words:?} in {}",
        reply.body_text()
    );
    // Judged, not a request the filter could not judge.
    assert!(
        !reply.body_text().contains("could not be evaluated"),
        "{}",
        reply.body_text()
    );
}

#[test]
fn a_workload_is_the_principal_its_svid_names() {
    let mut h = gateway();
    let (reply, principal) = send(&mut h, "GET", "/inventory/1", Some(CHECKOUT), None);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(
        principal.as_deref(),
        Some(r#"Workload::"spiffe|spiffe://example.org/ns/shop/sa/checkout""#)
    );
    // Another workload of the trust domain: authenticated, no permit.
    let (reply, _) = send(&mut h, "GET", "/inventory/1", Some(REPORTS), None);
    refused(reply, 403, "forbidden");
    // A forbid names the workload.
    let (reply, _) = send(&mut h, "POST", "/inventory/1", Some(REPORTS), None);
    refused(reply, 403, "reports-never-writes");
    let (reply, _) = send(&mut h, "POST", "/inventory/1", Some(CHECKOUT), None);
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
}

#[test]
fn without_a_workload_identity_of_a_listed_trust_domain_the_route_is_refused() {
    let mut h = gateway();
    for san in [
        None,
        Some("spiffe://other.org/ns/shop/sa/checkout"),
        Some("spiffe://example.org"),
        Some("spiffe://EXAMPLE.org/ns/shop/sa/checkout"),
        Some("https://example.org/ns/shop/sa/checkout"),
    ] {
        let (reply, principal) = send(&mut h, "GET", "/inventory/1", san, None);
        refused(reply, 403, "no workload identity");
        assert_eq!(principal, None, "{san:?}");
    }
    // A token is no workload identity: the route reads none.
    let token = mint(
        "ES256",
        &json!({"iss": AGENTS, "sub": "agent-7", "scope": "orders:read"}),
    )
    .unwrap();
    let (reply, _) = send(
        &mut h,
        "GET",
        "/inventory/1",
        None,
        Some(&format!("Bearer {token}")),
    );
    refused(reply, 403, "no workload identity");
    // The token route beside it is as before: the token decides, the certificate does not.
    let (reply, _) = send(
        &mut h,
        "GET",
        "/orders/1",
        Some(CHECKOUT),
        Some(&format!("Bearer {token}")),
    );
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    let (reply, _) = send(&mut h, "GET", "/orders/1", Some(CHECKOUT), None);
    assert_eq!(reply.expect("401").status, 401);
}

#[test]
fn an_unverified_certificate_names_no_workload() {
    // Without `client_certificates: verified` the configuration is refused (below); a listener
    // that verifies nothing cannot yield a SPIFFE ID, so there is no way to configure one.
    let e = config_error(|c| {
        c["connection"] = json!({"client_certificates": "unverified"});
    });
    assert!(
        e.contains("routes[0].auth") && e.contains("spiffe_trust_domains"),
        "{e}"
    );
}

fn config_error(edit: impl FnOnce(&mut Value)) -> String {
    let c = mesh(POLICIES, edit);
    match Engine::from_json(c.to_string().as_bytes()) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_schema_that_needs_a_token_in_every_request_is_refused_for_workload_routes() {
    let e = config_error(|c| {
        c["schema"] = test_config().unwrap()["schema"].clone();
        c["policies"] = json!({"mesh.cedar": "@id(\"open\")\npermit (principal is Workload, action, resource);"});
    });
    assert!(
        e.contains("routes[0].auth") && e.contains("token") && e.contains("optional"),
        "{e}"
    );
    let e = config_error(|c| {
        c["routes"][0]["kind"] = json!("mcp");
    });
    assert!(
        e.contains("routes[0].auth") && e.contains("http routes"),
        "{e}"
    );
    let e = config_error(|c| {
        let s = c["schema"].as_str().unwrap().replace(
            "principal: [User, Agent, Workload],\n  resource: [Route],",
            "principal: [User, Agent],\n  resource: [Route],",
        );
        c["schema"] = json!(s);
        c["policies"] = json!({});
    });
    assert!(
        e.contains("routes[0].auth") && e.contains("Workload"),
        "{e}"
    );
}

/// The test configuration with the IdP's tokens presented by workloads (`workload_actor`), and a
/// route `/relay` whose one policy permits the checkout workload acting for alice.
fn relay_gateway() -> Harness {
    harness_with(|c| *c = relay_config()).expect("the module takes the configuration")
}

fn relay_config() -> Value {
    let mut config = test_config().unwrap();
    {
        let c = &mut config;
        c["issuers"][0]["workload_actor"] = json!(true);
        c["connection"] = json!({
            "client_certificates": "verified",
            "spiffe_trust_domains": ["example.org"],
        });
        c["routes"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "relay", "prefix": "/relay"}));
        // The example's trusted actors, and the checkout workload.
        let agents = c["policies"]["agents.cedar"].as_str().unwrap().replace(
            r#""agent-7"].containsAll"#,
            &format!(r#""agent-7", "{CHECKOUT}"].containsAll"#),
        );
        c["policies"]["agents.cedar"] = json!(agents);
        c["policies"]["relay.cedar"] = json!(format!(
            r#"@id("checkout-relays-for-alice")
permit (principal == Workload::"spiffe|{CHECKOUT}", action == Action::"GET", resource == Route::"relay")
when {{ context.delegation.on_behalf_of == User::"corp|alice" &&
        context.delegation.subject == "alice" && context.delegation.actor == "{CHECKOUT}" &&
        context.delegation.actors.contains("{CHECKOUT}") &&
        context.delegation.chain like "alice>*{CHECKOUT}" }};

@id("relay-chain-depth")
forbid (principal, action, resource == Route::"relay") when {{ context.delegation.depth > 2 }};"#
        ));
    }
    config
}

fn idp_token(claims: Value) -> String {
    let mut c = json!({"iss": tessera_tests::IDP, "aud": tessera_tests::AUDIENCE, "sub": "alice"});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    mint("ES256", &c).unwrap()
}

#[test]
fn a_workload_presenting_a_users_token_is_its_actor() {
    let mut h = relay_gateway();
    let bearer = format!("Bearer {}", idp_token(json!({})));
    let (reply, principal) = send(&mut h, "GET", "/relay/1", Some(CHECKOUT), Some(&bearer));
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(
        principal.as_deref(),
        Some(r#"Workload::"spiffe|spiffe://example.org/ns/shop/sa/checkout""#)
    );
    // The cached token learnt nothing from that request: without a certificate alice acts
    // herself (the example's `users-read` permits her), and another workload is another
    // principal (not among the example's trusted actors).
    let (reply, principal) = send(&mut h, "GET", "/relay/1", None, Some(&bearer));
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(principal.as_deref(), Some(r#"User::"corp|alice""#));
    let (reply, _) = send(&mut h, "GET", "/relay/1", Some(REPORTS), Some(&bearer));
    refused(reply, 403, "delegation-trusted-actors-only");
    // An unlisted trust domain names no workload: alice acts herself.
    let (reply, principal) = send(
        &mut h,
        "GET",
        "/relay/1",
        Some("spiffe://other.org/ns/shop/sa/checkout"),
        Some(&bearer),
    );
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(principal.as_deref(), Some(r#"User::"corp|alice""#));
    // Again with the checkout workload: allowed (no decision remembered from the others), and
    // checkout the principal (nothing of alice's, remembered by the cached token, carried over).
    let (reply, principal) = send(&mut h, "GET", "/relay/1", Some(CHECKOUT), Some(&bearer));
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(
        principal.as_deref(),
        Some(r#"Workload::"spiffe|spiffe://example.org/ns/shop/sa/checkout""#)
    );
}

#[test]
fn the_presenting_workload_ends_the_act_chain() {
    let mut h = relay_gateway();
    // alice > planner (act), presented by checkout: depth 2, checkout the principal.
    let one = format!("Bearer {}", idp_token(json!({"act": {"sub": "planner"}})));
    let (reply, principal) = send(&mut h, "GET", "/relay/1", Some(CHECKOUT), Some(&one));
    assert!(reply.is_none(), "{:?}", reply.map(|r| r.body_text()));
    assert_eq!(
        principal.as_deref(),
        Some(r#"Workload::"spiffe|spiffe://example.org/ns/shop/sa/checkout""#)
    );
    // Two actors in the token and the workload: depth 3, forbidden by `relay-chain-depth`.
    let two = format!(
        "Bearer {}",
        idp_token(json!({"act": {"sub": "executor", "act": {"sub": "planner"}}}))
    );
    let (reply, _) = send(&mut h, "GET", "/relay/1", Some(CHECKOUT), Some(&two));
    refused(reply, 403, "relay-chain-depth");
}

#[test]
fn workload_actors_need_a_listed_trust_domain() {
    let mut c = test_config().unwrap();
    c["issuers"][0]["workload_actor"] = json!(true);
    let e = match Engine::from_json(c.to_string().as_bytes()) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("issuers[0].workload_actor") && e.contains("spiffe_trust_domains"),
        "{e}"
    );
}

#[test]
fn a_presenting_workload_counts_towards_the_delegation_depth_limit() {
    let mut h = harness_with(|c| {
        *c = relay_config();
        c["limits"]["max_delegation_depth"] = json!(1);
    })
    .expect("the module takes the configuration");
    let one = format!("Bearer {}", idp_token(json!({"act": {"sub": "planner"}})));
    // One actor: within the limit as the token says it (authenticated; no permit for the
    // planner on this route) ...
    let (reply, _) = send(&mut h, "GET", "/relay/1", None, Some(&one));
    refused(reply, 403, "forbidden");
    // ... one too many with the workload presenting it.
    let (reply, _) = send(&mut h, "GET", "/relay/1", Some(CHECKOUT), Some(&one));
    let reply = reply.expect("refused");
    assert_eq!(reply.status, 401, "{}", reply.body_text());
    assert!(reply.body_text().contains("deep"), "{}", reply.body_text());
}

#[test]
fn the_spiffe_namespace_is_only_for_issuers_of_listed_jwt_svids() {
    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut c = mesh(POLICIES, |_| {});
        edit(&mut c);
        match Engine::from_json(c.to_string().as_bytes()) {
            Ok(_) => panic!("the configuration was accepted"),
            Err(e) => e.to_string(),
        }
    };
    // An issuer of people or agents cannot name workloads' X.509 identities.
    let e = refused(&|c| c["issuers"][1]["identity_namespace"] = json!("spiffe"));
    assert!(e.contains("issuers[1].identity_namespace"), "{e}");
    // A JWT-SVID issuer may, when its trust domain is listed for certificates too.
    let svids = |td: &str| {
        json!({
            "issuer": "https://spire.example.org", "audiences": ["orders-api"],
            "jwks": test_config().unwrap()["issuers"][1]["jwks"].clone(),
            "identity_namespace": "spiffe", "spiffe_trust_domain": td,
            "principal": {"type": "Workload", "claim": "sub"}
        })
    };
    let e = refused(&|c| {
        c["issuers"]
            .as_array_mut()
            .unwrap()
            .push(svids("other.org"))
    });
    assert!(e.contains("issuers[3].identity_namespace"), "{e}");
    let mut c = mesh(POLICIES, |_| {});
    c["issuers"]
        .as_array_mut()
        .unwrap()
        .push(svids("example.org"));
    Engine::from_json(c.to_string().as_bytes()).expect("a listed JWT-SVID issuer may");
    // A workload route reads no token: token options on it are refused.
    let e = refused(&|c| c["routes"][0]["proof_of_possession"] = json!("required"));
    assert!(e.contains("routes[0].auth"), "{e}");
}
