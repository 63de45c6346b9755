//! Appending to the audit trail: segments, rotation, retention, fsync
//! policy, resume after a crash.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    chain::{self, Hasher, GENESIS},
    index::SegmentIndex,
    index_name, segment_name, segments,
};
use crate::sink::{McpEvent, Sink};

/// Audit trail settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory (created 0700).
    pub dir: PathBuf,
    /// Rotate when a segment reaches this many bytes.
    pub max_segment_bytes: u64,
    /// Rotate when a segment is this old.
    pub max_segment_age: Duration,
    /// Keep at most this many segments (0 = no limit).
    pub keep_segments: usize,
    /// Delete segments older than this (zero = no limit).
    pub keep_age: Duration,
    /// Keep at most this many bytes of segments (0 = no limit).
    pub keep_bytes: u64,
    /// fsync after this many records (0 = never by count).
    pub fsync_every: u64,
    /// fsync at least this often when records are pending (zero = never by time).
    pub fsync_interval: Duration,
    /// HMAC key: a keyed chain.
    pub hmac_key: Option<Vec<u8>>,
}

impl AuditConfig {
    /// Defaults for `dir`: 64 MiB / 1 h segments, keep 1 GiB, fsync every
    /// 1000 records or 1 s.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_segment_bytes: 64 << 20,
            max_segment_age: Duration::from_secs(3600),
            keep_segments: 0,
            keep_age: Duration::ZERO,
            keep_bytes: 1 << 30,
            fsync_every: 1000,
            fsync_interval: Duration::from_secs(1),
            hmac_key: None,
        }
    }
}

/// The fields of `ev` the segment index reads
/// ([`SegmentIndex::note_message`]), as that stored record would give them.
fn index_view(ev: &McpEvent) -> serde_json::Value {
    let end = |e: &Option<crate::sink::Endpoint>| {
        e.as_ref().map(|e| {
            serde_json::json!({
                "pid": e.process.pid,
                "exe": e.process.exe,
                "k8s": e.k8s.as_ref().map(|k| serde_json::json!({ "namespace": k.namespace, "pod": k.pod })),
            })
        })
    };
    serde_json::json!({
        "session": ev.session,
        "ts": ev.ts,
        "kind": ev.kind,
        "method": ev.method,
        "is_error": ev.is_error,
        "client": ev.client,
        "server": ev.server,
        "from": end(&ev.from),
        "to": end(&ev.to),
        "tool": ev.tool,
    })
}

/// Bytes of records held before they are written to the segment.
const PENDING_BYTES: usize = 256 << 10;

/// An open audit trail.
///
/// Records reach the segment whole or not at all. They are held in
/// `pending` and written together; a write that fails (a full disk) is
/// cut back off the file, and the chain goes back to the last record the
/// file holds, so that what is on disk always verifies. The records that
/// were pending are lost, counted (see [`AuditLog::take_lost`]), and
/// acknowledged in the chain by a `write_failed` record, the first record
/// written once the trail can write again.
///
/// A failed fsync is not a loss of what was written, but it puts it in
/// doubt: Linux reports a failed writeback once, and the pages it could
/// not write may be gone after a crash or power loss. The records written
/// since the last fsync that succeeded are counted (see
/// [`AuditLog::take_sync_failures`]) and named by a `sync_failed` record,
/// chained ahead of the next record. Those records may be lost with what
/// they name, and a filesystem can lose more than that: blocks an earlier
/// fsync had put on disk, and what is written after the failure. Once an
/// fsync succeeds again, the segment is closed and the next one opens with
/// a `sync_recovered` record naming every record of the segment.
pub struct AuditLog {
    cfg: AuditConfig,
    hasher: Hasher,
    segment: u64,
    out: File,
    /// The trail's directory, fsynced after its entries change.
    dir: File,
    /// An entry of `dir` changed (a segment made or removed, an index
    /// renamed into place) and is not known to be on disk: the next fsync
    /// syncs the directory too.
    dir_unsynced: bool,
    /// Whole records not yet written to `out`.
    pending: Vec<u8>,
    /// The records in `pending`, by kind (the `write_failed` record not
    /// among them).
    pending_count: Lost,
    /// The chain at the end of what `out` holds.
    written: Written,
    /// Records lost since the last `write_failed` record reached the file.
    gap: Owed<WriteFailed>,
    /// Records lost and not yet taken by [`AuditLog::take_lost`].
    lost: u64,
    /// What the segment's header says of the previous run.
    resumed: Option<Resume>,
    segment_opened: Instant,
    seq: u64,
    last_hash: String,
    unsynced: u64,
    last_sync: Instant,
    /// The last record on disk: written before an fsync that succeeded.
    synced_seq: u64,
    /// Records whose fsync failed, not yet named in the chain.
    at_risk: Owed<AtRisk>,
    /// fsyncs that failed, not yet taken by [`AuditLog::take_sync_failures`].
    sync_failures: u64,
    /// The last fsync failed (said once, until one succeeds).
    sync_failing: bool,
    /// The records of this segment, once an fsync of it failed.
    episode: Option<AtRisk>,
    /// An fsync succeeded after `episode`: the segment is closed, and the
    /// next opens with a `sync_recovered` record, ahead of the next record.
    recovered: Option<AtRisk>,
    index: SegmentIndex,
    line: Vec<u8>,
}

