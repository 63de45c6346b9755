//! Where events go: JSONL to a file or stdout, a readable live view, or a
//! vector (tests). Serialisation reuses one buffer per sink.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::Path,
};

use super::McpEvent;

/// A consumer of events.
pub trait Sink {
    /// Takes one message event.
    fn emit(&mut self, ev: &McpEvent) -> io::Result<()>;
    /// Takes a non-message record (`session_start`, `session_end`,
    /// `process_exit`, `loss`, `agent_start`, …). Only the audit trail keeps
    /// them; the JSONL outputs carry messages (and flags) only.
    fn record(&mut self, _kind: &str, _ts: &str, _data: &serde_json::Value) -> io::Result<()> {
        Ok(())
    }
    /// Takes a flag (`kind: "flag"` event).
    fn flag(&mut self, _flag: &serde_json::Value) -> io::Result<()> {
        Ok(())
    }
    /// Pushes buffered output down (called every tick).
    fn flush(&mut self) -> io::Result<()>;
    /// Final flush at shutdown.
    fn close(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// Events (or records) this sink took (its calls returned `Ok`) and
    /// then lost since it was last asked: those in its buffer when its
    /// reader went away, those its close could not write, or the audit
    /// trail's batch whose write failed. An event a call returned an error
    /// for is the caller's to count.
    fn take_lost(&mut self) -> u64 {
        0
    }
    /// fsyncs that failed since it was last asked (the audit trail's: its
    /// records were written, but may not be on disk).
    fn take_sync_failures(&mut self) -> u64 {
        0
    }
}

/// Format of events on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StdoutMode {
    /// JSONL, one object per line.
    Json,
    /// One readable line per message.
    Pretty,
    /// Nothing.
    None,
}

/// JSONL into any writer (a file, or stdout).
///
/// A reader that went away (a broken pipe: `mcpscope run | head`) closes
/// the output for good: the events in the buffer are counted lost
/// ([`Sink::take_lost`]), every later one is refused (an error, which the
/// pipeline counts), and nothing more is written or retried. Other write
/// errors (a full disk) leave the buffer to be written at a later flush;
/// meanwhile an event that does not fit is refused, and what is still
/// buffered at close is counted lost. Failed flushes lose nothing by
/// themselves, and are not counted as lost events.
pub struct JsonlWriter<W: Write> {
    out: BufWriter<W>,
    pretty: bool,
    line: Vec<u8>,
    /// Events in `out`'s buffer, not yet written (all of them counted,
    /// should a failed write have written part of the buffer first).
    buffered: u64,
    /// Events lost with the buffer, not yet taken.
    lost: u64,
    /// The reader went away.
    closed: bool,
    /// The last flush failed otherwise (said once until one succeeds).
    stalled: bool,
}

impl JsonlWriter<File> {
    /// Appends to `path` (created 0600).
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::new(f, false))
    }
}

