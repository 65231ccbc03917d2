//! A bad configuration is refused with an error naming the JSON path and the problem.

// A helper that panics is a test failing with its message (clippy.toml allows it in #[test]s).
#![allow(clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use tessera_core::Engine;
use tessera_tests::test_config;

fn error_for(edit: impl FnOnce(&mut Value)) -> String {
    let mut c = test_config().expect("test config");
    edit(&mut c);
    match Engine::from_json(c.to_string().as_bytes()) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_test_configuration_compiles() {
    let c = test_config().expect("test config");
    let engine = Engine::from_json(c.to_string().as_bytes()).expect("compiles");
    // Every example policy is loaded: one `@id` each in policies/*.cedar.
    let ids: usize = c["policies"]
        .as_object()
        .expect("named policy files")
        .values()
        .map(|text| text.as_str().unwrap_or_default().matches("\n@id(").count())
        .sum();
    assert!(ids >= 28, "expected the example policies, found {ids}");
    assert_eq!(engine.policy_count(), ids);
}

#[test]
fn a_schema_without_context_delegation_is_refused_at_configure_time() {
    let e = error_for(|c| {
        let s = c["schema"].as_str().unwrap_or_default().replace(
            "  delegation: Delegation,   // who acts for whom (RFC 8693 `act`)\n",
            "",
        );
        c["schema"] = json!(s);
        // Policies that read it would not validate; the request check is what is tested here.
        let files = c["policies"].as_object_mut().expect("files");
        files.remove("agents.cedar");
    });
    assert!(
        e.contains("does not accept Tessera's request") && e.contains("delegation"),
        "{e}"
    );
}

#[test]
fn missing_audiences_names_the_field() {
    let e = error_for(|c| {
        c["issuers"][1]
            .as_object_mut()
            .map(|o| o.remove("audiences"));
    });
    assert!(e.contains("issuers[1]") && e.contains("audiences"), "{e}");
}

#[test]
fn empty_audiences_are_refused() {
    let e = error_for(|c| c["issuers"][0]["audiences"] = json!([]));
    assert!(e.contains("issuers[0].audiences"), "{e}");
}

#[test]
fn unknown_fields_are_refused_so_typos_do_not_disable_checks() {
    let e = error_for(|c| c["issuers"][0]["max_tll_s"] = json!(60));
    assert!(e.contains("issuers[0]") && e.contains("max_tll_s"), "{e}");
}

#[test]
fn symmetric_keys_in_jwks_are_refused() {
    let e = error_for(|c| {
        if let Some(keys) = c["issuers"][0]["jwks"]["keys"].as_array_mut() {
            keys.push(json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}));
        }
    });
    assert!(
        e.contains("issuers[0].jwks.keys[") && e.contains("kty") && e.contains("hmac_secret"),
        "{e}"
    );
}

#[test]
fn a_jwk_whose_alg_contradicts_its_curve_is_refused() {
    let e = error_for(|c| c["issuers"][0]["jwks"]["keys"][1]["alg"] = json!("ES384"));
    assert!(e.contains("issuers[0].jwks.keys[1].alg"), "{e}");
}

#[test]
fn a_short_hmac_secret_is_refused() {
    let e = error_for(|c| c["issuers"][2]["hmac_secret"] = json!("c2hvcnQ"));
    assert!(
        e.contains("issuers[2].hmac_secret") && e.contains("32 bytes"),
        "{e}"
    );
}

