//! The `webhook` executor: POSTs the action as JSON to `params.url`, which the dispatcher
//! has checked against the allowlist (`remediation.webhooks`).
//!
//! The body is `{"action_id", "target", "action", "params"}` (`params` without `url`,
//! which may carry a token, and without `body`), plus the fields of `params.body` when
//! it is an object (for receivers that want their own shape, such as `{"text": …}`), or
//! `"body": …` when it is anything else. The request is a minimal HTTP/1.1 POST over
//! plain TCP — only `http://` URLs — which keeps the static agent free of an HTTP client
//! stack, like the HTTP probe. A 2xx status is success; any other status fails with it;
//! a host that cannot be reached (connection refused, no route) is unavailable.

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::attempt::{ExecError, ExecOutcome, ExecRequest};

/// The executor's name.
const EXECUTOR: &str = "webhook";
/// How much of the reply is read to find the status line.
const HEAD_BYTES: usize = 1024;

/// The parts of an `http://` URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    /// `host[:port]`, for the `Host` header.
    authority: &'a str,
    /// `host:port`, to connect to.
    address: String,
    /// The path and query, at least `/`.
    path: &'a str,
}

/// POSTs `request` to `url` (already allowed by the dispatcher); the caller bounds the
/// time.
pub async fn run(url: &str, request: &ExecRequest) -> Result<ExecOutcome, ExecError> {
    let target = parse(url)?;
    let body = body(request).to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: vigil-agent\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        path = target.path,
        authority = target.authority,
        length = body.len(),
    );
    let mut stream =
        TcpStream::connect(&target.address)
            .await
            .map_err(|e| ExecError::Unavailable {
                executor: EXECUTOR,
                message: format!("cannot connect to {}: {e}", target.address),
            })?;
    let failed = |what: &str, e: std::io::Error| ExecError::Failed {
        executor: EXECUTOR,
        message: format!("{what} {}: {e}", target.address),
    };
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| failed("sending to", e))?;
    stream
        .write_all(body.as_bytes())
        .await
        .map_err(|e| failed("sending to", e))?;
    let mut reply = vec![0u8; HEAD_BYTES];
    let mut len = 0;
    while !reply[..len].contains(&b'\n') && len < reply.len() {
        let n = stream
            .read(&mut reply[len..])
            .await
            .map_err(|e| failed("reading the reply from", e))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let text = String::from_utf8_lossy(&reply[..len]);
    let line = text.lines().next().unwrap_or_default().trim();
    let mut words = line.splitn(3, ' ');
    let status: Option<u16> = match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse().ok(),
        _ => None,
    };
    let Some(status) = status else {
        return Err(ExecError::Failed {
            executor: EXECUTOR,
            message: format!(
                "{} sent no HTTP status line: `{}`",
                target.address,
                line.chars().take(100).collect::<String>()
            ),
        });
    };
    let reason = words.next().map(str::trim).unwrap_or_default();
    let detail = if reason.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {reason}")
    };
    if (200..300).contains(&status) {
        Ok(ExecOutcome {
            executor: EXECUTOR,
            detail,
        })
    } else {
        Err(ExecError::Failed {
            executor: EXECUTOR,
            message: detail,
        })
    }
}

/// Splits an `http://` URL; refuses anything else, and anything that could smuggle a
/// header (spaces, control characters).
fn parse(url: &str) -> Result<Target<'_>, ExecError> {
    let invalid = |why: &str| ExecError::Invalid(format!("webhook URL `{url}`: {why}"));
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("spaces and control characters are not allowed"));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or_default();
    let path = match path {
        "" => "/",
        p if p.starts_with('?') => return Err(invalid("a query needs a path (`/?…`)")),
        p => p,
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid("it needs a host (and no user info)"));
    }
    let has_port = match authority.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((host, port)) => !host.ends_with(':') && !port.contains(']'),
        None => false,
    };
    let address = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        address,
        path,
    })
}

