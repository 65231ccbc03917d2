//! Sealed MCP session handles (`sessions.seal_keys`): the `Mcp-Session-Id` a client sees is the
//! server's session id sealed for the identity that created the session, so that every replica
//! holding the same keys knows whose a session is, without shared state and across restarts.
//!
//! A handle is `t1.<absolute>.<owner tag>.<server's id>.<mac>` (base64url parts):
//! - `absolute`: when the handle stops being accepted (`limits.session_ttl_s` after creation);
//! - owner tag: HMAC-SHA-256 of the owner (`Decision::session_owner`) under the key, cut to 96
//!   bits, so that a handle tells "another identity's session" (403) from "unknown" (404)
//!   without naming the identity;
//! - mac: HMAC-SHA-256 over the route, `absolute`, the owner tag and the server's id, each
//!   length-prefixed (no two field lists serialise alike).
//!
//! The first key seals; every key opens (rotation: add the new key first, remove the old one
//! once its handles are past `session_ttl_s`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted: 256 bits, the size of the MAC.
pub const MIN_KEY_BYTES: usize = 32;
/// Most keys one configuration holds (each is tried on every presented handle).
pub const MAX_KEYS: usize = 4;
/// Longest server session id sealed (a UUID is 36 bytes): a longer one is not passed on.
pub const MAX_SERVER_ID_BYTES: usize = 512;
/// Longest handle opened: anything longer is not one of ours, and is not decoded.
const MAX_HANDLE_BYTES: usize = 1024;
const VERSION: &str = "t1";
const OWNER_TAG_BYTES: usize = 12;

/// Why a presented handle opens to no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Not a handle of these keys (forged, altered, another route, a server's raw id).
    Unknown,
    /// Past its absolute lifetime.
    Expired,
    /// Sealed for another identity.
    NotYours,
}

/// The keys of `sessions.seal_keys`.
pub struct Sealer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

impl Sealer {
    /// Keys in base64 (standard or URL-safe alphabet, padded or not), each at least 32 bytes.
    pub fn compile(keys: &[String]) -> Result<Sealer, ConfigError> {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let field = "sessions.seal_keys";
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(ConfigError::new(
                field,
                format!("between 1 and {MAX_KEYS} keys (the first seals, every one opens)"),
            ));
        }
        let mut decoded: Vec<Vec<u8>> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let text = k.trim_end_matches('=');
            let key = STANDARD_NO_PAD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| ConfigError::new(format!("{field}[{i}]"), "not base64"))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(ConfigError::new(
                    format!("{field}[{i}]"),
                    format!(
                        "{} bytes; a key needs at least {MIN_KEY_BYTES} random bytes \
                         (e.g. `openssl rand -base64 32`)",
                        key.len()
                    ),
                ));
            }
            if decoded.contains(&key) {
                return Err(ConfigError::new(format!("{field}[{i}]"), "duplicate key"));
            }
            decoded.push(key);
        }
        Ok(Sealer { keys: decoded })
    }

    /// The handle of the server's session `id` on `route`, for `owner`, accepted until `absolute`.
    pub fn seal(&self, route: &str, owner: &str, id: &str, absolute: u64) -> String {
        // `compile` guarantees a first key; without one nothing could be opened either.
        let key = self.keys.first().map(Vec::as_slice).unwrap_or_default();
        let tag = owner_tag(key, owner);
        let mac = mac(key, route, absolute, &tag, id.as_bytes()).finalize();
        format!(
            "{VERSION}.{absolute}.{}.{}.{}",
            B64.encode(tag),
            B64.encode(id),
            B64.encode(mac.into_bytes())
        )
    }

    /// The server's session id a handle presented on `route` by `owner` stands for, while it
    /// is within its lifetime — and within `max_ttl_s` from now, so that shortening
    /// `limits.session_ttl_s` shortens the handles sealed before.
    pub fn open(
        &self,
        route: &str,
        owner: &str,
        handle: &str,
        now_s: u64,
        max_ttl_s: u64,
    ) -> Result<String, Closed> {
        if handle.len() > MAX_HANDLE_BYTES {
            return Err(Closed::Unknown);
        }
        let mut parts = handle.split('.');
        let (Some(VERSION), Some(absolute), Some(tag), Some(id), Some(sent), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Closed::Unknown);
        };
        // A canonical decimal only: "07" and "7" must not be two handles of one seal.
        let absolute: u64 = match absolute.parse() {
            Ok(a) if absolute == format!("{a}") => a,
            _ => return Err(Closed::Unknown),
        };
        let (Ok(tag), Ok(id), Ok(sent)) = (B64.decode(tag), B64.decode(id), B64.decode(sent))
        else {
            return Err(Closed::Unknown);
        };
        for key in &self.keys {
            if mac(key, route, absolute, &tag, &id)
                .verify_slice(&sent)
                .is_err()
            {
                continue;
            }
            if absolute <= now_s || absolute > now_s.saturating_add(max_ttl_s) {
                return Err(Closed::Expired);
            }
            let mut mine = HmacSha256::new_from_slice(key).map_err(|_| Closed::Unknown)?;
            mine.update(b"tessera mcp session owner\0");
            mine.update(owner.as_bytes());
            if mine.verify_truncated_left(&tag).is_err() || tag.len() != OWNER_TAG_BYTES {
                return Err(Closed::NotYours);
            }
            return String::from_utf8(id).map_err(|_| Closed::Unknown);
        }
        Err(Closed::Unknown)
    }
}

