//! `mcp-pingpong`: the worst case for `cargo xtask bench` — a client and a
//! server ping-ponging small but real MCP `tools/call` messages over stdio
//! pipes as fast as the pipes allow. One `write` per message, reads as the
//! kernel delivers them, no allocation in the loop.
//!
//! `mcp-pingpong client SECONDS [PAYLOAD_BYTES [ROUND_TRIPS_PER_S]]` spawns
//! `mcp-pingpong server` and prints `{"round_trips":N,"seconds":S,"syscalls":K}`;
//! with a rate, it paces itself to it (0, the default: as fast as it can).
//! `mcp-pingpong syscalls SECONDS` makes `getpid` syscalls, none of which
//! the agent captures, and prints `{"syscalls":N,"seconds":S}`: the tax
//! its tracepoints put on every other syscall of the host.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(),
        Some("flood") => flood(
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000.0),
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2.0),
        ),
        Some("sink") => sink(),
        Some("syscalls") => uncaptured(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0)),
        Some("fan") => fan(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000)),
        Some("client") => {
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            let payload: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
            let rate: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0.0);
            client(Duration::from_secs_f64(secs), payload, rate);
        }
        _ => {
            eprintln!("usage: mcp-pingpong client SECONDS [PAYLOAD_BYTES [ROUND_TRIPS_PER_S]] | syscalls SECONDS | fan N | flood RATE SECONDS | server");
            std::process::exit(2);
        }
    }
}

/// `len` bytes of a JSON string's contents that read like what tools pass
/// around — prose, a path, code with escaped quotes and newlines — not one
/// repeated byte, which every scanner (the agent's framers, its JSON
/// parser, its detectors) would skip at memory speed.
fn text(len: usize) -> String {
    const PASSAGE: &str = "The quick brown fox jumps over the lazy dog. Read 42 files under /srv/data/reports; fn main() { println!(\\\"hello, {}\\\", name); }\\n";
    let mut s = PASSAGE.repeat(len / PASSAGE.len() + 1);
    s.truncate(len);
    // Never end inside an escape (the passage's are `\"` and `\n`).
    if s.ends_with('\\') {
        s.pop();
        s.push(' ');
    }
    s
}

fn client(duration: Duration, payload: usize, rate: f64) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the server");
    let mut to_server = child.stdin.take().expect("stdin");
    let mut from_server = BufReader::new(child.stdout.take().expect("stdout"));
    let message = text(payload);
    let mut request = Vec::with_capacity(256 + payload);
    let mut line = String::with_capacity(256 + payload);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        if rate > 0.0 {
            // Paced: sleep while more than a millisecond ahead of schedule.
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                if ahead > Duration::from_millis(1) {
                    std::thread::sleep(ahead);
                }
            }
        }
        n += 1;
        request.clear();
        writeln!(
            request,
            "{{\"jsonrpc\":\"2.0\",\"id\":{n},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"message\":\"{message}\"}}}}}}"
        )
        .unwrap();
        to_server.write_all(&request).expect("write");
        line.clear();
        if from_server.read_line(&mut line).expect("read") == 0 {
            panic!("server closed");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(to_server);
    let _ = child.wait();
    // Per round trip: client write, server read, server write, client read.
    println!(
        "{{\"round_trips\":{n},\"seconds\":{seconds},\"syscalls\":{},\"pid\":{},\"server_pid\":{}}}",
        n * 4,
        std::process::id(),
        child.id()
    );
}

/// `getpid` syscalls for `secs` (the clock read every 4096 of them), then
/// `{"syscalls":N,"seconds":S}`. The agent hooks no `getpid` tracepoint:
/// what it adds here is the syscall slow path its `sys_exit` tracepoints
/// switch on for every task, paid by every syscall on the host.
fn uncaptured(secs: f64) {
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..4096 {
            // SAFETY: getpid takes no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
        n += 4096;
    }
    println!(
        "{{\"syscalls\":{n},\"seconds\":{}}}",
        start.elapsed().as_secs_f64()
    );
}

/// `n` concurrent sessions: one client process, `n` servers, one round trip
/// each; prints `ready` and holds them open until stdin closes.
fn fan(n: usize) {
    let exe = std::env::current_exe().expect("own path");
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        let mut child = Command::new(&exe)
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning a server");
        let mut to = child.stdin.take().expect("stdin");
        let mut from = BufReader::new(child.stdout.take().expect("stdout"));
        writeln!(
            to,
            "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{}}}}}}"
        )
        .expect("write");
        let mut line = String::new();
        from.read_line(&mut line).expect("read");
        servers.push((child, to, from));
    }
    println!("ready");
    let mut rest = String::new();
    let _ = std::io::stdin().read_line(&mut rest);
    for (mut child, to, _) in servers {
        drop(to);
        let _ = child.wait();
    }
}

/// Loss test: writes MCP notifications at `rate` per second for `secs`
/// into a sink that drains the pipe with `splice` (not captured, so each
/// message is one captured `write`: ground truth for the loss count).
/// Prints `{"sent":N,"seconds":S,"pid":P}`.
fn flood(rate: f64, secs: f64) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("sink")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning the sink");
    let mut to = child.stdin.take().expect("stdin");
    let line = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"logger\":\"bench\",\"data\":\"flood of small but real MCP messages\"}}\n";
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            break;
        }
        // Open loop: as many as the schedule says by now.
        let due = (elapsed * rate) as u64;
        if sent >= due {
            std::hint::spin_loop();
            continue;
        }
        to.write_all(line).expect("write");
        sent += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(to);
    let _ = child.wait();
    println!(
        "{{\"sent\":{sent},\"seconds\":{seconds},\"pid\":{}}}",
        std::process::id()
    );
}

/// Drains stdin into /dev/null with `splice` (no read syscall to capture).
fn sink() {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    loop {
        // SAFETY: plain fds; null offsets (pipes).
        let n = unsafe {
            libc::splice(
                0,
                std::ptr::null_mut(),
                null.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 20,
                0,
            )
        };
        if n <= 0 {
            return;
        }
    }
}

fn server() {
    let stdin = std::io::stdin();
    let mut input = BufReader::new(stdin.lock());
    let mut out = std::io::stdout().lock();
    let mut line = String::with_capacity(1024);
    let mut response = Vec::with_capacity(1024);
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // The id is the number after `"id":`.
        let id = line
            .find("\"id\":")
            .map(|i| &line[i + 5..])
            .and_then(|r| r.split(',').next())
            .unwrap_or("0");
        response.clear();
        writeln!(
            response,
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"ok\"}}],\"isError\":false}}}}"
        )
        .unwrap();
        if out.write_all(&response).and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}