/// The JSON body for `request`.
fn body(request: &ExecRequest) -> Value {
    let params: Map<String, Value> = request
        .params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "url" | "body"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut body = Map::new();
    body.insert("action_id".into(), Value::from(request.action_id.as_str()));
    body.insert("target".into(), Value::from(request.target.as_str()));
    body.insert("action".into(), Value::from(request.kind.as_str()));
    body.insert("params".into(), Value::Object(params));
    match request.params.get("body") {
        Some(Value::Object(extra)) => {
            for (k, v) in extra {
                body.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Some(other) => {
            body.insert("body".into(), other.clone());
        }
        None => {}
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use vigil_shared::policy::ActionKind;

    use super::*;
    use crate::acting::executors::{ExecutorConfig, Executors};

    /// A real HTTP server on loopback that answers one request with `status` and hands
    /// back the request it received (head and body).
    async fn server(status: &'static str) -> (String, oneshot::Receiver<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut chunk = [0u8; 1024];
            let (head, body) = loop {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request ended early");
                received.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&received).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if body.len() >= length {
                    break (head.to_string(), body.to_string());
                }
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            socket.write_all(reply.as_bytes()).await.unwrap();
            let _ = tx.send((head, body));
        });
        (format!("http://{addr}"), rx)
    }

    fn executors(prefix: &str) -> Executors {
        Executors::new(ExecutorConfig {
            webhooks: vec![prefix.to_string()],
            ..ExecutorConfig::default()
        })
    }

    fn webhook(url: &str, extra: serde_json::Value) -> ExecRequest {
        let mut params = BTreeMap::from([("url".to_string(), json!(url))]);
        if let Value::Object(extra) = extra {
            params.extend(extra);
        }
        ExecRequest {
            decided_at_ms: None,
            action_id: "01HOOK".into(),
            kind: ActionKind::Webhook,
            target: "web-1".into(),
            params,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_2xx_reply_succeeds_and_the_server_gets_the_action() {
        let (base, received) = server("200 OK").await;
        let url = format!("{base}/hooks/vigil?token=secret");
        let request = webhook(
            &url,
            json!({"severity": "critical", "body": {"text": "web-1 restarted", "action": "no"}}),
        );
        let outcome = executors(&format!("{base}/hooks/")).run(&request).await;
        assert_eq!(
            outcome,
            Ok(ExecOutcome {
                executor: "webhook",
                detail: "HTTP 200 OK".into()
            })
        );
        let (head, body) = received.await.unwrap();
        assert!(
            head.starts_with("POST /hooks/vigil?token=secret HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            json!({
                "action_id": "01HOOK",
                "target": "web-1",
                "action": "webhook",
                "params": {"severity": "critical"},
                "text": "web-1 restarted",
            })
        );
    }

    #[tokio::test]
    async fn a_5xx_reply_fails_with_the_status() {
        let (base, _received) = server("500 Internal Server Error").await;
        let error = executors(&base)
            .run(&webhook(&format!("{base}/alert"), json!({})))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ExecError::Failed {
                executor: "webhook",
                message: "HTTP 500 Internal Server Error".into()
            }
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        // A port that was free a moment ago: nothing listens there.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let error = executors(&base)
            .run(&webhook(&format!("{base}/alert"), json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::Unavailable { executor: "webhook", message } if message.contains("refused")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_url_outside_the_allowlist_is_not_allowed() {
        let (base, received) = server("200 OK").await;
        let error = executors("http://hooks.internal:9000/")
            .run(&webhook(&format!("{base}/alert"), json!({})))
            .await
            .unwrap_err();
        assert!(matches!(error, ExecError::NotAllowed(_)), "{error:?}");
        // Nothing was sent.
        assert!(tokio::time::timeout(Duration::from_millis(100), received)
            .await
            .is_err());
    }

    #[test]
    fn urls_are_split_and_odd_ones_refused() {
        let t = parse("http://hooks:9000/a/b?x=1#frag").unwrap();
        assert_eq!(
            t,
            Target {
                authority: "hooks:9000",
                address: "hooks:9000".into(),
                path: "/a/b?x=1"
            }
        );
        let t = parse("http://hooks").unwrap();
        assert_eq!((t.address.as_str(), t.path), ("hooks:80", "/"));
        assert_eq!(parse("http://[::1]").unwrap().address, "[::1]:80");
        assert_eq!(parse("http://[::1]:81/").unwrap().address, "[::1]:81");
        for bad in [
            "https://hooks/",
            "http://hooks/a b",
            "http://hooks/\r\nX: y",
            "http:///x",
            "http://u@hooks/",
        ] {
            assert!(matches!(parse(bad), Err(ExecError::Invalid(_))), "{bad}");
        }
    }
}
