//! etcd v3, the store every replica of a fleet shares (`store.etcd`), reached through an Envoy
//! cluster with HTTP calls to its JSON gateway. This module builds the calls and reads their
//! answers; the pipeline waits for them (`Next::Call`).
//!
//! A record is created once across the fleet with a transaction that puts the key only while it
//! does not exist (`create_revision == 0`), so the first writer wins on every replica. Records
//! expire with leases: one lease per `lease_bucket_s` bucket of expiry times, granted by each
//! worker when it first needs it, so that etcd holds a handful of leases, not one per record.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::config::EtcdConfig;
use crate::error::ConfigError;
use crate::outcome::{Answer, Call, Callout, Purpose};

#[derive(Debug)]
pub struct Etcd {
    cluster: String,
    authority: String,
    prefix: String,
    timeout_ms: u64,
    bucket_s: u64,
    /// Granted leases by bucket end: (lease id, when it expires).
    leases: Mutex<BTreeMap<u64, (String, u64)>>,
}

/// A lease outlives the end of its bucket by this much, so that a record written late in the
/// bucket is never dropped before its expiry.
const LEASE_MARGIN_S: u64 = 60;

impl Etcd {
    pub fn compile(c: &EtcdConfig) -> Result<Etcd, ConfigError> {
        if c.cluster.is_empty() {
            return Err(ConfigError::new("store.etcd.cluster", "must not be empty"));
        }
        if c.timeout_ms == 0 || c.lease_bucket_s == 0 {
            return Err(ConfigError::new(
                "store.etcd",
                "timeout_ms and lease_bucket_s must be at least 1",
            ));
        }
        Ok(Etcd {
            cluster: c.cluster.clone(),
            authority: c.authority.clone().unwrap_or_else(|| c.cluster.clone()),
            prefix: c.prefix.clone(),
            timeout_ms: c.timeout_ms,
            bucket_s: c.lease_bucket_s,
            leases: Mutex::new(BTreeMap::new()),
        })
    }

    fn post(&self, path: &str, body: &Value, purpose: Purpose) -> Call {
        let mut callout = Callout::get(
            &self.cluster,
            &self.authority,
            path,
            "application/json",
            self.timeout_ms,
        );
        for (k, v) in &mut callout.headers {
            if k == ":method" {
                *v = "POST".into();
            }
        }
        callout
            .headers
            .push(("content-type".into(), "application/json".into()));
        callout.body = body.to_string().into_bytes();
        Call { purpose, callout }
    }

    /// The bucket a record kept until `until` falls in (its end).
    fn bucket(&self, until: u64) -> u64 {
        until.div_ceil(self.bucket_s).saturating_mul(self.bucket_s)
    }

    /// The call that creates `key` (kept until `until`) unless it exists: the transaction, or
    /// first the lease it needs.
    pub fn create(&self, key: &str, until: u64, now_s: u64) -> Call {
        let bucket = self.bucket(until);
        let lease = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            leases.retain(|_, (_, expires)| *expires > now_s);
            leases.get(&bucket).map(|(id, _)| id.clone())
        };
        let Some(lease) = lease else {
            let ttl = bucket
                .saturating_add(LEASE_MARGIN_S)
                .saturating_sub(now_s)
                .max(1);
            return self.post(
                "/v3/lease/grant",
                &json!({"TTL": ttl.to_string()}),
                Purpose::StoreLease(bucket),
            );
        };
        let k = STANDARD.encode(format!("{}{key}", self.prefix));
        let txn = json!({
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": STANDARD.encode("1"), "lease": lease}}],
            "failure": []
        });
        self.post("/v3/kv/txn", &txn, Purpose::StoreCreate(key.to_string()))
    }

    /// The answer to a lease grant for `bucket`.
    pub fn lease_granted(&self, bucket: u64, answer: &Answer, now_s: u64) -> Result<(), String> {
        let doc = json_answer(answer)?;
        let id = match doc.get("ID") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("lease grant without an ID: {doc}")),
        };
        let ttl = doc
            .get("TTL")
            .and_then(|t| t.as_str().and_then(|s| s.parse().ok()).or(t.as_u64()))
            .unwrap_or(0);
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.insert(bucket, (id, now_s.saturating_add(ttl)));
        Ok(())
    }

    /// The answer to a creation: `Ok(true)` this call created the record, `Ok(false)` it existed.
    /// A failed transaction (a lease etcd no longer has, …) forgets the leases.
    pub fn created(&self, answer: &Answer) -> Result<bool, String> {
        let doc = json_answer(answer).inspect_err(|_| {
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        })?;
        // proto3 JSON leaves out `false`: an answer without `succeeded` is a failed compare.
        Ok(doc.get("succeeded").and_then(Value::as_bool) == Some(true))
    }
}

/// An answer's JSON body, when the call succeeded.
fn json_answer(answer: &Answer) -> Result<Value, String> {
    if answer.status == 0 {
        return Err("etcd did not answer (timeout or connection failure)".into());
    }
    if answer.status != 200 {
        return Err(format!(
            "etcd answered {}: {}",
            answer.status,
            String::from_utf8_lossy(answer.body.get(..200).unwrap_or(&answer.body))
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("etcd's answer is not JSON: {e}"))
}
