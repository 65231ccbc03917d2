//! The xtask's one HTTP client (ureq, plain HTTP/1.1 to 127.0.0.1): readiness of the Envoys it
//! starts and the checks and counters of `cargo xtask load`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::Children;

/// `GET http://127.0.0.1:<port><path>` (with `authorization: Bearer <token>` when given): the
/// status, whatever it is, and the body.
pub(crate) fn get(port: u16, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    let auth = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    get_with(port, path, &headers)
}

/// [`get`] with the request headers given.
pub(crate) fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut req = ureq::get(format!("http://127.0.0.1:{port}{path}"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut resp = req.call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// `POST http://127.0.0.1:<port><path>` with `body` and the request headers given: the status,
/// whatever it is, and the body.
pub(crate) fn post_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut req = ureq::post(format!("http://127.0.0.1:{port}{path}"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

/// `PUT http://127.0.0.1:<port><path>` with a JSON body (a test peer's admin API); fails unless
/// it answers 2xx.
pub(crate) fn put_json(port: u16, path: &str, body: &serde_json::Value) -> Result<()> {
    let resp = ureq::put(format!("http://127.0.0.1:{port}{path}"))
        .config()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .header("content-type", "application/json")
        .send(body.to_string())?;
    if !resp.status().is_success() {
        bail!("PUT {path}: {}", resp.status());
    }
    Ok(())
}

/// Waits until the Envoy admin on `admin` answers `/ready` with 200; fails at once when one of
/// `children` exits (`what`: where its output went), and after `timeout`.
pub(crate) fn wait_ready(
    admin: u16,
    children: &mut Children,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(get(admin, "/ready", None), Ok((200, _))) {
            return Ok(());
        }
        for c in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("a process exited early ({status}); see {what}");
            }
        }
        if Instant::now() > deadline {
            bail!("Envoy admin on 127.0.0.1:{admin} not ready after {timeout:?}; see {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
