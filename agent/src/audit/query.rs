//! Queries over the audit directory, without the agent: indexes of closed
//! segments tell which segments can hold an answer; within a segment,
//! `memmem` finds candidate lines before any JSON is parsed.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::Value;

use super::{
    chain,
    index::{SegmentIndex, SessionSummary},
    index_name, segment_name, segments, zero_filled,
};

/// Reads segment `seg`'s index sidecar.
pub fn read_index(dir: &Path, seg: u64) -> io::Result<SegmentIndex> {
    let f = File::open(dir.join(index_name(seg)))?;
    serde_json::from_reader(BufReader::new(f)).map_err(io::Error::other)
}

/// Builds segment `seg`'s index by scanning it (for the segment still being
/// written, or one whose run crashed before indexing it).
pub fn build_index(dir: &Path, seg: u64) -> io::Result<SegmentIndex> {
    let mut ix = SegmentIndex {
        segment: seg,
        ..SegmentIndex::default()
    };
    ix.unreadable = for_each_record(dir, seg, None, &mut |v, hash| {
        let seq = v["seq"].as_u64().unwrap_or(0);
        let kind = v["kind"].as_str().unwrap_or_default();
        ix.note(seq, v["ts"].as_str().unwrap_or_default(), kind);
        match kind {
            "message" => ix.note_message(&v["data"]),
            "flag" => ix.note_flag(&v["data"]),
            _ => {}
        }
        ix.last_hash = hash.to_owned();
    })?;
    Ok(ix)
}

/// Calls `visit` with every complete record of segment `seg` (and its hash)
/// whose line contains `needle` (all records when `None`); returns the
/// unreadable lines it met (see [`for_each_matching`]).
pub fn for_each_record(
    dir: &Path,
    seg: u64,
    needle: Option<&[u8]>,
    visit: &mut dyn FnMut(Value, &str),
) -> io::Result<u64> {
    for_each_matching(dir, seg, needle.as_slice(), visit)
}

/// Like [`for_each_record`], for lines containing every one of `needles`;
/// lines that lack one are never parsed. Returns how many complete lines
/// are not records it could read: those it parsed and could not, and
/// those holding a NUL byte (zero-filled: blocks a disk lost), which no
/// needle finds. An answer missing records says so (`mcpscope verify`
/// says why); nothing is skipped silently.
pub fn for_each_matching(
    dir: &Path,
    seg: u64,
    needles: &[&[u8]],
    visit: &mut dyn FnMut(Value, &str),
) -> io::Result<u64> {
    let mut data = Vec::new();
    File::open(dir.join(segment_name(seg)))?.read_to_end(&mut data)?;
    let finders: Vec<memchr::memmem::Finder<'_>> =
        needles.iter().map(memchr::memmem::Finder::new).collect();
    // One pass over a whole segment; lines are looked at only if it finds
    // a NUL (a segment whose disk lost blocks).
    let zeroed = zero_filled(&data);
    let mut unreadable = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', &data) {
        let line = &data[start..nl];
        start = nl + 1;
        if zeroed && zero_filled(line) {
            unreadable += 1;
            continue;
        }
        if !finders.iter().all(|f| f.find(line).is_some()) {
            continue;
        }
        let record = chain::unseal(line)
            .and_then(|(body, hash)| Some((serde_json::from_slice::<Value>(&body).ok()?, hash)));
        match record {
            Some((v, hash)) => visit(v, hash),
            None => unreadable += 1,
        }
    }
    Ok(unreadable)
}

/// A query's answer, and how many lines of the segments it read were not
/// records it could read (see [`for_each_matching`]).
#[derive(Debug)]
pub struct Answer<T> {
    /// The rows.
    pub rows: T,
    /// Lines not read.
    pub unreadable: u64,
}

/// The index of every segment: read, or built for segments without one.
pub fn indexes(dir: &Path) -> io::Result<Vec<SegmentIndex>> {
    segments(dir)?
        .into_iter()
        .map(|s| read_index(dir, s).or_else(|_| build_index(dir, s)))
        .collect()
}

