//! The policy behind `policy_violation` (`--policy FILE`, TOML). Per identity
//! selector, the servers and tools allowed and whether write-class tools are
//! allowed — read-only by default. Audit only: the agent flags, never blocks.
//!
//! ```toml
//! [default]                 # identities no rule selects
//! servers = ["*"]
//! tools = ["*"]
//! allow_write = false
//!
//! [[rule]]                  # every selector given must match
//! client = "claude-code"    # clientInfo name
//! exe = "/usr/bin/node"     # the caller's executable
//! namespace = "team-a"      # Kubernetes namespace (with workload identity)
//! service_account = "agent" # Kubernetes service account (with workload identity)
//! servers = ["filesystem"]  # serverInfo names; `*` and trailing-`*` globs
//! tools = ["read_*", "list_*"]
//! allow_write = false
//! ```

use serde::Deserialize;

use crate::sink::McpEvent;

/// What an identity may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Allowed servers.
    #[serde(default = "any")]
    pub servers: Vec<String>,
    /// Allowed tools.
    #[serde(default = "any")]
    pub tools: Vec<String>,
    /// Write-class tools allowed.
    #[serde(default)]
    pub allow_write: bool,
}

fn any() -> Vec<String> {
    vec!["*".into()]
}

impl Default for Allow {
    fn default() -> Self {
        Self {
            servers: any(),
            tools: any(),
            allow_write: false,
        }
    }
}

/// One rule: selectors and what they allow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// clientInfo name.
    pub client: Option<String>,
    /// Caller executable.
    pub exe: Option<String>,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Kubernetes service account.
    pub service_account: Option<String>,
    /// What it allows.
    #[serde(flatten)]
    pub allow: Allow,
}

/// The policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// For identities no rule selects.
    #[serde(default)]
    pub default: Allow,
    /// Rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// The TOML this came from.
    #[serde(skip)]
    pub raw: String,
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => pattern == s,
    }
}

impl Policy {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let mut p: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        p.raw = text.to_owned();
        for (i, r) in p.rules.iter().enumerate() {
            if r.client.is_none()
                && r.exe.is_none()
                && r.namespace.is_none()
                && r.service_account.is_none()
            {
                return Err(format!(
                    "rule[{i}] has no selector (client, exe, namespace or service_account)"
                ));
            }
        }
        Ok(p)
    }

    /// Why the call violates the policy, or `None`.
    pub fn check(&self, ev: &McpEvent, server: &str, tool: &str, write: bool) -> Option<String> {
        let from = ev.from.as_ref();
        let exe = from.and_then(|f| f.process.exe.as_deref());
        let client = ev.client.as_ref().map(|c| c.name.as_str());
        let pod = from.and_then(|f| f.k8s.as_deref());
        let namespace = pod.map(|p| p.namespace.as_str());
        let service_account = pod.and_then(|p| p.service_account.as_deref());
        let rule = self.rules.iter().find(|r| {
            r.client.as_deref().is_none_or(|c| Some(c) == client)
                && r.exe.as_deref().is_none_or(|e| Some(e) == exe)
                && r.namespace.as_deref().is_none_or(|n| Some(n) == namespace)
                && r.service_account
                    .as_deref()
                    .is_none_or(|s| Some(s) == service_account)
        });
        let allow = rule.map_or(&self.default, |r| &r.allow);
        if !allow.servers.iter().any(|p| glob(p, server)) {
            return Some(format!(
                "server {server:?} is not allowed for this identity"
            ));
        }
        if !allow.tools.iter().any(|p| glob(p, tool)) {
            return Some(format!("tool {tool:?} is not allowed for this identity"));
        }
        if write && !allow.allow_write {
            return Some(format!(
                "{tool:?} is write-class and this identity is read-only"
            ));
        }
        None
    }
}
