//! `mcpscope run --record FILE` and `mcpscope replay FILE`: the raw ring
//! records, the pipeline's clock ticks and the facts it learned from /proc,
//! in order, so a replay goes through the same pipeline and reproduces the
//! live run's events.
//!
//! Format: `MCPSCOPE-RECORD\x01`, the i64 LE monotonic→realtime offset, then
//! frames `[tag u8][len u32 LE][payload]`: 1 = ring record, 2 = tick
//! (u64 LE kernel time), 3 = fact (JSON `{"k":…,"v":…}`).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::Path,
};

use serde::Serialize;

const MAGIC: &[u8; 16] = b"MCPSCOPE-RECORD\x01";
const TAG_RECORD: u8 = 1;
const TAG_TICK: u8 = 2;
const TAG_FACT: u8 = 3;

/// Writes a capture file.
pub struct Recorder {
    out: BufWriter<File>,
    /// Write errors (the live run goes on; the capture is then incomplete).
    pub errors: u64,
}

impl Recorder {
    /// Creates `path` (0600) with the clock offset of this run.
    pub fn create(path: &Path, clock_offset_ns: i128) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(MAGIC)?;
        out.write_all(&(clock_offset_ns as i64).to_le_bytes())?;
        Ok(Self { out, errors: 0 })
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) {
        let r = self
            .out
            .write_all(&[tag])
            .and_then(|_| self.out.write_all(&(payload.len() as u32).to_le_bytes()))
            .and_then(|_| self.out.write_all(payload));
        if r.is_err() {
            self.errors += 1;
        }
    }

    /// A raw ring-buffer record.
    pub fn record(&mut self, bytes: &[u8]) {
        self.frame(TAG_RECORD, bytes);
    }

    /// A pipeline tick at kernel time `now_ns`.
    pub fn tick(&mut self, now_ns: u64) {
        self.frame(TAG_TICK, &now_ns.to_le_bytes());
    }

    /// A fact learned from the host.
    pub fn fact<T: Serialize>(&mut self, key: &str, value: &T) {
        #[derive(Serialize)]
        struct Fact<'a, T> {
            k: &'a str,
            v: &'a T,
        }
        if let Ok(json) = serde_json::to_vec(&Fact { k: key, v: value }) {
            self.frame(TAG_FACT, &json);
        }
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A frame read back.
pub enum Frame {
    /// A raw ring-buffer record.
    Record(Vec<u8>),
    /// A tick.
    Tick(u64),
    /// A fact (key, value).
    Fact(String, serde_json::Value),
}

/// Reads a capture file: its clock offset and frames.
pub fn read(path: &Path) -> io::Result<(i128, Vec<Frame>)> {
    let mut r = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an mcpscope capture (bad magic)",
        ));
    }
    let mut off = [0u8; 8];
    r.read_exact(&mut off)?;
    let offset = i64::from_le_bytes(off) as i128;
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 5];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() {
            break; // a torn last frame (the recording agent was killed)
        }
        frames.push(match head[0] {
            TAG_RECORD => Frame::Record(payload),
            TAG_TICK if len == 8 => {
                Frame::Tick(u64::from_le_bytes(payload.try_into().expect("8 bytes")))
            }
            TAG_FACT => {
                let v: serde_json::Value =
                    serde_json::from_slice(&payload).map_err(io::Error::other)?;
                Frame::Fact(
                    v["k"].as_str().unwrap_or_default().to_owned(),
                    v["v"].clone(),
                )
            }
            t => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown frame tag {t}"),
                ))
            }
        });
    }
    Ok((offset, frames))
}

/// Builds a single-chunk data record as the kernel writes it — for tests,
/// benchmarks and synthetic replays.
pub fn data_record(tgid: u32, fd: u32, ino: u64, ts_ns: u64, data: &[u8], egress: bool) -> Vec<u8> {
    use mcpscope_common::{
        DataHeader, RecordKind, Syscall, DATA_HEADER_LEN, FILE_PIPE, FLAG_EGRESS,
    };
    let h = DataHeader {
        kind: RecordKind::Data as u32,
        flags: if egress { FLAG_EGRESS } else { 0 },
        tgid,
        tid: tgid,
        fd,
        syscall: if egress {
            Syscall::Write
        } else {
            Syscall::Read
        } as u32,
        ts_ns,
        total_len: data.len() as u64,
        offset: 0,
        len: data.len() as u32,
        cgroup_id: 1,
        comm: *b"synthetic\0\0\0\0\0\0\0",
        ino,
        file_kind: FILE_PIPE,
        _pad: 0,
        flow: Default::default(),
    };
    let mut v = vec![0u8; DATA_HEADER_LEN];
    // SAFETY: a POD header written into a buffer of its size.
    unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut DataHeader, h) };
    v.extend_from_slice(data);
    v
}
