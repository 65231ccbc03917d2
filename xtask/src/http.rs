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
    let req = ureq::get(format!("http://127.0.0.1:{port}{path}"));
    answer(with_headers(req, headers).call()?)
}

/// A request to 127.0.0.1 whose status, whatever it is, is answered, with `headers` set.
fn with_headers<B>(
    req: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    let mut req = req
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req
}

/// The status and the body of an answer.
fn answer(mut resp: ureq::http::Response<ureq::Body>) -> Result<(u16, String)> {
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
    let req = ureq::post(format!("http://127.0.0.1:{port}{path}"));
    answer(with_headers(req, headers).send(body)?)
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-connection server that answers 418 with the request line, the `x-probe` header and
    /// the body it got: GET and POST go out as given, and a status that is not 2xx is answered.
    fn serve_once() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut line, mut probe, mut length) = (String::new(), String::new(), 0usize);
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end().to_ascii_lowercase();
                if h.is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("x-probe: ") {
                    probe = v.to_string();
                }
                if let Some(v) = h.strip_prefix("content-length: ") {
                    length = v.parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let text = format!(
                "{} {probe} {}",
                line.trim_end(),
                String::from_utf8(body).unwrap()
            );
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 418 I'm a teapot\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                text.len()
            )
            .unwrap();
        });
        port
    }

    #[test]
    fn requests_carry_their_headers_and_any_status_is_answered() {
        let port = serve_once();
        let got = super::get_with(port, "/a", &[("x-probe", "one")]).unwrap();
        assert_eq!(got, (418, "GET /a HTTP/1.1 one ".to_string()));
        let port = serve_once();
        let got = super::post_with(port, "/b", &[("x-probe", "two")], "{}").unwrap();
        assert_eq!(got, (418, "POST /b HTTP/1.1 two {}".to_string()));
    }
}
