//! The byte layouts proxy-wasm ABI 0.2.1 uses across the host/module boundary.

use wasmtime::{bail, Result};

/// A header map as the harness keeps it: ordered pairs, names lower-cased (as Envoy stores them).
pub type Headers = Vec<(String, String)>;

/// Serializes a header map the way the SDK's `deserialize_map` reads it:
/// `u32 count`, then `count` pairs of `(u32 name_len, u32 value_len)`, then every name and value
/// each followed by a NUL byte. All integers little-endian.
pub(crate) fn serialize_map(out: &mut Vec<u8>, map: &[(String, String)]) {
    let strings: usize = map.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    out.reserve(4 + map.len() * 8 + strings);
    out.extend_from_slice(&len32(map.len()).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&len32(k.len()).to_le_bytes());
        out.extend_from_slice(&len32(v.len()).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

/// Parses a header map serialized by the module (`serialize_map` layout). Names are lower-cased
/// because Envoy lower-cases every header name it stores.
pub(crate) fn deserialize_map(bytes: &[u8]) -> Result<Headers> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let Some(mut p) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        bail!("serialized header map: count {count} overflows");
    };
    let mut map = Vec::with_capacity(count.min(1024));
    for n in 0..count {
        let s = 4 + n * 8;
        let key_len = read_u32(bytes, s)? as usize;
        let value_len = read_u32(bytes, s + 4)? as usize;
        let key = field(bytes, p, key_len)?;
        p += key_len + 1;
        let value = field(bytes, p, value_len)?;
        p += value_len + 1;
        let mut key = String::from_utf8_lossy(key).into_owned();
        key.make_ascii_lowercase();
        map.push((key, String::from_utf8_lossy(value).into_owned()));
    }
    Ok(map)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => bail!("serialized header map truncated at byte {at}"),
    }
}

fn field(bytes: &[u8], at: usize, len: usize) -> Result<&[u8]> {
    match bytes.get(at..at + len) {
        Some(f) => Ok(f),
        None => bail!("serialized header map truncated: {len} bytes at {at}"),
    }
}

/// wasm32 lengths are u32; the harness never builds anything near 4 GiB, so saturate
/// rather than carry an error path through every serializer.
pub(crate) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let map = vec![
            (":method".to_string(), "GET".to_string()),
            ("x-empty".to_string(), String::new()),
        ];
        let mut out = Vec::new();
        serialize_map(&mut out, &map);
        assert_eq!(&out[..4], &[2, 0, 0, 0]);
        assert_eq!(deserialize_map(&out).unwrap_or_default(), map);
        assert!(deserialize_map(&out[..out.len() - 3]).is_err());
        assert_eq!(deserialize_map(&[]).unwrap_or_default(), Vec::new());
    }
}
