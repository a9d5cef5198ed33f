//! The agent's identity: its own ed25519 key (every message it publishes is sealed with
//! it, see [`vigil_shared::agent_auth`]), its MQTT login, the coordinator's public signing
//! key and the labels its join token gave it.
//!
//! An agent gets its identity once, by enrolling at the coordinator with a join token
//! ([`enroll`]): it makes a key, sends the public half, and receives its MQTT login. The
//! identity is kept in `{data_dir}/identity.json` (mode 0600; a file others can read is
//! refused) and reused on every later start ([`load_or_enroll`]).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vigil_shared::agent_auth::AgentKey;
use vigil_shared::enrollment::ENROLL_PATH;
use vigil_shared::enrollment::{EnrollRequest, Enrollment};
pub(crate) use vigil_shared::enrollment::{Identity, IdentityFileError};
use vigil_shared::tls::ClientTls;

use crate::config::AgentConfig;

/// How long one enrollment request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of the coordinator's answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long [`load_or_enroll`] keeps retrying an enrollment that failed for a passing
/// reason (coordinator unreachable or failing with 5xx).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Why the agent has no usable identity.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The identity file cannot be read, written or used.
    #[error(transparent)]
    File(#[from] IdentityFileError),
    /// The identity was made for another host name.
    #[error(
        "identity file {path} was made for host `{enrolled}` but this agent now runs as \
         `{configured}`: if the host name changed on purpose, remove {path} and enroll again \
         (--coordinator URL --join-token TOKEN)"
    )]
    HostChanged {
        /// The file.
        path: PathBuf,
        /// The host in the file.
        enrolled: String,
        /// The host configured now.
        configured: String,
    },
    /// There is no identity and nothing to enroll with.
    #[error(
        "this agent has no identity yet ({path}): start it once with --coordinator URL \
         --join-token TOKEN (make one with `vigil-coordinator token create --join`); for the \
         installed service: `vigil-agent install --coordinator URL --join-token TOKEN`"
    )]
    NotEnrolled {
        /// Where the identity file would be.
        path: PathBuf,
    },
    /// The coordinator could not be reached (or did not answer in time).
    #[error("cannot reach the coordinator at {url}: {problem}")]
    Unreachable {
        /// The enrollment URL.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// The coordinator's TLS certificate is not trusted (wrong `--ca`, or a coordinator
    /// that is not the one the CA vouches for): the agent refuses to talk to it.
    #[error("refusing the coordinator at {url}: its TLS certificate is not trusted ({problem}); check --ca")]
    Untrusted {
        /// The enrollment URL.
        url: String,
        /// What rustls said.
        problem: String,
    },
    /// The coordinator refused the enrollment.
    #[error("enrollment at {url} refused with HTTP {status}: {message}")]
    Refused {
        /// The enrollment URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The body's `error` field (or the body itself).
        message: String,
    },
    /// The coordinator's answer is not what enrollment expects.
    #[error("enrollment at {url}: unexpected answer: {problem}")]
    BadAnswer {
        /// The enrollment URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl IdentityError {
    /// Whether trying again later may succeed (coordinator unreachable or failing).
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Enrolls `host` at `coordinator` (`http://host:port` or `https://…`, trusting what
/// `tls` trusts, else public roots) with `join_token`: makes a new key, sends its public
/// half, and returns the identity (not yet saved).
pub async fn enroll(
    coordinator: &str,
    join_token: &str,
    host: &str,
    tls: Option<&ClientTls>,
) -> Result<Identity, IdentityError> {
    enroll_with_key(coordinator, join_token, host, AgentKey::generate(), tls).await
}

async fn enroll_with_key(
    coordinator: &str,
    join_token: &str,
    host: &str,
    key: AgentKey,
    tls: Option<&ClientTls>,
) -> Result<Identity, IdentityError> {
    let url = format!("{}{ENROLL_PATH}", coordinator.trim_end_matches('/'));
    let request = serde_json::to_vec(&EnrollRequest {
        join_token: join_token.to_string(),
        host: host.to_string(),
        public_key: key.public_hex(),
    })
    .expect("an enrollment request serializes");
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, post_json(&url, request, tls))
        .await
        .unwrap_or_else(|_| {
            Err(NoAnswer::Unreachable(format!(
                "no answer within {REQUEST_TIMEOUT:?}"
            )))
        });
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(NoAnswer::Untrusted(problem)) => return Err(IdentityError::Untrusted { url, problem }),
        Err(NoAnswer::Unreachable(problem)) => {
            return Err(IdentityError::Unreachable { url, problem })
        }
    };
    if status != 201 {
        return Err(IdentityError::Refused {
            url,
            status,
            message: error_field(&body),
        });
    }
    let bad_answer = |problem: String| IdentityError::BadAnswer {
        url: url.clone(),
        problem,
    };
    let answer: Enrollment = serde_json::from_str(&body).map_err(|e| bad_answer(e.to_string()))?;
    if answer.host != host {
        return Err(bad_answer(format!(
            "enrolled host `{}`, asked for `{host}`",
            answer.host
        )));
    }
    if let Some(coordinator_key) = &answer.coordinator_key {
        vigil_shared::bundle::PublicKey::from_hex(coordinator_key)
            .map_err(|e| bad_answer(format!("coordinator_key: {e}")))?;
    }
    Ok(Identity {
        host: answer.host,
        private_key: key.private_hex(),
        mqtt_username: answer.mqtt_username,
        mqtt_password: answer.mqtt_password,
        coordinator_key: answer.coordinator_key,
        labels: answer.labels,
        enrolled_at_ms: vigil_shared::time::now_ms(),
    })
}

/// Why a request got no answer.
enum NoAnswer {
    /// The coordinator's TLS certificate is not trusted: what rustls said.
    Untrusted(String),
    /// Anything else (the URL, the connection, HTTP): what went wrong.
    Unreachable(String),
}

impl NoAnswer {
    /// A refusal by rustls somewhere in `e`'s causes is [`NoAnswer::Untrusted`].
    fn from_error(e: &(dyn std::error::Error + 'static)) -> NoAnswer {
        match tls_refusal(e) {
            Some(problem) => NoAnswer::Untrusted(problem),
            None => NoAnswer::Unreachable(error_chain(e)),
        }
    }
}

/// POSTs `json` to `url` (`http://` or `https://`, trusting what `tls` trusts, else the
/// public roots) on one HTTP/1.1 connection, with hyper's client connection (linked for
/// the Docker API already, so enrollment adds no HTTP client stack to the agent): the
/// answer's status and body (at most [`MAX_ANSWER_BYTES`]).
async fn post_json(
    url: &str,
    json: Vec<u8>,
    tls: Option<&ClientTls>,
) -> Result<(u16, String), NoAnswer> {
    let unreachable = |problem: String| NoAnswer::Unreachable(problem);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| unreachable(format!("not a URL: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(unreachable(
                "the URL must start with http:// or https://".into(),
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| unreachable("the URL has no host".into()))?
        .clone();
    // `host()` keeps an IPv6 address's brackets.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "vigil-agent")
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| unreachable(e.to_string()))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| NoAnswer::from_error(&e))?;
    if !https {
        return exchange(tcp, request).await;
    }
    let config = match tls {
        Some(tls) => tls.config(),
        None => ClientTls::public_roots()
            .map_err(|e| unreachable(e.to_string()))?
            .config(),
    };
    let name = ServerName::try_from(host)
        .map_err(|e| unreachable(format!("not a host name for TLS: {e}")))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| NoAnswer::from_error(&e))?;
    exchange(stream, request).await
}

