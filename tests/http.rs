//! End-to-end over HTTP: the real probes see the official Python SDK client
//! talk to real HTTP MCP servers (the Python SDK's MCPServer under uvicorn,
//! and the npm reference server-everything) over Streamable HTTP, with SSE
//! and JSON responses, in both protocol eras, and over the legacy HTTP+SSE
//! transport; every message is reported once, paired, with its HTTP facts.
//! Every server is bound to 127.0.0.1.

use std::{path::Path, process::Command};

use mcpscope_e2e::{
    assert_exactly_once_over, drive_http, env, free_port, pid, Agent, Env, HttpClient, Listening,
    Stopped, Truth,
};
use serde_json::Value;

/// Servers of these tests: [`Listening`] processes.
struct Server;

impl Server {
    /// The Python SDK test server over `args` (`streamable-http PORT …`).
    fn python(env: &Env, args: &[&str]) -> Listening {
        let port = free_port();
        let mut cmd = Command::new(&env.python);
        cmd.arg(env.test_file("mcp/py_server.py"))
            .arg(args[0])
            .arg(port.to_string())
            .args(&args[1..]);
        Listening::start(&mut cmd, "127.0.0.1", port)
    }

    /// server-everything in `mode` (`streamableHttp` or `sse`), its
    /// `listen` pinned to 127.0.0.1 by a preload.
    fn everything(env: &Env, mode: &str) -> Listening {
        let port = free_port();
        let js = env
            .node_modules
            .join("@modelcontextprotocol/server-everything/dist/index.js");
        let mut cmd = Command::new("node");
        cmd.arg("--require")
            .arg(env.test_file("mcp/listen_loopback.js"))
            .arg(js)
            .arg(mode);
        Listening::start(&mut cmd, "127.0.0.1", port)
    }
}

/// `http://127.0.0.1:<port><path>` of a server.
fn url(s: &Listening, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", s.port)
}

/// A JWT-shaped bearer token (unsigned test claims) written to a file the
/// driver reads, so it never appears on a command line.
fn bearer_file(dir: &Path) -> (std::path::PathBuf, String) {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        e.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        e.encode(
            r#"{"iss":"https://idp.test","sub":"agent-42","aud":"mcp-test","client_id":"e2e","scope":"tools:call","exp":4102444800}"#
        ),
        e.encode("not-a-real-signature"),
    );
    let p = dir.join("bearer");
    std::fs::write(&p, &token).unwrap();
    (p, token)
}

/// Every message once, as HTTP or SSE over TCP, with the HTTP facts every
/// event must carry.
fn assert_http_once<'a>(stopped: &'a Stopped, truth: &Truth) -> Vec<&'a Value> {
    let events = assert_exactly_once_over(stopped, truth, &["http", "sse"], "tcp");
    for e in &events {
        let http = &e["http"];
        assert!(http.is_object(), "http facts on {e}");
        let client_sent = pid(&e["from"]) == truth.client;
        if client_sent {
            assert_eq!(http["method"], "POST", "{e}");
        } else {
            assert_eq!(http["status"], 200, "{e}");
        }
    }
    events
}

