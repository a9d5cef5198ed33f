//! Enrolling virtual agents through the coordinator's real enrollment path, before they
//! connect: an admin token makes a join token (`POST /api/v1/join-tokens`), and each
//! virtual agent makes its own ed25519 key and enrolls with it
//! (`POST /api/v1/agents/enroll`), receiving its MQTT login. The coordinator then admits
//! only messages sealed with that key ([`vigil_shared::agent_auth`]).
//!
//! Each enrollment is one LMDB write transaction at the coordinator, so they run with
//! bounded concurrency ([`CONCURRENCY`] in flight). A host still enrolled from an earlier
//! run against the same coordinator is revoked first (which needs the admin token), then
//! enrolled again with a new key.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use vigil_shared::agent_auth::AgentKey;

/// Enrollment requests in flight at once.
pub const CONCURRENCY: usize = 32;

/// How long one REST request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a request that failed for a passing reason (connection, 429, 5xx) is tried.
const ATTEMPTS: u32 = 5;

/// One enrolled virtual agent: its key, its MQTT login at the coordinator's broker, and
/// the coordinator's public key (to check its acknowledgements with).
#[derive(Clone)]
pub struct AgentLogin {
    /// The coordinator's public key, 64 hex characters, if the enrollment named it.
    pub coordinator_key: Option<String>,
    /// The host it enrolled as.
    pub host: String,
    /// Its private ed25519 key, 64 hex characters.
    pub private_key: String,
    /// Its MQTT user name.
    pub username: String,
    /// Its MQTT password.
    pub password: String,
}

impl AgentLogin {
    /// Its key, for a [`vigil_shared::agent_auth::Sealer`].
    pub fn key(&self) -> AgentKey {
        match AgentKey::from_hex(&self.private_key) {
            Ok(key) => key,
            Err(e) => unreachable!("the key was made by AgentKey::generate: {e}"),
        }
    }
}

impl fmt::Debug for AgentLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentLogin")
            .field("coordinator_key", &self.coordinator_key)
            .field("host", &self.host)
            .field("private_key", &"<redacted>")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where and how to enroll.
#[derive(Debug, Clone)]
pub struct Enroller {
    /// The coordinator's REST address, `http://host:port`.
    pub http: String,
    /// An admin REST token: makes the join token (unless one is given) and revokes hosts
    /// left enrolled by an earlier run.
    pub admin_token: Option<String>,
    /// A join token to enroll with instead of making one.
    pub join_token: Option<String>,
    /// Print progress to stderr (for large fleets).
    pub progress: bool,
}

impl Enroller {
    /// Enrolls with the coordinator at `http` using its admin token, quietly.
    pub fn admin(http: &str, admin_token: Option<&str>) -> Enroller {
        Enroller {
            http: http.trim_end_matches('/').to_string(),
            admin_token: admin_token.map(str::to_string),
            join_token: None,
            progress: false,
        }
    }

