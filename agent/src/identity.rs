//! The agent's identity: its own ed25519 key (every message it publishes is sealed with
//! it, see [`vigil_shared::agent_auth`]), its MQTT login, the coordinator's public signing
//! key and the labels its join token gave it.
//!
//! An agent gets its identity once, by enrolling at the coordinator with a join token
//! ([`enroll`]): it makes a key, sends the public half, and receives its MQTT login. The
//! identity is kept in `{data_dir}/identity.json` (mode 0600; a file others can read is
//! refused) and reused on every later start ([`load_or_enroll`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vigil_shared::agent_auth::AgentKey;
use vigil_shared::config_file::file_mode;
use vigil_shared::tls::ClientTls;

use crate::config::AgentConfig;

/// The identity file's name inside the data directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// The path of the enrollment endpoint, after the coordinator's URL.
pub const ENROLL_PATH: &str = "/api/v1/agents/enroll";

/// How long one enrollment request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`load_or_enroll`] keeps retrying an enrollment that failed for a passing
/// reason (coordinator unreachable or failing with 5xx).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// What an enrolled agent is: kept in [`IDENTITY_FILE`].
#[derive(Serialize, Deserialize, Clone)]
pub struct Identity {
    /// The host name it enrolled as (and publishes under).
    pub host: String,
    /// The agent's private ed25519 key, 64 hex characters.
    pub private_key: String,
    /// Its MQTT user name at the coordinator's broker.
    pub mqtt_username: String,
    /// Its MQTT password at the coordinator's broker.
    pub mqtt_password: String,
    /// The coordinator's public signing key (64 hex), for commands and policy bundles.
    #[serde(default)]
    pub coordinator_key: Option<String>,
    /// Labels the join token gave this host.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it enrolled, epoch ms.
    pub enrolled_at_ms: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("host", &self.host)
            .field("private_key", &"<redacted>")
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &"<redacted>")
            .field("coordinator_key", &self.coordinator_key)
            .field("labels", &self.labels)
            .field("enrolled_at_ms", &self.enrolled_at_ms)
            .finish()
    }
}

/// Why the agent has no usable identity.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The identity file could not be read.
    #[error("cannot read identity file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file could not be written.
    #[error("cannot write identity file {path}: {source}")]
    Write {
        /// The file (or its directory).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file holds the private key but others may read (or write) it.
    #[error(
        "identity file {path} holds this agent's private key but its mode is {mode:04o}, so \
         other users can read it: run `chmod 600 {path}` (and keep it owned by the user Vigil \
         runs as)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The identity file is not an identity.
    #[error("identity file {path} is malformed: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The identity's private key is not a key.
    #[error("the identity of host `{host}` has an unusable private key: {problem}")]
    BadKey {
        /// The identity's host.
        host: String,
        /// What is wrong.
        problem: String,
    },
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

impl Identity {
    /// Where the identity file of `data_dir` is.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(IDENTITY_FILE)
    }

    /// Reads the identity from `data_dir` (`None` if there is none yet), refusing a file
    /// that others can read.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = Identity::path(data_dir);
        let read_error = |source| IdentityError::Read {
            path: path.clone(),
            source,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let mode = file_mode(&path).map_err(read_error)?;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed { path, mode });
        }
        let identity: Identity =
            serde_json::from_str(&text).map_err(|e| IdentityError::Malformed {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        if let Err(e) = vigil_shared::validate::host_name(&identity.host) {
            return Err(IdentityError::Malformed {
                path,
                problem: format!("host: {}", e.problem),
            });
        }
        if let Err(e) = AgentKey::from_hex(&identity.private_key) {
            return Err(IdentityError::Malformed {
                path,
                problem: format!("private_key: {e}"),
            });
        }
        Ok(Some(identity))
    }

    /// Writes the identity to `data_dir` (created if missing) atomically, mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = Identity::path(data_dir);
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Write { path, source }
        };
        std::fs::create_dir_all(data_dir).map_err(write_error(data_dir))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| IdentityError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let temp = data_dir.join(format!(".{IDENTITY_FILE}.{}.tmp", std::process::id()));
        let written =
            write_private(&temp, text.as_bytes()).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(write_error(&path)(e));
        }
        Ok(())
    }

    /// The agent's signing key.
    pub fn key(&self) -> Result<AgentKey, IdentityError> {
        AgentKey::from_hex(&self.private_key).map_err(|e| IdentityError::BadKey {
            host: self.host.clone(),
            problem: e.to_string(),
        })
    }
}