/// Requests after the handshake carry the session, all with the same
/// fingerprint, and it is never the raw id.
fn assert_one_session(events: &[&Value]) {
    let ids: std::collections::HashSet<_> = events
        .iter()
        .filter(|e| e["method"] != "initialize")
        .map(|e| e["http"]["session_id"].as_str().unwrap_or("MISSING"))
        .collect();
    assert_eq!(ids.len(), 1, "one MCP session: {ids:?}");
    assert!(ids.iter().all(|i| i.len() == 16), "{ids:?}");
    let sessions: std::collections::HashSet<_> = events.iter().map(|e| &e["session"]).collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

fn no_raw_token(stopped: &Stopped, token: &str) {
    let raw: String = stopped.events.iter().map(|e| e.to_string()).collect();
    // Neither the token nor its signature part is written anywhere.
    let sig = token.rsplit('.').next().unwrap();
    for text in [&raw, &stopped.stderr] {
        assert!(!text.contains(token), "the raw bearer token was written");
        assert!(!text.contains(sig), "the token's signature was written");
    }
}

#[test]
fn python_sdk_streamable_http_sse_responses_every_message_once_with_credential() {
    let Some(env) =
        env("python_sdk_streamable_http_sse_responses_every_message_once_with_credential")
    else {
        return;
    };
    let dir = env.tmpdir("http-sse");
    let (bearer, token) = bearer_file(&dir);
    let server = Server::python(&env, &["streamable-http"]);
    let audit = dir.join("audit");
    let agent = Agent::start(&env, &dir, &["--audit-dir", audit.to_str().unwrap()]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            bearer_file: Some(&bearer),
            ..HttpClient::new(url(&server, "/mcp"), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_http_once(&stopped, &truth);
    assert_one_session(&events);
    for e in &events {
        let from_client = pid(&e["from"]) == truth.client;
        // SSE answers POSTs by default (the SDK's stream mode).
        if !from_client {
            assert_eq!(e["transport"], "sse", "{e}");
        }
        if from_client {
            let cred = &e["http"]["credentials"][0];
            assert_eq!(cred["header"], "authorization", "{e}");
            assert_eq!(cred["scheme"], "bearer");
            assert_eq!(cred["jwt"]["sub"], "agent-42");
            assert_eq!(cred["jwt"]["iss"], "https://idp.test");
            assert_eq!(cred["jwt"]["client_id"], "e2e");
            assert_eq!(cred["jwt"]["scope"], "tools:call");
            assert_eq!(cred["jwt"]["exp"], 4102444800u64);
            assert_eq!(cred["fingerprint"].as_str().unwrap().len(), 16);
        }
    }
    let last = events.last().unwrap();
    assert_eq!(last["client"]["name"], "mcp", "{last}");
    assert_eq!(last["server"]["name"], "mcpscope-test-server", "{last}");
    no_raw_token(&stopped, &token);
    // The client's DELETE ended the session: one record, in the audit trail,
    // from the client's copy, with the session's fingerprint.
    let trail: Vec<Value> = std::fs::read_dir(&audit)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let text = serde_json::to_string(&trail).unwrap();
    assert!(!text.contains(&token), "no raw token in the audit trail");
    let deletes: Vec<_> = trail
        .iter()
        .filter(|r| r.to_string().contains("http_session_delete"))
        .filter(|r| r.to_string().contains(&format!("\"pid\":{}", truth.client)))
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    let sid = events.last().unwrap()["http"]["session_id"]
        .as_str()
        .unwrap();
    assert!(deletes[0].to_string().contains(sid), "{}", deletes[0]);
}

#[test]
fn python_sdk_streamable_http_json_responses_every_message_once() {
    let Some(env) = env("python_sdk_streamable_http_json_responses_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("http-json");
    let server = Server::python(&env, &["streamable-http", "json"]);
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient::new(url(&server, "/mcp"), server.pid()),
    );
    let stopped = agent.stop();
    let events = assert_http_once(&stopped, &truth);
    assert_one_session(&events);
    for e in &events {
        assert_eq!(e["transport"], "http", "{e}");
        if pid(&e["from"]) == truth.server {
            assert_eq!(e["http"]["content_type"], "application/json", "{e}");
        }
    }
}

#[test]
fn python_sdk_2026_mode_over_http_records_mcp_headers() {
    let Some(env) = env("python_sdk_2026_mode_over_http_records_mcp_headers") else {
        return;
    };
    let dir = env.tmpdir("http-2026");
    let server = Server::python(&env, &["streamable-http", "json", "stateless"]);
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            mode: "2026-07-28",
            ..HttpClient::new(url(&server, "/mcp"), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_http_once(&stopped, &truth);
    let requests: Vec<_> = events.iter().filter(|e| e["kind"] == "request").collect();
    assert!(!requests.is_empty());
    for e in requests {
        assert_eq!(e["protocol_version"], "2026-07-28", "{e}");
        assert_eq!(e["http"]["protocol_version"], "2026-07-28", "{e}");
        assert_eq!(
            e["http"]["mcp_method"], e["method"],
            "Mcp-Method next to the body's: {e}"
        );
        if e["method"] == "tools/call" {
            assert_eq!(
                e["http"]["mcp_name"], e["tool"],
                "Mcp-Name next to the tool: {e}"
            );
        }
    }
}

#[test]
fn python_sdk_legacy_sse_transport_pairs_responses_from_the_get_stream() {
    let Some(env) = env("python_sdk_legacy_sse_transport_pairs_responses_from_the_get_stream")
    else {
        return;
    };
    let dir = env.tmpdir("http-legacy-sse");
    let server = Server::python(&env, &["sse"]);
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            transport: "sse",
            ..HttpClient::new(url(&server, "/sse"), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_exactly_once_over(&stopped, &truth, &["http", "sse"], "tcp");
    for e in &events {
        if pid(&e["from"]) == truth.server {
            // Answers come on the GET stream, not on the POSTs.
            assert_eq!(e["transport"], "sse", "{e}");
        } else {
            assert_eq!(e["http"]["method"], "POST", "{e}");
        }
        // The endpoint event's session binds the POSTs and the stream.
        assert_eq!(
            e["http"]["session_id"].as_str().map(str::len),
            Some(16),
            "{e}"
        );
    }
    assert_one_session(&events);
}

#[test]
fn server_everything_streamable_http_every_message_once() {
    let Some(env) = env("server_everything_streamable_http_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("http-everything");
    let server = Server::everything(&env, "streamableHttp");
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            server_kind: "everything",
            ..HttpClient::new(url(&server, "/mcp"), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_http_once(&stopped, &truth);
    assert_one_session(&events);
    assert!(events.iter().any(|e| e["server"]["name"]
        .as_str()
        .is_some_and(|n| n.contains("everything"))));
}

#[test]
fn server_everything_legacy_sse_every_message_once() {
    let Some(env) = env("server_everything_legacy_sse_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("http-everything-sse");
    let server = Server::everything(&env, "sse");
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient {
            server_kind: "everything",
            transport: "sse",
            ..HttpClient::new(url(&server, "/sse"), server.pid())
        },
    );
    let stopped = agent.stop();
    let events = assert_exactly_once_over(&stopped, &truth, &["http", "sse"], "tcp");
    assert_one_session(&events);
}

#[test]
fn http_error_statuses_are_paired_errors_with_status_and_www_authenticate() {
    let Some(env) = env("http_error_statuses_are_paired_errors_with_status_and_www_authenticate")
    else {
        return;
    };
    let dir = env.tmpdir("http-errors");
    let port = free_port();
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.test_file("mcp/py_server.py"))
        .args(["streamable-http", &port.to_string()])
        .env("MCPSCOPE_TEST_AUTH", "1");
    let auth = Listening::start(&mut cmd, "127.0.0.1", port);
    let stateful = Server::python(&env, &["streamable-http"]);
    let stateless = Server::python(&env, &["streamable-http", "json", "stateless"]);
    let agent = Agent::start(&env, &dir, &[]);
    let out = Command::new(&env.python)
        .arg(env.test_file("mcp/http_errors.py"))
        .args([auth.port, stateful.port, stateless.port].map(|p| p.to_string()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stopped = agent.stop();
    let client = truth["pid"].as_u64().unwrap();
    for a in truth["answers"].as_array().unwrap() {
        let id = &a["id"];
        let status = a["status"].as_u64().unwrap();
        let request = stopped
            .events
            .iter()
            .filter(|e| pid(&e["from"]) == client && e["kind"] == "request" && &e["id"] == id)
            .collect::<Vec<_>>();
        assert_eq!(request.len(), 1, "request {id} once: {request:?}");
        let answers: Vec<_> = stopped
            .events
            .iter()
            .filter(|e| pid(&e["to"]) == client && e["kind"] == "error" && &e["id"] == id)
            .collect();
        assert_eq!(answers.len(), 1, "one error answers {id}: {answers:?}");
        let e = answers[0];
        assert_eq!(e["http"]["status"], status, "{e}");
        assert_eq!(e["method"], request[0]["method"], "paired: {e}");
        assert!(e["latency_ms"].as_f64().is_some(), "{e}");
        assert_eq!(e["is_error"], true);
        match status {
            401 => {
                // No JSON-RPC body: the error is made from the status.
                assert_eq!(e["error_type"], "401", "{e}");
                assert_eq!(e["http"]["from_status"], true);
                assert_eq!(e["http"]["www_authenticate"], a["www_authenticate"], "{e}");
            }
            400 => assert_eq!(e["error_code"], -32020, "HeaderMismatch: {e}"),
            404 | 405 => assert_eq!(e["error_code"], -32600, "{e}"),
            _ => panic!("unexpected status {status}"),
        }
    }
    // The 400's request disagreed with its own Mcp-Method header: both are
    // on the request's event.
    let mismatched = stopped
        .events
        .iter()
        .find(|e| pid(&e["from"]) == client && e["id"] == 3)
        .unwrap();
    assert_eq!(mismatched["method"], "tools/call");
    assert_eq!(mismatched["http"]["mcp_method"], "tools/list");
    // … and the header_mismatch flag names it, once.
    let flags: Vec<_> = stopped
        .flags()
        .into_iter()
        .filter(|f| f["flag"] == "header_mismatch")
        .collect();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0]["evidence"][0]["seq"], mismatched["seq"]);
    assert_eq!(flags[0]["details"]["header_method"], "tools/list");
    assert_eq!(flags[0]["details"]["body_method"], "tools/call");
}

#[test]
fn non_mcp_http_on_the_host_is_never_reported_and_html_bodies_are_skipped_unread() {
    let Some(env) =
        env("non_mcp_http_on_the_host_is_never_reported_and_html_bodies_are_skipped_unread")
    else {
        return;
    };
    let dir = env.tmpdir("http-not-mcp");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    let page = format!("<html><body>{}</body></html>", "hello ".repeat(2000));
    std::fs::write(site.join("index.html"), &page).unwrap();
    std::fs::write(site.join("data.json"), r#"{"users":[{"id":1,"name":"a"}]}"#).unwrap();
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(&site);
    let server = Listening::start(&mut cmd, "127.0.0.1", port);
    let agent = Agent::start(&env, &dir, &[]);
    let fetch = format!(
        "import http.client, os\n\
         for path in ['/index.html', '/data.json'] * 3:\n\
         \x20   c = http.client.HTTPConnection('127.0.0.1', {port}); c.request('GET', path); c.getresponse().read(); c.close()\n\
         print(os.getpid())"
    );
    let out = Command::new("python3")
        .args(["-c", &fetch])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stopped = agent.stop();
    let ours: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| {
            [client, u64::from(server.pid())]
                .iter()
                .any(|p| pid(&e["from"]) == *p || pid(&e["to"]) == *p)
        })
        .collect();
    assert!(ours.is_empty(), "non-MCP HTTP reported: {ours:?}");
    assert!(
        stopped.counter("http_skipped_body_bytes") >= 3 * page.len() as u64,
        "HTML bodies skipped unread: {}",
        stopped.stderr
    );
}

#[test]
fn python_sdk_streamable_http_over_ipv6_loopback_every_message_once() {
    let Some(env) = env("python_sdk_streamable_http_over_ipv6_loopback_every_message_once") else {
        return;
    };
    let dir = env.tmpdir("http-ipv6");
    let port = free_port();
    let mut cmd = Command::new(&env.python);
    cmd.arg(env.test_file("mcp/py_server.py"))
        .args(["streamable-http", &port.to_string()])
        .env("MCPSCOPE_TEST_HOST", "::1");
    let server = Listening::start(&mut cmd, "::1", port);
    let agent = Agent::start(&env, &dir, &[]);
    let truth = drive_http(
        &env,
        &dir,
        &HttpClient::new(format!("http://[::1]:{port}/mcp"), server.pid()),
    );
    let stopped = agent.stop();
    let events = assert_http_once(&stopped, &truth);
    assert_one_session(&events);
}