impl<W: Write> JsonlWriter<W> {
    /// Wraps a writer; `pretty` selects the readable view.
    pub fn new(w: W, pretty: bool) -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, w),
            pretty,
            line: Vec::with_capacity(1024),
            buffered: 0,
            lost: 0,
            closed: false,
            stalled: false,
        }
    }

    /// Writes `self.line`, one event, through the buffer.
    fn write_line(&mut self) -> io::Result<()> {
        self.line.push(b'\n');
        let held = self.out.buffer().len();
        match self.out.write_all(&self.line) {
            Ok(()) => {
                // The buffer holds the line alone once it was written out
                // to make room, and nothing once the line went straight
                // through.
                self.buffered = match self.out.buffer().len() {
                    0 => 0,
                    n if n == held + self.line.len() => self.buffered + 1,
                    _ => 1,
                };
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Takes note of a write error: a broken pipe closes the output.
    fn failed(&mut self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::BrokenPipe && !self.closed {
            self.closed = true;
            self.lost += std::mem::take(&mut self.buffered);
            crate::say!(
                "mcpscope: an output's reader went away (broken pipe): its events are counted lost from now on (mcpscope_events_lost_total{{stage=\"sink\"}})"
            );
        }
        e
    }

    /// The error for an event refused by a closed output.
    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the output's reader went away")
    }
}

impl<W: Write> Sink for JsonlWriter<W> {
    fn flag(&mut self, flag: &serde_json::Value) -> io::Result<()> {
        if self.closed {
            return Err(Self::refused());
        }
        self.line.clear();
        if self.pretty {
            let time = flag["ts"]
                .as_str()
                .and_then(|t| t.get(11..23))
                .unwrap_or("");
            let text = format!(
                "{time} FLAG {} ({}): {}",
                flag["flag"].as_str().unwrap_or(""),
                flag["severity"].as_str().unwrap_or(""),
                flag["message"].as_str().unwrap_or("")
            );
            self.line.extend_from_slice(text.as_bytes());
        } else {
            serde_json::to_writer(&mut self.line, flag)?;
        }
        self.write_line()
    }

    fn emit(&mut self, ev: &McpEvent) -> io::Result<()> {
        if self.closed {
            return Err(Self::refused());
        }
        self.line.clear();
        if self.pretty {
            self.line.extend_from_slice(format_pretty(ev).as_bytes());
        } else {
            ev.write_json(&mut self.line)?;
        }
        self.write_line()
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(()); // nothing more is written: the loss is counted
        }
        match self.out.flush() {
            Ok(()) => {
                self.buffered = 0;
                self.stalled = false;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.failed(e);
                Ok(())
            }
            Err(e) => {
                // Nothing is lost yet: the buffer is kept and written at a
                // later flush; an event that does not fit meanwhile is
                // refused (and counted), and what is left at close is lost.
                if !std::mem::replace(&mut self.stalled, true) {
                    crate::say!(
                        "mcpscope: writing an output failed ({e}); its events wait in the buffer, those that do not fit are counted lost"
                    );
                }
                Ok(())
            }
        }
    }

    fn close(&mut self) -> io::Result<()> {
        self.flush()?;
        // Still buffered after the last flush: it failed, and what it held
        // will not be written.
        self.lost += std::mem::take(&mut self.buffered);
        Ok(())
    }

    fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

/// Collects events and flags (tests, replay comparisons).
#[derive(Default)]
pub struct VecSink(pub Vec<McpEvent>, pub Vec<serde_json::Value>);

impl Sink for VecSink {
    fn flag(&mut self, flag: &serde_json::Value) -> io::Result<()> {
        self.1.push(flag.clone());
        Ok(())
    }

    fn emit(&mut self, ev: &McpEvent) -> io::Result<()> {
        self.0.push(ev.clone());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One readable line: time, sender → receiver, kind, method, detail.
pub fn format_pretty(ev: &McpEvent) -> String {
    let who = |e: &Option<super::Endpoint>| match e {
        Some(e) => format!("{}[{}]", e.process.comm, e.process.pid),
        None => "?".to_owned(),
    };
    let time = ev.ts.get(11..23).unwrap_or(&ev.ts);
    let mut s = format!(
        "{time} {} → {} {:<12} {}",
        who(&ev.from),
        who(&ev.to),
        format!("{:?}", ev.kind).to_lowercase(),
        ev.method.as_deref().unwrap_or("-")
    );
    if let Some(t) = ev
        .tool
        .as_deref()
        .or(ev.resource.as_deref())
        .or(ev.prompt.as_deref())
    {
        s.push(' ');
        s.push_str(t);
    }
    if let Some(id) = &ev.id {
        s.push_str(&format!(" id={id}"));
    }
    if let Some(l) = ev.latency_ms {
        s.push_str(&format!(" {l:.1}ms"));
    }
    if ev.is_error {
        s.push_str(&format!(
            " ERROR {}",
            ev.error_type.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(" {}B {}", ev.bytes, ev.net));
    if ev.truncated {
        s.push_str(" TRUNCATED");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use super::*;
    use crate::sink::sample;

    /// A pipe whose reader goes away when told: then every write fails
    /// with a broken pipe. Counts the lines it took.
    #[derive(Clone, Default)]
    struct Pipe {
        gone: Rc<Cell<bool>>,
        full: Rc<Cell<bool>>,
        lines: Rc<Cell<usize>>,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.gone.get() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if self.full.get() {
                return Err(io::ErrorKind::StorageFull.into());
            }
            self.lines
                .set(self.lines.get() + b.iter().filter(|&&c| c == b'\n').count());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_gone_counts_the_buffered_events_lost_then_refuses_each_later_one() {
        let pipe = Pipe::default();
        let mut w = JsonlWriter::new(pipe.clone(), false);
        let ev = sample::event(true);
        w.emit(&ev).unwrap();
        w.flush().unwrap();
        assert_eq!((pipe.lines.get(), w.take_lost()), (1, 0));
        for _ in 0..3 {
            w.emit(&ev).unwrap();
        }
        w.flag(&serde_json::json!({"flag": "loop"})).unwrap();
        pipe.gone.set(true);
        // The tick's flush meets the closed pipe: four events lost, once.
        w.flush().unwrap();
        assert_eq!(w.take_lost(), 4);
        w.flush().unwrap();
        assert_eq!(w.take_lost(), 0, "a closed output is not retried");
        // Later events are refused, one error each (the pipeline counts them).
        assert_eq!(w.emit(&ev).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        assert!(w.flag(&serde_json::json!({})).is_err());
        w.close().unwrap();
        assert_eq!((w.take_lost(), pipe.lines.get()), (0, 1));
    }

    #[test]
    fn a_reader_gone_while_an_event_makes_room_loses_that_event_and_the_buffer() {
        let pipe = Pipe::default();
        let mut w = JsonlWriter::new(pipe.clone(), false);
        let ev = sample::event(true);
        // Fill the 64 KiB buffer, so that some later event has to write it out.
        let mut taken = 0;
        while w.out.buffer().len() + 2048 < w.out.capacity() {
            w.emit(&ev).unwrap();
            taken += 1;
        }
        assert_eq!(w.buffered, taken);
        pipe.gone.set(true);
        // Events go on into the buffer while they fit; the first that does
        // not meets the closed pipe: it is refused, and the buffered ones
        // are lost with the buffer.
        while w.emit(&ev).is_ok() {
            taken += 1;
            assert!(w.out.buffer().len() <= w.out.capacity());
        }
        assert_eq!(w.take_lost(), taken);
        assert_eq!(pipe.lines.get(), 0);
    }

    #[test]
    fn a_full_disk_keeps_the_buffer_refuses_what_does_not_fit_and_loses_the_rest_at_close() {
        let pipe = Pipe::default();
        let mut w = JsonlWriter::new(pipe.clone(), false);
        let ev = sample::event(false);
        pipe.full.set(true);
        w.emit(&ev).unwrap();
        w.emit(&ev).unwrap();
        // Failed flushes lose nothing: no error, nothing counted.
        for _ in 0..3 {
            w.flush().unwrap();
            assert_eq!(w.take_lost(), 0);
        }
        // Space again: the held events are written, in order, once.
        pipe.full.set(false);
        w.flush().unwrap();
        assert_eq!((pipe.lines.get(), w.take_lost()), (2, 0));
        // Full again until close: what is held then is lost, counted once.
        w.emit(&ev).unwrap();
        pipe.full.set(true);
        w.close().unwrap();
        assert_eq!((w.take_lost(), pipe.lines.get()), (1, 2));
    }
}
