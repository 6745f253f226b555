//! The etcdctl side of the suite: expands a [`Ctl`] template for one server, runs the real
//! `etcdctl` (API v3) against it, and normalizes its stdout, stderr and exit status.
//!
//! Masks applied to etcdctl output (everything else is compared exactly):
//! - the server's endpoint URL and the session's scratch directory (both differ per side);
//! - server-chosen lease IDs, in hex and decimal, as `<case:handle>`;
//! - JSON (`-w json`) and `-w fields`: `cluster_id`/`member_id`/`raft_term` (identity and
//!   election counters), revisions made case-relative like the gRPC renderings, remaining
//!   TTL (`ttl`, `remaining(..)`) fuzzy to ±1 s, `endpoint status` raft indexes/term, leader
//!   and db sizes, `hashkv`'s hash (a digest of etcd's bbolt layout), `endpoint health`'s
//!   latency, and the version reduced to `3.4.*`;
//! - zap log lines on stderr keep only `level`, `msg` and `error`: the rest are timestamps,
//!   random client IDs, addresses and durations;
//! - lists etcd produces by iterating Go maps (`attached keys(..)`, `lease list`, JSON
//!   `keys`/`leases`) are sorted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::model::Ctl;
use crate::render::fuzzy;

/// Bound on any etcdctl run beyond its own `timeout`: etcdctl's default command timeout is
/// 5 s, so this only fires if the process itself hangs.
const CTL_LIMIT: Duration = Duration::from_secs(12);

/// What template expansion and masking need to know about the session.
pub struct CtlEnv {
    pub endpoint: String,
    pub prefix: String,
    pub base: i64,
    pub dir: PathBuf,
    /// Lease handles of the current case -> IDs on this server.
    pub leases: HashMap<String, i64>,
}

pub struct CtlOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The ID printed by `lease grant`, if any.
    pub granted_lease: Option<i64>,
}

