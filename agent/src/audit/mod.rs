//! The audit trail: append-only, hash-chained JSONL segments that a
//! responder can verify and query after the fact, without the agent.

pub mod chain;
pub mod index;
pub mod query;
pub mod verify;
mod writer;

pub use writer::{AuditConfig, AuditLog, AuditSink};

/// File name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("audit-{n:06}.jsonl")
}

/// File name of segment `n`'s index sidecar.
pub fn index_name(n: u64) -> String {
    format!("audit-{n:06}.idx.json")
}

/// Whether a line of a segment holds a NUL byte, which no record does (JSON
/// escapes control characters): what a disk that dropped blocks it failed
/// to write back reads as.
pub fn zero_filled(line: &[u8]) -> bool {
    memchr::memchr(0, line).is_some()
}

/// Segment numbers present in `dir`, ascending.
pub fn segments(dir: &std::path::Path) -> std::io::Result<Vec<u64>> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("audit-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}