/// Parses `--since`/`--until`: RFC 3339, or relative like `-1h`, `30m`, `2d`.
pub fn parse_time(s: &str) -> Result<String, String> {
    let t = if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else {
        let d = humantime::parse_duration(s.trim_start_matches('-'))
            .map_err(|_| format!("`{s}` is neither RFC 3339 nor a relative time like -1h"))?;
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    Ok(humantime::format_rfc3339_micros(t).to_string())
}

/// Filters shared by the queries.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Records at or after this time (normalised RFC 3339).
    pub since: Option<String>,
    /// Records before this time.
    pub until: Option<String>,
    /// clientInfo name.
    pub client: Option<String>,
    /// serverInfo name.
    pub server: Option<String>,
    /// Executable path (substring).
    pub exe: Option<String>,
    /// Process id.
    pub pid: Option<u32>,
    /// Kubernetes namespace of either end.
    pub namespace: Option<String>,
    /// Kubernetes pod of either end.
    pub pod: Option<String>,
    /// Only sessions with flags.
    pub flagged: bool,
}

impl Filter {
    fn time_overlaps(&self, start: &str, end: &str) -> bool {
        self.since.as_deref().is_none_or(|s| end >= s)
            && self.until.as_deref().is_none_or(|u| start < u)
    }

    fn ts_in(&self, ts: &str) -> bool {
        self.time_overlaps(ts, ts)
    }
}

/// One row of `mcpscope sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// Session key.
    pub session: String,
    /// Its summary.
    #[serde(flatten)]
    pub summary: SessionSummary,
    /// Duration in seconds.
    pub duration_s: f64,
}

fn seconds_between(a: &str, b: &str) -> f64 {
    match (
        humantime::parse_rfc3339_weak(a),
        humantime::parse_rfc3339_weak(b),
    ) {
        (Ok(a), Ok(b)) => b.duration_since(a).unwrap_or(Duration::ZERO).as_secs_f64(),
        _ => 0.0,
    }
}

/// `mcpscope sessions`: one row per session, from the indexes.
pub fn sessions(dir: &Path, f: &Filter) -> io::Result<Answer<Vec<SessionRow>>> {
    let mut all: BTreeMap<String, SessionSummary> = BTreeMap::new();
    let mut unreadable = 0;
    for ix in indexes(dir)? {
        if !f.time_overlaps(&ix.min_ts, &ix.max_ts) {
            continue;
        }
        unreadable += ix.unreadable;
        for (k, s) in ix.sessions {
            all.entry(k).or_default().merge(&s);
        }
    }
    let mut rows: Vec<SessionRow> = all
        .into_iter()
        .filter(|(_, s)| f.time_overlaps(&s.start, &s.end))
        .filter(|(_, s)| {
            f.client
                .as_deref()
                .is_none_or(|c| s.client.as_deref() == Some(c))
        })
        .filter(|(_, s)| {
            f.server
                .as_deref()
                .is_none_or(|c| s.server.as_deref() == Some(c))
        })
        .filter(|(_, s)| {
            f.exe
                .as_deref()
                .is_none_or(|e| s.exes.iter().any(|x| x.contains(e)))
        })
        .filter(|(_, s)| f.pid.is_none_or(|p| s.pids.contains(&p)))
        .filter(|(_, s)| {
            f.namespace
                .as_ref()
                .is_none_or(|n| s.namespaces.contains(n))
        })
        .filter(|(_, s)| f.pod.as_ref().is_none_or(|p| s.pods.contains(p)))
        .filter(|(_, s)| !f.flagged || s.flags > 0)
        .map(|(session, summary)| SessionRow {
            duration_s: seconds_between(&summary.start, &summary.end),
            session,
            summary,
        })
        .collect();
    rows.sort_by(|a, b| a.summary.start.cmp(&b.summary.start));
    Ok(Answer { rows, unreadable })
}

/// `mcpscope timeline`: the ordered messages and flags of one session (or
/// of every session a pid took part in).
pub fn timeline(
    dir: &Path,
    session: Option<&str>,
    pid: Option<u32>,
) -> io::Result<Answer<Vec<Value>>> {
    timeline_of(dir, session, pid, None)
}

/// [`timeline`], also selecting sessions by Kubernetes pod.
pub fn timeline_of(
    dir: &Path,
    session: Option<&str>,
    pid: Option<u32>,
    pod: Option<&str>,
) -> io::Result<Answer<Vec<Value>>> {
    let (mut out, mut unreadable) = (Vec::new(), 0);
    for ix in indexes(dir)? {
        let wanted: Vec<&String> = ix
            .sessions
            .iter()
            .filter(|(k, s)| {
                session.is_none_or(|want| k.as_str() == want)
                    && pid.is_none_or(|p| s.pids.contains(&p))
                    && pod.is_none_or(|p| s.pods.contains(p))
            })
            .map(|(k, _)| k)
            .collect();
        for key in wanted {
            let needle = format!("\"session\":\"{key}\"");
            unreadable +=
                for_each_record(dir, ix.segment, Some(needle.as_bytes()), &mut |v, _| {
                    if matches!(v["kind"].as_str(), Some("message" | "flag"))
                        && v["data"]["session"] == key.as_str()
                    {
                        out.push(v);
                    }
                })?;
        }
    }
    out.sort_by_key(|v| v["seq"].as_u64().unwrap_or(0));
    Ok(Answer {
        rows: out,
        unreadable,
    })
}