/// Expands `{p}`, `{rev+N}`, `{rev-N}`, `{lease:h}` and `{dir}` (see [`Ctl`]).
fn expand(env: &CtlEnv, template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        let value = if name == "p" {
            Some(env.prefix.clone())
        } else if name == "dir" {
            Some(env.dir.to_string_lossy().into_owned())
        } else if let Some(handle) = name.strip_prefix("lease:") {
            // An unbound handle expands to an ID no server has, keeping the failure visible.
            Some(format!(
                "{:x}",
                env.leases.get(handle).copied().unwrap_or(0xdead)
            ))
        } else if let Some(offset) = name.strip_prefix("rev") {
            offset
                .parse::<i64>()
                .ok()
                .or(offset.is_empty().then_some(0))
                .map(|n| (env.base + n).to_string())
        } else {
            None
        };
        match value {
            Some(v) => out.push_str(&v),
            // Not a template (e.g. JSON in stdin): keep it verbatim.
            None => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

pub async fn run(env: &CtlEnv, c: &Ctl) -> CtlOutput {
    let mut cmd = match c.timeout {
        Some(t) => {
            // coreutils `timeout` sends SIGTERM and exits 124; etcdctl writes stdout
            // unbuffered, so everything printed before the signal is kept.
            let mut cmd = Command::new("timeout");
            cmd.arg(format!("{}", t.as_secs_f64())).arg("etcdctl");
            cmd
        }
        None => Command::new("etcdctl"),
    };
    cmd.arg(format!("--endpoints={}", env.endpoint))
        .args(c.args.iter().map(|a| expand(env, a)))
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .stdin(if c.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return CtlOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("cannot run etcdctl: {e}"),
                granted_lease: None,
            }
        }
    };
    if let (Some(input), Some(mut stdin)) = (&c.stdin, child.stdin.take()) {
        // A write error means etcdctl exited early; its output says why.
        let _ = stdin.write_all(expand(env, input).as_bytes()).await;
    }
    let output = match tokio::time::timeout(CTL_LIMIT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return CtlOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("waiting for etcdctl: {e}"),
                granted_lease: None,
            }
        }
        Err(_) => {
            return CtlOutput {
                status: None,
                stdout: String::new(),
                stderr: format!("etcdctl still running after {CTL_LIMIT:?}"),
                granted_lease: None,
            }
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    CtlOutput {
        status: output.status.code(),
        granted_lease: granted_lease(&stdout),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The lease ID in `lease grant` output: `lease <hex> granted with TTL(..)` or JSON `"ID"`.
fn granted_lease(stdout: &str) -> Option<i64> {
    let line = stdout.lines().next()?;
    if let Some(rest) = line.strip_prefix("lease ") {
        let hex = rest.split_whitespace().next()?;
        return u64::from_str_radix(hex, 16).ok().map(|v| v as i64);
    }
    let json: Value = serde_json::from_str(line).ok()?;
    json.get("ID")?.as_i64()
}

pub fn render(
    env: &CtlEnv,
    lease_names: &HashMap<i64, String>,
    c: &Ctl,
    out: &CtlOutput,
) -> String {
    let status = out
        .status
        .map_or("signal".to_string(), |code| code.to_string());
    if c.exit_only {
        return format!("exit={status}");
    }
    let masker = Masker { env, lease_names };
    let mut stdout: Vec<String> = out.stdout.lines().map(|l| masker.line(l)).collect();
    if c.sort_stdout {
        stdout.sort();
    }
    let stderr: Vec<String> = out.stderr.lines().map(|l| masker.stderr_line(l)).collect();
    format!(
        "exit={status} out={:?} err={:?}",
        stdout.join("\n"),
        stderr.join("\n")
    )
}

struct Masker<'a> {
    env: &'a CtlEnv,
    lease_names: &'a HashMap<i64, String>,
}

impl Masker<'_> {
    fn rev(&self, rev: i64) -> String {
        if rev == 0 {
            "0".to_string()
        } else {
            format!("r{:+}", rev - self.env.base)
        }
    }

    /// Replacements valid anywhere: endpoint, scratch dir, lease IDs.
    fn text(&self, line: &str) -> String {
        let mut s = line
            .replace(&self.env.endpoint, "<endpoint>")
            .replace(&*self.env.dir.to_string_lossy(), "{dir}");
        for (id, name) in self.lease_names {
            s = s
                .replace(&format!("{id:016x}"), &format!("<{name}>"))
                .replace(&format!("{id:x}"), &format!("<{name}>"))
                .replace(&id.to_string(), &format!("<{name}>"));
        }
        s
    }

    fn line(&self, line: &str) -> String {
        let trimmed = line.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            if let Ok(mut json) = serde_json::from_str::<Value>(trimmed) {
                self.json(&mut json, None);
                return self.text(&json.to_string());
            }
        }
        let s = self.fields_line(line);
        let s = self.text(&s);
        let s = rewrite_number_after(&s, "compacted revision ", |n| self.rev(n));
        let s = rewrite_number_after(&s, "remaining(", fuzzy);
        sort_attached_keys(&s)
    }

    /// `-w fields` lines: `"Name" : value`.
    fn fields_line(&self, line: &str) -> String {
        let Some((name, value)) = line.split_once(" : ") else {
            return line.to_string();
        };
        // i128: cluster and member IDs are u64s above i64::MAX.
        let Ok(n) = value.trim().parse::<i128>() else {
            return line.to_string();
        };
        match name.trim_matches('"') {
            "ClusterID" | "MemberID" | "RaftTerm" => format!("{name} : <masked>"),
            "Revision" | "CreateRevision" | "ModRevision" => match i64::try_from(n) {
                Ok(n) => format!("{name} : {}", self.rev(n)),
                Err(_) => line.to_string(),
            },
            _ => line.to_string(),
        }
    }

    fn stderr_line(&self, line: &str) -> String {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) {
            if map.contains_key("level") {
                let kept: serde_json::Map<String, Value> = map
                    .into_iter()
                    .filter(|(k, _)| matches!(k.as_str(), "level" | "msg" | "error"))
                    .collect();
                return self.text(&Value::Object(kept).to_string());
            }
        }
        self.text(line)
    }

    fn json(&self, v: &mut Value, key: Option<&str>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    self.json(child, Some(k));
                }
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    self.json(item, key);
                }
                if matches!(key, Some("keys" | "leases")) {
                    items.sort_by_key(|a| a.to_string());
                }
            }
            Value::Number(n) => {
                let Some(key) = key else { return };
                let masked = match key {
                    "cluster_id" | "member_id" | "raft_term" | "leader" | "raftIndex"
                    | "raftTerm" | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" | "hash" => {
                        Some("<masked>".to_string())
                    }
                    "revision" | "create_revision" | "mod_revision" | "compact_revision" => {
                        n.as_i64().map(|r| self.rev(r))
                    }
                    "ttl" => n.as_i64().map(fuzzy),
                    "ID" | "id" | "lease" => n
                        .as_i64()
                        .and_then(|id| self.lease_names.get(&id))
                        .map(|name| format!("<{name}>")),
                    _ => None,
                };
                if let Some(m) = masked {
                    *v = Value::String(m);
                }
            }
            Value::String(s) => match key {
                Some("took") => *v = Value::String("<masked>".into()),
                Some("version") if s.starts_with("3.4.") => *v = Value::String("3.4.*".into()),
                _ => {}
            },
            _ => {}
        }
    }
}

