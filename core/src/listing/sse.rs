//! The `text/event-stream` side of list filtering: events rewritten as chunks arrive.

/// Rewrites the events of a `text/event-stream` body that carry list answers, as chunks arrive.
/// Events are separated by a blank line; lines end with CRLF, LF or CR (the WHATWG grammar).
#[derive(Debug, Default)]
pub struct SseRewriter {
    /// The start of an event whose end has not arrived yet.
    pending: Vec<u8>,
    /// How far `pending` has been scanned for the end of the event.
    scanned: usize,
    /// The scan is inside a line; at the start of one, a line terminator ends the event.
    mid_line: bool,
}

impl SseRewriter {
    pub fn new() -> SseRewriter {
        SseRewriter::default()
    }

    /// Takes a chunk and returns what to send now: every event completed by it (rewritten by
    /// `rewrite(data) -> Some(new data)` or byte for byte), and nothing of an unfinished one.
    pub fn push(
        &mut self,
        chunk: &[u8],
        rewrite: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut start = 0;
        let mut i = self.scanned;
        let buf = &self.pending;
        while let Some(&b) = buf.get(i) {
            let eol = match b {
                b'\n' => 1,
                // CR at the end of the buffer: CR or CRLF, the next chunk tells.
                b'\r' if i + 1 == buf.len() => break,
                b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
                b'\r' => 1,
                _ => {
                    self.mid_line = true;
                    i += 1;
                    continue;
                }
            };
            i += eol;
            if self.mid_line {
                self.mid_line = false;
            } else {
                // A blank line: the event [start, i) is complete.
                out.extend_from_slice(&rewrite_event(buf.get(start..i).unwrap_or(&[]), rewrite));
                start = i;
            }
        }
        self.pending.drain(..start);
        self.scanned = i - start;
        out
    }

    /// The end of the stream: an unfinished event is rewritten as a complete one would be (a
    /// conforming client discards it, a lenient one must not see it unfiltered).
    pub fn finish(&mut self, rewrite: &mut dyn FnMut(&str) -> Option<String>) -> Vec<u8> {
        self.scanned = 0;
        self.mid_line = false;
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() {
            return rest;
        }
        rewrite_event(&rest, rewrite)
    }
}

/// One complete event (its blank line included), rewritten when its data changes.
fn rewrite_event(event: &[u8], rewrite: &mut dyn FnMut(&str) -> Option<String>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(event) else {
        // Not UTF-8: not an SSE event a client reads the same way (dropped; it cannot be judged).
        return Vec::new();
    };
    let lines = split_lines(text);
    let eol = lines.first().map_or("\n", |(_, e)| *e);
    let mut data: Option<String> = None;
    for (line, _) in &lines {
        if let Some(v) = field_value(line, "data") {
            match &mut data {
                None => data = Some(v.to_string()),
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
            }
        }
    }
    let Some(new) = data.as_deref().and_then(&mut *rewrite) else {
        return event.to_vec();
    };
    let mut out = String::with_capacity(new.len() + 64);
    let mut data_written = false;
    for (line, _) in lines.iter().filter(|(l, _)| !l.is_empty()) {
        if field_value(line, "data").is_some() {
            if !data_written {
                out.push_str("data: ");
                out.push_str(&new);
                out.push_str(eol);
                data_written = true;
            }
            continue;
        }
        out.push_str(line);
        out.push_str(eol);
    }
    out.push_str(eol);
    out.into_bytes()
}

/// The lines of an event with their terminators.
fn split_lines(text: &str) -> Vec<(&str, &str)> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while let Some(&b) = bytes.get(i) {
        let eol = match b {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => 2,
            b'\r' | b'\n' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        lines.push((&text[start..i], &text[i..i + eol]));
        i += eol;
        start = i;
    }
    if start < bytes.len() {
        lines.push((&text[start..], ""));
    }
    lines
}

/// The value of `line` when it is the field `name` (`name:value`, one leading space dropped).
fn field_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    if line == name {
        return Some("");
    }
    let v = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(v.strip_prefix(' ').unwrap_or(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` split at every position in `cuts`, returning all output.
    fn run(
        stream: &[u8],
        cuts: &[usize],
        rewrite: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Vec<u8> {
        let mut r = SseRewriter::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            out.extend(r.push(&stream[at..c], rewrite));
            at = c;
        }
        out.extend(r.finish(rewrite));
        out
    }

    fn upper(d: &str) -> Option<String> {
        d.contains("list").then(|| d.to_uppercase())
    }

    #[test]
    fn events_pass_through_byte_for_byte_at_every_split() {
        let stream = b": keepalive\n\nevent: message\nid: 7\ndata: {\"a\":1}\n\ndata: x\r\n\r\nretry: 5\rdata: y\r\r";
        for cut in 0..=stream.len() {
            assert_eq!(
                run(stream, &[cut], &mut |_| None),
                stream.to_vec(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_rewritten_event_keeps_its_other_fields_and_line_ending() {
        let stream =
            b"event: message\r\nid: 3\r\ndata: {\"list\":\r\ndata: 1}\r\n\r\ndata: other\r\n\r\n";
        let want =
            b"event: message\r\nid: 3\r\ndata: {\"LIST\":\n1}\r\n\r\ndata: other\r\n\r\n".to_vec();
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                assert_eq!(run(stream, &[a, b], &mut upper), want, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn only_complete_events_are_emitted() {
        let mut r = SseRewriter::new();
        let mut none = |_: &str| None;
        assert_eq!(
            r.push(b"data: a\n\ndata: b", &mut none),
            b"data: a\n\n".to_vec()
        );
        assert_eq!(r.push(b"\n", &mut none), Vec::<u8>::new());
        // CR at the end of a chunk could be the first half of CRLF: held.
        assert_eq!(r.push(b"\r", &mut none), Vec::<u8>::new());
        assert_eq!(r.push(b"\ndata: c\n", &mut none), b"data: b\n\r\n".to_vec());
        assert_eq!(r.finish(&mut none), b"data: c\n".to_vec());
    }

    #[test]
    fn comments_and_events_without_data_are_not_rewritten() {
        let stream = b": list\n\nid: list\n\ndata\n\n";
        let mut calls = Vec::new();
        let out = run(stream, &[], &mut |d| {
            calls.push(d.to_string());
            None
        });
        assert_eq!(out, stream.to_vec());
        assert_eq!(
            calls,
            vec![String::new()],
            "only the bare `data` field is data"
        );
    }

    #[test]
    fn field_values_drop_one_leading_space() {
        assert_eq!(field_value("data: x", "data"), Some("x"));
        assert_eq!(field_value("data:  x", "data"), Some(" x"));
        assert_eq!(field_value("data:x", "data"), Some("x"));
        assert_eq!(field_value("datax: y", "data"), None);
        assert_eq!(field_value(":data", "data"), None);
    }
}