/// Records written to the trail whose fsync failed (a `sync_failed`
/// record's data): they may be missing from the disk after a crash.
#[derive(Serialize)]
struct AtRisk {
    /// The first and last of them (`seq`).
    first_seq: u64,
    last_seq: u64,
    /// fsyncs that failed over them.
    failures: u64,
    /// The last fsync error.
    error: String,
}

/// Records lost (a `write_failed` record's data).
#[derive(Default, Serialize)]
struct WriteFailed {
    lost: Lost,
    /// The last write error.
    error: String,
}

/// An acknowledgement the chain owes: a `write_failed` record (records
/// lost) or a `sync_failed` record (records in doubt). It is sealed ahead
/// of the next record, and owed until the batch holding it is written: a
/// failed write takes it back with the others, and it is sealed again.
struct Owed<T> {
    what: Option<T>,
    /// Its record is in `pending`.
    sealed: bool,
}

impl<T: Serialize> Owed<T> {
    const NONE: Self = Self {
        what: None,
        sealed: false,
    };

    /// Owed and not yet sealed.
    fn due(&self) -> bool {
        self.what.is_some() && !self.sealed
    }

    /// The record's data, if [`Owed::due`] (it is then sealed).
    fn seal(&mut self) -> serde_json::Result<Option<Vec<u8>>> {
        match &self.what {
            Some(w) if !self.sealed => {
                self.sealed = true;
                serde_json::to_vec(w).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The batch holding its record was written: owed no more; what it was.
    fn written(&mut self) -> Option<T> {
        std::mem::take(&mut self.sealed)
            .then(|| self.what.take())
            .flatten()
    }

    /// The batch holding its record was dropped: it is sealed again.
    fn dropped(&mut self) {
        self.sealed = false;
    }
}

/// The chain at the end of what the segment file holds: where a failed
/// write goes back to.
struct Written {
    seq: u64,
    last_hash: String,
    file_len: u64,
}

/// Records lost, by kind (a `write_failed` record's `lost`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Lost {
    /// All records.
    records: u64,
    /// Message events.
    messages: u64,
    /// Flags.
    flags: u64,
}

impl Lost {
    fn add(&mut self, kind: &str) {
        self.records += 1;
        self.messages += u64::from(kind == "message");
        self.flags += u64::from(kind == "flag");
    }

    fn merge(&mut self, o: Lost) {
        self.records += o.records;
        self.messages += o.messages;
        self.flags += o.flags;
    }
}

/// What was found at the end of the previous run's last segment.
#[derive(Serialize, Clone)]
struct Resume {
    segment: u64,
    last_seq: u64,
    /// Byte offset where a torn (incomplete) last line starts, if any.
    torn_at: Option<u64>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// (seq, hash) of a record.
type Link = (u64, String);

/// Last good (seq, hash) of a segment and where a torn last line starts.
fn scan_tail(path: &Path) -> io::Result<(Option<Link>, Option<u64>)> {
    let mut r = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut last = None;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok((last, None));
        }
        let complete = line.last() == Some(&b'\n');
        let parsed = complete
            .then(|| chain::unseal(&line[..line.len() - 1]))
            .flatten()
            .and_then(|(body, hash)| {
                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                Some((v["seq"].as_u64()?, hash.to_owned()))
            });
        match parsed {
            Some(p) => last = Some(p),
            None => return Ok((last, Some(offset))),
        }
        offset += n as u64;
    }
}

impl AuditLog {
    /// Opens (creating or resuming) the trail and writes the new segment's
    /// header. A previous run is continued in a new segment linked to its
    /// last good record; a torn last line is left in place and acknowledged.
    pub fn open(cfg: AuditConfig) -> io::Result<Self> {
        let made = !cfg.dir.exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)?;
        if made {
            // The trail's own directory entry, or it may be gone after a
            // crash with every segment in it.
            let parent = cfg.dir.parent().filter(|p| !p.as_os_str().is_empty());
            File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        let dir = File::open(&cfg.dir)?;
        let hasher = match &cfg.hmac_key {
            Some(k) => Hasher::Hmac(k.clone()),
            None => Hasher::Sha256,
        };
        let existing = segments(&cfg.dir)?;
        let (segment, seq, last_hash, resume) = match existing.last() {
            None => (1, 0, GENESIS.to_owned(), None),
            Some(&last) => {
                let (mut good, torn_at) = scan_tail(&cfg.dir.join(segment_name(last)))?;
                // A segment left empty (its header's write failed: a full
                // disk) continues the one before it.
                for &before in existing.iter().rev().skip(1) {
                    if good.is_some() {
                        break;
                    }
                    good = scan_tail(&cfg.dir.join(segment_name(before)))?.0;
                }
                let (seq, hash) = good.unwrap_or((0, GENESIS.to_owned()));
                (
                    last + 1,
                    seq,
                    hash,
                    Some(Resume {
                        segment: last,
                        last_seq: seq,
                        torn_at,
                    }),
                )
            }
        };
        let out = create_file(&cfg.dir.join(segment_name(segment)))?;
        let mut log = Self {
            hasher,
            segment,
            out,
            dir,
            dir_unsynced: true, // the new segment
            pending: Vec::with_capacity(PENDING_BYTES),
            pending_count: Lost::default(),
            written: Written {
                seq,
                last_hash: last_hash.clone(),
                file_len: 0,
            },
            gap: Owed::NONE,
            lost: 0,
            resumed: None,
            segment_opened: Instant::now(),
            seq,
            last_hash,
            unsynced: 0,
            last_sync: Instant::now(),
            synced_seq: seq,
            at_risk: Owed::NONE,
            sync_failures: 0,
            sync_failing: false,
            episode: None,
            recovered: None,
            index: SegmentIndex {
                segment,
                ..SegmentIndex::default()
            },
            line: Vec::with_capacity(4096),
            cfg,
        };
        if let Some(r) = &resume {
            // Index the previous run's last segment if it never got one.
            if !log.cfg.dir.join(index_name(r.segment)).exists() {
                let _ = super::query::build_index(&log.cfg.dir, r.segment)
                    .and_then(|ix| write_index(&log.cfg.dir, &ix));
            }
        }
        log.header(resume)?;
        Ok(log)
    }