fn owner_tag(key: &[u8], owner: &str) -> Vec<u8> {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(b"tessera mcp session owner\0");
    m.update(owner.as_bytes());
    let mut tag = m.finalize().into_bytes().to_vec();
    tag.truncate(OWNER_TAG_BYTES);
    tag
}

/// The MAC of a handle's fields, each length-prefixed.
fn mac(key: &[u8], route: &str, absolute: u64, tag: &[u8], id: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => HmacSha256::new(&Default::default()),
    };
    m.update(b"tessera mcp session t1\0");
    for field in [route.as_bytes(), &absolute.to_be_bytes(), tag, id] {
        m.update(&(field.len() as u64).to_be_bytes());
        m.update(field);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(keys: &[&[u8]]) -> Sealer {
        let keys: Vec<String> = keys
            .iter()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
            .collect();
        Sealer::compile(&keys).unwrap()
    }

    const K1: &[u8] = &[1; 32];
    const K2: &[u8] = &[2; 32];

    #[test]
    fn a_handle_opens_for_its_owner_on_its_route_until_it_expires() {
        let s = sealer(&[K1]);
        let h = s.seal("mcp", "alice", "srv-session-1", 100);
        assert!(h.starts_with("t1.100."), "{h}");
        assert!(
            h.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII: {h}"
        );
        assert_eq!(
            s.open("mcp", "alice", &h, 99, 1000).as_deref(),
            Ok("srv-session-1")
        );
        assert_eq!(s.open("mcp", "alice", &h, 100, 1000), Err(Closed::Expired));
        // A lifetime cut since: the handle ends with it.
        assert_eq!(s.open("mcp", "alice", &h, 10, 50), Err(Closed::Expired));
        let long = "x".repeat(2000);
        assert_eq!(
            s.open("mcp", "alice", &long, 10, 1000),
            Err(Closed::Unknown)
        );
        assert_eq!(s.open("mcp", "bob", &h, 99, 1000), Err(Closed::NotYours));
        assert_eq!(s.open("mcp2", "alice", &h, 99, 1000), Err(Closed::Unknown));
    }

    #[test]
    fn an_altered_handle_or_a_raw_server_id_is_unknown() {
        let s = sealer(&[K1]);
        let h = s.seal("mcp", "alice", "srv-1", 100);
        let parts: Vec<&str> = h.split('.').collect();
        let with = |i: usize, v: &str| {
            let mut p = parts.clone();
            p[i] = v;
            p.join(".")
        };
        let other_id = B64.encode("srv-2");
        for forged in [
            with(1, "1000"),    // a longer life
            with(1, "0100"),    // the same number, written otherwise
            with(3, &other_id), // another session of the server
            with(2, &B64.encode([0u8; 12])),
            with(0, "t2"),
            format!("{h}.x"),
            "srv-1".to_string(),
            String::new(),
        ] {
            assert_eq!(
                s.open("mcp", "alice", &forged, 10, 1000),
                Err(Closed::Unknown),
                "{forged}"
            );
        }
        // Sealed by keys we do not hold.
        let theirs = sealer(&[K2]).seal("mcp", "alice", "srv-1", 100);
        assert_eq!(
            s.open("mcp", "alice", &theirs, 10, 1000),
            Err(Closed::Unknown)
        );
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = sealer(&[K1]).seal("mcp", "alice", "srv-1", 100);
        let rotated = sealer(&[K2, K1]);
        assert_eq!(
            rotated.open("mcp", "alice", &old, 10, 1000).as_deref(),
            Ok("srv-1")
        );
        let new = rotated.seal("mcp", "alice", "srv-1", 100);
        assert_eq!(
            sealer(&[K2])
                .open("mcp", "alice", &new, 10, 1000)
                .as_deref(),
            Ok("srv-1")
        );
        assert_eq!(
            sealer(&[K1]).open("mcp", "alice", &new, 10, 1000),
            Err(Closed::Unknown)
        );
    }

    #[test]
    fn keys_must_be_long_distinct_base64_and_few() {
        let err = |keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            Sealer::compile(&keys).unwrap_err().to_string()
        };
        let k = base64::engine::general_purpose::STANDARD.encode(K1);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert!(
            Sealer::compile(&[url]).is_ok(),
            "URL-safe alphabet, no padding"
        );
        assert!(err(&[]).contains("sessions.seal_keys"));
        assert!(err(&["c2hvcnQ="]).contains("sessions.seal_keys[0]"));
        assert!(err(&[&k, "%%"]).contains("`sessions.seal_keys[1]`: not base64"));
        assert!(err(&[&k, &k]).contains("duplicate"));
        assert!(err(&[k.as_str(); 5]).contains("between 1 and 4"));
    }
}
