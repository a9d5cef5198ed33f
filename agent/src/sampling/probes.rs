//! Probes the agent runs itself on every tick: whether named processes run, and HTTP and
//! TCP health checks (counting failures in a row). Each result is a [`StateUpdate`].
//!
//! The HTTP check is a minimal HTTP/1.1 GET over plain TCP that reads only the status
//! line: enough for a health check, and it keeps the static agent free of an HTTP client
//! stack.

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
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            changed = set.changed() => if changed.is_err() { return },
            _ = ticker.tick() => {}
        }
        let probes = set.borrow().clone();
        if !probes.processes.is_empty() {
            let running = tokio::task::spawn_blocking(running_process_names)
                .await
                .unwrap_or_default();
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

/// Names of running processes (`/proc/PID/comm`).
pub fn running_process_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return names;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let is_pid = file_name
            .to_str()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            names.insert(comm.trim_end().to_string());
        }
    }
    names
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
    fn this_test_process_is_found() {
        let names = running_process_names();
        assert!(!names.is_empty());
        assert!(!names.contains("surely-no-such-process"));
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
