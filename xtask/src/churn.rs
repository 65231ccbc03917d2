//! The token-churn load driver of `cargo xtask load`: HTTP/1.1 keep-alive requests from one
//! thread per connection, the request of each index built anew, so that every request can carry
//! a token never sent before (oha sends the same headers every time).
//!
//! Open loop (a fixed rate, latency counted from when each request was due, as oha's
//! `--latency-correction`) or closed loop (saturation). Standard library only: a status line,
//! headers and a body by `content-length` or chunked is all that 127.0.0.1 needs here.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::perf::Run;

/// How the requests are paced.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pace {
    /// `rate` requests a second spread over `connections`, each timed from when it was due: a
    /// slow answer delays the requests behind it, and that wait is counted.
    Open { rate: u32, connections: usize },
    /// Each connection sends its next request as soon as the previous one is answered.
    Closed { connections: usize },
}

impl Pace {
    /// The load rows' open loop: `rate` req/s on `RATE_CONNECTIONS` connections.
    pub(crate) fn at(rate: u32) -> Pace {
        Pace::Open {
            rate,
            connections: crate::perf::RATE_CONNECTIONS as usize,
        }
    }

    /// The load rows' saturation: `SATURATION_CONNECTIONS` connections.
    pub(crate) fn saturation() -> Pace {
        Pace::Closed {
            connections: crate::perf::SATURATION_CONNECTIONS as usize,
        }
    }
}

/// The request of each index, whole (request line, headers, body); `None` when there is none
/// left (the token pool ran out), which stops the run.
pub(crate) type Requests<'a> = &'a (dyn Fn(usize) -> Option<Vec<u8>> + Sync);
/// Whether an answer (status, body) is the one every request must get.
pub(crate) type Check<'a> = &'a (dyn Fn(u16, &[u8]) -> bool + Sync);

/// What one run did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// Latencies in ms, achieved req/s, answers that passed the check and the others (errors
    /// included).
    pub(crate) run: Run,
    /// Indices handed out: each one's request was built at most once, none will be again.
    pub(crate) used: usize,
    /// The requests ran out before the time was up: the numbers are not a full run's.
    pub(crate) ran_out: bool,
}

/// Runs requests against 127.0.0.1:`port` for `seconds`, request `i` being `requests(i)`.
pub(crate) fn run(
    port: u16,
    pace: Pace,
    seconds: f64,
    requests: Requests,
    check: Check,
) -> Result<Outcome> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connections = match pace {
        Pace::Open { connections, .. } | Pace::Closed { connections } => connections.max(1),
    };
    // Time for every thread to connect before the first request is due.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let next = AtomicUsize::new(0);
    let ran_out = AtomicBool::new(false);
    let shared = Shared {
        addr,
        pace,
        start,
        end,
        requests,
        check,
        next: &next,
        ran_out: &ran_out,
    };
    let tallies = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| scope.spawn(|| shared.worker()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a load thread panicked")))
            .collect::<Result<Vec<Tally>>>()
    })?;

    let mut latencies: Vec<Duration> = Vec::new();
    let (mut ok, mut other) = (0, 0);
    for t in tallies {
        latencies.extend(t.latencies);
        ok += t.ok;
        other += t.other;
    }
    latencies.sort_unstable();
    let ms = |q: f64| percentile(&latencies, q).as_secs_f64() * 1000.0;
    Ok(Outcome {
        run: Run {
            rps: (ok + other) as f64 / seconds,
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            ok,
            other,
        },
        used: next.load(Ordering::SeqCst),
        ran_out: ran_out.load(Ordering::SeqCst),
    })
}

/// The nearest-rank percentile of sorted `v` (zero when empty).
fn percentile(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

struct Shared<'a> {
    addr: SocketAddr,
    pace: Pace,
    start: Instant,
    end: Instant,
    requests: Requests<'a>,
    check: Check<'a>,
    next: &'a AtomicUsize,
    ran_out: &'a AtomicBool,
}

/// One connection's count.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ok: u64,
    other: u64,
}

