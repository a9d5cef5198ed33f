//! Probes the agent runs itself on every tick: whether named processes run, and HTTP and
//! TCP health checks (counting failures in a row). Each result is a [`StateUpdate`].
//!
//! The HTTP check is a minimal HTTP/1.1 GET over plain TCP that reads only the status
//! line: enough for a health check, and it keeps the static agent free of an HTTP client
//! stack.
//!
//! A process check looks first at the process where the name was last seen (one read of
//! `/proc/PID/comm`) and lists `/proc` only for the names not found there, stopping as
//! soon as all are found: on a host where the checked processes run, a tick costs one
//! read per name instead of one per process.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use vigil_shared::policy::{StateKind, StateReading};
use vigil_shared::time::now_ms;

use crate::sampling::watch::{StateUpdate, UpdateSender};

/// An HTTP check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpProbe {
    /// `http://host:port/path`.
    pub url: String,
    /// Expected status; `None` accepts any 2xx.
    pub expect_status: Option<u16>,
    /// Timeout for the whole exchange.
    pub timeout: Duration,
}

/// A TCP check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpProbe {
    /// `host:port`.
    pub address: String,
    /// Connect timeout.
    pub timeout: Duration,
}

/// Everything to probe, derived from the loaded policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSet {
    /// Process names (as in `/proc/PID/comm`).
    pub processes: BTreeSet<String>,
    /// HTTP checks.
    pub http: BTreeSet<HttpProbe>,
    /// TCP checks.
    pub tcp: BTreeSet<TcpProbe>,
}

