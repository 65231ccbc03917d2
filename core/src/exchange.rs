//! One request and its answer, hook by hook, as the proxy sees them: the request path top-down.
//! Each hook takes what the proxy has (headers as bytes, a way to read the body), runs the
//! stages, and returns the [`Outcome`] the proxy executes as it is.
//!
//! ```text
//! request headers ─▶ route ─▶ credential ─▶ identity ─▶ Cedar ─▶ decision   (Engine::check)
//!                                                        │
//!        MCP POST: wait for the body ─▶ every message ─▶ decision   (Engine::check_mcp)
//!                                                        │
//!                    obligations: single-use, approval, session (obligations.rs, the Store)
//!                                                        │
//!                                   outcome: forward with edits │ reply │ wait
//! answer headers ─▶ bind or end the MCP session; list answers ─▶ filtered (listing/)
//! ```
//!
//! A stage may need a call first (keys fetched again, a status list): the request then waits
//! (`Next::Call`), its body is kept if it arrives meanwhile, and the call's answer
//! ([`Exchange::on_call_answer`]) decides it again from its headers.
//!
//! Everything that outlives the exchange goes through the [`Store`].

use std::borrow::Cow;

use crate::config::Mode;
use crate::engine::{Decision, Engine, HttpRequest, Pending, SINGLE_HEADERS, UTF8_HEADERS};
use crate::listing::{ListRequests, ResponseFilter, Step};
use crate::mcp_revision::Mirrored;
use crate::obligations::Redeemed;
use crate::outcome::{Answer, Call, Callout, Counter, Level, Next, Outcome, Purpose};
use crate::pop::connection::{Connection, RequestFacts};
use crate::reply::{log_safe, LocalReply};
use crate::session::{Binding, SessionCaller};
use crate::store::Store;
use crate::verdict::Verdict;

/// The state of one exchange between hooks.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Format the per-request decision line (the proxy keeps debug lines).
    debug: bool,
    /// An MCP POST waiting for its whole body.
    pending: Option<(Pending, Head)>,
    /// An allowed MCP request: a session its answer creates is bound to this caller.
    caller: Option<SessionCaller>,
    /// The list requests of an allowed MCP request, then the filter of their answers.
    lists: Option<Lists>,
    /// A request waiting for a call.
    waiting: Option<Waiting>,
    /// A security event pushed to the filter, waiting for its body.
    event: Option<Head>,
    /// A decision waiting for the shared store to record its single-use credentials.
    redeeming: Option<Redeeming>,
    /// A pushed event's reply waiting for the shared store to hold its revocations.
    publishing: Option<Publishing>,
    /// A reply asking for approval, waiting for the announcement to the approvers.
    announcing: Option<LocalReply>,
    /// The connection (`set_connection`) and the listed headers, read with the request headers.
    facts: RequestFacts,
}

/// The reply to a pushed security event, sent once its revocations are in the shared store.
#[derive(Debug)]
struct Publishing {
    purpose: Purpose,
    revocations: Vec<crate::revocation::Revocation>,
    reply: LocalReply,
    request_id: String,
    calls: u8,
}

/// A decision whose single-use credential `index` waits for the shared store's answer.
#[derive(Debug)]
struct Redeeming {
    purpose: Purpose,
    decision: Decision,
    head: Head,
    index: usize,
    /// Calls this redemption has made (a lease, then the record, per credential).
    calls: u8,
}

/// A request waiting for a call: what deciding it again needs.
#[derive(Debug)]
struct Waiting {
    purpose: Purpose,
    headers: Vec<(String, Vec<u8>)>,
    request_id: String,
    end_of_stream: bool,
    /// The whole body, when it ended while the request waited.
    body: Option<Vec<u8>>,
    /// Calls this request has waited for: a request waits for a few at most.
    rounds: u8,
}

/// Most calls one request waits for (keys, then a status list, …); then it gets 503.
const MAX_ROUNDS: u8 = 3;
/// Most calls to the shared store one decision's redemption makes (a lease and a record per
/// credential: an approval and a single-use token need four).
const MAX_STORE_CALLS: u8 = 8;

#[derive(Debug)]
enum Lists {
    Awaiting(ListRequests),
    Filtering(ResponseFilter),
}

/// What the obligations and the log line need of the request, read with its headers.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    host: String,
    request_id: String,
    /// `Mcp-Session-Id`.
    session: Option<Vec<u8>>,
    /// The MCP headers that mirror the body.
    mirrored: Mirrored,
}

