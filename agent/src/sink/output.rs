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
pub struct JsonlWriter<W: Write> {
    out: BufWriter<W>,
    pretty: bool,
    line: Vec<u8>,
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
        }
    }
}

impl<W: Write> Sink for JsonlWriter<W> {
    fn flag(&mut self, flag: &serde_json::Value) -> io::Result<()> {
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
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn emit(&mut self, ev: &McpEvent) -> io::Result<()> {
        self.line.clear();
        if self.pretty {
            self.line.extend_from_slice(format_pretty(ev).as_bytes());
        } else {
            ev.write_json(&mut self.line)?;
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
