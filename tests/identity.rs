//! End-to-end: workload identity on every message. Real MCP servers run in
//! real cgroups made on this machine in the layouts the kubelet and the
//! container runtimes use, and in a real podman container; the Kubernetes
//! pod lookup runs against a fake API server (PyPI `kmock`), because no
//! kube-apiserver can run here (see `tests/mcp/fake_kube.py` for what a
//! real cluster would exercise further).

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use mcpscope_e2e::{
    assert_exactly_once, drive, drive_with_env, env, http_get, mcpscope, pid, wait_for, Agent, Env,
    Stopped,
};
use serde_json::{json, Value};

/// The node the agent is told it runs on.
const NODE: &str = "mcpscope-test-node";
const POD_A: &str = "5f8a2c3e-1b2d-4c5e-8f90-a1b2c3d4e5f6";
const POD_C: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
const POD_OTHER: &str = "99999999-8888-4777-8666-555555555555";

/// A cgroup directory tree made for a test, removed (leaf first) on drop.
struct Cgroup {
    /// Directories created, outermost first.
    made: Vec<PathBuf>,
}

impl Cgroup {
    fn make(mount: &str, rel: &str) -> Cgroup {
        let mut made = Vec::new();
        let mut at = PathBuf::from(mount);
        assert!(at.is_dir(), "cgroup mount {mount} missing");
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
                made.push(at.clone());
            }
        }
        assert!(!made.is_empty() || at.is_dir());
        Cgroup { made }
    }

    fn leaf(&self) -> &Path {
        self.made.last().expect("leaf")
    }

    /// A shell command line that moves itself into the cgroup, then execs
    /// `cmd` (so the MCP server starts inside it, as in a container).
    fn exec_in(&self, cmd: &[String]) -> Vec<String> {
        let procs = self.leaf().join("cgroup.procs");
        let mut v = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo $$ > {} && exec \"$@\"", procs.display()),
            "sh".to_owned(),
        ];
        v.extend(cmd.iter().cloned());
        v
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            // The server may still be exiting: wait until the kernel lets go.
            let mut tries = 0;
            while std::fs::remove_dir(d).is_err() && tries < 100 {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn hex64(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// Events with `p` at either end, and that end.
fn ends_of(stopped: &Stopped, p: u64) -> Vec<&Value> {
    stopped
        .events
        .iter()
        .filter(|e| e["kind"] != "flag")
        .flat_map(|e| [&e["from"], &e["to"]])
        .filter(|end| pid(end) == p)
        .collect()
}

/// The fake API server, serving `objects`; killed on drop.
struct FakeApi {
    child: Child,
    url: String,
}

impl FakeApi {
    fn start(env: &Env, dir: &Path, objects: &Value) -> FakeApi {
        let file = dir.join("objects.json");
        std::fs::write(&file, objects.to_string()).unwrap();
        let mut child = Command::new(&env.python)
            .arg(env.test_file("mcp/fake_kube.py"))
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the fake API server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("fake API server did not start ({e}): {line:?}"));
        FakeApi {
            child,
            url: ready["url"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod(name: &str, uid: &str, node: &str, sa: &str, owner: (&str, &str)) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "team-a", "uid": uid, "resourceVersion": "1",
            "labels": {"app": name.split('-').next().unwrap()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner.0, "name": owner.1, "uid": "o", "controller": true}],
        },
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": []},
    })
}

fn owned(api: &str, kind: &str, name: &str, owner: (&str, &str)) -> Value {
    json!({
        "apiVersion": api, "kind": kind,
        "metadata": {
            "name": name, "namespace": "team-a", "resourceVersion": "1",
            "ownerReferences": [{"apiVersion": api, "kind": owner.0, "name": owner.1, "uid": "o", "controller": true}],
        },
    })
}

