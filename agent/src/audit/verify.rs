//! `mcpscope verify DIR`: checks the whole chain and names the first break.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use super::{
    chain::{self, Hasher, GENESIS},
    segment_name, segments,
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
            Verdict::Broken { at, what } => write!(f, "BROKEN at {at}: {what}"),
        }
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
    let mut pending_torn: Option<(u64, String)> = None;
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
            if let Some((tseg, tat)) = pending_torn.take() {
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
                Err(_) if !complete => {
                    // Torn last line: acknowledged if the next segment's
                    // header says the run resumed after it.
                    pending_torn = Some((seg, format!("{name} line {lineno}, byte {offset}")));
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
        if let Some((tseg, _)) = &pending_torn {
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
    if let Some((_, at)) = pending_torn {
        return Ok(Verdict::Torn { at, records });
    }
    Ok(Verdict::Ok {
        records,
        segments: segs.len(),
        notes,
    })
}
