//! `mcpscope verify DIR`: checks the whole chain and names the first break.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use super::{
    chain::{self, Hasher, GENESIS},
    segment_name, segments, zero_filled,
};

/// The result of a verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record verified.
    Ok {
        /// Records verified.
        records: u64,
        /// Segments verified.
        segments: usize,
        /// Notes (acknowledged torn lines, retention).
        notes: Vec<String>,
    },
    /// The chain ends in a torn line after a crash, not yet acknowledged by
    /// a resumed run; everything before it verified.
    Torn {
        /// Where.
        at: String,
        /// Records verified before it.
        records: u64,
    },
    /// Every record there verified, but the disk lost some: zero-filled
    /// bytes stand where records were, and the trail itself had named
    /// each of them in doubt (`sync_failed` and `sync_recovered`: written,
    /// but an fsync failed over them). The chain cannot be checked across
    /// them.
    Lost {
        /// Records verified.
        records: u64,
        /// Segments verified.
        segments: usize,
        /// The stretches lost, in order.
        lost: Vec<Lost>,
        /// Notes, as for [`Verdict::Ok`].
        notes: Vec<String>,
    },
    /// The first broken record, and what broke.
    Broken {
        /// Where (segment, line, seq).
        at: String,
        /// What broke.
        what: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok { records, segments, notes } => {
                write!(f, "OK: {records} records in {segments} segments verified")?;
                for n in notes {
                    write!(f, "\nnote: {n}")?;
                }
                Ok(())
            }
            Verdict::Torn { at, records } => write!(
                f,
                "TORN: {records} records verified; the last line ({at}) is incomplete — the agent stopped mid-write (crash); it resumes after it on restart"
            ),
            Verdict::Lost {
                records,
                segments,
                lost,
                notes,
            } => {
                write!(f, "LOST: {records} records in {segments} segments verified; the disk lost ")?;
                for (i, l) in lost.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; and " };
                    write!(
                        f,
                        "{sep}records seq {}..{} ({}: zero-filled), named in doubt by record seq {} ({})",
                        l.first, l.last, l.at, l.named_by, l.error
                    )?;
                }
                write!(f, ". The chain cannot be checked across them.")?;
                for n in notes {
                    write!(f, "\nnote: {n}")?;
                }
                Ok(())
            }
            Verdict::Broken { at, what } => write!(f, "BROKEN at {at}: {what}"),
        }
    }
}

/// Records a disk lost (see [`Verdict::Lost`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Lost {
    /// The first and last of them (`seq`).
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// Where the zero-filled bytes start (segment, line, byte).
    pub at: String,
    /// The `sync_failed` or `sync_recovered` record that named the first
    /// of them in doubt.
    pub named_by: u64,
    /// Its fsync error.
    pub error: String,
}

/// Records the trail named in doubt: one `sync_failed` or
/// `sync_recovered` record's range.
struct InDoubt {
    first: u64,
    last: u64,
    named_by: u64,
    error: String,
}

/// Zero-filled bytes where records were: where they start, and the seq
/// of the first record missing.
struct Zeroed {
    at: String,
    first: u64,
}

/// The stretch `z` up to `last`, if every record of it was named in doubt
/// by `doubts`; else why it is broken.
fn lost(z: Zeroed, last: u64, doubts: &[InDoubt]) -> Result<Lost, Verdict> {
    // Named by the first record of the chain that named its first record.
    let by = (doubts.iter())
        .filter(|d| (d.first..=d.last).contains(&z.first))
        .min_by_key(|d| d.named_by);
    let mut next = z.first; // the first seq not yet found named
    let mut ranges: Vec<&InDoubt> = doubts.iter().collect();
    ranges.sort_by_key(|d| d.first);
    for d in ranges {
        if d.first <= next && next <= d.last {
            next = d.last + 1;
        }
    }
    match by {
        Some(d) if next > last => Ok(Lost {
            first: z.first,
            last,
            at: z.at,
            named_by: d.named_by,
            error: d.error.clone(),
        }),
        _ => Err(Verdict::Broken {
            at: z.at,
            what: format!(
                "zero-filled bytes where records seq {}..{last} were, which no sync_failed or sync_recovered record names in doubt (overwritten, or lost by a disk the agent did not see fail)",
                z.first
            ),
        }),
    }
}

struct Line {
    seq: u64,
    prev: String,
    kind: String,
    data: serde_json::Value,
}

fn parse(line: &[u8], hasher: &Hasher) -> Result<(Line, String), &'static str> {
    let (body, stored) =
        chain::unseal(line).ok_or("not a sealed record (edited, or not written by mcpscope)")?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "not valid JSON (edited)")?;
    let hash = hasher.hash(&body);
    if hash != stored {
        return Err("edited: the stored hash does not match the record's content");
    }
    let l = Line {
        seq: v["seq"].as_u64().ok_or("no seq")?,
        prev: v["prev"].as_str().ok_or("no prev")?.to_owned(),
        kind: v["kind"].as_str().unwrap_or_default().to_owned(),
        data: v["data"].clone(),
    };
    Ok((l, hash))
}

