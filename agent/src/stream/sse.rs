//! Server-sent events (`text/event-stream`), incrementally: fields `event`,
//! `data` (several lines joined by `\n`), `id`, `retry`; comments; lines
//! ended by LF, CRLF or CR, mixed, and split anywhere between reads
//! (including between a CR and its LF).
//!
//! An event is dispatched at a blank line. One with empty data (a priming
//! event, or only comments) carries no message and is counted, not emitted.

use memchr::memchr2;

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// `event:` (absent means `message`).
    pub event: Option<&'a str>,
    /// `id:` of this event.
    pub id: Option<&'a str>,
    /// `data:` lines joined by `\n` (for MCP: one JSON-RPC message).
    pub data: &'a [u8],
    /// Data beyond the size limit was dropped.
    pub truncated: bool,
    /// True size of the data.
    pub len: u64,
}

/// Counters of the SSE parser.
#[derive(Debug, Default, Clone, Copy)]
pub struct SseStats {
    /// Events dispatched with data.
    pub events: u64,
    /// Events without data (priming events, keep-alives).
    pub empty_events: u64,
    /// Comment lines.
    pub comments: u64,
    /// `retry:` fields.
    pub retries: u64,
    /// Events whose data exceeded the limit.
    pub truncated: u64,
}

/// Incremental SSE parser for one stream.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    data: Vec<u8>,
    data_len: u64,
    event: String,
    id: String,
    has_event: bool,
    has_id: bool,
    has_data: bool,
    max: usize,
    /// Counters.
    pub stats: SseStats,
}

impl SseParser {
    /// A parser keeping at most `max` bytes of one event's data.
    pub fn new(max: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            data: Vec::new(),
            data_len: 0,
            event: String::new(),
            id: String::new(),
            has_event: false,
            has_id: false,
            has_data: false,
            max,
            stats: SseStats::default(),
        }
    }

    /// Bytes buffered for an unfinished line or event.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// Feeds body bytes; calls `emit` for each complete event with data.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(SseEvent<'_>)) {
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..]; // the LF of a CRLF split between reads
        }
        self.after_cr = false;
        while let Some(end) = memchr2(b'\n', b'\r', bytes) {
            let cr = bytes[end] == b'\r';
            let mut next = end + 1;
            if cr {
                match bytes.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.after_cr = true,
                    _ => {}
                }
            }
            if self.line.is_empty() {
                self.on_line(&bytes[..end], emit);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.on_line(&line, emit);
                line.clear();
                self.line = line;
            }
            bytes = &bytes[next..];
        }
        if !bytes.is_empty() {
            // A line longer than the data limit only matters as data; keep
            // what the limit allows and count the rest.
            let room = (self.max + 16).saturating_sub(self.line.len());
            let keep = bytes.len().min(room);
            self.line.extend_from_slice(&bytes[..keep]);
            self.data_len += (bytes.len() - keep) as u64;
        }
    }

    fn on_line(&mut self, line: &[u8], emit: &mut dyn FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            return self.dispatch(emit);
        }
        if line[0] == b':' {
            self.stats.comments += 1;
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.append_data(b"\n");
                }
                self.has_data = true;
                self.append_data(value);
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
                self.has_event = true;
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.push_str(&String::from_utf8_lossy(value));
                self.has_id = true;
            }
            b"retry" => self.stats.retries += 1,
            _ => {}
        }
    }

    fn append_data(&mut self, v: &[u8]) {
        self.data_len += v.len() as u64;
        let room = self.max.saturating_sub(self.data.len());
        self.data.extend_from_slice(&v[..v.len().min(room)]);
    }

    fn dispatch(&mut self, emit: &mut dyn FnMut(SseEvent<'_>)) {
        let truncated = self.data_len > self.data.len() as u64;
        if self.data.iter().all(|b| b.is_ascii_whitespace()) && !truncated {
            self.stats.empty_events += 1;
        } else {
            self.stats.events += 1;
            if truncated {
                self.stats.truncated += 1;
            }
            emit(SseEvent {
                event: self.has_event.then_some(self.event.as_str()),
                id: self.has_id.then_some(self.id.as_str()),
                data: &self.data,
                truncated,
                len: self.data_len,
            });
        }
        self.data.clear();
        self.data_len = 0;
        self.has_data = false;
        self.has_event = false;
        // The last event id persists across events (spec); report it only on
        // the event that set it.
        self.has_id = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (event, id, data) of each dispatched event.
    type Seen = Vec<(Option<String>, Option<String>, String)>;

    fn events(chunks: &[&[u8]]) -> (Seen, SseStats) {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut |e| {
                out.push((
                    e.event.map(str::to_owned),
                    e.id.map(str::to_owned),
                    String::from_utf8(e.data.to_vec()).unwrap(),
                ))
            });
        }
        (out, p.stats)
    }

    #[test]
    fn fields_multiline_data_comments_and_priming() {
        let (ev, st) = events(&[
            b"id: p0\ndata:\n\n: keep-alive\nretry: 3000\n\nevent: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\n",
        ]);
        assert_eq!(
            ev,
            vec![(
                Some("message".into()),
                Some("7".into()),
                "{\"a\":\n1}".into()
            )]
        );
        assert_eq!(
            st.empty_events, 2,
            "priming event and the comment/retry block"
        );
        assert_eq!(st.comments, 1);
        assert_eq!(st.retries, 1);
    }

    #[test]
    fn mixed_line_endings_split_anywhere() {
        let whole: &[u8] =
            b"event: endpoint\r\ndata: /messages?x=1\r\r\ndata: {}\n\ndata: {\"b\":2}\r\n\r\n";
        for split in 0..whole.len() {
            let (ev, _) = events(&[&whole[..split], &whole[split..]]);
            assert_eq!(ev.len(), 3, "split at {split}: {ev:?}");
            assert_eq!(ev[0].0.as_deref(), Some("endpoint"));
            assert_eq!(ev[0].2, "/messages?x=1");
            assert_eq!(ev[1].2, "{}");
            assert_eq!(ev[2].2, "{\"b\":2}");
        }
    }

    #[test]
    fn oversized_data_is_cut_and_marked() {
        let mut p = SseParser::new(8);
        let mut got = Vec::new();
        p.push(b"data: 0123456789abcdef\n\n", &mut |e| {
            got.push((e.data.len(), e.truncated, e.len))
        });
        assert_eq!(got, vec![(8, true, 16)]);
        assert_eq!(p.stats.truncated, 1);
    }
}