/// Runs the probes every `interval` until the sender side of `set` is dropped.
pub async fn run(mut set: watch::Receiver<ProbeSet>, interval: Duration, updates: UpdateSender) {
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut finder = Some(ProcessFinder::default());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            changed = set.changed() => if changed.is_err() { return },
            _ = ticker.tick() => {}
        }
        let probes = set.borrow().clone();
        if !probes.processes.is_empty() {
            let wanted = probes.processes.clone();
            let mut f = finder.take().unwrap_or_default();
            let running = match tokio::task::spawn_blocking(move || {
                let running = f.running(&wanted);
                (f, running)
            })
            .await
            {
                Ok((f, running)) => {
                    finder = Some(f);
                    running
                }
                Err(_) => BTreeSet::new(),
            };
            for name in &probes.processes {
                let state = if running.contains(name) {
                    "running"
                } else {
                    "missing"
                };
                let reading = reading(state, 0, None);
                if send(&updates, StateKind::Process, name, reading)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let http = probes
            .http
            .iter()
            .map(|p| async move { (StateKind::Http, p.url.clone(), http_get(p).await) });
        let tcp = probes.tcp.iter().map(|p| async move {
            let result = match tokio::time::timeout(p.timeout, TcpStream::connect(&p.address)).await
            {
                Ok(Ok(_)) => Ok("connected".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {:?}", p.timeout)),
            };
            (StateKind::Tcp, p.address.clone(), result)
        });
        let mut results = futures_util::future::join_all(http).await;
        results.extend(futures_util::future::join_all(tcp).await);
        for (kind, name, result) in results {
            let count = failures.entry(name.clone()).or_default();
            let reading = match result {
                Ok(detail) => {
                    *count = 0;
                    reading("ok", 0, Some(detail))
                }
                Err(detail) => {
                    *count = count.saturating_add(1);
                    reading("failing", *count, Some(detail))
                }
            };
            if send(&updates, kind, &name, reading).await.is_err() {
                return;
            }
        }
    }
}

fn reading(state: &str, consecutive_failures: u32, detail: Option<String>) -> StateReading {
    StateReading {
        state: state.to_string(),
        health: None,
        consecutive_failures,
        detail,
        at_ms: now_ms(),
    }
}

async fn send(
    updates: &UpdateSender,
    kind: StateKind,
    name: &str,
    reading: StateReading,
) -> Result<(), ()> {
    updates
        .send(StateUpdate {
            kind,
            name: name.to_string(),
            reading,
        })
        .await
        .map_err(|_| ())
}

/// Finds running processes by name (`/proc/PID/comm`), remembering the process each
/// name was last seen in.
#[derive(Debug, Default)]
pub struct ProcessFinder {
    last_seen: HashMap<String, u32>,
}

impl ProcessFinder {
    /// Which of `wanted` run now.
    pub fn running(&mut self, wanted: &BTreeSet<String>) -> BTreeSet<String> {
        self.last_seen.retain(|name, _| wanted.contains(name));
        let mut found = BTreeSet::new();
        self.last_seen.retain(|name, pid| {
            let still = comm(*pid).is_some_and(|c| c == *name);
            if still {
                found.insert(name.clone());
            }
            still
        });
        if found.len() == wanted.len() {
            return found;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(name) = comm(pid) else { continue };
            if wanted.contains(&name) && !found.contains(&name) {
                self.last_seen.insert(name.clone(), pid);
                found.insert(name);
                if found.len() == wanted.len() {
                    break;
                }
            }
        }
        found
    }
}

/// The command name of process `pid`; `None` once it is gone.
fn comm(pid: u32) -> Option<String> {
    let mut comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.truncate(comm.trim_end().len());
    Some(comm)
}

/// Performs the GET; `Ok(detail)` when the status is as expected.
async fn http_get(probe: &HttpProbe) -> Result<String, String> {
    let exchange = async {
        let rest = probe
            .url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{}` is not an http:// URL", probe.url))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let address = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let mut stream = TcpStream::connect(&address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: vigil-agent\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = vec![0u8; 256];
        let mut len = 0;
        while !head[..len].contains(&b'\n') && len < head.len() {
            let n = stream
                .read(&mut head[len..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = String::from_utf8_lossy(&head[..len]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no HTTP status line in reply: `{}`",
                    line.lines().next().unwrap_or("")
                )
            })?;
        let ok = match probe.expect_status {
            Some(expected) => status == expected,
            None => (200..300).contains(&status),
        };
        if ok {
            Ok(format!("status {status}"))
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(probe.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no reply within {:?}", probe.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_running_processes_and_remembers_where() {
        let own = comm(std::process::id()).unwrap();
        let wanted = BTreeSet::from([own.clone(), "surely-no-such-process".to_string()]);
        let mut finder = ProcessFinder::default();
        assert_eq!(finder.running(&wanted), BTreeSet::from([own.clone()]));
        let seen = finder.last_seen[&own];
        assert_eq!(comm(seen).as_deref(), Some(own.as_str()));
        assert_eq!(finder.running(&wanted), BTreeSet::from([own.clone()]));

        // A process that exits is missing from the next look.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A vfork'd child resumes its parent before exec renames it: wait for the name.
        let renamed = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while comm(child.id()).as_deref() != Some("sleep") && std::time::Instant::now() < renamed {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let sleeping = BTreeSet::from(["sleep".to_string()]);
        assert_eq!(finder.running(&sleeping), sleeping);
        assert!(!finder.last_seen.contains_key(&own), "no longer wanted");
        child.kill().unwrap();
        child.wait().unwrap();
        let others = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .any(|pid| comm(pid).as_deref() == Some("sleep"));
        assert_eq!(finder.running(&sleeping).is_empty(), !others);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_count_failures_in_a_row() {
        // A real HTTP server on loopback that answers 200 then goes away.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let probe = HttpProbe {
            url: format!("http://{addr}/health"),
            expect_status: None,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(http_get(&probe).await, Ok("status 200".into()));
        let wrong = HttpProbe {
            expect_status: Some(204),
            ..probe.clone()
        };
        assert_eq!(http_get(&wrong).await, Err("status 200".into()));
        server.abort();
        let _ = server.await;

        let (set_tx, set_rx) = watch::channel(ProbeSet {
            tcp: BTreeSet::from([TcpProbe {
                address: addr.to_string(),
                timeout: Duration::from_millis(500),
            }]),
            http: BTreeSet::from([probe]),
            processes: BTreeSet::from(["surely-no-such-process".to_string()]),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(run(set_rx, Duration::from_millis(50), tx));
        let mut last: HashMap<(StateKind, String), StateReading> = HashMap::new();
        while last
            .get(&(StateKind::Tcp, addr.to_string()))
            .is_none_or(|r| r.consecutive_failures < 3)
        {
            let update = rx.recv().await.unwrap();
            last.insert((update.kind, update.name), update.reading);
        }
        let http = &last[&(StateKind::Http, format!("http://{addr}/health"))];
        assert_eq!(http.state, "failing");
        assert!(http.consecutive_failures >= 2);
        assert_eq!(
            last[&(StateKind::Process, "surely-no-such-process".into())].state,
            "missing"
        );
        drop(set_tx);
        let _ = task.await;
    }
}
