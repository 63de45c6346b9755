//! Metrics and deployment, checked with the real tools: promtool and a real
//! Prometheus server scraping the agent, helm lint/template, kubectl
//! kustomize, kubernetes-validate (schemas of Kubernetes 1.30), and podman
//! running the image with exactly the DaemonSet's capabilities and mounts.
//!
//! No Kubernetes API server can run here: the manifests are validated
//! offline against the 1.30 schemas; a real cluster would further exercise
//! scheduling, hostPath permissions and the ServiceMonitor's CRD.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
};

use mcpscope_e2e::{drive_basic, env, free_port, http_get, tool, urlencode, wait_for, Agent, Env};
use serde_json::Value;

fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").expect("metrics endpoint answers");
    assert_eq!(code, 200);
    body
}

#[test]
fn promtool_check_metrics_is_clean_on_a_live_scrape_after_real_traffic() {
    let Some(env) = env("promtool_check_metrics") else {
        return;
    };
    let Some(promtool) = tool("promtool_check_metrics", "PROMTOOL", "promtool") else {
        return;
    };
    let dir = env.tmpdir("promtool");
    let agent = Agent::start(&env, &dir, &[]);
    drive_basic(&env, &dir);
    let body = wait_for("tools/call in /metrics", 10, || {
        Some(scrape(&agent.addr)).filter(|b| b.contains("gen_ai_tool_name=\"echo\""))
    });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    agent.stop();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "mcp_client_operation_duration_seconds",
        "mcp_server_operation_duration_seconds",
        "mcp_messages_total",
        "mcp_sessions_active",
        "mcp_bytes_total",
        "mcpscope_events_lost_total",
        "mcpscope_build_info",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family}")),
            "{family} missing"
        );
    }
    // Never ids, arguments or session keys as labels.
    assert!(
        !body.contains("session") || !body.contains("stdio:"),
        "no session ids in labels"
    );
    assert!(!body.contains("hello mcpscope"), "no arguments in labels");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(prom: &str, q: &str) -> Value {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={}", urlencode(q)))
        .expect("prometheus answers");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(code, 200, "query {q}: {body}");
    v
}

#[test]
fn real_prometheus_scrapes_the_agent_and_promql_returns_the_series() {
    let Some(env) = env("real_prometheus") else {
        return;
    };
    let Some(prometheus) = tool("real_prometheus", "PROMETHEUS", "prometheus") else {
        return;
    };
    let dir = env.tmpdir("prometheus");
    let agent = Agent::start(&env, &dir, &[]);
    let port = free_port();
    let prom_addr = format!("127.0.0.1:{port}");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: mcpscope\n    static_configs:\n      - targets: ['{}']\n", agent.addr),
    )
    .unwrap();
    let _prom = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );
    wait_for("prometheus /-/ready", 60, || {
        http_get(&prom_addr, "/-/ready").filter(|(c, _)| *c == 200)
    });
    drive_basic(&env, &dir);
    let q = r#"mcp_messages_total{kind="request",mcp_method_name="tools/call"}"#;
    let result = wait_for("the tools/call series in Prometheus", 60, || {
        let v = query(&prom_addr, q);
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        (r.first()
            .and_then(|s| s["value"][1].as_str().map(str::to_owned))
            == Some("4".into()))
        .then_some(r)
    });
    let labels = &result[0]["metric"];
    assert_eq!(labels["job"], "mcpscope");
    assert_eq!(labels["mcp_client_name"], "mcp");
    assert_eq!(labels["mcp_server_name"], "mcpscope-test-server");
    assert_eq!(labels["network_transport"], "pipe");
    let up = query(&prom_addr, r#"up{job="mcpscope"}"#);
    assert_eq!(up["data"]["result"][0]["value"][1], "1");
    let errors = query(
        &prom_addr,
        r#"sum(mcp_server_operation_duration_seconds_count{error_type="tool_error"})"#,
    );
    assert_eq!(
        errors["data"]["result"][0]["value"][1], "2",
        "fail and no_such_tool"
    );
    // Every query of the Grafana dashboard is valid PromQL for this server.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(env.root.join("deploy/grafana/mcpscope-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            let v = query(&prom_addr, &expr);
            assert_eq!(v["status"], "success", "dashboard query {expr}: {v}");
            n += 1;
        }
    }
    assert!(n >= 10);
    agent.stop();
}