    fn header(&mut self, resumed: Option<Resume>) -> io::Result<()> {
        self.resumed.clone_from(&resumed);
        #[derive(Serialize)]
        struct Header {
            version: u32,
            segment: u64,
            keyed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            resumed: Option<Resume>,
        }
        let h = Header {
            version: 1,
            segment: self.segment,
            keyed: self.hasher.keyed(),
            resumed,
        };
        // First in its segment, ahead of any acknowledgement of losses.
        self.pending_count.add("segment");
        self.seal("segment", &now_rfc3339(), |line| {
            serde_json::to_writer(line, &h)
        })
    }

    /// Appends one record of `kind` with `data`.
    pub fn append<T: Serialize>(&mut self, kind: &str, ts: &str, data: &T) -> io::Result<()> {
        self.append_with(kind, ts, |line| serde_json::to_writer(line, data))
    }

    /// Appends one record of `kind` whose data `write` writes.
    fn append_with(
        &mut self,
        kind: &str,
        ts: &str,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) -> io::Result<()> {
        if self.headless() {
            self.header(self.resumed.clone())?;
        }
        if self.recovered.is_some() {
            self.recover()?;
        }
        if self.gap.due() || self.at_risk.due() {
            self.acknowledge()?;
        }
        self.pending_count.add(kind);
        self.seal(kind, ts, write)
    }

    /// Chains what the trail owes, ahead of the record about to be
    /// appended: the records lost since the last acknowledgement (a
    /// `write_failed` record), then those whose fsync failed (`sync_failed`).
    #[cold]
    fn acknowledge(&mut self) -> io::Result<()> {
        // One after the other: sealing the first may write the batch (and a
        // failed write takes it back, to be owed again).
        if let Some(data) = self.gap.seal()? {
            self.seal_data("write_failed", &data)?;
        }
        if let Some(data) = self.at_risk.seal()? {
            self.seal_data("sync_failed", &data)?;
        }
        Ok(())
    }

    /// Writeback works again after a failure: the segment it failed in is
    /// closed (blocks a filesystem failed to write may read back as zeros,
    /// even where later writes went: no more records go there), and the
    /// next one opens with a `sync_recovered` record naming every record
    /// of the closed one, in a file written only since.
    #[cold]
    fn recover(&mut self) -> io::Result<()> {
        let Some(episode) = self.recovered.take() else {
            return Ok(());
        };
        // What is still owed of it is in the statement.
        self.at_risk = Owed::NONE;
        self.rotate()?;
        self.seal_data("sync_recovered", &serde_json::to_vec(&episode)?)
    }

    /// Seals a record of `kind` whose data is `data`, serialized.
    fn seal_data(&mut self, kind: &str, data: &[u8]) -> io::Result<()> {
        self.seal(kind, &now_rfc3339(), |line| {
            line.extend_from_slice(data);
            Ok(())
        })
    }

