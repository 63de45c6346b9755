//! End-to-end audit trail: the real agent records a real session; the
//! investigation commands answer from the directory alone; a crash (kill -9)
//! leaves a trail that verifies and is resumed; a recorded capture replays
//! to the same events as the live run; a full disk loses whole records,
//! counted and acknowledged in the chain, never a torn or broken trail; a
//! disk whose writeback fails is counted and named in the chain; every new
//! segment and index reaches the disk with its directory entry.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use mcpscope_e2e::{drive, drive_basic, env, mcpscope, pid, read_events, tool, wait_for, Agent};
use serde_json::Value;

#[test]
fn a_real_sessions_trail_verifies_and_answers_sessions_timeline_and_calls() {
    let Some(env) = env("audit_real_session") else {
        return;
    };
    let dir = env.tmpdir("audit-real");
    let audit = dir.join("audit");
    let a = audit.to_str().unwrap();
    let agent = Agent::start(&env, &dir, &["--audit-dir", a]);
    let truth = drive_basic(&env, &dir);
    agent.stop();

    let (code, out, _) = mcpscope(&env, &["verify", a]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: "), "{out}");

    let (code, out, err) = mcpscope(
        &env,
        &[
            "sessions",
            "--dir",
            a,
            "--pid",
            &truth.server.to_string(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    let row = &rows[0];
    assert_eq!(
        (row["client"].as_str(), row["server"].as_str()),
        (Some("mcp"), Some("mcpscope-test-server"))
    );
    assert_eq!(row["messages"].as_u64(), Some(truth.lines.len() as u64));
    assert_eq!(row["calls"], 4, "echo, add, fail, no_such_tool");
    assert_eq!(row["errors"], 2, "fail and no_such_tool");
    let session = row["session"].as_str().unwrap().to_owned();

    let (code, out, err) = mcpscope(
        &env,
        &["timeline", &session, "--dir", a, "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    // Flags stand inline: calling a tool the server never listed is one.
    let inline: Vec<&Value> = all.iter().filter(|r| r["kind"] == "flag").collect();
    assert_eq!(inline.len(), 1, "{inline:?}");
    assert_eq!(inline[0]["data"]["flag"], "first_seen");
    let tl: Vec<&Value> = all.iter().filter(|r| r["kind"] == "message").collect();
    assert_eq!(tl.len(), truth.lines.len(), "the whole exchange, in order");
    for (rec, (dir, m)) in tl.iter().zip(&truth.lines) {
        let sent = dir == "sent";
        assert_eq!(
            pid(&rec["data"]["from"]),
            if sent { truth.client } else { truth.server }
        );
        assert_eq!(rec["data"]["id"], m["id"].clone(), "{rec}");
    }
    let (_, table, _) = mcpscope(&env, &["timeline", &session, "--dir", a]);
    assert!(
        table.starts_with("TIME") && table.contains("tools/call echo"),
        "{table}"
    );
    // An investigator's `| head` that has gone away ends the answer, and
    // the command still exits 0 (`print!` panicked there, exit 101). The
    // pipe's read end is closed before the command starts: its first write
    // fails, whatever the timing.
    for command in [&["timeline", &session, "--dir", a][..], &["verify", a]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(&env.bin)
            .args(command)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{command:?}: {err}");
        assert!(err.is_empty(), "{command:?}: {err}");
    }

    let (_, out, _) = mcpscope(
        &env,
        &["calls", "--dir", a, "--tool", "echo", "--output", "json"],
    );
    let calls: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["data"]["latency_ms"].as_f64().is_some());
    let (_, out, _) = mcpscope(
        &env,
        &[
            "calls", "--dir", a, "--status", "error", "--since", "-1h", "--output", "json",
        ],
    );
    let errs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let tools: Vec<&str> = errs
        .iter()
        .filter(|c| c["data"]["session"] == session.as_str())
        .map(|c| c["data"]["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["fail", "no_such_tool"]);

    // The other record kinds are on the record too.
    let all = std::fs::read_to_string(audit.join("audit-000001.jsonl")).unwrap();
    for kind in [
        "segment",
        "agent_start",
        "session_start",
        "message",
        "agent_stop",
    ] {
        assert!(
            all.contains(&format!("\"kind\":\"{kind}\"")),
            "{kind} record missing"
        );
    }
    assert!(
        all.contains("\"kind\":\"session_end\"") && all.contains("\"kind\":\"process_exit\""),
        "session end and participant exit"
    );
}

#[test]
fn kill_9_mid_write_leaves_a_verifiable_trail_that_resumes() {
    let Some(env) = env("audit_kill9") else {
        return;
    };
    let dir = env.tmpdir("audit-kill9");
    let audit = dir.join("audit");
    let a = audit.to_str().unwrap();
    let args = [
        "--audit-dir",
        a,
        "--audit-fsync-every",
        "1",
        "--audit-segment-bytes",
        "16384",
        "--audit-keep-segments",
        "50",
    ];
    let agent = Agent::start(&env, &dir, &args);
    // Real traffic in flight while the agent is killed.
    let mut client = repeat_client(&env, &dir);
    mcpscope_e2e::wait_for("audit records being written", 60, || {
        let n = std::fs::read_dir(&audit).ok()?.count();
        (n >= 3).then_some(())
    });
    agent.kill9();
    let _ = client.wait();
    let (code, out, _) = mcpscope(&env, &["verify", a]);
    assert!(
        code == 0 || code == 2,
        "after kill -9 the trail is OK or ends in a torn line, never broken: {out}"
    );
    // Restart: a new segment linked to the last good record.
    let agent = Agent::start(&env, &dir, &args);
    drive_basic(&env, &dir);
    agent.stop();
    let (code, out, _) = mcpscope(&env, &["verify", a]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("records in") && out.contains("segments verified"),
        "{out}"
    );
}

#[test]
fn replay_of_a_recorded_capture_gives_the_same_events_as_the_live_run_and_times_the_detectors() {
    let Some(env) = env("replay") else { return };
    let dir = env.tmpdir("replay");
    let cap = dir.join("capture.bin");
    let agent = Agent::start(&env, &dir, &["--record", cap.to_str().unwrap()]);
    drive(
        &env,
        &dir,
        "2026-07-28",
        "basic",
        "python",
        0,
        &env.py_server_cmd(),
    );
    drive(
        &env,
        &dir,
        "legacy",
        "basic",
        "everything",
        0,
        &env.everything_cmd(),
    );
    let live = agent.stop();
    let replay = |more: &[&str]| {
        let args = [&["replay", cap.to_str().unwrap(), "--stdout", "none"], more].concat();
        let (code, _, err) = mcpscope(&env, &args);
        assert_eq!(code, 0, "{err}");
        err
    };
    let replayed = dir.join("replay.jsonl");
    replay(&["--output", replayed.to_str().unwrap()]);
    let events: Vec<Value> = std::fs::read_to_string(&replayed)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        live.events.len() >= 25,
        "both sessions captured: {}",
        live.events.len()
    );
    assert_eq!(events.len(), live.events.len());
    for (r, l) in events.iter().zip(&live.events) {
        assert_eq!(r, l, "replayed event differs from the live one");
    }
    // The benchmark mode: pairs of replays with and without the detectors.
    let err = replay(&["--compare-detectors", "3"]);
    let line = err
        .lines()
        .find(|l| l.starts_with("mcpscope: compared pairs=3 "))
        .unwrap_or_else(|| panic!("no comparison printed: {err}"));
    for field in ["added_pct=", "with_us=", "without_us="] {
        let value = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in {line}"));
        assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
    }
}

#[test]
fn a_gap_in_capture_is_itself_on_the_record() {
    let Some(env) = env("audit_loss") else { return };
    let dir = env.tmpdir("audit-loss");
    let audit = dir.join("audit");
    let agent = Agent::start(&env, &dir, &["--audit-dir", audit.to_str().unwrap()]);
    // A 10 MB line in one write: the 1 MiB capture cap cuts it.
    let out = Command::new("python3")
        .arg(env.test_file("mcp/bad_input.py"))
        .arg("huge_line")
        .output()
        .unwrap();
    assert!(out.status.success());
    agent.stop();
    let trail = std::fs::read_to_string(audit.join("audit-000001.jsonl")).unwrap();
    let loss: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "loss")
        .collect();
    assert!(!loss.is_empty(), "a loss record");
    let cut: u64 = loss
        .iter()
        .filter_map(|r| r["data"]["kernel.truncated_syscalls"].as_u64())
        .sum();
    assert!(cut >= 1, "{loss:?}");
    let (code, out, _) = mcpscope(&env, &["verify", audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

/// A tmpfs of a given size at a path, unmounted when dropped: a disk that
/// fills up for real.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        // A mount left by an earlier run of this test.
        let _ = Command::new("umount")
            .arg(at)
            .stderr(Stdio::null())
            .status();
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a {size} tmpfs at {} (needs root)",
            at.display()
        );
        SmallDisk(at.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The records of the trail in `dir`, every segment, in order.
/// A segment whose bytes are fsynced but whose directory entry is not may
/// be gone after a crash, with every record in it. The agent's syscalls,
/// traced by strace while it rotates: every segment it creates and every
/// index it renames into place is followed by an fsync of the trail's
/// directory, and the first fdatasync that follows a segment's creation
/// is followed by that fsync before any record after it is counted as on
/// disk (the next fdatasync of the segment).
#[test]
fn every_new_segment_and_index_reaches_the_disk_with_its_directory_entry() {
    let test = "audit_directory_sync";
    let Some(env) = env(test) else {
        return;
    };
    let Some(strace) = tool(test, "STRACE", "strace") else {
        return;
    };
    let dir = env.tmpdir("audit-dirsync");
    let audit = dir.join("audit");
    let a = audit.to_str().unwrap();
    let args = [
        "--audit-dir",
        a,
        "--audit-fsync-every",
        "1",
        "--audit-segment-bytes",
        "16384",
    ];
    let agent = Agent::start(&env, &dir, &args);
    let dir_fd = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == audit))
        .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .expect("the agent holds its trail's directory open");
    // One file per thread (`-ff`): no call split across lines by another
    // thread's.
    let log = dir.join("strace");
    let mut tracer = Command::new(strace)
        .args([
            "-ff",
            "-e",
            "trace=openat,rename,renameat,renameat2,fsync,fdatasync",
        ])
        .arg("-o")
        .arg(&log)
        .args(["-p", &agent.pid().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it says it attached.
    let mut said = std::io::BufReader::new(tracer.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut said, &mut line).unwrap();
        assert!(n > 0, "strace exited before attaching to the agent");
    }
    let mut client = repeat_client(&env, &dir);
    assert!(client.wait().unwrap().success(), "the SDK client failed");
    agent.stop();
    let _ = tracer.wait();
    let (mut made, mut indexed) = (Vec::new(), Vec::new());
    for f in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
        if f.file_name().to_string_lossy().starts_with("strace.") {
            let (m, i) = directory_syncs(&std::fs::read_to_string(f.path()).unwrap(), dir_fd);
            made.extend(m);
            indexed.extend(i);
        }
    }
    assert!(
        made.len() >= 2,
        "the agent rotated while traced: segments made {made:?}"
    );
    assert!(!indexed.is_empty(), "indexes renamed into place: none");
    for (what, synced) in made.iter().chain(&indexed) {
        assert!(
            synced,
            "{what}: no fsync of the directory (fd {dir_fd}) followed it"
        );
    }
    let (code, out, _) = mcpscope(&env, &["verify", a]);
    assert_eq!(code, 0, "{out}");
}

/// Traced calls, each with whether an fsync of the directory followed it.
type Followed = Vec<(String, bool)>;

/// From one thread's strace log: each audit segment created and each index renamed
/// into place, with whether an fsync of `dir_fd` that succeeded followed
/// it — for a segment, before its second successful fdatasync (its first
/// records counted as on disk).
fn directory_syncs(log: &str, dir_fd: u32) -> (Followed, Followed) {
    // strace pads a call to a column before its `= result`.
    let ok = |line: &str, call: &str| line.starts_with(call) && line.ends_with("= 0");
    let dir_sync = format!("fsync({dir_fd})");
    let (mut made, mut indexed) = (Vec::new(), Vec::new());
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    for (i, l) in lines.iter().enumerate() {
        let later = &lines[i + 1..];
        if l.starts_with("openat(") && l.contains(".jsonl\"") && l.contains("O_CREAT") {
            let fd = l.rsplit("= ").next().unwrap_or("").trim();
            let data_sync = format!("fdatasync({fd})");
            // Up to the segment's second successful fdatasync.
            let until = later
                .iter()
                .enumerate()
                .filter(|(_, m)| ok(m, &data_sync))
                .nth(1)
                .map_or(later.len(), |(j, _)| j);
            let synced = later[..until].iter().any(|m| ok(m, &dir_sync));
            made.push((l.to_string(), synced));
        } else if l.starts_with("rename") && l.contains(".idx.json\"") && ok(l, "rename") {
            indexed.push((l.to_string(), later.iter().any(|m| ok(m, &dir_sync))));
        }
    }
    (made, indexed)
}

/// The official SDK client calling the Python SDK server 400 times over
/// stdio (the legacy era), started: enough records to rotate small
/// segments.
fn repeat_client(env: &mcpscope_e2e::Env, dir: &Path) -> std::process::Child {
    Command::new(&env.python)
        .arg(env.test_file("mcp/driver.py"))
        .args(["--truth", dir.join("t.jsonl").to_str().unwrap()])
        .args([
            "--mode",
            "legacy",
            "--scenario",
            "repeat",
            "--count",
            "400",
            "--",
        ])
        .args(env.py_server_cmd())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn trail_records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    files.iter().flat_map(|f| read_events(f)).collect()
}

/// The sum of a field of the `write_failed` records' `lost`.
fn acknowledged(records: &[Value], field: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["kind"] == "write_failed")
        .map(|r| r["data"]["lost"][field].as_u64().unwrap())
        .sum()
}

/// `mcpscope_events_lost_total{stage="sink",reason="write_error"}` of the
/// agent serving metrics at `addr`.
fn lost_by_sinks(addr: &str) -> Option<u64> {
    let (_, body) = mcpscope_e2e::http_get(addr, "/metrics")?;
    body.lines().find_map(|l| {
        l.strip_prefix("mcpscope_events_lost_total{reason=\"write_error\",stage=\"sink\"} ")
            .and_then(|n| n.parse::<u64>().ok())
    })
}

/// Waits until the agent has lost records to the full disk under `trail`,
/// frees the disk (removes `ballast`), drives a real session, waits until
/// every record counted lost is acknowledged on disk, stops the agent, and
/// checks the trail accounts for every event of its JSONL output.
fn free_the_disk_and_check(
    env: &mcpscope_e2e::Env,
    dir: &Path,
    agent: Agent,
    ballast: &Path,
    trail: &Path,
) {
    wait_for(
        "the audit trail losing records to the full disk",
        30,
        || lost_by_sinks(&agent.addr).filter(|n| *n > 0),
    );
    // Room again: the next records written acknowledge the losses first.
    std::fs::remove_file(ballast).unwrap();
    drive_basic(env, dir);
    let counted = wait_for(
        "every record counted lost acknowledged by a write_failed record on disk",
        30,
        || {
            let n = lost_by_sinks(&agent.addr)?;
            (acknowledged(&trail_records(trail), "records") == n).then_some(n)
        },
    );
    let stopped = agent.stop();
    let records = trail_records(trail);
    assert_eq!(
        acknowledged(&records, "records"),
        counted,
        "nothing lost at stop, once there was room"
    );
    // Each event the JSONL file took is in the trail or acknowledged lost.
    let (messages, flags) = stopped.events.iter().fold((0, 0), |(m, f), e| {
        if e["kind"] == "flag" {
            (m, f + 1)
        } else {
            (m + 1, f)
        }
    });
    let kept = |kind: &str| records.iter().filter(|r| r["kind"] == kind).count() as u64;
    assert_eq!(
        messages,
        kept("message") + acknowledged(&records, "messages"),
        "messages"
    );
    assert_eq!(
        flags,
        kept("flag") + acknowledged(&records, "flags"),
        "flags"
    );
    // One notice per episode, each ended by its acknowledgement.
    let episodes = records
        .iter()
        .filter(|r| r["kind"] == "write_failed")
        .count();
    let notices = stopped.stderr.matches("writing the audit trail in").count();
    assert!(
        episodes >= 1 && notices == episodes,
        "{notices} notices, {episodes} episodes:\n{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("No space left on device"),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        records[0]["kind"], "segment",
        "the trail opens with its header"
    );
    let (code, out, _) = mcpscope(env, &["verify", trail.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "whole records only: no torn line, no gap in the chain: {out}"
    );
    assert!(out.starts_with("OK"), "{out}");
}

#[test]
fn a_full_disk_loses_whole_audit_records_each_counted_once_and_acknowledged_and_the_trail_verifies()
{
    let Some(env) = env("audit_full_disk") else {
        return;
    };
    let dir = env.tmpdir("audit-full-disk");
    // 512 KiB, of which ballast takes 320: the trail fills the rest within
    // a few hundred real calls, and has room again once the ballast goes.
    let disk = SmallDisk::mount(&dir.join("disk"), "512k");
    let ballast = disk.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 320 << 10]).unwrap();
    let trail = disk.0.join("trail");
    let agent = Agent::start(&env, &dir, &["--audit-dir", trail.to_str().unwrap()]);
    drive(
        &env,
        &dir,
        "legacy",
        "repeat",
        "python",
        600,
        &env.py_server_cmd(),
    );
    wait_for(
        "600 calls filling the disk: over 100 records lost",
        30,
        || lost_by_sinks(&agent.addr).filter(|n| *n > 100),
    );
    free_the_disk_and_check(&env, &dir, agent, &ballast, &trail);
}

#[test]
fn an_agent_started_on_a_full_disk_opens_its_trail_with_the_header_once_there_is_room() {
    let Some(env) = env("audit_full_disk_at_start") else {
        return;
    };
    let dir = env.tmpdir("audit-full-disk-at-start");
    let disk = SmallDisk::mount(&dir.join("disk"), "256k");
    let ballast = disk.0.join("ballast");
    // As much as fits: the write stops at the full disk.
    let full = std::fs::write(&ballast, vec![0u8; 512 << 10]);
    assert!(full.is_err(), "the ballast fills the disk");
    let trail = disk.0.join("trail");
    // Its header, agent_start and the session's records are all lost.
    let agent = Agent::start(&env, &dir, &["--audit-dir", trail.to_str().unwrap()]);
    drive_basic(&env, &dir);
    free_the_disk_and_check(&env, &dir, agent, &ballast, &trail);
}

/// An ext4 filesystem (no journal) on a loop device whose backing file is
/// sparse, on a tmpfs: thin provisioning. While `fill` keeps the tmpfs
/// full, writes to the filesystem still succeed (into the page cache) and
/// its writeback fails (ENOSPC from the loop device): a real failed fsync.
/// Unmounted and detached when dropped.
struct ThinDisk {
    backing: SmallDisk,
    mnt: PathBuf,
    device: String,
}

impl ThinDisk {
    fn create(at: &Path) -> ThinDisk {
        let run = |c: &mut Command| {
            let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let backing = SmallDisk::mount(&at.join("backing"), "16m");
        let image = backing.0.join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        let mnt = at.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let disk = ThinDisk {
            backing,
            mnt,
            device,
        };
        run(Command::new("mkfs.ext4").args([
            "-q",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1",
            &disk.device,
        ]));
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "errors=continue", &disk.device])
            .arg(&disk.mnt));
        disk
    }

    /// Fills the backing tmpfs: writeback fails from now on.
    fn fill(&self) {
        let full = std::fs::write(self.backing.0.join("ballast"), vec![0u8; 32 << 20]);
        assert!(full.is_err(), "the ballast fills the backing store");
    }

    /// Unmounts and mounts the disk again: its page cache is gone, and
    /// what is read comes from the device.
    fn remount(&self) {
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("umount").arg(&self.mnt));
        ok(Command::new("mount")
            .args(["-t", "ext4", "-o", "errors=continue", &self.device])
            .arg(&self.mnt));
    }

    /// Frees the backing tmpfs: writeback succeeds again.
    fn free(&self) {
        std::fs::remove_file(self.backing.0.join("ballast")).unwrap();
    }
}

impl Drop for ThinDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// `mcpscope_audit_sync_failures_total` of the agent serving metrics at `addr`.
fn sync_failures(addr: &str) -> Option<u64> {
    let (_, body) = mcpscope_e2e::http_get(addr, "/metrics")?;
    body.lines().find_map(|l| {
        l.strip_prefix("mcpscope_audit_sync_failures_total ")
            .and_then(|n| n.parse::<u64>().ok())
    })
}

#[test]
fn a_disk_whose_writeback_fails_counts_each_failed_fsync_names_the_records_in_doubt_and_verify_tells_their_loss_from_tampering(
) {
    let Some(env) = env("audit_failed_fsync") else {
        return;
    };
    let dir = env.tmpdir("audit-failed-fsync");
    let disk = ThinDisk::create(&dir.join("disk"));
    let trail = disk.mnt.join("trail");
    let agent = Agent::start(
        &env,
        &dir,
        &[
            "--audit-dir",
            trail.to_str().unwrap(),
            "--audit-fsync-ms",
            "50",
        ],
    );
    assert_eq!(sync_failures(&agent.addr), Some(0));
    disk.fill();
    drive_basic(&env, &dir);
    wait_for("an fsync of the audit trail failing", 30, || {
        sync_failures(&agent.addr).filter(|n| *n > 0)
    });
    // Writeback works again: the next record is preceded by a sync_failed
    // record naming those written meanwhile.
    disk.free();
    drive_basic(&env, &dir);
    wait_for("a sync_failed record in the trail", 30, || {
        trail_records(&trail)
            .iter()
            .any(|r| r["kind"] == "sync_failed")
            .then_some(())
    });
    let failed_fsyncs = sync_failures(&agent.addr).unwrap();
    assert_eq!(
        lost_by_sinks(&agent.addr).unwrap_or(0),
        0,
        "the records were written: none counted lost"
    );
    let stopped = agent.stop();
    let records = trail_records(&trail);
    // Each record in doubt is named once, by a record that follows it.
    let mut named = Vec::new();
    let mut failures = 0;
    for r in records.iter().filter(|r| r["kind"] == "sync_failed") {
        let d = &r["data"];
        let (first, last) = (
            d["first_seq"].as_u64().unwrap(),
            d["last_seq"].as_u64().unwrap(),
        );
        assert!(first <= last && last < r["seq"].as_u64().unwrap(), "{r}");
        assert!(
            named.last().is_none_or(|&(_, l)| l < first),
            "named twice: {r}"
        );
        assert!(
            d["error"].as_str().unwrap().contains("No space left"),
            "{d}"
        );
        named.push((first, last));
        failures += d["failures"].as_u64().unwrap();
    }
    assert!(!named.is_empty());
    assert!(
        failures >= 1 && failures <= failed_fsyncs,
        "{failures} failures named, {failed_fsyncs} counted"
    );
    // Messages of the session driven while writeback failed are among them.
    let in_doubt = records
        .iter()
        .filter(|r| r["kind"] == "message")
        .filter(|r| {
            let seq = r["seq"].as_u64().unwrap();
            named.iter().any(|(f, l)| (f..=l).contains(&&seq))
        })
        .count();
    assert!(in_doubt > 0, "messages named in doubt: {named:?}");
    // Nothing was taken back: every message event of the JSONL output is in
    // the trail.
    let messages = stopped
        .events
        .iter()
        .filter(|e| e["kind"] != "flag")
        .count();
    let kept = records.iter().filter(|r| r["kind"] == "message").count();
    assert_eq!(messages, kept);
    // One notice when fsyncs start failing, one when they work again.
    let (failing, again) = (
        stopped
            .stderr
            .matches("fsync of the audit trail in")
            .count(),
        stopped.stderr.matches("succeeds again").count(),
    );
    assert!(again >= 1 && failing == 2 * again, "{}", stopped.stderr);
    let (code, out, _) = mcpscope(&env, &["verify", trail.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Writeback works again: the segment it failed in was closed, and the
    // next opened with a sync_recovered record naming every record of it
    // (a filesystem whose writeback failed may lose more than what was
    // written since the last good fsync: ext4 does here).
    let recovered: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r["kind"] == "sync_recovered")
        .map(|r| {
            let d = &r["data"];
            (
                d["first_seq"].as_u64().unwrap(),
                d["last_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        !recovered.is_empty()
            && named
                .iter()
                .all(|(f, l)| recovered.iter().any(|(rf, rl)| rf <= f && l <= rl)),
        "{recovered:?} covers {named:?}"
    );
    // Once the page cache is gone, what the disk failed to write reads back
    // as zeros: verify says which records the disk lost and that the trail
    // had named them in doubt, not that the trail was edited.
    disk.remount();
    let (code, out, _) = mcpscope(&env, &["verify", trail.to_str().unwrap()]);
    assert_eq!(code, 4, "{out}");
    assert!(out.starts_with("LOST: "), "{out}");
    let lost: Vec<(u64, u64)> = out
        .split("records seq ")
        .skip(1)
        .map(|s| {
            let (range, _) = s.split_once(' ').unwrap();
            let (f, l) = range.split_once("..").unwrap();
            (f.parse().unwrap(), l.parse().unwrap())
        })
        .collect();
    assert!(!lost.is_empty(), "{out}");
    for (f, l) in &lost {
        assert!(
            recovered.iter().any(|(rf, rl)| rf <= f && l <= rl),
            "lost {f}..{l} outside {recovered:?}: {out}"
        );
    }
    // A query over that trail answers from what it can read, and says
    // that it could not read everything.
    let (code, calls, err) = mcpscope(
        &env,
        &[
            "calls",
            "--dir",
            trail.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        calls.lines().count() > 0 && err.contains("could not be read"),
        "{calls}\n{err}"
    );
}