/// Sends `request` on `stream` and reads the answer; the connection closes after it.
async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, String), NoAnswer>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| NoAnswer::from_error(&e))?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| NoAnswer::from_error(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| NoAnswer::from_error(e.as_ref()))?
            .to_bytes();
        // Dropping the sender lets the connection close.
        drop(sender);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    // The connection runs beside the request; its own error also fails the request.
    let (answer, _) = tokio::join!(answer, connection);
    answer
}

/// The `error` field of a JSON error body, else the body itself (shortened), else "no
/// reason given".
fn error_field(body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_str::<ErrorBody>(body) {
        return parsed.error;
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return "no reason given".to_string();
    }
    trimmed.chars().take(200).collect()
}

/// The TLS refusal (rustls' own error) somewhere in `e`'s causes, if that is what failed.
/// I/O errors hide the error they wrap from `source()` (and hyper nests them), so each
/// is opened with `get_ref()`.
fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        cause = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// An error and its causes, joined (hyper's own message is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The agent's identity: read from `config.data_dir`, or, the first time, enrolled with
/// `config.coordinator` and `config.join_token` and saved. A failed enrollment is retried
/// for about a minute while the coordinator is unreachable or failing; a refusal (4xx)
/// ends it at once.
pub async fn load_or_enroll(
    config: &AgentConfig,
    tls: Option<&ClientTls>,
) -> Result<Identity, IdentityError> {
    let path = Identity::path(&config.data_dir);
    if let Some(identity) = Identity::load(&config.data_dir)? {
        if identity.host != config.host {
            return Err(IdentityError::HostChanged {
                path,
                enrolled: identity.host,
                configured: config.host.clone(),
            });
        }
        return Ok(identity);
    }
    let (Some(coordinator), Some(join_token)) = (&config.coordinator, &config.join_token) else {
        return Err(IdentityError::NotEnrolled { path });
    };
    tracing::info!(%coordinator, host = %config.host, "no identity yet: enrolling");
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    let identity = loop {
        match enroll(coordinator, join_token, &config.host, tls).await {
            Ok(identity) => break identity,
            Err(e) if e.is_transient() && started.elapsed() + delay < RETRY_FOR => {
                tracing::warn!("enrollment failed, trying again in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e),
        }
    };
    identity.save(&config.data_dir)?;
    tracing::info!(path = %path.display(), "enrolled as {}", identity.host);
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn identity() -> Identity {
        let key = AgentKey::generate();
        Identity {
            host: "web-01".into(),
            private_key: key.private_hex(),
            mqtt_username: "web-01".into(),
            mqtt_password: "s3cret-password".into(),
            coordinator_key: Some(vigil_shared::bundle::BundleKeys::generate().public_hex()),
            labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
            enrolled_at_ms: 1_700_000_000_000,
        }
    }

    #[tokio::test]
    async fn without_identity_or_join_token_the_error_says_how_to_enroll() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::for_host("web-01");
        config.data_dir = dir.path().to_path_buf();
        let err = load_or_enroll(&config, None).await.unwrap_err().to_string();
        assert!(
            err.contains("--join-token") && err.contains("token create --join"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_identity_for_another_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        identity().save(dir.path()).unwrap();
        let mut config = AgentConfig::for_host("web-02");
        config.data_dir = dir.path().to_path_buf();
        let err = load_or_enroll(&config, None).await.unwrap_err().to_string();
        assert!(
            err.contains("web-01") && err.contains("web-02") && err.contains("remove"),
            "{err}"
        );
        config.host = "web-01".into();
        assert_eq!(load_or_enroll(&config, None).await.unwrap().host, "web-01");
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_named_and_transient() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = enroll(&url, "token", "web-01", None).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    /// Serves one HTTP request with `status` and `body`; returns the URL and the request
    /// as received.
    async fn one_answer(
        status: &'static str,
        body: impl Into<String>,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let body: String = body.into();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= length || n == 0 {
                        break;
                    }
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (url, server)
    }

    #[tokio::test]
    async fn enrollment_sends_the_public_key_and_keeps_the_answer() {
        let coordinator_key = "11".repeat(32);
        let body = format!(
            r#"{{"host":"web-01","mqtt_username":"agent-web-01","mqtt_password":"pw","labels":{{"role":"web"}},"coordinator_key":"{coordinator_key}"}}"#
        );
        let (url, server) = one_answer("201 Created", body).await;
        let identity = enroll(&format!("{url}/"), "jt-123", "web-01", None)
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /api/v1/agents/enroll "),
            "{request}"
        );
        let public = identity.key().unwrap().public_hex();
        assert!(
            request.contains(&format!(r#""public_key":"{public}""#))
                && request.contains(r#""join_token":"jt-123""#)
                && request.contains(r#""host":"web-01""#),
            "{request}"
        );
        assert!(!request.contains(&identity.private_key), "{request}");
        assert_eq!(identity.mqtt_username, "agent-web-01");
        assert_eq!(identity.mqtt_password, "pw");
        assert_eq!(identity.coordinator_key, Some(coordinator_key));
        assert_eq!(identity.labels.get("role").map(String::as_str), Some("web"));
    }

    #[tokio::test]
    async fn a_refusal_gives_status_and_reason_and_is_not_retried() {
        let (url, server) =
            one_answer("409 Conflict", r#"{"error":"host already enrolled"}"#).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::for_host("web-01");
        config.data_dir = dir.path().to_path_buf();
        config.coordinator = Some(url.clone());
        config.join_token = Some("jt".into());
        let started = std::time::Instant::now();
        let err = load_or_enroll(&config, None).await.unwrap_err();
        server.await.unwrap();
        assert!(!err.is_transient());
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = err.to_string();
        assert!(
            text.contains("409") && text.contains("host already enrolled") && text.contains(&url),
            "{text}"
        );
        assert!(Identity::load(dir.path()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_server_error_is_transient() {
        let (url, server) = one_answer("503 Service Unavailable", "").await;
        let err = enroll(&url, "jt", "web-01", None).await.unwrap_err();
        server.await.unwrap();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[test]
    fn error_bodies_give_their_error_field() {
        assert_eq!(
            error_field(r#"{"error": "host already enrolled"}"#),
            "host already enrolled"
        );
        assert_eq!(error_field("  "), "no reason given");
        assert_eq!(error_field("bad gateway"), "bad gateway");
    }
}