/// Writes `bytes` to a new file only its owner may read, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // The mode above applies only to a new file; a leftover temp file gets it too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// The enrollment request's body.
#[derive(Serialize)]
struct EnrollRequest<'a> {
    join_token: &'a str,
    host: &'a str,
    public_key: String,
}

/// The coordinator's answer to a successful enrollment.
#[derive(Deserialize)]
struct EnrollAnswer {
    host: String,
    mqtt_username: String,
    mqtt_password: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    coordinator_key: Option<String>,
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
    let unreachable = |e: reqwest::Error| match tls_refusal(&e) {
        Some(problem) => IdentityError::Untrusted {
            url: url.clone(),
            problem,
        },
        None => IdentityError::Unreachable {
            url: url.clone(),
            problem: error_chain(&e),
        },
    };
    let mut client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(tls) = tls {
        client = client.use_preconfigured_tls((*tls.config()).clone());
    }
    let client = client.build().map_err(unreachable)?;
    let response = client
        .post(&url)
        .json(&EnrollRequest {
            join_token,
            host,
            public_key: key.public_hex(),
        })
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if status != reqwest::StatusCode::CREATED {
        return Err(IdentityError::Refused {
            url,
            status: status.as_u16(),
            message: error_field(&body),
        });
    }
    let bad_answer = |problem: String| IdentityError::BadAnswer {
        url: url.clone(),
        problem,
    };
    let answer: EnrollAnswer =
        serde_json::from_str(&body).map_err(|e| bad_answer(e.to_string()))?;
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
/// I/O errors hide the error they wrap from `source()` (and reqwest nests them), so each
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

/// An error and its causes, joined (reqwest's own message is terse).
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
    use std::os::unix::fs::PermissionsExt as _;

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

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        assert!(Identity::load(&data_dir).unwrap().is_none());
        let original = identity();
        original.save(&data_dir).unwrap();
        let mode = std::fs::metadata(Identity::path(&data_dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Identity::load(&data_dir).unwrap().unwrap();
        assert_eq!(loaded.host, original.host);
        assert_eq!(loaded.private_key, original.private_key);
        assert_eq!(loaded.mqtt_password, original.mqtt_password);
        assert_eq!(loaded.coordinator_key, original.coordinator_key);
        assert_eq!(loaded.labels, original.labels);
        assert_eq!(loaded.enrolled_at_ms, original.enrolled_at_ms);
        assert_eq!(
            loaded.key().unwrap().public_hex(),
            original.key().unwrap().public_hex()
        );
        // Saving again replaces the file and leaves no temp file behind.
        loaded.save(&data_dir).unwrap();
        let names: Vec<_> = std::fs::read_dir(&data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(IDENTITY_FILE)]);
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let original = identity();
        original.save(dir.path()).unwrap();
        let path = Identity::path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0640") && err.contains("chmod 600") && err.contains(IDENTITY_FILE),
            "{err}"
        );
        assert!(!err.contains(&original.private_key), "{err}");
    }

    #[test]
    fn a_malformed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = Identity::path(dir.path());
        write_private(&path, b"{\"host\": \"h\"}").unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(IDENTITY_FILE) && err.contains("malformed"),
            "{err}"
        );
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let identity = identity();
        let text = format!("{identity:?}");
        assert!(!text.contains(&identity.private_key), "{text}");
        assert!(!text.contains(&identity.mqtt_password), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("web-01"),
            "{text}"
        );
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