fn kubernetes_validate(env: &Env, manifests: &str) -> String {
    let file = env.tmpdir("kv").join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(env.python.with_file_name("kubernetes-validate"))
        .args(["--strict", "-k", "1.30.0"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(!text.contains("ERROR") && !text.contains("FAIL"), "{text}");
    text
}

fn docs(yaml: &str, env: &Env) -> Vec<Value> {
    // PyYAML (a kubernetes-validate dependency) turns the YAML stream into JSON.
    let mut child = Command::new(&env.python)
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Least privilege and the pieces the issue lists, on a rendered DaemonSet.
fn assert_daemonset_shape(all: &[Value]) {
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let configmaps = all.iter().filter(|d| d["kind"] == "ConfigMap").count();
    assert_eq!(configmaps, 2, "settings and policy");
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let role = all.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    // Workload owners are read, never written.
    for (i, res) in [(1, "replicasets"), (2, "jobs")] {
        assert_eq!(role["rules"][i]["resources"], serde_json::json!([res]));
        assert_eq!(role["rules"][i]["verbs"], serde_json::json!(["get"]));
    }
    assert_eq!(role["rules"].as_array().unwrap().len(), 3);
    let ds = all.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!([
            "BPF",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH"
        ])
    );
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"MCPSCOPE_NODE_NAME") && env.contains(&"MCPSCOPE_METRICS_ADDR"));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for m in [
        "/etc/mcpscope",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/host/proc",
        "/var/lib/mcpscope",
    ] {
        assert!(mounts.contains(&m), "{m} not mounted");
    }
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let sm = all.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    let svc = all.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"],
        "ServiceMonitor scrapes the Service's port"
    );
}

/// Rendering succeeded, the manifests validate for Kubernetes 1.30, and the
/// DaemonSet has the shape least privilege requires.
fn assert_valid_manifests(env: &Env, what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let report = kubernetes_validate(env, &rendered);
    assert!(
        report.contains("passed for resource daemonset/mcpscope"),
        "{report}"
    );
    assert_daemonset_shape(&docs(&rendered, env));
}