/// Verifies the trail in `dir` (with the HMAC key of a keyed chain).
pub fn verify(dir: &Path, key: Option<&[u8]>) -> io::Result<Verdict> {
    let hasher = key.map_or(Hasher::Sha256, |k| Hasher::Hmac(k.to_vec()));
    let segs = segments(dir)?;
    if segs.is_empty() {
        return Ok(Verdict::Broken {
            at: dir.display().to_string(),
            what: "no audit segments".into(),
        });
    }
    let mut notes = Vec::new();
    let mut records = 0u64;
    let mut expected_seq: Option<u64> = None;
    let mut last_hash: Option<String> = None;
    // A first segment other than 1 must be vouched for by a retention record.
    let mut unvouched_start: Option<(u64, String)> = None;
    // The torn line: its segment, where it is, and if it is zero-filled,
    // the first record missing (a segment whose last blocks read back as
    // zeros, unless the next segment acknowledges a crash).
    let mut pending_torn: Option<(u64, String, Option<u64>)> = None;
    // Zero-filled lines not yet followed by a record; then each such
    // stretch with the seq of the last record it lost; and the ranges the
    // trail named in doubt. A stretch is judged at the end, by the
    // `sync_failed` and `sync_recovered` records that follow it.
    let mut zeroed: Option<Zeroed> = None;
    let mut holes: Vec<(Zeroed, u64)> = Vec::new();
    let mut doubts: Vec<InDoubt> = Vec::new();
    for (i, &seg) in segs.iter().enumerate() {
        if i > 0 && seg != segs[i - 1] + 1 {
            return Ok(Verdict::Broken {
                at: segment_name(segs[i - 1] + 1),
                what: format!(
                    "missing segment(s) {}..{} between {} and {}",
                    segs[i - 1] + 1,
                    seg - 1,
                    segment_name(segs[i - 1]),
                    segment_name(seg)
                ),
            });
        }
        let name = segment_name(seg);
        let mut r = BufReader::new(File::open(dir.join(&name))?);
        let mut buf = Vec::new();
        let mut lineno = 0u64;
        let mut offset = 0u64;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            lineno += 1;
            let at = |seq: Option<u64>| match seq {
                Some(s) => format!("{name} line {lineno} (seq {s})"),
                None => format!("{name} line {lineno}"),
            };
            let complete = buf.last() == Some(&b'\n');
            let content = if complete { &buf[..n - 1] } else { &buf[..] };
            if let Some((tseg, tat, _)) = pending_torn.take() {
                return Ok(Verdict::Broken {
                    at: tat,
                    what: format!(
                        "segment {tseg} is truncated: a torn line is followed by more data"
                    ),
                });
            }
            let parsed = parse(content, &hasher);
            let (line, hash) = match parsed {
                Ok(p) => p,
                Err(_) if complete && zero_filled(content) && expected_seq.is_some() => {
                    // What a disk dropped after its writeback failed reads
                    // back as zeros: judged once the chain goes on.
                    zeroed.get_or_insert_with(|| Zeroed {
                        at: format!("{name} line {lineno}, byte {offset}"),
                        first: expected_seq.unwrap_or_default(),
                    });
                    offset += n as u64;
                    continue;
                }
                Err(_) if !complete => {
                    // Torn last line: acknowledged if the next segment's
                    // header says the run resumed after it.
                    pending_torn = Some((
                        seg,
                        format!("{name} line {lineno}, byte {offset}"),
                        expected_seq.filter(|_| zero_filled(content)),
                    ));
                    break;
                }
                Err(e) if lineno == 1 && e.starts_with("edited") && key.is_none() => {
                    return Ok(Verdict::Broken {
                        at: at(None),
                        what: format!("{e} — if this chain is keyed, pass --hmac-key"),
                    });
                }
                Err(e) => {
                    return Ok(Verdict::Broken {
                        at: at(None),
                        what: e.into(),
                    })
                }
            };
            if lineno == 1 && line.data["keyed"] == true && key.is_none() {
                return Ok(Verdict::Broken {
                    at: at(Some(line.seq)),
                    what: "this chain is keyed (HMAC): pass --hmac-key FILE".into(),
                });
            }
            if lineno == 1 && line.kind != "segment" {
                return Ok(Verdict::Broken {
                    at: at(Some(line.seq)),
                    what: "segment does not start with its header (records deleted at its start)"
                        .into(),
                });
            }
            match (&expected_seq, &last_hash) {
                (None, None) => {
                    if seg != 1 || line.prev != GENESIS {
                        unvouched_start = Some((seg, line.prev.clone()));
                    }
                }
                (Some(exp), Some(_)) if zeroed.is_some() => {
                    // The record this one links to is gone: the link
                    // cannot be checked, only that records are missing.
                    let z = zeroed.take().expect("checked in the guard");
                    if line.seq <= *exp {
                        return Ok(Verdict::Broken {
                            at: z.at,
                            what: "zero-filled bytes where no record is missing (overwritten)"
                                .into(),
                        });
                    }
                    holes.push((z, line.seq - 1));
                }
                (Some(exp), Some(prev_hash)) => {
                    if line.prev != *prev_hash {
                        let what = if line.seq > *exp && lineno == 1 {
                            format!("segment {} is truncated: its last record(s) seq {}..{} are missing", seg - 1, exp, line.seq - 1)
                        } else if line.seq > *exp {
                            format!(
                                "record(s) seq {}..{} deleted before this record",
                                exp,
                                line.seq - 1
                            )
                        } else if line.seq < *exp {
                            format!(
                                "reordered or duplicated: seq {} appears after seq {}",
                                line.seq,
                                exp - 1
                            )
                        } else if lineno == 1 {
                            format!("segment {} is truncated or its end was replaced: this header does not continue from its last record", seg - 1)
                        } else {
                            "the chain is broken here: this record does not follow the previous one (replaced or inserted)".into()
                        };
                        return Ok(Verdict::Broken {
                            at: at(Some(line.seq)),
                            what,
                        });
                    }
                    if line.seq != *exp {
                        return Ok(Verdict::Broken {
                            at: at(Some(line.seq)),
                            what: format!("sequence jumps from {} to {}", exp - 1, line.seq),
                        });
                    }
                }
                _ => unreachable!(),
            }
            if line.kind == "segment" {
                if let Some(t) = line.data.get("resumed") {
                    if let Some(off) = t["torn_at"].as_u64() {
                        notes.push(format!("segment {} ends in a torn line at byte {off} (crash); the next run resumed after it", t["segment"]));
                    }
                }
            }
            if line.kind == "sync_failed" || line.kind == "sync_recovered" {
                let d = &line.data;
                if let (Some(first), Some(last)) = (d["first_seq"].as_u64(), d["last_seq"].as_u64())
                {
                    doubts.push(InDoubt {
                        first,
                        last,
                        named_by: line.seq,
                        error: d["error"].as_str().unwrap_or_default().to_owned(),
                    });
                }
            }
            if line.kind == "retention" {
                if let Some((start, prev)) = &unvouched_start {
                    if line.data["last_removed_hash"].as_str() == Some(prev.as_str()) {
                        notes.push(format!(
                            "segments before {start} were removed by retention ({})",
                            line.data["removed_segments"]
                        ));
                        unvouched_start = None;
                    }
                }
            }
            records += 1;
            expected_seq = Some(line.seq + 1);
            last_hash = Some(hash);
            offset += n as u64;
        }
        if let Some((tseg, _, _)) = &pending_torn {
            // Acknowledged by the next segment's header?
            if let Some(&next) = segs.get(i + 1) {
                let mut first = String::new();
                BufReader::new(File::open(dir.join(segment_name(next)))?).read_line(&mut first)?;
                let acknowledged = serde_json::from_str::<serde_json::Value>(first.trim_end())
                    .ok()
                    .is_some_and(|v| {
                        v["data"]["resumed"]["segment"] == *tseg
                            && v["data"]["resumed"]["torn_at"].is_u64()
                    });
                if acknowledged {
                    pending_torn = None;
                } else if let Some((_, at, Some(first))) = pending_torn.take() {
                    // Not torn by a crash: the segment's last blocks read
                    // back as zeros, and the next one goes on from a
                    // record lost with them.
                    zeroed.get_or_insert(Zeroed { at, first });
                }
            }
        }
    }
    if let Some((start, _)) = unvouched_start {
        return Ok(Verdict::Broken {
            at: segment_name(start),
            what: if start == 1 {
                "the first record does not start the chain (records deleted at the start)".into()
            } else {
                format!(
                    "missing segment(s) 1..{} (not removed by retention)",
                    start - 1
                )
            },
        });
    }
    if let Some(z) = zeroed {
        return Ok(Verdict::Broken {
            at: z.at,
            what: format!(
                "zero-filled from here to the end of the trail: the records from seq {} on are missing (a disk failing at the agent's last fsync, which its counter and stderr alone report, or truncated and overwritten)",
                z.first
            ),
        });
    }
    let mut lost_all = Vec::new();
    for (z, last) in holes {
        match lost(z, last, &doubts) {
            Ok(l) => lost_all.push(l),
            Err(broken) => return Ok(broken),
        }
    }
    if let Some((_, at, _)) = pending_torn {
        return Ok(Verdict::Torn { at, records });
    }
    let segments = segs.len();
    Ok(if lost_all.is_empty() {
        Verdict::Ok {
            records,
            segments,
            notes,
        }
    } else {
        Verdict::Lost {
            records,
            segments,
            lost: lost_all,
            notes,
        }
    })
}