fn metric(addr: &str, line_start: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn kubernetes_pods_from_cgroup_paths_v1_and_v2_and_the_api_server() {
    let Some(env) = env("kubernetes_pods_from_cgroup_paths_v1_and_v2_and_the_api_server") else {
        return;
    };
    let dir = env.tmpdir("identity-k8s");
    let objects = json!([
        pod(
            "agent-7d9f-abcde",
            POD_A,
            NODE,
            "agent-sa",
            ("ReplicaSet", "agent-7d9f")
        ),
        owned(
            "apps/v1",
            "ReplicaSet",
            "agent-7d9f",
            ("Deployment", "agent")
        ),
        pod(
            "report-29000000-xyz",
            POD_C,
            NODE,
            "reporter",
            ("Job", "report-29000000")
        ),
        owned("batch/v1", "Job", "report-29000000", ("CronJob", "report")),
        // On another node: kmock ignores the field selector, the agent must not.
        pod(
            "elsewhere-1",
            POD_OTHER,
            "another-node",
            "default",
            ("StatefulSet", "elsewhere")
        ),
    ]);
    let api = FakeApi::start(&env, &dir, &objects);
    let agent = Agent::start(
        &env,
        &dir,
        &[
            "--kube-api",
            &api.url,
            "--node-name",
            NODE,
            "--no-detect",
            "--audit-dir",
            &dir.join("audit").display().to_string(),
        ],
    );
    // Readiness: the watch has listed this node's two pods.
    wait_for("the pod watch to list this node's pods", 60, || {
        (metric(&agent.addr, "mcpscope_kube_pods ")? == 2.0).then_some(())
    });

    // Pod A: systemd cgroup driver, cgroup v2, containerd.
    let id_a = hex64('a');
    let cg_a = Cgroup::make(
        "/sys/fs/cgroup/unified",
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id_a}.scope",
            POD_A.replace('-', "_")
        ),
    );
    let truth_a = drive(
        &env,
        &dir,
        "legacy",
        "basic",
        "python",
        0,
        &cg_a.exec_in(&env.py_server_cmd()),
    );
    // Pod C: cgroupfs driver, a cgroup v1 hierarchy.
    let id_c = hex64('c');
    let cg_c = Cgroup::make(
        "/sys/fs/cgroup/pids",
        &format!("kubepods/besteffort/pod{POD_C}/{id_c}"),
    );
    let truth_c = drive(
        &env,
        &dir,
        "legacy",
        "repeat",
        "python",
        2,
        &cg_c.exec_in(&env.py_server_cmd()),
    );
    // A pod of another node (as if a stale cgroup): container and pod UID, no pod details.
    let id_o = hex64('e');
    let cg_o = Cgroup::make(
        "/sys/fs/cgroup/pids",
        &format!("kubepods/pod{POD_OTHER}/{id_o}"),
    );
    let truth_o = drive(
        &env,
        &dir,
        "legacy",
        "repeat",
        "python",
        1,
        &cg_o.exec_in(&env.py_server_cmd()),
    );

    let other_node = metric(&agent.addr, "mcpscope_kube_pods_other_node_total ").unwrap_or(0.0);
    let (_, metrics) = http_get(&agent.addr, "/metrics").unwrap();
    let stopped = agent.stop();
    assert_exactly_once(&stopped, &truth_a);

    let cgroup_id_a = std::fs::metadata(cg_a.leaf()).unwrap().ino();
    // The driver writes `initialize` before the server's shell has moved
    // itself and exec'd: that one end is still the shell, outside. Every
    // end from the exec on is the server, inside.
    let ends: Vec<&Value> = ends_of(&stopped, truth_a.server)
        .into_iter()
        .filter(|e| e["comm"] != "sh")
        .collect();
    assert!(ends.len() >= truth_a.lines.len() - 1, "{ends:?}");
    for end in &ends {
        let c = &end["container"];
        assert_eq!(c["id"], id_a.as_str(), "{end}");
        assert_eq!(c["runtime"], "containerd", "{end}");
        assert_eq!(c["pod_uid"], POD_A, "{end}");
        assert_eq!(c["qos"], "burstable", "{end}");
        // The kernel's cgroup id is on the ends the kernel captured (a peer
        // looked up before its own first syscall has none yet).
        if end.get("fd").is_some() {
            assert_eq!(
                end["cgroup_id"].as_u64(),
                Some(cgroup_id_a),
                "the kernel's cgroup v2 id: {end}"
            );
        }
        let k = &end["k8s"];
        assert_eq!(k["pod"], "agent-7d9f-abcde", "{end}");
        assert_eq!(k["namespace"], "team-a");
        assert_eq!(k["node"], NODE);
        assert_eq!(k["service_account"], "agent-sa");
        assert_eq!(
            (&k["workload_kind"], &k["workload"]),
            (&json!("Deployment"), &json!("agent")),
            "ReplicaSet resolved to its Deployment"
        );
        assert_eq!(
            k["spiffe_id"],
            "spiffe://cluster.local/ns/team-a/sa/agent-sa"
        );
        assert_eq!(k["labels"]["app"], "agent");
    }
    // The client end is a host process: no container, no pod.
    let client_end = ends_of(&stopped, truth_a.client);
    assert!(client_end
        .iter()
        .all(|e| e.get("container").is_none() && e.get("k8s").is_none()));

    for end in ends_of(&stopped, truth_c.server)
        .into_iter()
        .filter(|e| e["comm"] != "sh")
    {
        assert_eq!(end["container"]["id"], id_c.as_str(), "{end}");
        assert_eq!(
            end["container"]["runtime"], "unknown",
            "a bare id under cgroupfs: {end}"
        );
        assert_eq!(end["container"]["pod_uid"], POD_C);
        assert_eq!(end["container"]["qos"], "besteffort");
        assert_eq!(
            (&end["k8s"]["workload_kind"], &end["k8s"]["workload"]),
            (&json!("CronJob"), &json!("report")),
            "Job resolved to its CronJob"
        );
        assert_eq!(end["k8s"]["service_account"], "reporter");
    }
    let other: Vec<&Value> = ends_of(&stopped, truth_o.server)
        .into_iter()
        .filter(|e| e["comm"] != "sh")
        .collect();
    assert!(!other.is_empty());
    for end in other {
        assert_eq!(end["container"]["pod_uid"], POD_OTHER, "{end}");
        assert!(
            end.get("k8s").is_none(),
            "a pod of another node is never used: {end}"
        );
    }
    assert!(
        other_node >= 1.0,
        "the other node's pod was seen and ignored"
    );
    // The audit trail answers by namespace and pod.
    let audit = dir.join("audit").display().to_string();
    let (code, out, err) = mcpscope(
        &env,
        &[
            "sessions",
            "--dir",
            &audit,
            "--namespace",
            "team-a",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "the sessions of pods A and C: {out}");
    let (code, out, _) = mcpscope(
        &env,
        &[
            "timeline",
            "--dir",
            &audit,
            "--pod",
            "report-29000000-xyz",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0);
    let recs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        recs.iter()
            .filter(|r| r["kind"] == "request" || r["data"]["kind"] == "request")
            .count(),
        truth_c
            .lines
            .iter()
            .filter(|(d, m)| d == "sent" && m.get("id").is_some() && m.get("method").is_some())
            .count(),
        "pod C's requests: {out}"
    );
    // Metrics carry the low-cardinality identities as labels.
    assert!(
        metrics.lines().any(|l| l.starts_with("mcp_messages_total{")
            && l.contains(r#"k8s_namespace_name="team-a""#)
            && l.contains(r#"k8s_workload_name="agent""#)
            && l.contains(r#"k8s_service_account_name="agent-sa""#)),
        "{metrics}"
    );
}

#[test]
fn podman_container_server_events_carry_the_libpod_container_id() {
    let Some(env) = env("podman_container_server_events_carry_the_libpod_container_id") else {
        return;
    };
    let dir = env.tmpdir("identity-podman");
    // An empty root with the host's /usr, /etc and this tree mounted
    // read-only: server-everything runs on the host's node, in a container.
    let rootfs = dir.join("rootfs");
    for d in ["usr", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l)).unwrap();
    }
    let root = env.root.display().to_string();
    std::fs::create_dir_all(rootfs.join(root.trim_start_matches('/'))).unwrap();
    let cidfile = dir.join("cid");
    let mut server: Vec<String> = [
        "podman",
        "run",
        "-i",
        "--rm",
        "--network",
        "none",
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/etc:/etc:ro",
        "-v",
        &format!("{root}:{root}:ro"),
        "--cidfile",
        &cidfile.display().to_string(),
        "--rootfs",
        &rootfs.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    server.extend(env.everything_cmd());
    let agent = Agent::start(&env, &dir, &["--no-detect"]);
    // The SDK gives the server a minimal environment: podman needs its conf.
    let conf = format!(
        "CONTAINERS_CONF={}",
        std::env::var("CONTAINERS_CONF").expect("CONTAINERS_CONF (set by cargo xtask test)")
    );
    let truth = drive_with_env(
        &env,
        &dir,
        "legacy",
        "repeat",
        "everything",
        2,
        &server,
        &[&conf],
    );
    let stopped = agent.stop();
    let cid = std::fs::read_to_string(&cidfile).expect("podman wrote the container id");
    let cid = cid.trim();
    // The server inside the container exchanged MCP with conmon (podman's
    // monitor, outside the container); those events carry the libpod id.
    let inside: Vec<&Value> = stopped
        .events
        .iter()
        .flat_map(|e| [&e["from"], &e["to"]])
        .filter(|end| end["container"]["id"] == cid)
        .collect();
    assert!(
        !inside.is_empty(),
        "no event names container {cid}: {:?}",
        stopped.events.iter().take(5).collect::<Vec<_>>()
    );
    for end in &inside {
        assert_eq!(end["container"]["runtime"], "podman", "{end}");
        assert_eq!(end["comm"], "node", "{end}");
        assert!(end["container"]["cgroup"]
            .as_str()
            .unwrap()
            .contains(&format!("libpod-{cid}")));
    }
    // The calls themselves were seen inside: every tools/call the client made.
    let calls = stopped
        .events
        .iter()
        .filter(|e| {
            e["to"]["container"]["id"] == cid
                && e["method"] == "tools/call"
                && e["kind"] == "request"
        })
        .count();
    let sent = truth
        .lines
        .iter()
        .filter(|(d, m)| d == "sent" && m["method"] == "tools/call")
        .count();
    assert_eq!(
        calls, sent,
        "each tools/call reached the containerised server once"
    );
    // conmon and podman are not the container.
    assert!(stopped
        .events
        .iter()
        .flat_map(|e| [&e["from"], &e["to"]])
        .filter(|end| end["comm"] == "conmon" || end["comm"] == "podman")
        .all(|end| end.get("container").is_none()));
}

#[test]
fn process_identity_exec_ids_ancestry_redacted_cmdline_and_credential_names() {
    let Some(env) = env("process_identity_exec_ids_ancestry_redacted_cmdline_and_credential_names")
    else {
        return;
    };
    let dir = env.tmpdir("identity-process");
    // Fake credentials of real shapes: neither may appear anywhere.
    let token = format!("ghp_{}", "Q7wE9rT1yU3iO5pA2sD4fG6hJ8kL0zX1cV3b");
    let api_key = "Sup3rS3cretApiKeyValue";
    let mut server = env.py_server_cmd();
    server.extend(["--api-key".to_owned(), api_key.to_owned()]);
    let agent = Agent::start(&env, &dir, &["--no-detect"]);
    let truth = drive_with_env(
        &env,
        &dir,
        "legacy",
        "basic",
        "python",
        0,
        &server,
        &[&format!("GITHUB_TOKEN={token}")],
    );
    let stopped = agent.stop();
    let events = assert_exactly_once(&stopped, &truth);
    let raw = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(
        !raw.contains(&token) && !raw.contains(api_key),
        "a credential value leaked into events"
    );
    assert!(!stopped.stderr.contains(&token) && !stopped.stderr.contains(api_key));

    let server_ends = ends_of(&stopped, truth.server);
    let client_ends = ends_of(&stopped, truth.client);
    let ids = |ends: &[&Value]| {
        ends.iter()
            .map(|e| e["exec_id"].as_str().unwrap().to_owned())
            .collect::<HashSet<_>>()
    };
    let (server_ids, client_ids) = (ids(&server_ends), ids(&client_ends));
    assert_eq!(
        server_ids.len(),
        1,
        "one exec_id for every event of the server: {server_ids:?}"
    );
    assert_eq!(client_ids.len(), 1);
    assert_ne!(server_ids, client_ids);
    let s = server_ends[0];
    assert_eq!(s["ppid"].as_u64(), Some(truth.client));
    assert_eq!(
        s["parent_exec_id"].as_str(),
        client_ids.iter().next().map(String::as_str),
        "the launching agent process"
    );
    assert_eq!(
        s["ancestors"][0]["pid"].as_u64(),
        Some(truth.client),
        "ancestry starts at the client"
    );
    assert!(s["ancestors"].as_array().unwrap().len() >= 2);
    assert!(
        s["cmdline"]
            .as_str()
            .unwrap()
            .ends_with("py_server.py stdio --api-key [REDACTED]"),
        "{s}"
    );
    assert_eq!(s["credential_env"], json!(["GITHUB_TOKEN"]), "names only");
    assert_eq!(s["user"], "root");
    assert!(s["start_time"].as_str().unwrap().ends_with('Z'));
    assert!(
        server_ends
            .iter()
            .filter(|e| e.get("fd").is_some())
            .all(|e| e["cgroup_id"].as_u64().is_some()),
        "the kernel's cgroup id on the capturing end"
    );
    assert!(
        events
            .iter()
            .all(|e| e["from"]["tid"].is_u64() || e["to"]["tid"].is_u64()),
        "the capturing thread"
    );
}

#[test]
fn exec_id_is_distinct_across_pid_reuse() {
    let Some(env) = env("exec_id_is_distinct_across_pid_reuse") else {
        return;
    };
    let dir = env.tmpdir("identity-pid-reuse");
    let agent = Agent::start(&env, &dir, &["--no-detect"]);
    let first = drive(
        &env,
        &dir,
        "legacy",
        "repeat",
        "python",
        1,
        &env.py_server_cmd(),
    );
    let reused = first.server;
    // Make the kernel hand out the same pid again: ns_last_pid is the last
    // pid allocated, so the shell's next fork takes the one after it. The
    // forked shell records its pid and execs the server. Another fork on
    // the host can take the pid first: then try again.
    let pidfile = dir.join("server.pid");
    let script = format!(
        "echo {} > /proc/sys/kernel/ns_last_pid; sh -c 'echo $$ > {}; exec \"$@\"' sh \"$@\"",
        reused - 1,
        pidfile.display()
    );
    let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), script, "sh".to_owned()];
    cmd.extend(env.py_server_cmd());
    let mut second = None;
    for _ in 0..10 {
        let t = drive(&env, &dir, "legacy", "repeat", "python", 1, &cmd);
        let p: u64 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if p == reused {
            second = Some(t);
            break;
        }
    }
    let second =
        second.unwrap_or_else(|| panic!("pid {reused} was not handed out again in 10 tries"));
    let stopped = agent.stop();
    // The exec_ids pid `reused` had in each run (its events with that run's client).
    let exec_ids = |client: u64| -> HashSet<String> {
        stopped
            .events
            .iter()
            .filter(|e| pid(&e["from"]) == client || pid(&e["to"]) == client)
            .flat_map(|e| [&e["from"], &e["to"]])
            .filter(|end| pid(end) == reused)
            .map(|end| end["exec_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (a, b) = (exec_ids(first.client), exec_ids(second.client));
    assert_eq!(a.len(), 1, "one execution, one exec_id: {a:?}");
    assert_eq!(b.len(), 1, "one execution, one exec_id: {b:?}");
    assert_ne!(a, b, "same pid {reused}, two executions, two exec_ids");
    // Both runs were reported whole, each in its own session.
    let sessions = |client: u64| -> HashSet<String> {
        stopped
            .events
            .iter()
            .filter(|e| pid(&e["from"]) == reused || pid(&e["to"]) == reused)
            .filter(|e| pid(&e["from"]) == client || pid(&e["to"]) == client)
            .map(|e| e["session"].as_str().unwrap().to_owned())
            .collect()
    };
    let (sa, sb) = (sessions(first.client), sessions(second.client));
    assert_eq!((sa.len(), sb.len()), (1, 1), "{sa:?} {sb:?}");
    assert_ne!(sa, sb);
    let lines = |t: &mcpscope_e2e::Truth| t.lines.len();
    let count = |client: u64| {
        stopped
            .events
            .iter()
            .filter(|e| pid(&e["from"]) == client || pid(&e["to"]) == client)
            .count()
    };
    assert_eq!(count(first.client), lines(&first));
    assert_eq!(
        count(second.client),
        lines(&second),
        "every message once, also through a forking wrapper"
    );
}

#[test]
fn client_and_server_info_on_every_message_of_a_session_in_both_eras() {
    let Some(env) = env("client_and_server_info_on_every_message_of_a_session_in_both_eras") else {
        return;
    };
    for mode in ["legacy", "2026-07-28"] {
        let dir = env.tmpdir(&format!("identity-info-{mode}"));
        let agent = Agent::start(&env, &dir, &["--no-detect"]);
        let truth = drive(&env, &dir, mode, "basic", "python", 0, &env.py_server_cmd());
        let stopped = agent.stop();
        let events = assert_exactly_once(&stopped, &truth);
        let version = if mode == "legacy" {
            "2025-11-25"
        } else {
            "2026-07-28"
        };
        // The client names itself on its first message; the server on its first response.
        let first_response = events.iter().position(|e| e["kind"] == "response").unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["client"]["name"], "mcp", "{mode}: {e}");
            assert_eq!(e["protocol_version"], version, "{mode}: {e}");
            if i >= first_response {
                assert_eq!(e["server"]["name"], "mcpscope-test-server", "{mode}: {e}");
            }
        }
    }
}