#[test]
fn helm_lint_strict_and_the_rendered_chart_validates_for_kubernetes_1_30() {
    let Some(env) = env("helm_chart") else { return };
    let Some(helm) = tool("helm_chart", "MCPSCOPE_HELM", "helm") else {
        return;
    };
    let chart = env.root.join("deploy/helm/mcpscope");
    let lint = Command::new(&helm)
        .args(["lint", "--strict"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let out = Command::new(&helm)
        .args([
            "template",
            "mcpscope",
            "--namespace",
            "mcpscope",
            "--set",
            "serviceMonitor.enabled=true",
        ])
        .arg(&chart)
        .output()
        .unwrap();
    assert_valid_manifests(&env, "helm template", out);
}

#[test]
fn kustomize_base_validates_for_kubernetes_1_30() {
    let Some(env) = env("kustomize_base") else {
        return;
    };
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(env.root.join("deploy/kubernetes"))
        .output()
        .unwrap();
    assert_valid_manifests(&env, "kubectl kustomize", out);
}

/// `podman run` arguments equal to the DaemonSet's capabilities, mounts
/// and ConfigMap settings (files and environment).
fn daemonset_podman_args(env: &Env, data: &Path) -> Vec<String> {
    let k = env.root.join("deploy/kubernetes");
    let ds = &docs(
        &std::fs::read_to_string(k.join("daemonset.yaml")).unwrap(),
        env,
    )[0];
    let settings = &docs(
        &std::fs::read_to_string(k.join("configmap.yaml")).unwrap(),
        env,
    )[0];
    let files = &docs(
        &std::fs::read_to_string(k.join("policy-configmap.yaml")).unwrap(),
        env,
    )[0];
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut args = vec![
        "--pid=host".to_owned(),
        "--network=host".to_owned(),
        "--read-only".to_owned(),
    ];
    for cap in c["securityContext"]["capabilities"]["drop"]
        .as_array()
        .unwrap()
    {
        args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in c["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
    {
        args.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    for (k, v) in settings["data"].as_object().unwrap() {
        args.push(format!("--env={k}={}", v.as_str().unwrap()));
    }
    for m in c["volumeMounts"].as_array().unwrap() {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let host = if let Some(path) = vol["hostPath"]["path"].as_str() {
            if path == "/var/lib/mcpscope" {
                data.display().to_string()
            } else {
                path.to_owned()
            }
        } else {
            // A configMap volume: its files, materialised for podman.
            assert_eq!(vol["configMap"]["name"], files["metadata"]["name"]);
            let dir = data.with_file_name("etc-mcpscope");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files["data"].as_object().unwrap() {
                std::fs::write(dir.join(name), text.as_str().unwrap()).unwrap();
            }
            dir.display().to_string()
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        args.push(format!(
            "--volume={host}:{}{ro}",
            m["mountPath"].as_str().unwrap()
        ));
    }
    args
}

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn podman_image_with_the_daemonsets_capabilities_and_mounts_reports_a_host_session() {
    let Some(env) = env("podman_image") else {
        return;
    };
    let Some(image) = std::env::var("MCPSCOPE_IMAGE").ok().or_else(|| {
        tool("podman_image", "MCPSCOPE_IMAGE", "/nonexistent").map(|p| p.display().to_string())
    }) else {
        return;
    };
    let dir = env.tmpdir("podman");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let name = format!("mcpscope-e2e-{}", std::process::id());
    let out = Command::new("podman")
        .args(["run", "-d", "--name", &name])
        .args(daemonset_podman_args(&env, &data))
        .arg(&image)
        .args([
            "run",
            "--stdout",
            "none",
            "--output",
            "/var/lib/mcpscope/events.jsonl",
            "--metrics-addr",
            &addr,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = Container(name.clone());
    wait_for("the container's /readyz", 120, || {
        http_get(&addr, "/readyz").filter(|(c, _)| *c == 200)
    });
    drive_basic(&env, &dir);
    let body = wait_for("the host session in the container's /metrics", 15, || {
        http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .filter(|b| b.contains(r#"gen_ai_tool_name="echo""#))
    });
    assert!(body.contains(r#"mcp_server_name="mcpscope-test-server""#));
    let stop = Command::new("podman")
        .args(["stop", "-t", "10", &name])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let logs = Command::new("podman")
        .args(["logs", &name])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("mcpscope: stopped:"),
        "clean shutdown in the container"
    );
    let events = std::fs::read_to_string(data.join("events.jsonl")).unwrap();
    assert!(
        events.lines().any(|l| l.contains(r#""tool":"echo""#)),
        "events on the host path"
    );
    // The ConfigMaps took effect: an audit trail on the host path that
    // verifies, and the default read-only policy loaded.
    let (code, out, _) =
        mcpscope_e2e::mcpscope(&env, &["verify", data.join("audit").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let audit = std::fs::read_to_string(data.join("audit/audit-000001.jsonl")).unwrap();
    assert!(
        audit.contains("allow_write = false"),
        "agent_start records the loaded policy"
    );
    drop(container);
}

#[test]
fn image_without_the_required_capabilities_fails_with_a_clear_message() {
    let Some(_env) = env("image_without_caps") else {
        return;
    };
    let Some(image) = std::env::var("MCPSCOPE_IMAGE").ok().or_else(|| {
        tool("image_without_caps", "MCPSCOPE_IMAGE", "/nonexistent")
            .map(|p| p.display().to_string())
    }) else {
        return;
    };
    let out = Command::new("podman")
        .args([
            "run",
            "--rm",
            "--pid=host",
            "--network=host",
            "--cap-drop=ALL",
            "--cap-add=BPF,PERFMON",
            &image,
            "run",
            "--metrics-addr",
        ])
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing capabilities CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
