//! Presentation of the investigation commands: tables for people, JSON for
//! tools.

use serde_json::Value;

use crate::audit::query::SessionRow;

/// Output format of the investigation commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

fn short_ts(ts: &str) -> String {
    ts.get(..23).unwrap_or(ts).replace('T', " ")
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn who(e: &Value) -> String {
    if e.is_null() {
        return "?".into();
    }
    format!("{}[{}]", s(&e["comm"]), s(&e["pid"]))
}

/// `mcpscope sessions`.
pub fn sessions(rows: &[SessionRow], f: Format) -> String {
    if f == Format::Json {
        return serde_json::to_string_pretty(rows).unwrap_or_default();
    }
    table(
        &[
            "SESSION", "START", "DURATION", "CLIENT", "SERVER", "PIDS", "MSGS", "CALLS", "ERRORS",
            "FLAGS", "EXES",
        ],
        rows.iter()
            .map(|r| {
                let x = &r.summary;
                vec![
                    r.session.clone(),
                    short_ts(&x.start),
                    format!("{:.1}s", r.duration_s),
                    x.client.clone().unwrap_or("-".into()),
                    x.server.clone().unwrap_or("-".into()),
                    x.pids
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    x.messages.to_string(),
                    x.calls.to_string(),
                    x.errors.to_string(),
                    x.flags.to_string(),
                    x.exes.iter().cloned().collect::<Vec<_>>().join(","),
                ]
            })
            .collect(),
    )
}

/// `mcpscope timeline`: messages and flags in order, payloads on request.
pub fn timeline(records: &[Value], payloads: bool, f: Format) -> String {
    if f == Format::Json {
        return serde_json::to_string_pretty(records).unwrap_or_default();
    }
    let mut rows = Vec::new();
    for r in records {
        let d = &r["data"];
        if r["kind"] == "flag" {
            rows.push(vec![
                short_ts(&s(&r["ts"])),
                "FLAG".into(),
                format!("{} ({})", s(&d["flag"]), s(&d["severity"])),
                "".into(),
                "".into(),
                s(&d["message"]),
            ]);
            continue;
        }
        let target = [&d["tool"], &d["resource"], &d["prompt"]]
            .into_iter()
            .find(|v| !v.is_null())
            .map(s)
            .unwrap_or_default();
        let mut detail = String::new();
        if let Some(l) = d["latency_ms"].as_f64() {
            detail.push_str(&format!("{l:.1}ms "));
        }
        if d["is_error"] == true {
            detail.push_str(&format!("ERROR {} ", s(&d["error_type"])));
        }
        if d["truncated"] == true {
            detail.push_str("TRUNCATED ");
        }
        if payloads {
            if let Some(p) = d["payload"].as_str() {
                detail.push_str(p);
            }
        }
        rows.push(vec![
            short_ts(&s(&d["ts"])),
            s(&d["kind"]),
            format!("{} {}", s(&d["method"]), target).trim().to_owned(),
            d["id"]
                .as_u64()
                .map(|i| i.to_string())
                .or(d["id"].as_str().map(String::from))
                .unwrap_or_default(),
            format!("{} → {}", who(&d["from"]), who(&d["to"])),
            detail.trim().to_owned(),
        ]);
    }
    table(&["TIME", "KIND", "WHAT", "ID", "FROM → TO", "DETAIL"], rows)
}

/// `mcpscope calls`.
pub fn calls(records: &[Value], f: Format) -> String {
    if f == Format::Json {
        return serde_json::to_string_pretty(records).unwrap_or_default();
    }
    table(
        &[
            "TIME", "TOOL", "STATUS", "LATENCY", "CLIENT", "SERVER", "CALLER", "SESSION",
        ],
        records
            .iter()
            .map(|r| {
                let d = &r["data"];
                vec![
                    short_ts(&s(&d["ts"])),
                    s(&d["tool"]),
                    if d["is_error"] == true {
                        format!("error {}", s(&d["error_type"]))
                    } else {
                        "ok".into()
                    },
                    d["latency_ms"]
                        .as_f64()
                        .map(|l| format!("{l:.1}ms"))
                        .unwrap_or("-".into()),
                    s(&d["client"]["name"]),
                    s(&d["server"]["name"]),
                    who(&d["to"]),
                    s(&d["session"]),
                ]
            })
            .collect(),
    )
}

/// `mcpscope flags`.
pub fn flags(records: &[Value], f: Format) -> String {
    if f == Format::Json {
        return serde_json::to_string_pretty(records).unwrap_or_default();
    }
    table(
        &["TIME", "FLAG", "SEVERITY", "SESSION", "MESSAGE"],
        records
            .iter()
            .map(|r| {
                let d = &r["data"];
                vec![
                    short_ts(&s(&r["ts"])),
                    s(&d["flag"]),
                    s(&d["severity"]),
                    s(&d["session"]),
                    s(&d["message"]),
                ]
            })
            .collect(),
    )
}