    /// Seals one record into `pending`, written out when it is full.
    fn seal(
        &mut self,
        kind: &str,
        ts: &str,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) -> io::Result<()> {
        self.seq += 1;
        self.line.clear();
        // `{"seq":…,"ts":…,"kind":…,"prev":…,"data":…}`, then sealed.
        self.line.extend_from_slice(b"{\"seq\":");
        serde_json::to_writer(&mut self.line, &self.seq)?;
        self.line.extend_from_slice(b",\"ts\":");
        serde_json::to_writer(&mut self.line, ts)?;
        self.line.extend_from_slice(b",\"kind\":");
        serde_json::to_writer(&mut self.line, kind)?;
        self.line.extend_from_slice(b",\"prev\":");
        serde_json::to_writer(&mut self.line, &self.last_hash)?;
        self.line.extend_from_slice(b",\"data\":");
        write(&mut self.line)?;
        self.line.push(b'}');
        self.last_hash = chain::seal(&mut self.line, &self.hasher);
        self.line.push(b'\n');
        self.pending.extend_from_slice(&self.line);
        if self.pending.len() >= PENDING_BYTES {
            // Written (or dropped, counted) with the record just sealed:
            // never a record chained to ones a failed write took back.
            self.write_pending();
        }
        self.index.note(self.seq, ts, kind);
        self.unsynced += 1;
        if self.cfg.fsync_every > 0 && self.unsynced >= self.cfg.fsync_every {
            self.sync();
        }
        if self.segment_bytes() >= self.cfg.max_segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Appends a message event (and indexes its session and tool). The
    /// event is written as the JSONL output writes it (each process
    /// rendered once), not built into a `serde_json::Value` first.
    pub fn append_message(&mut self, ev: &McpEvent) -> io::Result<()> {
        self.index.note_message(&index_view(ev));
        self.append_with("message", &ev.ts, |line| ev.write_json(line))
    }

    /// Appends a JSON record, indexing messages and flags.
    pub fn append_json(
        &mut self,
        kind: &str,
        ts: &str,
        data: &serde_json::Value,
    ) -> io::Result<()> {
        match kind {
            "message" => self.index.note_message(data),
            "flag" => self.index.note_flag(data),
            _ => {}
        }
        self.append(kind, ts, data)
    }

    /// Writes the pending records to the segment, whole: if the write
    /// fails, what part of them reached the file is cut off again, the
    /// chain goes back to the last record written, and they are counted
    /// lost. Returns whether they were written.
    fn write_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let written = self.out.write_all(&self.pending);
        match written {
            Ok(()) => {
                self.written = Written {
                    seq: self.seq,
                    last_hash: self.last_hash.clone(),
                    file_len: self.written.file_len + self.pending.len() as u64,
                };
                if let Some(gap) = self.gap.written() {
                    crate::say!(
                        "mcpscope: the audit trail in {} writes again; {} records were lost (a write_failed record in the trail says so)",
                        self.cfg.dir.display(),
                        gap.lost.records
                    );
                }
                self.at_risk.written();
            }
            Err(ref e) => self.drop_pending(e),
        }
        self.pending.clear();
        self.pending_count = Lost::default();
        written.is_ok()
    }

    /// A failed write of the pending records: see [`AuditLog::write_pending`].
    #[cold]
    fn drop_pending(&mut self, e: &io::Error) {
        // The file is opened to append: the next write goes to its new end.
        if let Err(t) = self.out.set_len(self.written.file_len) {
            crate::say!(
                "mcpscope: the audit trail in {}: cutting a failed write off the segment failed too ({t}): its last line may be torn",
                self.cfg.dir.display()
            );
        }
        if self.gap.what.is_none() {
            crate::say!(
                "mcpscope: writing the audit trail in {} failed ({e}): its records are dropped whole and counted (mcpscope_events_lost_total{{stage=\"sink\"}}) until it can write again",
                self.cfg.dir.display()
            );
        }
        self.seq = self.written.seq;
        self.last_hash.clone_from(&self.written.last_hash);
        self.lost += self.pending_count.records;
        let gap = self.gap.what.get_or_insert_default();
        gap.lost.merge(self.pending_count);
        gap.error = e.to_string();
        // Their acknowledgements went with the others.
        self.gap.dropped();
        self.at_risk.dropped();
    }

    /// The segment's bytes, written and pending.
    fn segment_bytes(&self) -> u64 {
        self.written.file_len + self.pending.len() as u64
    }

    /// Whether the segment lacks its header: it went with a failed write
    /// (the file is still empty, and nothing is pending). A segment starts
    /// with its header (`verify` checks), so it is sealed again ahead of
    /// the next record.
    fn headless(&self) -> bool {
        self.written.file_len == 0 && self.pending.is_empty()
    }

    /// Records lost since the last call (each counted once).
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// fsyncs that failed since the last call (each counted once).
    pub fn take_sync_failures(&mut self) -> u64 {
        std::mem::take(&mut self.sync_failures)
    }

    /// Writes the pending records and fsyncs the segment (a failure is
    /// counted and named in the chain, see `fsync`: the records
    /// were written, so it is not an error of the record being appended).
    pub fn sync(&mut self) {
        self.write_pending();
        self.fsync();
        self.unsynced = 0;
        self.last_sync = Instant::now();
    }