    /// Enrolls every host of `hosts` (revoking earlier identities of the same names
    /// first) and returns their logins by host.
    pub async fn enroll(&self, hosts: &[String]) -> Result<HashMap<String, AgentLogin>, String> {
        if hosts.is_empty() {
            return Ok(HashMap::new());
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let started = Instant::now();
        let join_token =
            match (&self.join_token, &self.admin_token) {
                (Some(token), _) => token.clone(),
                (None, Some(admin)) => self.create_join_token(&client, admin, hosts.len()).await?,
                (None, None) => return Err(
                    "enrolling virtual agents needs an admin REST token (to make a join token) \
                     or a join token"
                        .into(),
                ),
            };
        if let Some(admin) = &self.admin_token {
            let earlier = self.enrolled(&client, admin, hosts).await?;
            if !earlier.is_empty() {
                if self.progress {
                    eprintln!(
                        "vigil-sim: revoking {} identities left enrolled by an earlier run",
                        earlier.len()
                    );
                }
                self.run_bounded(&earlier, |host| {
                    let client = client.clone();
                    let me = self.clone();
                    let admin = admin.clone();
                    async move { me.revoke(&client, &admin, &host).await.map(|_| None) }
                })
                .await?;
            }
        }
        if self.progress {
            eprintln!(
                "vigil-sim: enrolling {} virtual agents at {} ({CONCURRENCY} at a time)",
                hosts.len(),
                self.http
            );
        }
        let logins = self
            .run_bounded(hosts, |host| {
                let client = client.clone();
                let me = self.clone();
                let join_token = join_token.clone();
                async move { me.enroll_one(&client, &join_token, &host).await.map(Some) }
            })
            .await?;
        if self.progress {
            eprintln!(
                "vigil-sim: {} virtual agents enrolled in {:.1} s",
                logins.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(logins
            .into_iter()
            .map(|login| (login.host.clone(), login))
            .collect())
    }

    /// Runs `job` for every host, [`CONCURRENCY`] at a time, stopping at the first error;
    /// returns the logins the jobs returned.
    async fn run_bounded<F, Fut>(&self, hosts: &[String], job: F) -> Result<Vec<AgentLogin>, String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<AgentLogin>, String>> + Send + 'static,
    {
        let mut pending = hosts.iter();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut results = Vec::with_capacity(hosts.len());
        let mut first_error: Option<String> = None;
        let mut done = 0usize;
        let mut last_print = Instant::now();
        loop {
            while in_flight.len() < CONCURRENCY && first_error.is_none() {
                match pending.next() {
                    Some(host) => {
                        in_flight.spawn(job(host.clone()));
                    }
                    None => break,
                }
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            match joined {
                Ok(Ok(Some(login))) => results.push(login),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("enrollment task: {e}"));
                }
            }
            done += 1;
            if self.progress && last_print.elapsed() >= Duration::from_secs(2) {
                eprintln!("vigil-sim:   {done}/{}", hosts.len());
                last_print = Instant::now();
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// Makes a join token with `uses` uses (needs the admin token).
    pub async fn make_join_token(&self, uses: usize) -> Result<String, String> {
        let admin = self
            .admin_token
            .as_deref()
            .ok_or("making a join token needs an admin REST token")?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        self.create_join_token(&client, admin, uses).await
    }

    async fn create_join_token(
        &self,
        client: &reqwest::Client,
        admin: &str,
        uses: usize,
    ) -> Result<String, String> {
        let url = format!("{}/api/v1/join-tokens", self.http);
        let body = json!({
            "name": "vigil-sim",
            "uses": u32::try_from(uses).unwrap_or(u32::MAX),
            "ttl": "24h",
        });
        let (status, answer) = self
            .send(|| client.post(&url).bearer_auth(admin).json(&body))
            .await?;
        if status != StatusCode::CREATED {
            return Err(format!(
                "POST {url}: HTTP {status}: {answer} (is --token an admin token? see \
                 <data-dir>/admin.token)"
            ));
        }
        answer["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("POST {url}: no token in {answer}"))
    }

    /// The hosts of `hosts` that are enrolled and not revoked.
    async fn enrolled(
        &self,
        client: &reqwest::Client,
        admin: &str,
        hosts: &[String],
    ) -> Result<Vec<String>, String> {
        let url = format!("{}/api/v1/agents", self.http);
        let (status, answer) = self.send(|| client.get(&url).bearer_auth(admin)).await?;
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}: {answer}"));
        }
        let wanted: HashSet<&str> = hosts.iter().map(String::as_str).collect();
        Ok(answer["agents"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|a| a["revoked_at"].is_null())
            .filter_map(|a| a["host"].as_str())
            .filter(|h| wanted.contains(h))
            .map(str::to_string)
            .collect())
    }

    async fn revoke(
        &self,
        client: &reqwest::Client,
        admin: &str,
        host: &str,
    ) -> Result<(), String> {
        let url = format!("{}/api/v1/agents/{host}/revoke", self.http);
        let (status, answer) = self.send(|| client.post(&url).bearer_auth(admin)).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(format!("POST {url}: HTTP {status}: {answer}"))
        }
    }

    async fn enroll_one(
        &self,
        client: &reqwest::Client,
        join_token: &str,
        host: &str,
    ) -> Result<AgentLogin, String> {
        let url = format!("{}/api/v1/agents/enroll", self.http);
        let mut revoked = false;
        loop {
            let key = AgentKey::generate();
            let body = json!({
                "join_token": join_token,
                "host": host,
                "public_key": key.public_hex(),
            });
            let (status, answer) = self.send(|| client.post(&url).json(&body)).await?;
            match status {
                StatusCode::CREATED => {
                    let field = |name: &str| {
                        answer[name].as_str().map(str::to_string).ok_or_else(|| {
                            format!("POST {url} ({host}): no `{name}` in the answer")
                        })
                    };
                    return Ok(AgentLogin {
                        coordinator_key: answer["coordinator_key"].as_str().map(str::to_string),
                        host: host.to_string(),
                        private_key: key.private_hex(),
                        username: field("mqtt_username")?,
                        password: field("mqtt_password")?,
                    });
                }
                StatusCode::CONFLICT => match (&self.admin_token, revoked) {
                    // Enrolled meanwhile (or by an earlier run): revoke, then once more.
                    (Some(admin), false) => {
                        self.revoke(client, admin, host).await?;
                        revoked = true;
                    }
                    _ => {
                        return Err(format!(
                            "`{host}` is already enrolled at {}: give the admin --token so the \
                             simulator can revoke it, revoke it yourself \
                             (vigil-coordinator agent revoke {host}), or choose another \
                             --host-prefix",
                            self.http
                        ))
                    }
                },
                StatusCode::UNAUTHORIZED => {
                    return Err(format!(
                        "enrolling `{host}`: the join token was refused (unknown, used up, \
                         expired or revoked): {answer}"
                    ))
                }
                _ => return Err(format!("POST {url} ({host}): HTTP {status}: {answer}")),
            }
        }
    }

    /// Sends a request, retrying connection failures, 429 and 5xx a few times; returns
    /// the status and the JSON answer (null if it is not JSON).
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Value), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = request().send().await;
            let retry = match &outcome {
                Ok(r) => {
                    r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error()
                }
                Err(_) => true,
            };
            if retry && attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            let response = outcome.map_err(|e| format!("{}: {e}", self.http))?;
            let status = response.status();
            let answer = response.json::<Value>().await.unwrap_or(Value::Null);
            return Ok((status, answer));
        }
    }
}