impl Shared<'_> {
    fn worker(&self) -> Tally {
        let mut tally = Tally::default();
        let mut conn = Connection::new(self.addr);
        // Connecting now keeps the handshake out of the first latency; a failure is retried
        // (and counted) by the first request.
        let _ = conn.connect();
        sleep_until(self.start);
        while !self.ran_out.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let due = match self.pace {
                Pace::Open { rate, .. } => {
                    let due = self.start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                    if due >= self.end {
                        break;
                    }
                    Some(due)
                }
                Pace::Closed { .. } => {
                    if Instant::now() >= self.end {
                        break;
                    }
                    None
                }
            };
            let Some(request) = (self.requests)(i) else {
                self.ran_out.store(true, Ordering::Relaxed);
                break;
            };
            if let Some(due) = due {
                sleep_until(due);
            }
            let sent = due.unwrap_or_else(Instant::now);
            let answer = conn.exchange(&request);
            let done = Instant::now();
            // At saturation an answer after the end is cut off, as oha's `-z` does.
            if due.is_none() && done > self.end {
                break;
            }
            match answer {
                Ok((status, body)) => {
                    tally.latencies.push(done - sent);
                    if (self.check)(status, &body) {
                        tally.ok += 1;
                    } else {
                        tally.other += 1;
                    }
                }
                Err(_) => tally.other += 1,
            }
        }
        tally
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// One keep-alive connection, opened again after an error or `connection: close`.
struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Connection {
        Connection { addr, stream: None }
    }

    fn connect(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(BufReader::new(s));
        }
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))
    }

    /// Sends `request` and reads the answer: status and body.
    fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let answer = self.connect().and_then(|r| {
            r.get_mut().write_all(request)?;
            read_response(r)
        });
        match answer {
            Ok(a) => {
                if !a.keep_alive {
                    self.stream = None;
                }
                Ok((a.status, a.body))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A line without its CRLF; end of stream is an error.
fn read_line(r: &mut impl BufRead, line: &mut String) -> io::Result<()> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(())
}

/// An HTTP/1.1 response: status line, headers, then the body by `content-length`, chunked, or
/// (neither) up to the end of the stream.
fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    read_line(r, &mut line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        read_line(r, &mut line)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("a header without a colon"));
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse().map_err(|_| bad("bad content-length"))?);
            }
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" if value.contains("close") => keep_alive = false,
            "connection" if value.contains("keep-alive") => keep_alive = true,
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(r, &mut line)?;
            let hex = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    read_line(r, &mut line)?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..])?;
            read_line(r, &mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if !(status < 200 || status == 204 || status == 304) {
        r.read_to_end(&mut body)?;
        keep_alive = false;
    }
    Ok(Response {
        status,
        body,
        keep_alive,
    })
}

/// Tokens minted ahead of the timing by tests/peers/mint.py (joserfc, not the filter's JOSE
/// library), each with a `jti` of its own; each handed out once (`take`, `consume`).
pub(crate) struct Pool<'a> {
    python: &'a Path,
    /// mint.py's arguments but `--count`.
    args: Vec<String>,
    /// What the tokens are, for the log.
    what: String,
    tokens: Vec<String>,
    used: usize,
}

impl<'a> Pool<'a> {
    pub(crate) fn new(python: &'a Path, args: &[&str], what: &str) -> Pool<'a> {
        Pool {
            python,
            args: args.iter().map(|a| a.to_string()).collect(),
            what: what.to_string(),
            tokens: Vec::new(),
            used: 0,
        }
    }

    /// How many were minted.
    pub(crate) fn minted(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn unused(&self) -> &[String] {
        &self.tokens[self.used.min(self.tokens.len())..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.used = (self.used + n).min(self.tokens.len());
    }

    pub(crate) fn take(&mut self) -> Result<String> {
        self.ensure(1)?;
        let token = self.unused().first().cloned().context("no token minted")?;
        self.consume(1);
        Ok(token)
    }

    /// At least `n` unused tokens: mints the ones missing (never during a timed run).
    pub(crate) fn ensure(&mut self, n: usize) -> Result<()> {
        let missing = n.saturating_sub(self.unused().len());
        if missing == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let out = Command::new(self.python)
            .arg("tests/peers/mint.py")
            .args(&self.args)
            .args(["--count", &missing.to_string()])
            .output()
            .context("running tests/peers/mint.py")?;
        if !out.status.success() {
            bail!(
                "mint.py --count failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let before = self.tokens.len();
        self.tokens.extend(
            String::from_utf8(out.stdout)?
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
        if self.tokens.len() - before != missing {
            bail!(
                "mint.py --count {missing} printed {} tokens",
                self.tokens.len() - before
            );
        }
        println!(
            "minted {missing} {} in {:.1} s",
            self.what,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Response {
        match read_response(&mut text.as_bytes()) {
            Ok(r) => r,
            Err(e) => unreachable!("{text:?} did not parse: {e}"),
        }
    }

    #[test]
    fn reads_a_body_by_content_length_and_stays_open() {
        let r = parse("HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\nx: y\r\n\r\nhello");
        assert_eq!(
            (r.status, r.body.as_slice(), r.keep_alive),
            (401, &b"hello"[..], true)
        );
    }

    #[test]
    fn reads_a_chunked_body_with_trailers() {
        let r = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;x=1\r\n{\"su\r\n3\r\nc\":\r\n0\r\nt: 1\r\n\r\n",
        );
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"suc\":"[..]));
    }

    #[test]
    fn connection_close_or_no_length_ends_the_connection() {
        assert!(
            !parse("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").keep_alive
        );
        let r = parse("HTTP/1.1 200 OK\r\n\r\nrest of stream");
        assert_eq!(
            (r.body.as_slice(), r.keep_alive),
            (&b"rest of stream"[..], false)
        );
    }

    #[test]
    fn a_cut_off_response_is_an_error() {
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..]).is_err()
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