    /// fsyncs the segment; whether it succeeded. A failure puts the records
    /// written since the last fsync that succeeded at risk: they are
    /// counted, and a `sync_failed` record names them ahead of the next
    /// record. A later fsync that succeeds does not clear them: the
    /// kernel reports a failed writeback once, and what it failed to write
    /// may be gone from the page cache too.
    ///
    /// The directory is synced too while an entry of it is not on disk: a
    /// segment whose bytes are on disk but whose directory entry is not
    /// may be gone after a crash, with every record in it, so its records
    /// count as on disk only once both fsyncs succeed (POSIX promises
    /// nothing of a new file's entry without the second; ext4 happens to
    /// journal it with the first).
    fn fsync(&mut self) -> bool {
        match self.out.sync_data().and_then(|()| self.sync_dir()) {
            Ok(()) => {
                if self.sync_failing {
                    crate::say!(
                        "mcpscope: fsync of the audit trail in {} succeeds again",
                        self.cfg.dir.display()
                    );
                    self.sync_failing = false;
                }
                if let Some(mut episode) = self.episode.take() {
                    // Up to the last record written to this segment: see
                    // `recover`.
                    episode.last_seq = self.written.seq;
                    if episode.first_seq <= episode.last_seq {
                        self.recovered = Some(episode);
                    }
                }
                self.synced_seq = self.written.seq;
                true
            }
            Err(e) => {
                self.sync_failed(&e);
                false
            }
        }
    }

    /// A failed fsync: see `fsync`.
    #[cold]
    fn sync_failed(&mut self, e: &io::Error) {
        if !self.sync_failing {
            crate::say!(
                "mcpscope: fsync of the audit trail in {} failed ({e}): records written since the last good one may not be on disk; counted (mcpscope_audit_sync_failures_total) and named in the trail by a sync_failed record",
                self.cfg.dir.display()
            );
            self.sync_failing = true;
        }
        self.sync_failures += 1;
        let (first, last) = (self.synced_seq + 1, self.written.seq);
        // The whole segment: a filesystem whose writeback failed may lose
        // blocks an earlier fsync had put on disk (ext4 did here, up to a
        // block before the first record written since).
        let segment_first = match self.index.records {
            0 => first,
            _ => self.index.first_seq.min(first),
        };
        let episode = self.episode.get_or_insert_with(|| AtRisk {
            first_seq: segment_first,
            last_seq: last,
            failures: 0,
            error: String::new(),
        });
        episode.failures += 1;
        episode.error = e.to_string();
        // Each record is named once.
        self.synced_seq = last;
        // Nothing is pending at an fsync (it follows a write of what was),
        // so a sync_failed record is never sealed and waiting here.
        match &mut self.at_risk.what {
            // Not yet in the chain: the range grows.
            Some(r) => {
                r.last_seq = r.last_seq.max(last);
                r.failures += 1;
                r.error = e.to_string();
            }
            None if first <= last => {
                self.at_risk.what = Some(AtRisk {
                    first_seq: first,
                    last_seq: last,
                    failures: 1,
                    error: e.to_string(),
                })
            }
            None => {} // nothing written since the last fsync
        }
    }

    /// Time-based duties: fsync interval and segment age.
    pub fn tick(&mut self) -> io::Result<()> {
        self.write_pending();
        if self.unsynced > 0
            && !self.cfg.fsync_interval.is_zero()
            && self.last_sync.elapsed() >= self.cfg.fsync_interval
        {
            self.sync();
        }
        if !self.cfg.max_segment_age.is_zero()
            && self.segment_opened.elapsed() >= self.cfg.max_segment_age
            && self.index.records > 1
        {
            self.rotate()?;
        }
        Ok(())
    }

    fn close_segment(&mut self) -> io::Result<()> {
        self.sync();
        self.index.last_hash = self.last_hash.clone();
        let indexed = write_index(&self.cfg.dir, &self.index);
        self.dir_unsynced = true; // the index, renamed into place
        if let Err(e) = indexed {
            // The index only speeds queries up: they build a missing one.
            crate::say!(
                "mcpscope: the audit trail in {}: writing segment {}'s index failed ({e}); queries will build it",
                self.cfg.dir.display(),
                self.segment
            );
        }
        Ok(())
    }

    /// Closes the current segment (with its index) and starts the next.
    pub fn rotate(&mut self) -> io::Result<()> {
        self.close_segment()?;
        self.segment += 1;
        self.out = create_file(&self.cfg.dir.join(segment_name(self.segment)))?;
        self.dir_unsynced = true; // synced with the segment's first records
        self.written.file_len = 0;
        self.segment_opened = Instant::now();
        self.index = SegmentIndex {
            segment: self.segment,
            ..SegmentIndex::default()
        };
        self.header(None)?;
        self.retain()
    }