/// The request id a log line and a reply carry: `x-request-id` as the proxy set it, or `fresh`.
pub fn request_id(headers: &[(String, Vec<u8>)], fresh: &dyn Fn() -> String) -> String {
    match headers.iter().find(|(k, _)| k == "x-request-id") {
        Some((_, v)) if !v.is_empty() => String::from_utf8_lossy(v).into_owned(),
        _ => fresh(),
    }
}

/// A body one byte over the limit: what the size checks see of an over-size body.
fn oversize_body(engine: &Engine) -> Vec<u8> {
    vec![b' '; engine.max_body_bytes().saturating_add(1)]
}

/// No configuration compiled: every request gets 503.
pub fn unavailable(request_id: &str) -> Outcome {
    let mut o = Outcome::forward();
    o.count(Counter::Unavailable, 1);
    o.log(
        Level::Warn,
        format!(
            "tessera decision=unavailable request_id={}",
            log_safe(request_id)
        ),
    );
    o.next = Next::Reply(LocalReply::unavailable(request_id));
    o
}

impl Exchange {
    /// `debug`: the proxy keeps debug lines, so the decision line is worth formatting.
    pub fn new(debug: bool) -> Exchange {
        Exchange {
            debug,
            ..Exchange::default()
        }
    }

    /// What the proxy says about the connection the request came on (its attributes, read
    /// before the request headers): the source address, the client certificate.
    pub fn set_connection(&mut self, connection: Connection) {
        self.facts.connection = connection;
    }

    /// The request's dynamic metadata (`jwt_authn::ATTRIBUTE`), where Envoy's `jwt_authn` put
    /// the payloads it verified; read with the request headers when `Engine::reads_jwt_authn`.
    pub fn set_jwt_authn(&mut self, metadata: Option<Vec<u8>>) {
        self.facts.jwt_authn = metadata;
    }

    /// The request headers (as bytes: a value that is not UTF-8 must not abort anything).
    pub fn on_request_headers(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        headers: &[(String, Vec<u8>)],
        request_id: String,
        end_of_stream: bool,
        now_s: u64,
    ) -> Outcome {
        self.request_headers(engine, store, headers, request_id, end_of_stream, now_s, 0)
    }

    /// The answer to the call the request waits for: the engine takes it, then the request is
    /// decided again from its headers (and its body, if that came meanwhile).
    pub fn on_call_answer(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        answer: &Answer,
        now_s: u64,
    ) -> Outcome {
        if let Some(r) = self.redeeming.take() {
            return self.redeem_answered(engine, store, r, answer, now_s);
        }
        if let Some(p) = self.publishing.take() {
            return self.published(engine, store, p, answer, now_s);
        }
        if let Some(reply) = self.announcing.take() {
            engine.call_ended();
            let mut out = Outcome::forward();
            if !(200..300).contains(&answer.status) {
                out.log(
                    Level::Warn,
                    format!(
                        "tessera: the approval webhook answered {} (0: no answer); the approval \
                         request was not announced",
                        answer.status
                    ),
                );
            }
            out.next = Next::Reply(reply);
            return out;
        }
        let Some(mut w) = self.waiting.take() else {
            return Outcome::forward();
        };
        let (next, failed) = engine.answered(&w.purpose, answer, store, now_s);
        engine.call_ended();
        let mut logs = Vec::new();
        if let Some(line) = failed {
            logs.push((Level::Warn, line));
        }
        if let Some(call) = next.into_iter().next() {
            // Discovery led to the JWKS: wait for that too (in the same place).
            engine.hold_call(&call, now_s);
            w.purpose = call.purpose.clone();
            self.waiting = Some(w);
            return Outcome {
                logs,
                next: Next::Call(call),
                ..Outcome::forward()
            };
        }
        let mut out = self.request_headers(
            engine,
            store,
            &w.headers,
            w.request_id,
            w.end_of_stream,
            now_s,
            w.rounds,
        );
        out.logs.splice(0..0, logs);
        match (&mut self.waiting, w.body) {
            // Another call to wait for: the body stays with the request.
            (Some(again), body) => again.body = body,
            // Decided to wait for a body that has come already.
            (None, Some(body)) if out.next == Next::WaitForBody => {
                let decided = if self.event.is_some() {
                    self.receive_push(engine, store, &body, now_s)
                } else {
                    self.decide_body(engine, store, &body, now_s)
                };
                out = Outcome {
                    headers: [out.headers, decided.headers].concat(),
                    logs: [out.logs, decided.logs].concat(),
                    ..decided
                };
            }
            (None, _) => {}
        }
        out
    }