/// Rewrites the (possibly negative) integer that follows the first `marker` in `s`.
fn rewrite_number_after(s: &str, marker: &str, f: impl Fn(i64) -> String) -> String {
    let Some(at) = s.find(marker) else {
        return s.to_string();
    };
    let start = at + marker.len();
    let digits = s[start..]
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || (i == 0 && c == '-'))
        .count();
    match s[start..start + digits].parse::<i64>() {
        Ok(n) => format!("{}{}{}", &s[..start], f(n), &s[start + digits..]),
        Err(_) => s.to_string(),
    }
}

/// `attached keys([b a])` -> `attached keys([a b])`: etcd iterates a Go map.
fn sort_attached_keys(s: &str) -> String {
    const MARK: &str = "attached keys([";
    let Some(at) = s.find(MARK) else {
        return s.to_string();
    };
    let start = at + MARK.len();
    let Some(len) = s[start..].find("])") else {
        return s.to_string();
    };
    let mut keys: Vec<&str> = s[start..start + len].split_whitespace().collect();
    keys.sort_unstable();
    format!("{}{}{}", &s[..start], keys.join(" "), &s[start + len..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> CtlEnv {
        CtlEnv {
            endpoint: "http://127.0.0.1:1234".into(),
            prefix: "/c/".into(),
            base: 100,
            dir: PathBuf::from("/tmp/x"),
            leases: HashMap::from([("a".to_string(), 0x1f)]),
        }
    }

    #[test]
    fn templates_expand() {
        let e = env();
        assert_eq!(expand(&e, "{p}k --rev={rev+2}"), "/c/k --rev=102");
        assert_eq!(expand(&e, "{rev-1} {rev} {lease:a}"), "99 100 1f");
        assert_eq!(expand(&e, "{\"x\":1}"), "{\"x\":1}");
    }

    #[test]
    fn text_masks() {
        let e = env();
        let names = HashMap::from([(0x1f_i64, "c:a".to_string())]);
        let m = Masker {
            env: &e,
            lease_names: &names,
        };
        assert_eq!(
            m.line("lease 000000000000001f granted with TTL(60s), remaining(59s), attached keys([b a])"),
            "lease <c:a> granted with TTL(60s), remaining(~59s), attached keys([a b])"
        );
        assert_eq!(m.line("compacted revision 103"), "compacted revision r+3");
        assert_eq!(
            m.line(r#"{"header":{"cluster_id":1,"revision":105},"ttl":5,"ID":31}"#),
            r#"{"ID":"<c:a>","header":{"cluster_id":"<masked>","revision":"r+5"},"ttl":"~5"}"#
        );
    }
}