    /// Deletes the oldest closed segments beyond the retention limits,
    /// having first recorded, in the chain, what goes and the hash it ended
    /// with.
    fn retain(&mut self) -> io::Result<()> {
        let all = segments(&self.cfg.dir)?;
        let closed: Vec<u64> = all.iter().copied().filter(|s| *s < self.segment).collect();
        let size = |s: u64| {
            fs::metadata(self.cfg.dir.join(segment_name(s)))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let mut total: u64 = all.iter().map(|s| size(*s)).sum();
        let mut count = all.len();
        let mut removed = Vec::new();
        let mut last_removed_hash = None;
        for s in closed {
            let too_many = self.cfg.keep_segments > 0 && count > self.cfg.keep_segments;
            let too_big = self.cfg.keep_bytes > 0 && total > self.cfg.keep_bytes;
            let too_old = !self.cfg.keep_age.is_zero()
                && fs::metadata(self.cfg.dir.join(segment_name(s)))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > self.cfg.keep_age);
            if !(too_many || too_big || too_old) {
                break;
            }
            let ix = super::query::read_index(&self.cfg.dir, s)
                .or_else(|_| super::query::build_index(&self.cfg.dir, s))?;
            total -= size(s);
            count -= 1;
            last_removed_hash = Some(ix.last_hash);
            removed.push(s);
        }
        let Some(hash) = last_removed_hash else {
            return Ok(());
        };
        #[derive(Serialize)]
        struct Retention<'a> {
            removed_segments: &'a [u64],
            last_removed_hash: String,
        }
        let r = Retention {
            removed_segments: &removed,
            last_removed_hash: hash,
        };
        // Written ahead, and on disk before any file goes: a crash between
        // the two leaves a segment the chain says was removed (still
        // verifiable; the next rotation removes it), never a removed one
        // the chain does not vouch for (`verify`: broken). Nothing else is
        // pending then, so that a failed write of it (the record lost,
        // counted) deletes nothing.
        self.write_pending();
        self.append("retention", &now_rfc3339(), &r)?;
        // Removed only once the record is known to be on disk.
        if !self.write_pending() || !self.fsync() {
            return Ok(());
        }
        for s in removed {
            match fs::remove_file(self.cfg.dir.join(segment_name(s))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let _ = fs::remove_file(self.cfg.dir.join(index_name(s)));
        }
        // Synced with the next records: a removal undone by a crash leaves
        // a segment the chain says was removed, which still verifies.
        self.dir_unsynced = true;
        Ok(())
    }

    /// Flushes, fsyncs and indexes the current segment, and syncs the
    /// directory that holds the index.
    pub fn close(&mut self) -> io::Result<()> {
        self.close_segment()?;
        self.sync_dir()
    }