/// Filters of `mcpscope calls`.
#[derive(Debug, Default, Clone)]
pub struct CallFilter {
    /// Shared filters.
    pub common: Filter,
    /// Tool name.
    pub tool: Option<String>,
    /// `ok` or `error`.
    pub status: Option<String>,
}

/// `mcpscope calls`: completed tool calls (their responses carry the tool,
/// latency and outcome).
pub fn calls(dir: &Path, f: &CallFilter) -> io::Result<Answer<Vec<Value>>> {
    let (mut out, mut unreadable) = (Vec::new(), 0);
    // Byte needles for every filter the JSON writer renders verbatim.
    let mut owned: Vec<Vec<u8>> = vec![b"\"method\":\"tools/call\"".to_vec()];
    if let Some(t) = &f.tool {
        owned.push(
            format!("\"tool\":{}", serde_json::to_string(t).unwrap_or_default()).into_bytes(),
        );
    }
    match f.status.as_deref() {
        Some("error") => owned.push(b"\"is_error\":true".to_vec()),
        Some("ok") => owned.push(b"\"is_error\":false".to_vec()),
        _ => {}
    }
    let needles: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    for ix in indexes(dir)? {
        if !f.common.time_overlaps(&ix.min_ts, &ix.max_ts)
            || f.tool.as_ref().is_some_and(|t| !ix.tools.contains(t))
        {
            continue;
        }
        unreadable += for_each_matching(dir, ix.segment, &needles, &mut |v, _| {
            let e = &v["data"];
            if v["kind"] != "message"
                || e["method"] != "tools/call"
                || !(e["kind"] == "response" || e["kind"] == "error")
            {
                return;
            }
            let ok = f.tool.as_deref().is_none_or(|t| e["tool"] == t)
                && f.status
                    .as_deref()
                    .is_none_or(|s| (s == "error") == (e["is_error"] == true))
                && f.common.ts_in(e["ts"].as_str().unwrap_or_default())
                && f.common
                    .client
                    .as_deref()
                    .is_none_or(|c| e["client"]["name"] == c)
                && f.common
                    .server
                    .as_deref()
                    .is_none_or(|c| e["server"]["name"] == c)
                && f.common
                    .pid
                    .is_none_or(|p| e["from"]["pid"] == p || e["to"]["pid"] == p)
                && f.common.exe.as_deref().is_none_or(|x| {
                    [&e["from"]["exe"], &e["to"]["exe"]]
                        .iter()
                        .any(|v| v.as_str().is_some_and(|s| s.contains(x)))
                });
            if ok {
                out.push(v);
            }
        })?;
    }
    out.sort_by_key(|v| v["seq"].as_u64().unwrap_or(0));
    Ok(Answer {
        rows: out,
        unreadable,
    })
}

/// `mcpscope flags`: flag records, by kind and severity.
pub fn flags(
    dir: &Path,
    kind: Option<&str>,
    severity: Option<&str>,
    f: &Filter,
) -> io::Result<Answer<Vec<Value>>> {
    let (mut out, mut unreadable) = (Vec::new(), 0);
    for ix in indexes(dir)? {
        if !ix.kinds.contains_key("flag") || !f.time_overlaps(&ix.min_ts, &ix.max_ts) {
            continue;
        }
        unreadable += for_each_record(dir, ix.segment, Some(b"\"kind\":\"flag\""), &mut |v, _| {
            let d = &v["data"];
            if v["kind"] == "flag"
                && kind.is_none_or(|k| d["flag"] == k)
                && severity.is_none_or(|s| d["severity"] == s)
                && f.ts_in(v["ts"].as_str().unwrap_or_default())
            {
                out.push(v);
            }
        })?;
    }
    Ok(Answer {
        rows: out,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_absolute_and_relative() {
        assert_eq!(
            parse_time("2026-11-26T06:00:00Z").unwrap(),
            "2026-11-26T06:00:00.000000Z"
        );
        let rel = parse_time("-1h").unwrap();
        assert!(rel < humantime::format_rfc3339_micros(SystemTime::now()).to_string());
        assert!(parse_time("yesterday-ish").is_err());
    }
}
