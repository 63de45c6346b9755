//! Newline framing of stdio MCP (one JSON-RPC message per line).
//!
//! Lines split across reads and several lines per read are both handled. A
//! complete line inside one segment is passed on as a borrowed slice (no
//! copy); only a line spanning segments is buffered.
//!
//! Losses never shift the framing silently: after a gap (bytes the kernel
//! could not deliver) or an oversized line, the framer keeps the line's head
//! and its last bytes up to the next newline and hands them on marked
//! `truncated`, so the protocol stage can still salvage `method` and `id`
//! (the TypeScript SDK writes `id` last).

use memchr::memchr_iter;

/// Bytes of a broken line's tail kept for salvage.
pub const TAIL_KEEP: usize = 4096;

/// A framed message.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The line without its newline (for a truncated line: head + tail).
    pub bytes: &'a [u8],
    /// Bytes were lost inside this line (gap or oversize).
    pub truncated: bool,
    /// The line's true length in bytes, as far as known.
    pub len: u64,
}

/// Per-stream newline framer.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    tail: Vec<u8>,
    max_line: usize,
    broken: bool,
    line_len: u64,
    /// Lines that were cut by a gap or were longer than the limit.
    pub truncated_lines: u64,
}

impl LineFramer {
    /// A framer that buffers at most `max_line` bytes of one line.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            tail: Vec::new(),
            max_line,
            broken: false,
            line_len: 0,
            truncated_lines: 0,
        }
    }

    /// Bytes buffered for the unfinished line.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.tail.len()
    }

    /// True when the framer holds part of a line.
    pub fn in_line(&self) -> bool {
        self.line_len > 0
    }

    /// Records that `lost` bytes are missing from the stream here.
    pub fn gap(&mut self, lost: u64) {
        if lost == 0 {
            return;
        }
        self.broken = true;
        self.line_len += lost;
    }

    /// Feeds bytes; calls `emit` for every completed line.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Frame<'_>)) {
        while !data.is_empty() {
            let Some(nl) = memchr_iter(b'\n', data).next() else {
                self.append(data);
                return;
            };
            let (line, rest) = (&data[..nl], &data[nl + 1..]);
            data = rest;
            if self.line_len == 0 && !self.broken {
                // Fast path: a whole line inside this segment, borrowed.
                if line.len() <= self.max_line {
                    if !is_blank(line) {
                        emit(Frame {
                            bytes: line,
                            truncated: false,
                            len: line.len() as u64,
                        });
                    }
                    continue;
                }
            }
            self.append(line);
            self.finish_line(emit);
        }
    }

    fn append(&mut self, data: &[u8]) {
        self.line_len += data.len() as u64;
        if self.broken {
            // After a gap keep only the tail (where `id` may sit).
            push_tail(&mut self.tail, data);
            return;
        }
        let room = self.max_line.saturating_sub(self.buf.len());
        if data.len() <= room {
            self.buf.extend_from_slice(data);
        } else {
            self.buf.extend_from_slice(&data[..room]);
            self.broken = true;
            push_tail(&mut self.tail, &data[room..]);
        }
    }

    fn finish_line(&mut self, emit: &mut dyn FnMut(Frame<'_>)) {
        let truncated = self.broken;
        if truncated {
            self.truncated_lines += 1;
            if !self.tail.is_empty() {
                self.buf.extend_from_slice(&self.tail);
            }
        }
        if !is_blank(&self.buf) || truncated {
            emit(Frame {
                bytes: &self.buf,
                truncated,
                len: self.line_len,
            });
        }
        self.reset_line();
    }

    fn reset_line(&mut self) {
        self.buf.clear();
        self.tail.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new(); // don't pin a huge buffer per idle stream
        }
        self.broken = false;
        self.line_len = 0;
    }

    /// Ends the stream: an unfinished line is returned as truncated.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Frame<'_>)) {
        if self.line_len > 0 {
            self.broken = true;
            self.finish_line(emit);
        }
    }
}

fn push_tail(tail: &mut Vec<u8>, data: &[u8]) {
    if data.len() >= TAIL_KEEP {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - TAIL_KEEP..]);
        return;
    }
    let excess = (tail.len() + data.len()).saturating_sub(TAIL_KEEP);
    if excess > 0 {
        tail.drain(..excess);
    }
    tail.extend_from_slice(data);
}

fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut LineFramer, chunks: &[&[u8]]) -> Vec<(String, bool, u64)> {
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut |fr| {
                out.push((
                    String::from_utf8_lossy(fr.bytes).into_owned(),
                    fr.truncated,
                    fr.len,
                ))
            });
        }
        out
    }

    #[test]
    fn line_split_across_reads() {
        let mut f = LineFramer::new(1 << 20);
        let out = frames(&mut f, &[b"{\"id\":1,", b"\"method\":\"ping\"}", b"\n"]);
        assert_eq!(
            out,
            vec![("{\"id\":1,\"method\":\"ping\"}".into(), false, 24)]
        );
    }

    #[test]
    fn several_lines_in_one_read_and_blank_lines() {
        let mut f = LineFramer::new(1 << 20);
        let out = frames(&mut f, &[b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\""]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].0, "{\"b\":2}\r");
        assert!(f.in_line());
    }

    #[test]
    fn gap_keeps_head_and_tail_and_resyncs() {
        let mut f = LineFramer::new(1 << 20);
        let mut out = frames(&mut f, &[b"{\"result\":{\"x\":\"aaaa"]);
        f.gap(1000);
        out.extend(frames(
            &mut f,
            &[b"aaa\"},\"jsonrpc\":\"2.0\",\"id\":7}\n{\"ok\":1}\n"],
        ));
        assert_eq!(out.len(), 2);
        assert!(out[0].1, "first line marked truncated");
        assert!(out[0].0.ends_with("\"id\":7}"));
        assert_eq!(out[0].2, 20 + 1000 + 29);
        assert_eq!(out[1], ("{\"ok\":1}".into(), false, 8));
        assert_eq!(f.truncated_lines, 1);
    }

    #[test]
    fn oversized_line_is_cut_but_framing_survives() {
        let mut f = LineFramer::new(16);
        let mut long = vec![b'x'; 10 * TAIL_KEEP];
        long.extend_from_slice(b"END\n{\"n\":1}\n");
        let out = frames(&mut f, &[&long]);
        assert_eq!(out.len(), 2);
        assert!(out[0].1);
        assert_eq!(out[0].0.len(), 16 + TAIL_KEEP);
        assert!(out[0].0.ends_with("END"));
        assert_eq!(out[1].0, "{\"n\":1}");
    }

    #[test]
    fn finish_flushes_unterminated_line_as_truncated() {
        let mut f = LineFramer::new(1 << 20);
        frames(&mut f, &[b"{\"id\":3"]);
        let mut got = Vec::new();
        f.finish(&mut |fr| got.push(fr.truncated));
        assert_eq!(got, vec![true]);
        assert!(!f.in_line());
    }
}