#[test]
fn a_policy_syntax_error_names_file_line_and_column() {
    let e = error_for(|c| {
        c["policies"]["orders.cedar"] =
            json!("permit (principal, action, resource)\nwhen { context.now > };")
    });
    assert!(
        e.contains("policies[\"orders.cedar\"]") && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn a_policy_that_does_not_validate_names_the_policy_and_line() {
    let e = error_for(|c| {
        c["policies"]["extra.cedar"] = json!("\n@id(\"bad-attr\")\npermit (principal, action, resource) when { context.token.nope == 1 };")
    });
    assert!(
        e.contains("bad-attr") && e.contains("extra.cedar") && e.contains("line 3"),
        "{e}"
    );
}

#[test]
fn a_schema_error_is_located() {
    let e = error_for(|c| c["schema"] = json!("entity User;\nentity Agent in [Nope];"));
    assert!(e.starts_with("invalid configuration at `schema`"), "{e}");
}

#[test]
fn a_principal_type_missing_from_the_schema_is_refused() {
    let e = error_for(|c| c["issuers"][1]["principal"]["type"] = json!("Robot"));
    assert!(
        e.contains("issuers[1].principal.type") && e.contains("Robot"),
        "{e}"
    );
}

#[test]
fn a_schema_whose_context_does_not_fit_tessera_is_refused_at_configure_time() {
    let e = error_for(|c| {
        let s = c["schema"]
            .as_str()
            .unwrap_or_default()
            .replace("now: Long,", "now: Long, tenant: String,");
        c["schema"] = json!(s);
    });
    assert!(e.contains("does not accept Tessera's request"), "{e}");
}

#[test]
fn invalid_json_is_refused() {
    let e = match Engine::from_json(b"{ not json") {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("invalid configuration"), "{e}");
}

/// A forwarded identity header named like one the filter reads would make the client's copy of
/// it the one the filter reads (found in review of the exchange refactor).
#[test]
fn forward_headers_the_filter_reads_are_refused() {
    for name in [
        "authorization",
        "Content-Type",
        "content-length",
        "mcp-session-id",
        "x-request-id",
        "accept-encoding",
        "x-tessera-approval",
    ] {
        let e = error_for(|c| c["forward"]["headers"][name] = json!("principal"));
        assert!(
            e.contains(&format!("forward.headers.{name}")) && e.contains("reads it"),
            "{name}: {e}"
        );
    }
}

#[test]
fn bad_forward_header_source_names_the_header() {
    let e = error_for(|c| c["forward"]["headers"]["x-who"] = json!("whoever"));
    assert!(e.contains("forward.headers.x-who"), "{e}");
}

#[test]
fn unknown_delegation_and_task_fields_are_refused_with_their_path() {
    let e = error_for(|c| c["issuers"][0]["delegation"] = json!({"actor_typ": "Agent"}));
    assert!(
        e.contains("issuers[0].delegation") && e.contains("actor_typ"),
        "{e}"
    );
    let e = error_for(|c| c["issuers"][0]["task"]["intent_clam"] = json!("intent"));
    assert!(
        e.contains("issuers[0].task") && e.contains("intent_clam"),
        "{e}"
    );
    let e = error_for(|c| c["routes"][1]["max_token_age"] = json!(60));
    assert!(
        e.contains("routes[1]") && e.contains("max_token_age"),
        "{e}"
    );
}

#[test]
fn a_detail_field_of_an_unknown_type_names_the_field() {
    let e =
        error_for(|c| c["issuers"][0]["task"]["detail_fields"]["max_amount"] = json!("Decimal"));
    assert!(
        e.contains("issuers[0].task.detail_fields.max_amount") && e.contains("Decimal"),
        "{e}"
    );
}

#[test]
fn an_actor_type_missing_from_the_schema_is_refused() {
    let e = error_for(|c| c["issuers"][1]["delegation"] = json!({"actor_type": "Robot"}));
    assert!(
        e.contains("issuers[1].delegation.actor_type") && e.contains("Robot"),
        "{e}"
    );
}

#[test]
fn a_max_token_age_that_is_not_a_number_names_the_route() {
    let e = error_for(|c| c["routes"][3]["max_token_age_s"] = json!("60s"));
    assert!(e.contains("routes[3].max_token_age_s"), "{e}");
}

#[test]
fn a_detail_field_the_schema_does_not_declare_is_refused_at_configure_time() {
    let e = error_for(|c| {
        c["issuers"][0]["task"]["detail_fields"]["max_items"] = json!("Long");
    });
    assert!(
        e.contains("issuers[0].task.detail_fields") && e.contains("max_items"),
        "{e}"
    );
    let e = error_for(|c| {
        c["issuers"][0]["task"]["detail_fields"]["max_amount"] = json!("String");
    });
    assert!(e.contains("issuers[0].task.detail_fields"), "{e}");
}

#[test]
fn a_public_mcp_route_is_refused() {
    let e = error_for(|c| {
        let routes = c["routes"].as_array_mut().expect("routes");
        let mcp = routes
            .iter_mut()
            .find(|r| r["kind"] == "mcp")
            .expect("an mcp route");
        mcp["auth"] = json!("none");
    });
    assert!(
        e.contains("routes[") && e.contains(".auth") && e.contains("mcp"),
        "{e}"
    );
}

#[test]
fn zero_batch_or_session_limits_are_refused() {
    for field in [
        "max_batch_messages",
        "max_sessions",
        "max_sessions_per_principal",
    ] {
        let e = error_for(|c| c["limits"][field] = json!(0));
        assert!(e.contains(&format!("limits.{field}")), "{e}");
    }
}

#[test]
fn an_approval_type_that_is_an_access_token_type_is_refused() {
    for typ in ["JWT", "at+jwt"] {
        let e = error_for(|c| c["approval"]["typ"] = json!(typ));
        assert!(e.contains("approval.typ"), "{e}");
    }
}

#[test]
fn an_empty_issuer_typ_is_refused() {
    let e = error_for(|c| c["issuers"][0]["typ"] = json!(" "));
    assert!(e.contains("issuers[0].typ"), "{e}");
}

#[test]
fn a_fleet_store_with_an_mcp_route_needs_sealed_sessions() {
    let e = error_for(|c| {
        c["store"] = json!({"etcd": {"cluster": "etcd"}});
    });
    assert!(e.contains("`sessions.seal_keys`"), "{e}");
    assert!(e.contains("other replica"), "{e}");
    let e = error_for(|c| c["sessions"] = json!({"seal_keys": ["c2hvcnQ="]}));
    assert!(e.contains("`sessions.seal_keys[0]`: 5 bytes"), "{e}");
}

#[test]
fn a_spiffe_trust_domain_that_is_not_one_names_the_field() {
    for bad in ["Example.org", "spiffe://example.org", "example.org/x", ""] {
        let e = error_for(|c| c["issuers"][1]["spiffe_trust_domain"] = json!(bad));
        assert!(e.contains("issuers[1].spiffe_trust_domain"), "{bad:?}: {e}");
    }
}