    /// fsyncs the trail's directory if an entry of it changed since it
    /// was last synced.
    fn sync_dir(&mut self) -> io::Result<()> {
        if self.dir_unsynced {
            self.dir.sync_all()?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Current segment number.
    pub fn segment(&self) -> u64 {
        self.segment
    }
}

fn write_index(dir: &Path, ix: &SegmentIndex) -> io::Result<()> {
    let tmp = dir.join(format!("{}.tmp", index_name(ix.segment)));
    let _ = fs::remove_file(&tmp);
    let mut f = create_file(&tmp)?;
    serde_json::to_writer(&mut f, ix)?;
    f.sync_data()?;
    fs::rename(tmp, dir.join(index_name(ix.segment)))
}

/// A [`Sink`] writing message events to the audit trail; the pipeline also
/// sends it flags, sessions, process and loss records.
pub struct AuditSink {
    log: AuditLog,
    /// Write errors.
    pub errors: u64,
}

impl AuditSink {
    /// Wraps an open log.
    pub fn new(log: AuditLog) -> Self {
        Self { log, errors: 0 }
    }
}

impl Sink for AuditSink {
    fn emit(&mut self, ev: &McpEvent) -> io::Result<()> {
        self.log.append_message(ev)
    }

    fn flag(&mut self, flag: &serde_json::Value) -> io::Result<()> {
        let ts = flag["ts"].as_str().unwrap_or_default().to_owned();
        self.log.append_json("flag", &ts, flag)
    }

    fn record(&mut self, kind: &str, ts: &str, data: &serde_json::Value) -> io::Result<()> {
        self.log.append_json(kind, ts, data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.log.tick()
    }

    fn close(&mut self) -> io::Result<()> {
        self.log.close()
    }

    fn take_lost(&mut self) -> u64 {
        self.log.take_lost()
    }

    fn take_sync_failures(&mut self) -> u64 {
        self.log.take_sync_failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{audit::verify, sink::sample};

    #[test]
    fn a_message_record_is_the_event_and_indexes_as_its_value_would() {
        let dir = std::env::temp_dir().join(format!("mcpscope-audit-msg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut log = AuditLog::open(AuditConfig::new(dir.clone())).unwrap();
        let events = [sample::event(true), sample::event(false)];
        for ev in &events {
            log.append_message(ev).unwrap();
            // The index reads the same from the view as from the whole event.
            let (mut by_view, mut by_value) = (SegmentIndex::default(), SegmentIndex::default());
            by_view.note_message(&index_view(ev));
            by_value.note_message(&serde_json::to_value(ev).unwrap());
            assert_eq!(
                serde_json::to_value((&by_view.sessions, &by_view.tools)).unwrap(),
                serde_json::to_value((&by_value.sessions, &by_value.tools)).unwrap()
            );
        }
        log.close().unwrap();
        assert!(matches!(
            verify::verify(&dir, None).unwrap(),
            verify::Verdict::Ok { .. }
        ));
        let stored: Vec<serde_json::Value> = records(&dir)
            .into_iter()
            .filter(|r| r["kind"] == "message")
            .collect();
        assert_eq!(stored.len(), 2);
        for (r, ev) in stored.iter().zip(&events) {
            assert_eq!(r["data"], serde_json::to_value(ev).unwrap());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// The trail's records, in order.
    fn records(dir: &Path) -> Vec<serde_json::Value> {
        segments(dir)
            .unwrap()
            .iter()
            .flat_map(|&n| {
                let text = fs::read_to_string(dir.join(segment_name(n))).unwrap();
                text.lines().map(String::from).collect::<Vec<_>>()
            })
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    }

    /// A trail in `dir` whose records 3 and 4 were written but not
    /// synced (two fsyncs failed over them), as
    /// [`a_failed_fsync_is_counted_and_the_records_it_put_in_doubt_are_named_once_in_the_chain`]
    /// checks: segment 1 with a header, notes 2, 3 and 4, `sync_failed` 5
    /// naming 3..=4 and note 6; then, the next fsync having succeeded,
    /// segment 2 with a header (7), `sync_recovered` 8 naming 1..=6 (all
    /// of segment 1), notes 9 and 10.
    fn trail_with_records_in_doubt(dir: &Path) {
        let _ = fs::remove_dir_all(dir);
        let mut cfg = AuditConfig::new(dir.to_owned());
        (cfg.fsync_every, cfg.fsync_interval) = (0, Duration::ZERO); // fsyncs by hand
        let mut log = AuditLog::open(cfg).unwrap();
        log.append("note", "t", &1).unwrap(); // seq 2, after the header
        log.sync();
        log.append("note", "t", &2).unwrap();
        log.append("note", "t", &3).unwrap();
        assert!(log.write_pending());
        // fsync of a character device fails (EINVAL), as a disk's failed
        // writeback would (EIO): the records stay in the segment.
        let segment = std::mem::replace(&mut log.out, File::open("/dev/null").unwrap());
        log.sync();
        log.sync(); // again, with nothing new written: counted, names nothing more
        log.out = segment;
        assert_eq!(log.take_sync_failures(), 2);
        assert_eq!(log.take_lost(), 0, "nothing was lost");
        log.append("note", "t", &4).unwrap();
        log.sync();
        log.append("note", "t", &5).unwrap();
        log.append("note", "t", &6).unwrap();
        log.close().unwrap();
        assert_eq!(log.take_sync_failures(), 0);
    }

    #[test]
    fn a_failed_fsync_is_counted_and_the_records_it_put_in_doubt_are_named_once_in_the_chain() {
        let dir = std::env::temp_dir().join(format!("mcpscope-audit-sync-{}", std::process::id()));
        trail_with_records_in_doubt(&dir);
        let kinds: Vec<_> = records(&dir)
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap(),
                    r["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [(1, "segment"), (2, "note"), (3, "note"), (4, "note")]
            .into_iter()
            .chain([(5, "sync_failed"), (6, "note")])
            .chain([
                (7, "segment"),
                (8, "sync_recovered"),
                (9, "note"),
                (10, "note"),
            ])
            .map(|(n, k)| (n, k.to_owned()))
            .collect::<Vec<_>>();
        assert_eq!(
            kinds, expected,
            "one sync_failed record, ahead of the next record; once an fsync succeeds again, a new segment stating the episode"
        );
        let trail = records(&dir);
        let range = |r: &serde_json::Value| {
            let d = &r["data"];
            [&d["first_seq"], &d["last_seq"], &d["failures"]].map(|v| v.as_u64())
        };
        assert_eq!(range(&trail[4]), [Some(3), Some(4), Some(2)], "sync_failed");
        assert_eq!(
            range(&trail[7]),
            [Some(1), Some(6), Some(2)],
            "sync_recovered"
        );
        let failed = &trail[4]["data"];
        assert!(
            failed["error"].as_str().unwrap().contains("nvalid"),
            "{failed}"
        );
        assert!(matches!(
            verify::verify(&dir, None).unwrap(),
            verify::Verdict::Ok { .. }
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    /// Zeroes segment `seg` of `dir` from the start of line `from` (1
    /// is the first) up to `to` bytes into line `until` (its newline
    /// kept, as the page after a dropped one keeps the rest of a record),
    /// or to the last newline with `until` 0: what a disk shows once it
    /// dropped the pages it failed to write back.
    fn zero_lines(dir: &Path, seg: u64, from: usize, until: usize, to: usize) {
        let path = dir.join(segment_name(seg));
        let mut text = fs::read(&path).unwrap();
        let starts: Vec<usize> = std::iter::once(0)
            .chain(memchr::memchr_iter(b'\n', &text).map(|i| i + 1))
            .collect();
        let end = if until == 0 {
            text.len() - 1
        } else {
            starts[until - 1] + to
        };
        text[starts[from - 1]..end].fill(0);
        fs::write(&path, text).unwrap();
    }

    #[test]
    fn records_a_disk_lost_after_the_trail_named_them_in_doubt_verify_as_lost_not_as_edited() {
        let dir = std::env::temp_dir().join(format!("mcpscope-audit-lost-{}", std::process::id()));
        trail_with_records_in_doubt(&dir);
        // Records 3 and 4 read back as zeros, up to a page boundary in 4.
        zero_lines(&dir, 1, 3, 4, 40);
        let v = verify::verify(&dir, None).unwrap();
        let verify::Verdict::Lost { records, lost, .. } = &v else {
            panic!("{v}");
        };
        assert_eq!(*records, 8, "{v}");
        assert_eq!(
            (lost.len(), lost[0].first, lost[0].last, lost[0].named_by),
            (1, 3, 4, 5),
            "{v}"
        );
        assert!(lost[0].at.contains("line 3"), "{v}");
        assert!(lost[0].error.contains("nvalid"), "{v}");
        assert!(v.to_string().starts_with("LOST: 8 records"), "{v}");
        // Synced record 2 to the end of the segment: the next segment goes
        // on from a lost record, and sync_recovered names them all.
        trail_with_records_in_doubt(&dir);
        zero_lines(&dir, 1, 2, 0, 0);
        let v = verify::verify(&dir, None).unwrap();
        let verify::Verdict::Lost { records, lost, .. } = &v else {
            panic!("{v}");
        };
        assert_eq!(
            (
                *records,
                lost.len(),
                lost[0].first,
                lost[0].last,
                lost[0].named_by
            ),
            (5, 1, 2, 6, 8),
            "{v}"
        );
        // The same with the segment's last newline zeroed too: its last
        // line is not torn by a crash (the next segment does not say so).
        let path = dir.join(segment_name(1));
        let mut text = fs::read(&path).unwrap();
        *text.last_mut().unwrap() = 0;
        fs::write(&path, text).unwrap();
        let again = verify::verify(&dir, None).unwrap();
        assert_eq!(again, v, "{again}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn queries_count_the_lines_they_could_not_read() {
        let dir =
            std::env::temp_dir().join(format!("mcpscope-audit-unread-{}", std::process::id()));
        trail_with_records_in_doubt(&dir);
        let notes = |needle: Option<&[u8]>| {
            let mut seen = 0;
            let unreadable =
                super::super::query::for_each_record(&dir, 1, needle, &mut |_, _| seen += 1)
                    .unwrap();
            (seen, unreadable)
        };
        assert_eq!(notes(None), (6, 0));
        // Records 3 and 4 zero-filled: one line, unread whatever is asked.
        zero_lines(&dir, 1, 3, 4, 40);
        assert_eq!(notes(None), (4, 1));
        assert_eq!(notes(Some(b"\"kind\":\"note\"")), (2, 1));
        let ix = super::super::query::build_index(&dir, 1).unwrap();
        assert_eq!((ix.records, ix.unreadable), (4, 1));
        // A line edited into invalid JSON (no NUL): unread, and counted
        // where it is parsed.
        let path = dir.join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let at = memchr::memmem::find(&bytes, b"\"kind\":\"note\"").unwrap();
        bytes[at] = b'x';
        fs::write(&path, bytes).unwrap();
        assert_eq!(notes(None), (3, 2));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn zeros_where_no_record_was_named_in_doubt_are_broken() {
        let dir = std::env::temp_dir().join(format!("mcpscope-audit-zeros-{}", std::process::id()));
        // Record 9 was synced: zeros there are not the disk's doing.
        trail_with_records_in_doubt(&dir);
        zero_lines(&dir, 2, 3, 3, 40);
        let v = verify::verify(&dir, None).unwrap();
        let verify::Verdict::Broken { at, what } = &v else {
            panic!("{v}");
        };
        assert!(at.contains("audit-000002.jsonl line 3"), "{v}");
        assert!(
            what.contains("seq 9..9 were, which no sync_failed or"),
            "{v}"
        );
        // Zeros from record 9 to the end: nothing after them vouches. (A
        // zero-filled last line with no newline is a torn line, as a
        // crash leaves.)
        trail_with_records_in_doubt(&dir);
        zero_lines(&dir, 2, 3, 0, 0);
        let v = verify::verify(&dir, None).unwrap();
        assert!(
            matches!(&v, verify::Verdict::Broken { what, .. } if what.contains("to the end")),
            "{v}"
        );
        // Zeros where a whole line was, then the next record in line: none
        // is missing, the bytes were overwritten.
        trail_with_records_in_doubt(&dir);
        let path = dir.join(segment_name(1));
        let mut text = fs::read(&path).unwrap();
        let at = memchr::memchr(b'\n', &text).unwrap() + 1;
        text.splice(at..at, [0, 0, b'\n']);
        fs::write(&path, text).unwrap();
        let v = verify::verify(&dir, None).unwrap();
        assert!(
            matches!(&v, verify::Verdict::Broken { what, .. } if what.contains("no record is missing")),
            "{v}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
