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
    /// Records to write for the other replicas, and the write in flight.
    outbox: Mutex<Outbox>,
    /// Where reading what the other replicas wrote stands.
    follow: Mutex<Follow>,
}

/// Records (key under the prefix, value, kept until) waiting to be written.
#[derive(Debug, Default)]
struct Outbox {
    items: Vec<(String, String, u64)>,
    /// How many of the first items the write in flight carries, and when it times out.
    in_flight: Option<(usize, u64)>,
}

#[derive(Debug, Default)]
struct Follow {
    /// The store's revision seen last: the next read asks for what changed after it.
    revision: u64,
    /// No read starts before this (one in flight, or the next period).
    next_at: u64,
}

/// Records one write carries at most.
const MAX_PUTS: usize = 64;
/// Records waiting to be written at most (etcd down for long).
const MAX_OUTBOX: usize = 10_000;
/// Records one read brings at most (the rest comes on the next).
const MAX_READ: u64 = 1000;
/// Under the prefix, where revocations live.
pub const REVOKED: &str = "revoked/";

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
            outbox: Mutex::new(Outbox::default()),
            follow: Mutex::new(Follow::default()),
        })
    }

    /// The lease of `bucket`, if this worker holds one that is still alive at `now_s`.
    fn lease(&self, bucket: u64, now_s: u64) -> Option<String> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|_, (_, expires)| *expires > now_s);
        leases.get(&bucket).map(|(id, _)| id.clone())
    }

    fn grant(&self, bucket: u64, now_s: u64) -> Call {
        let ttl = bucket
            .saturating_add(LEASE_MARGIN_S)
            .saturating_sub(now_s)
            .max(1);
        self.post(
            "/v3/lease/grant",
            &json!({"TTL": ttl.to_string()}),
            Purpose::StoreLease(bucket),
        )
    }

    /// Queues records (key under the prefix, value, kept until) for the other replicas: a key
    /// queued already is not queued twice, and past `MAX_OUTBOX` records nothing more is queued
    /// (`Err`: how many were dropped).
    pub fn publish(
        &self,
        items: impl IntoIterator<Item = (String, String, u64)>,
    ) -> Result<(), usize> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        for item in items {
            if outbox.items.iter().any(|(k, _, _)| *k == item.0) {
                continue;
            }
            if outbox.items.len() >= MAX_OUTBOX {
                dropped += 1;
                continue;
            }
            outbox.items.push(item);
        }
        if dropped > 0 {
            return Err(dropped);
        }
        Ok(())
    }

    /// A write of exactly `items` (a pushed event's revocations, whose reply waits for it): the
    /// transaction, or first the lease it needs.
    pub fn write(&self, items: &[(String, String, u64)], now_s: u64) -> Call {
        let until = items.iter().map(|i| i.2).max().unwrap_or(now_s);
        let bucket = self.bucket(until);
        match self.lease(bucket, now_s) {
            Some(lease) => self.txn_puts(items, &lease),
            None => self.grant(bucket, now_s),
        }
    }

    fn txn_puts(&self, items: &[(String, String, u64)], lease: &str) -> Call {
        let puts: Vec<Value> = items
            .iter()
            .map(|(k, v, _)| {
                json!({"request_put": {"key": STANDARD.encode(format!("{}{k}", self.prefix)),
                                       "value": STANDARD.encode(v), "lease": lease}})
            })
            .collect();
        let txn = json!({"compare": [], "success": puts, "failure": []});
        self.post("/v3/kv/txn", &txn, Purpose::StorePublish)
    }

    /// The write of queued records, if any and none is in flight: the transaction, or first
    /// the lease it needs.
    pub fn flush(&self, now_s: u64) -> Option<Call> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.items.is_empty() || outbox.in_flight.is_some_and(|(_, t)| t > now_s) {
            return None;
        }
        let n = outbox.items.len().min(MAX_PUTS);
        let until = outbox
            .items
            .iter()
            .take(n)
            .map(|i| i.2)
            .max()
            .unwrap_or(now_s);
        let bucket = self.bucket(until);
        outbox.in_flight = Some((
            n,
            now_s
                .saturating_add(self.timeout_ms.div_ceil(1000))
                .saturating_add(1),
        ));
        let Some(lease) = self.lease(bucket, now_s) else {
            return Some(self.grant(bucket, now_s));
        };
        let batch: Vec<_> = outbox.items.iter().take(n).cloned().collect();
        Some(self.txn_puts(&batch, &lease))
    }

    /// The answer to a write of queued records: written ones leave the queue.
    pub fn published(&self, answer: &Answer) -> Result<(), String> {
        let result = self.applied(answer);
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let sent = outbox.in_flight.take().map_or(0, |(n, _)| n);
        if result.is_ok() {
            let sent = sent.min(outbox.items.len());
            outbox.items.drain(..sent);
        }
        result
    }

    /// A lease granted for the queue's write: the write.
    pub fn lease_for_outbox(&self, now_s: u64) -> Option<Call> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.in_flight = None;
        drop(outbox);
        self.flush(now_s)
    }

    /// The read of what changed under `REVOKED` since the last one, once per second.
    pub fn follow(&self, now_s: u64) -> Option<Call> {
        let mut f = self.follow.lock().unwrap_or_else(|p| p.into_inner());
        if now_s < f.next_at {
            return None;
        }
        f.next_at = now_s
            .saturating_add(self.timeout_ms.div_ceil(1000))
            .saturating_add(1);
        let start = format!("{}{REVOKED}", self.prefix);
        // The end of the range: the prefix with its last byte (`/`) plus one.
        let end = format!("{}{}", self.prefix, REVOKED.trim_end_matches('/')) + "0";
        let range = json!({
            "key": STANDARD.encode(&start),
            "range_end": STANDARD.encode(&end),
            "min_mod_revision": (f.revision + 1).to_string(),
            "limit": MAX_READ.to_string(),
            // With a limit, only the oldest changes come first: a read that stops at the limit
            // then misses nothing older than where the next one starts.
            "sort_target": "MOD",
            "sort_order": "ASCEND",
        });
        Some(self.post("/v3/kv/range", &range, Purpose::StoreFollow))
    }

    /// The answer to a read: the values written since the last one, each with its revision.
    pub fn followed(&self, answer: &Answer, now_s: u64) -> Result<Vec<(u64, Value)>, String> {
        let mut f = self.follow.lock().unwrap_or_else(|p| p.into_inner());
        f.next_at = now_s.saturating_add(1);
        let doc = json_answer(answer)?;
        let number = |v: Option<&Value>| {
            v.and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_u64()))
        };
        let store_revision = number(doc.pointer("/header/revision"))
            .ok_or("etcd's answer has no header revision")?;
        if store_revision < f.revision {
            // The store went back (recreated, restored): read it all again.
            f.revision = 0;
            f.next_at = now_s;
            return Ok(vec![]);
        }
        let mut values = Vec::new();
        let mut newest = f.revision;
        for kv in doc
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let revision = number(kv.get("mod_revision")).unwrap_or(0);
            newest = newest.max(revision);
            let value = kv
                .get("value")
                .and_then(Value::as_str)
                .and_then(|v| STANDARD.decode(v).ok())
                .and_then(|v| serde_json::from_slice(&v).ok());
            values.extend(value.map(|v| (revision, v)));
        }
        let more = doc.get("more").and_then(Value::as_bool) == Some(true);
        f.revision = if more {
            // The limit may have cut one transaction's revision: read it again next time.
            newest.saturating_sub(1).max(f.revision)
        } else {
            newest.max(store_revision)
        };
        if more {
            f.next_at = now_s;
        }
        Ok(values)
    }

    /// A value read at `revision` could not be recorded: the next read starts from it again.
    pub fn reread_from(&self, revision: u64) {
        let mut f = self.follow.lock().unwrap_or_else(|p| p.into_inner());
        f.revision = f.revision.min(revision.saturating_sub(1));
    }

    fn post(&self, path: &str, body: &Value, purpose: Purpose) -> Call {
        let callout =
            Callout::post_json(&self.cluster, &self.authority, path, body, self.timeout_ms);
        Call { purpose, callout }
    }

    /// The bucket a record kept until `until` falls in (its end).
    fn bucket(&self, until: u64) -> u64 {
        until.div_ceil(self.bucket_s).saturating_mul(self.bucket_s)
    }

    /// The call that creates every key of `items` (each kept until its time) unless any of
    /// them exists — one transaction, so that a request's credentials are recorded together or
    /// not at all: the transaction, or first the lease it needs (one, for the latest time).
    pub fn create(&self, items: &[(&str, u64)], now_s: u64) -> Call {
        let until = items.iter().map(|i| i.1).max().unwrap_or(now_s);
        let bucket = self.bucket(until);
        let Some(lease) = self.lease(bucket, now_s) else {
            return self.grant(bucket, now_s);
        };
        let keys: Vec<String> = items
            .iter()
            .map(|(key, _)| STANDARD.encode(format!("{}{key}", self.prefix)))
            .collect();
        let txn = json!({
            "compare": keys.iter().map(|k| json!(
                {"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            )).collect::<Vec<_>>(),
            "success": keys.iter().map(|k| json!(
                {"request_put": {"key": k, "value": STANDARD.encode("1"), "lease": lease}}
            )).collect::<Vec<_>>(),
            // Which of them exist, when the transaction fails.
            "failure": keys.iter().map(|k| json!(
                {"request_range": {"key": k, "keys_only": true}}
            )).collect::<Vec<_>>(),
        });
        let first = items.first().map(|i| i.0.to_string()).unwrap_or_default();
        self.post("/v3/kv/txn", &txn, Purpose::StoreCreate(first))
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

    /// The answer to a transaction without compares (a write): it fails only when etcd refuses.
    pub fn applied(&self, answer: &Answer) -> Result<(), String> {
        self.created(answer, 0)
            .map(|_| ())
            .map_err(|e| format!("etcd did not apply the write: {e}"))
    }

    /// The answer to the creation of `n` records: `Ok(None)` this call created them all,
    /// `Ok(Some(i))` record `i` existed (the first that did; none was created). A failed
    /// transaction (a lease etcd no longer has, …) forgets the leases.
    pub fn created(&self, answer: &Answer, n: usize) -> Result<Option<usize>, String> {
        let doc = json_answer(answer).inspect_err(|_| {
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        })?;
        // Something that is not etcd's transaction answer is no answer at all.
        if !doc.get("header").is_some_and(Value::is_object) {
            return Err(format!("not a transaction answer: {doc}"));
        }
        // proto3 JSON leaves out `false`: an answer without `succeeded` is a failed compare.
        if doc.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        if n == 1 {
            return Ok(Some(0));
        }
        // The failure branch read each key: the first with a record is the one used.
        let responses = doc.get("responses").and_then(Value::as_array);
        (0..n)
            .find(|&i| {
                responses
                    .and_then(|r| r.get(i))
                    .and_then(|r| r.pointer("/response_range/kvs"))
                    .and_then(Value::as_array)
                    .is_some_and(|kvs| !kvs.is_empty())
            })
            .map(Some)
            .ok_or_else(|| format!("a failed transaction names no existing record: {doc}"))
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