    /// Whether the request waits for a call's answer.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
            || self.redeeming.is_some()
            || self.publishing.is_some()
            || self.announcing.is_some()
    }

    /// The request is decided and waits for a call before its decision takes effect (a
    /// redemption in the shared store, the write of a pushed event, the announcement of an
    /// approval request): a body or trailers arriving meanwhile are held, never passed on.
    fn holds(&self) -> bool {
        self.redeeming.is_some() || self.publishing.is_some() || self.announcing.is_some()
    }

    /// The stream ended while the request waited for a call: that call will not be answered.
    pub fn abandon(&mut self, engine: &Engine) {
        if let Some(w) = self.waiting.take() {
            engine.abandoned(&w.purpose);
        }
        if let Some(r) = self.redeeming.take() {
            engine.abandoned(&r.purpose);
        }
        if let Some(p) = self.publishing.take() {
            engine.abandoned(&p.purpose);
        }
        if self.announcing.take().is_some() {
            engine.abandoned(&Purpose::Announce);
        }
    }

    /// The request headers, decided (again, after `rounds` calls).
    #[allow(clippy::too_many_arguments)]
    fn request_headers(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        headers: &[(String, Vec<u8>)],
        request_id: String,
        end_of_stream: bool,
        now_s: u64,
        rounds: u8,
    ) -> Outcome {
        let mut out = Outcome::forward();
        // Client-sent copies of the identity headers never reach the upstream.
        for name in engine.owned_headers() {
            out.remove(name);
        }
        let approval_header = engine.approval_header();
        let listed = engine.listed_headers();
        let not_utf8 = headers.iter().any(|(k, v)| {
            (UTF8_HEADERS.contains(&k.as_str())
                || Some(k.as_str()) == approval_header
                || listed.iter().any(|l| l == k))
                && std::str::from_utf8(v).is_err()
        });
        if not_utf8 {
            out.count(Counter::Deny, 1);
            out.next = Next::Reply(LocalReply::json_error(
                400,
                "bad_request",
                Some("a header the filter reads is not UTF-8"),
                &[],
                &request_id,
            ));
            return out;
        }
        // Borrowed, not copied, when UTF-8 (those the decision reads were checked above).
        let first = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v))
        };
        self.facts.headers = listed
            .iter()
            .filter_map(|name| Some((name.clone(), first(name)?.into_owned())))
            .collect();
        let method = first(":method").unwrap_or_default();
        let path = first(":path").unwrap_or_default();
        let host = first(":authority").unwrap_or_default();
        let authorization = first("authorization");
        let scheme = first(":scheme").unwrap_or_default();
        let dpop = first("dpop");
        let content_type = first("content-type");
        let approval = approval_header.and_then(first);
        // A header that must be single came twice, or also under another spelling (`mcp_session_id`,
        // which a server folding `_` into `-` would read): the upstream could read the other copy.
        let repeated = SINGLE_HEADERS
            .iter()
            .copied()
            .chain(approval_header)
            .chain(listed.iter().map(String::as_str))
            .find(|name| {
                headers.iter().filter(|(k, _)| k == name).count() > 1
                    || headers
                        .iter()
                        .any(|(k, _)| k != name && k.replace('_', "-") == *name)
            });
        let request = HttpRequest {
            method: &method,
            path: &path,
            host: &host,
            authorization: authorization.as_deref(),
            request_id: &request_id,
            content_type: content_type.as_deref(),
            approval: approval.as_deref(),
            repeated,
            mirrored: None,
            scheme: &scheme,
            dpop: dpop.as_deref(),
            facts: Some(&self.facts),
            sent_path: None,
        };
        let mut decision = engine.check(&request, store, now_s);
        if let Some(call) = decision.call.take() {
            if rounds < MAX_ROUNDS {
                self.waiting = Some(Waiting {
                    purpose: call.purpose.clone(),
                    headers: headers.to_vec(),
                    request_id,
                    end_of_stream,
                    body: None,
                    rounds: rounds + 1,
                });
                out.next = Next::Call(call);
                return out;
            }
            out.count(Counter::Error, 1);
            out.next = Next::Reply(LocalReply::json_error(
                503,
                "unavailable",
                Some("the request waited for too many calls"),
                &[],
                &request_id,
            ));
            return out;
        }
        let receive_push = decision.receive_pushed;
        let head = Head {
            session: headers
                .iter()
                .find(|(k, _)| k == "mcp-session-id")
                .map(|(_, v)| v.clone()),
            mirrored: Mirrored {
                version: first("mcp-protocol-version").map(Cow::into_owned),
                method: first("mcp-method").map(Cow::into_owned),
                name: first("mcp-name").map(Cow::into_owned),
            },
            method: method.into_owned(),
            path: path.into_owned(),
            host: host.into_owned(),
            request_id,
        };
        if receive_push {
            // A security event pushed to the filter: its body is the event.
            self.event = Some(head);
            let next = if end_of_stream {
                self.receive_push(engine, store, &[], now_s)
            } else {
                Outcome::wait_for_body()
            };
            return Outcome {
                headers: [out.headers, next.headers].concat(),
                ..next
            };
        }
        if let Some(pending) = decision.pending.take() {
            let declared = first("content-length").and_then(|l| l.trim().parse::<usize>().ok());
            self.pending = Some((pending, head));
            let next = if declared.is_some_and(|l| l > engine.max_body_bytes()) {
                // Refused before anything is buffered: the decision sees an over-size body.
                self.oversize(engine, store, now_s)
            } else if end_of_stream {
                self.decide_body(engine, store, &[], now_s)
            } else {
                // Nothing is forwarded until the body has been judged.
                Outcome::wait_for_body()
            };
            return Outcome {
                headers: [out.headers, next.headers].concat(),
                ..next
            };
        }
        self.finish(engine, store, &mut out, decision, &head, now_s);
        out
    }

    /// A chunk of the request body arrived (`body_size`: all the proxy holds so far); `read`
    /// gives those bytes, and is called only when the body is judged.
    pub fn on_request_body(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        body_size: usize,
        end_of_stream: bool,
        now_s: u64,
        read: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Outcome {
        let wait = Outcome::wait_for_body();
        if self.holds() {
            // Decided, and waiting for a call before the decision takes effect (the shared
            // store, an announcement): nothing passes meanwhile.
            return wait;
        }
        if let Some(w) = self.waiting.as_mut() {
            // Kept for when the call is answered; nothing passes meanwhile.
            if body_size > engine.max_body_bytes() {
                w.body = Some(oversize_body(engine));
            } else if end_of_stream {
                w.body = Some(read(body_size));
            }
            return wait;
        }
        if self.event.is_some() {
            if !end_of_stream && body_size <= engine.max_body_bytes() {
                return wait;
            }
            let body = if body_size > engine.max_body_bytes() {
                oversize_body(engine)
            } else {
                read(body_size)
            };
            return self.receive_push(engine, store, &body, now_s);
        }
        if self.pending.is_none() {
            return Outcome::forward();
        }
        if body_size > engine.max_body_bytes() {
            return self.oversize(engine, store, now_s);
        }
        if !end_of_stream {
            // Buffer: the proxy holds the chunks until the end of the stream.
            return Outcome::wait_for_body();
        }
        let body = read(body_size);
        self.decide_body(engine, store, &body, now_s)
    }

    /// A request may end with trailers instead of a last body chunk (HTTP/2, chunked HTTP/1.1):
    /// the body is then complete, and it is judged exactly as at the end of the body. Trailers
    /// never carry the headers the filter owns to the upstream.
    pub fn on_request_trailers(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        now_s: u64,
        read: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Outcome {
        let mut trailers: Vec<_> = engine
            .owned_headers()
            .iter()
            .map(|n| (n.clone(), None))
            .collect();
        trailers.extend(engine.approval_header().map(|h| (h.to_string(), None)));
        // What identifies a request is read from its headers only: a copy in the trailers (which a
        // server might merge into the headers) is removed.
        trailers.extend(SINGLE_HEADERS.iter().map(|h| (h.to_string(), None)));
        trailers.extend(engine.listed_headers().iter().map(|h| (h.clone(), None)));
        let limit = engine.max_body_bytes();
        let mut out = if self.holds() {
            Outcome::wait_for_body()
        } else if let Some(w) = self.waiting.as_mut() {
            let body = read(limit.saturating_add(1));
            w.body = Some(body);
            Outcome::wait_for_body()
        } else if self.event.is_some() {
            let body = read(limit.saturating_add(1));
            self.receive_push(engine, store, &body, now_s)
        } else if self.pending.is_none() {
            Outcome::forward()
        } else {
            let body = read(limit.saturating_add(1));
            if body.len() > limit {
                self.oversize(engine, store, now_s)
            } else {
                self.decide_body(engine, store, &body, now_s)
            }
        };
        out.trailers = trailers;
        out
    }

    /// The answer's headers (`header` reads one as bytes: the upstream chooses them).
    pub fn on_response_headers(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        header: &dyn Fn(&str) -> Option<Vec<u8>>,
        end_of_stream: bool,
        now_s: u64,
    ) -> Outcome {
        let mut out = Outcome::forward();
        if let Some(Lists::Awaiting(lists)) = self.lists.take() {
            let lossy = |name: &str| header(name).map(|v| String::from_utf8_lossy(&v).into_owned());
            let (filter, edits) = ResponseFilter::on_headers(lists, &lossy, end_of_stream);
            self.lists = filter.map(Lists::Filtering);
            out.headers = edits;
        }
        // The server created a session for this caller (on `initialize`): bind it, or seal its
        // id (session/). Or it ended the caller's session (DELETE): unbind it.
        let Some(caller) = self.caller.take() else {
            return out;
        };
        let text = |name| header(name).and_then(|s| String::from_utf8(s).ok());
        let status = text(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        if caller.ends_session() {
            // A DELETE answer that repeats the session id does not bind it again.
            engine.end_session(store, &caller, status);
            return out;
        }
        let Some(session) = text("mcp-session-id") else {
            if engine.seals_sessions() && header("mcp-session-id").is_some() {
                // Not UTF-8: it cannot be sealed, and a raw id never reaches the client.
                out.remove("mcp-session-id");
            }
            return out;
        };
        match engine.bind_session(store, &caller, &session, now_s) {
            Binding::Bound => {}
            Binding::Sealed(handle) => out.set("mcp-session-id", &handle),
            Binding::Withheld(why) => {
                out.log(
                    Level::Warn,
                    format!("tessera: MCP session id withheld: {why}"),
                );
                out.remove("mcp-session-id");
            }
            Binding::Refused { limit, enforce } => {
                out.log(
                    Level::Warn,
                    format!("tessera: MCP session refused: {limit}"),
                );
                if enforce {
                    // The client tries again later, without a session it cannot use.
                    out.remove("mcp-session-id");
                    out.set(":status", "503");
                    out.set("retry-after", "60");
                }
            }
            Binding::Failed(e) => out.log(
                Level::Error,
                format!("tessera: cannot bind MCP session: {e}"),
            ),
        }
        out
    }

    /// A chunk of the answer's body: a list answer is filtered (`read` gives what the proxy
    /// holds, and is called only when it is judged).
    pub fn on_response_body(
        &mut self,
        engine: &Engine,
        end_of_stream: bool,
        now_s: u64,
        read: &mut dyn FnMut() -> Vec<u8>,
    ) -> Outcome {
        let Some(Lists::Filtering(f)) = self.lists.as_mut() else {
            return Outcome::forward();
        };
        let step = f.on_body(engine, end_of_stream, now_s, read);
        self.finish_lists(step)
    }

    /// A list answer that ends with trailers: its filtering finishes here (it never passes
    /// unfiltered).
    pub fn on_response_trailers(
        &mut self,
        engine: &Engine,
        now_s: u64,
        read: &mut dyn FnMut() -> Vec<u8>,
    ) -> Outcome {
        let Some(Lists::Filtering(f)) = self.lists.as_mut() else {
            return Outcome::forward();
        };
        let step = f.on_trailers(engine, now_s, read);
        self.finish_lists(step)
    }

    /// Decides a buffered MCP body (or an absent one).
    fn decide_body(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        body: &[u8],
        now_s: u64,
    ) -> Outcome {
        let mut out = Outcome::forward();
        let Some((pending, head)) = self.pending.take() else {
            return out;
        };
        let request = HttpRequest {
            method: &head.method,
            path: &head.path,
            host: &head.host,
            request_id: &head.request_id,
            mirrored: Some(&head.mirrored),
            facts: Some(&self.facts),
            ..HttpRequest::default()
        };
        let decision = engine.check_mcp(&pending, &request, body, store, now_s);
        self.finish(engine, store, &mut out, decision, &head, now_s);
        out
    }

    /// The body is over the limit: the engine's own size check makes the 413 and the log line.
    fn oversize(&mut self, engine: &Engine, store: &dyn Store, now_s: u64) -> Outcome {
        self.decide_body(engine, store, &oversize_body(engine), now_s)
    }

    /// The body of a push to the filter (a security event, an approval): the engine applies it
    /// and answers the sender.
    fn receive_push(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        body: &[u8],
        now_s: u64,
    ) -> Outcome {
        let mut out = Outcome::forward();
        let Some(head) = self.event.take() else {
            return out;
        };
        let (reply, revocations, share) =
            engine.receive_pushed(&head.path, &head.method, body, store, now_s);
        out.count(Counter::Public, 1);
        if self.debug || reply.status != 202 {
            out.log(
                if reply.status == 202 {
                    Level::Debug
                } else {
                    Level::Warn
                },
                format!(
                    "tessera push path={} status={} request_id={} {}",
                    log_safe(&head.path),
                    reply.status,
                    log_safe(&head.request_id),
                    log_safe(&reply.body)
                ),
            );
        }
        match share {
            // Accepted once the other replicas can see it too (`store.etcd`).
            Some(call) => {
                engine.hold_call(&call, now_s);
                self.publishing = Some(Publishing {
                    purpose: call.purpose.clone(),
                    revocations,
                    reply,
                    request_id: head.request_id,
                    calls: 1,
                });
                out.next = Next::Call(call);
            }
            None => out.next = Next::Reply(reply),
        }
        out
    }

    /// The shared store answered a write of a pushed event's revocations.
    fn published(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        mut p: Publishing,
        answer: &Answer,
        now_s: u64,
    ) -> Outcome {
        engine.call_ended();
        let _ = store;
        let mut out = Outcome::forward();
        match engine.push_written(&p.revocations, &p.purpose, answer, now_s) {
            Ok(Some(call)) if p.calls < MAX_ROUNDS => {
                engine.hold_call(&call, now_s);
                p.purpose = call.purpose.clone();
                p.calls += 1;
                self.publishing = Some(p);
                out.next = Next::Call(call);
            }
            Ok(None) => out.next = Next::Reply(p.reply),
            result => {
                let why = "recorded on this proxy, not yet shared with the other replicas";
                if let Err(e) = result {
                    out.log(
                        Level::Warn,
                        format!("tessera: security event not shared: {e}"),
                    );
                }
                out.next = Next::Reply(LocalReply::retry_later(why, &p.request_id));
            }
        }
        out
    }

    /// The obligations of a final decision (the session it presents, the single-use
    /// credentials it uses), then its outcome: counted, logged, and a reply or the request
    /// forwarded with its edits (a forwarded request whose answer carries list results has that
    /// answer filtered).
    fn finish(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        out: &mut Outcome,
        mut decision: Decision,
        head: &Head,
        now_s: u64,
    ) {
        let (method, request_id) = (&head.method, &head.request_id);
        self.caller = engine.check_session(
            store,
            &mut decision,
            method,
            head.session.as_deref(),
            request_id,
            now_s,
        );
        let redeemed = engine.redeem(store, &decision, 0, request_id, now_s);
        self.redeemed(engine, out, decision, head.clone(), redeemed, 0, now_s);
    }

    /// Goes on from where the redemption of `decision`'s single-use credentials stands: waits
    /// for the shared store, or settles the decision (refused after all, or as it is).
    #[allow(clippy::too_many_arguments)]
    fn redeemed(
        &mut self,
        engine: &Engine,
        out: &mut Outcome,
        decision: Decision,
        head: Head,
        redeemed: Redeemed,
        calls: u8,
        now_s: u64,
    ) {
        match redeemed {
            Redeemed::Stands => self.settle(engine, out, decision, &head, now_s),
            Redeemed::Refused(refused) => {
                // Refused after all: no answer of the server to follow up on.
                self.caller = None;
                self.settle(engine, out, *refused, &head, now_s);
            }
            Redeemed::Wait { call, index } => {
                if calls >= MAX_STORE_CALLS || !engine.try_hold_call(&call, now_s) {
                    out.count(Counter::Error, 1);
                    self.caller = None;
                    out.next = Next::Reply(LocalReply::retry_later(
                        "cannot record a single-use credential now: too many calls",
                        &head.request_id,
                    ));
                    return;
                }
                self.redeeming = Some(Redeeming {
                    purpose: call.purpose.clone(),
                    decision,
                    head,
                    index,
                    calls: calls + 1,
                });
                out.next = Next::Call(call);
            }
        }
    }

    /// The shared store answered a redemption's call.
    fn redeem_answered(
        &mut self,
        engine: &Engine,
        store: &dyn Store,
        r: Redeeming,
        answer: &Answer,
        now_s: u64,
    ) -> Outcome {
        engine.call_ended();
        let redeemed = engine.redeem_answered(
            store,
            &r.decision,
            r.index,
            &r.purpose,
            answer,
            &r.head.request_id,
            now_s,
        );
        let mut out = Outcome::forward();
        self.redeemed(
            engine, &mut out, r.decision, r.head, redeemed, r.calls, now_s,
        );
        out
    }

    /// A final decision's outcome: counted, logged, and a reply or the request forwarded with
    /// its edits (a forwarded request whose answer carries list results has that answer
    /// filtered).
    fn settle(
        &mut self,
        engine: &Engine,
        out: &mut Outcome,
        decision: Decision,
        head: &Head,
        now_s: u64,
    ) {
        let (method, path, request_id) = (&head.method, &head.path, &head.request_id);
        out.count(
            match decision.verdict {
                Verdict::Allow => Counter::Allow,
                Verdict::Public => Counter::Public,
                Verdict::Deny => Counter::Deny,
                Verdict::Unauthenticated => Counter::Unauthenticated,
                Verdict::Error => Counter::Error,
            },
            1,
        );
        if self.debug {
            let mut line = decision.log_line(method, path, request_id);
            if engine.mode() == Mode::Shadow {
                line.push_str(" mode=shadow");
            }
            out.log(Level::Debug, line);
        }
        if let Some(reply) = decision.reply {
            if let (Some(body), Some(w)) = (decision.notify, engine.approval_webhook()) {
                // Announced to the approvers before the client learns of the request: an
                // approval page it is sent to knows it. With too many calls in flight, the
                // reply goes at once and the announcement follows.
                let authority = w.authority.as_deref().unwrap_or(&w.cluster);
                let callout = Callout {
                    cluster: w.cluster.clone(),
                    headers: [
                        (":method", "POST"),
                        (":path", w.path.as_str()),
                        (":authority", authority),
                        ("content-type", "application/json"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .to_vec(),
                    body: body.into_bytes(),
                    timeout_ms: w.timeout_ms,
                };
                let call = Call {
                    purpose: Purpose::Announce,
                    callout,
                };
                if engine.try_hold_call(&call, now_s) {
                    self.announcing = Some(reply);
                    out.next = Next::Call(call);
                    return;
                }
                out.callouts.push(call.callout);
            }
            out.next = Next::Reply(reply);
            return;
        }
        for (name, value) in decision.set_headers {
            out.headers.push((name, Some(value)));
        }
        if let Some(body) = decision.body {
            // The body this hook read, replaced: its length changes with it.
            out.set("content-length", &body.len().to_string());
            out.body = Some(body);
        }
        if engine.drop_authorization() && decision.verdict == Verdict::Allow {
            out.remove("authorization");
        }
        // An approval is for the filter; once used it means nothing upstream.
        if let Some(h) = engine.approval_header() {
            out.remove(h);
        }
        if let Some(lists) = decision.mcp_lists {
            // The answer must come back readable (an encoded one is refused, listing/).
            self.lists = Some(Lists::Awaiting(lists));
            out.set("accept-encoding", "identity");
        }
    }

    /// Counts and logs what list filtering hid once it is over.
    fn finish_lists(&mut self, step: Step) -> Outcome {
        let mut out = Outcome {
            body: step.body,
            next: if step.wait {
                Next::WaitForBody
            } else {
                Next::Forward
            },
            ..Outcome::forward()
        };
        if let Some(done) = step.finished {
            if done.hidden > 0 {
                out.count(Counter::ListItemsHidden, done.hidden as u64);
            }
            if !done.methods.is_empty() || done.error.is_some() {
                if let Some(Lists::Filtering(f)) = &self.lists {
                    out.log(Level::Debug, done.log_line(f.request_id()));
                }
            }
            self.lists = None;
        }
        out
    }
}
