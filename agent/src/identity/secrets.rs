//! Keeping credentials out of identities: which environment variable names
//! and command-line arguments hold secrets. Values are dropped here, before
//! anything else sees them; only names and redacted text leave this module.

use std::fs;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Upper-cased name fragments that make a variable or flag a credential.
const SECRET_NAME_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "API_KEY",
    "APIKEY",
    "ACCESS_KEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
    "SESSION_KEY",
    "CLIENT_KEY",
    "COOKIE",
    "BEARER",
];

/// True when a variable or flag name says it holds a credential
/// (`GITHUB_TOKEN`, `--api-key`, `OPENAI_API_KEY`, `db-password` …).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name
        .trim_start_matches('-')
        .to_ascii_uppercase()
        .replace('-', "_");
    // `_PAT` (personal access token) only as a suffix: `LD_LIBRARY_PATH` is not one.
    !upper.is_empty()
        && (SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
            || upper.ends_with("_PAT")
            || upper.split('_').any(is_auth_word))
}

/// `AUTH`, `OAUTH`, `BASICAUTH`, `AUTHORIZATION`, but not `AUTHOR` or
/// `AUTHORS` (`CARGO_PKG_AUTHORS`, `GIT_AUTHOR_NAME` hold names).
fn is_auth_word(word: &str) -> bool {
    (word.contains("AUTH") && !word.contains("AUTHOR")) || word.contains("AUTHORIZ")
}

/// Names of credential-looking variables in `/proc/<pid>/environ`, sorted;
/// values are never kept. Empty when unreadable.
pub fn credential_env_names(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| credential_names_in_environ(&raw))
        .unwrap_or_default()
}

/// [`credential_env_names`] over the raw NUL-separated environment block.
pub fn credential_names_in_environ(raw: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = raw
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = memchr::memchr(b'=', entry)?;
            let name = std::str::from_utf8(&entry[..eq]).ok()?;
            is_secret_name(name).then(|| name.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An argument whose value itself looks like a credential (known token
/// shapes, or a long high-entropy string).
fn looks_like_secret(arg: &str) -> bool {
    if !crate::detect::facts::find_secrets(arg.as_bytes()).is_empty() {
        return true;
    }
    let long_token = arg.len() >= 32
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/_-=.".contains(&b));
    long_token && {
        let classes = [
            arg.bytes().any(|b| b.is_ascii_lowercase()),
            arg.bytes().any(|b| b.is_ascii_uppercase()),
            arg.bytes().any(|b| b.is_ascii_digit()),
        ];
        classes.iter().filter(|c| **c).count() == 3
    }
}

/// Redacts secrets in a command line given as its arguments and joins them
/// with spaces: values of secret-named flags (`--token X`, `--token=X`),
/// secret-named assignments (`API_KEY=X`), passwords in URLs
/// (`https://user:X@host`), and arguments that look like credentials.
pub fn redact_cmdline<'a>(args: impl IntoIterator<Item = &'a str>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut redact_next = false;
    for arg in args {
        if redact_next {
            redact_next = false;
            if !arg.starts_with('-') {
                out.push(REDACTED.to_owned());
                continue;
            }
        }
        if arg.contains(' ') {
            // A script given as one argument (`sh -c "… --token X"`):
            // the same rules over its words.
            out.push(redact_cmdline(arg.split(' ')));
            continue;
        }
        if let Some((name, _)) = arg.split_once('=') {
            if is_secret_name(name) && !name.contains(['/', ' ']) {
                out.push(format!("{name}={REDACTED}"));
                continue;
            }
        }
        if arg.starts_with('-') && !arg.contains('=') && is_secret_name(arg) {
            out.push(arg.to_owned());
            redact_next = true;
            continue;
        }
        if let Some(url) = redact_url_password(arg) {
            out.push(url);
            continue;
        }
        if looks_like_secret(arg) {
            out.push(REDACTED.to_owned());
            continue;
        }
        out.push(arg.to_owned());
    }
    out.join(" ")
}

/// `scheme://user:password@host…` with the password redacted.
fn redact_url_password(arg: &str) -> Option<String> {
    let scheme_end = arg.find("://")? + 3;
    let rest = &arg[scheme_end..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if userinfo.contains('/') {
        return None;
    }
    let colon = userinfo.find(':')?;
    Some(format!(
        "{}{}:{REDACTED}{}",
        &arg[..scheme_end],
        &userinfo[..colon],
        &rest[at..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for n in [
            "GITHUB_TOKEN",
            "OPENAI_API_KEY",
            "--api-key",
            "db-password",
            "AWS_SECRET_ACCESS_KEY",
            "GITLAB_PAT",
            "NPM_AUTH",
            "OAUTH_CLIENT",
            "HTTP_AUTHORIZATION",
            "--auth",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "PATH",
            "LD_LIBRARY_PATH",
            "HOME",
            "--port",
            "LANG",
            "PYTHONPATH",
            "TERM",
            "CARGO_PKG_AUTHORS",
            "GIT_AUTHOR_NAME",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn environ_names_only_never_values() {
        let raw = b"PATH=/usr/bin\0GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789\0SLACK_BOT_TOKEN=xoxb-1\0HOME=/root\0\0";
        let names = credential_names_in_environ(raw);
        assert_eq!(names, ["GITHUB_TOKEN", "SLACK_BOT_TOKEN"]);
        assert!(!format!("{names:?}").contains("ghp_"));
    }

    #[test]
    fn cmdline_redaction() {
        let args = [
            "server",
            "--token",
            "hunter2",
            "--api-key=abc",
            "PASSWORD=pw",
            "--port",
            "8080",
            "https://bob:pw@example.com/x",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "Zq8Xk2Lm9Rt4Vb7Nc1Pd6Hf3Jw5Gy0Ts8Ua2Qe",
            "/srv/data",
        ];
        let line = redact_cmdline(args);
        assert_eq!(
            line,
            "server --token [REDACTED] --api-key=[REDACTED] PASSWORD=[REDACTED] --port 8080 \
             https://bob:[REDACTED]@example.com/x [REDACTED] [REDACTED] /srv/data"
        );
        for secret in ["hunter2", "abc", "=pw", ":pw@", "ghp_", "Zq8X"] {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
    }

    #[test]
    fn secrets_inside_a_shell_script_argument() {
        let line = redact_cmdline([
            "sh",
            "-c",
            "echo 1 > x && exec server --api-key hunter2 TOKEN=abc",
        ]);
        assert_eq!(
            line,
            "sh -c echo 1 > x && exec server --api-key [REDACTED] TOKEN=[REDACTED]"
        );
    }

    #[test]
    fn a_flag_after_a_secret_flag_is_kept() {
        assert_eq!(
            redact_cmdline(["x", "--token", "--verbose"]),
            "x --token --verbose"
        );
    }
}
