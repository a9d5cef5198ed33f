//! The REST client: the base URL, the token (from `VIGIL_TOKEN` or `--token-file`) and
//! TLS trust, requests to [`crate::routes`], and the API's refusals as typed errors
//! carrying the message the coordinator sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use vigil_shared::tls::ClientTls;

use crate::cli::Connection;
use crate::routes::{encode_segment, Route};

/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "VIGIL_TOKEN";

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No token anywhere.
    #[error("no REST API token: set {TOKEN_ENV} or pass --token-file (the coordinator writes its admin token to <data-dir>/admin.token; `vigil-coordinator token create` makes others)")]
    NoToken,
    /// The token file cannot be read or is empty.
    #[error("token file {path}: {problem}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The URL is not `http(s)://…`.
    #[error("--url `{0}` is not an http:// or https:// address")]
    Url(String),
    /// The CA file or the TLS setup.
    #[error("TLS: {0}")]
    Tls(String),
    /// The coordinator cannot be reached, or the answer was cut short.
    #[error("{url}: {problem}")]
    Transport {
        /// What was asked.
        url: String,
        /// What happened.
        problem: String,
    },
    /// The API refused: its status and its message.
    #[error("{status}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The `error` of the API's JSON body, or the body itself.
        message: String,
    },
    /// A bad argument, found before asking.
    #[error("{0}")]
    Usage(String),
    /// The answer is not what the API documents.
    #[error("unexpected answer from {url}: {problem}")]
    Answer {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A coordinator to talk to.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    timeout: Duration,
}

impl Client {
    /// Reads the token and sets up TLS as `connection` says.
    pub fn new(connection: &Connection) -> Result<Client, CtlError> {
        let token = token(
            std::env::var(TOKEN_ENV).ok(),
            connection.token_file.as_deref(),
        )?;
        let base = connection.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CtlError::Url(connection.url.clone()));
        }
        let tls = ClientTls::new(connection.ca_file.as_deref())
            .map_err(|e| CtlError::Tls(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls.config()).clone())
            .connect_timeout(Duration::from_secs(connection.timeout))
            .build()
            .map_err(|e| CtlError::Tls(e.to_string()))?;
        Ok(Client {
            http,
            base,
            token,
            timeout: Duration::from_secs(connection.timeout),
        })
    }

    /// The full URL of `path` with the `query` pairs whose value is given.
    pub fn url(&self, path: &str, query: &[(&str, Option<String>)]) -> String {
        let mut url = format!("{}{path}", self.base);
        let mut sep = '?';
        for (name, value) in query {
            if let Some(value) = value {
                url.push(sep);
                url.push_str(name);
                url.push('=');
                url.push_str(&encode_segment(value));
                sep = '&';
            }
        }
        url
    }

    /// Sends `route` at `path` (its template filled in) with `query` and an optional JSON
    /// `body`; the answer's JSON, or the API's refusal.
    pub async fn call(
        &self,
        route: Route,
        path: &str,
        query: &[(&str, Option<String>)],
        body: Option<&Value>,
    ) -> Result<(String, Value), CtlError> {
        let url = self.url(path, query);
        let mut request = self
            .request(route, &url)
            .timeout(self.timeout)
            .header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = async {
            let response = request.send().await.map_err(|e| transport(&url, e))?;
            let response = checked(response, &url).await?;
            response.text().await.map_err(|e| transport(&url, e))
        };
        let text = with_spinner(answer).await?;
        let json = serde_json::from_str(&text).map_err(|e| CtlError::Answer {
            url: url.clone(),
            problem: format!("not JSON: {e}"),
        })?;
        Ok((text, json))
    }

    /// Opens `route` as a stream (no overall timeout); the response once its headers
    /// arrived with a success status.
    pub async fn open_stream(
        &self,
        route: Route,
        query: &[(&str, Option<String>)],
    ) -> Result<(String, Response), CtlError> {
        let url = self.url(route.path, query);
        let response = self
            .request(route, &url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| transport(&url, e))?;
        Ok((url.clone(), checked(response, &url).await?))
    }

    fn request(&self, route: Route, url: &str) -> reqwest::RequestBuilder {
        let method = Method::from_bytes(route.method.as_bytes()).unwrap_or(Method::GET);
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(
                "user-agent",
                concat!("vigilctl/", env!("CARGO_PKG_VERSION")),
            )
    }
}

/// The token: `VIGIL_TOKEN` when set and not blank, else the first line of `file`.
/// Awaits `work`; past half a second (a large query, a slow coordinator), a spinner on
/// stderr shows it is still waiting. indicatif draws nothing when stderr is not a
/// terminal, so scripts and `--json` output see none.
async fn with_spinner<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return done,
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("waiting for the coordinator");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let done = work.await;
    spinner.finish_and_clear();
    done
}

fn token(env: Option<String>, file: Option<&Path>) -> Result<String, CtlError> {
    if let Some(token) = env.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Ok(token);
    }
    let path = file.ok_or(CtlError::NoToken)?;
    let text = std::fs::read_to_string(path).map_err(|e| CtlError::TokenFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(CtlError::TokenFile {
            path: path.to_path_buf(),
            problem: "it is empty".into(),
        });
    }
    Ok(token)
}

fn transport(url: &str, e: reqwest::Error) -> CtlError {
    // reqwest's Display leaves out the cause ("error sending request"): add the chain.
    let mut problem = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        problem.push_str(": ");
        problem.push_str(&cause.to_string());
        source = cause.source();
    }
    CtlError::Transport {
        url: url.to_string(),
        problem,
    }
}

/// `response` if its status is a success; else the API's refusal with its message.
async fn checked(response: Response, url: &str) -> Result<Response, CtlError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.map_err(|e| transport(url, e))?;
    Err(CtlError::Api {
        status,
        message: api_message(&text),
    })
}

/// The message of an API error body `{"ok":false,"error":"…","field":"…"}`, else the body
/// (cut to 500 characters).
fn api_message(body: &str) -> String {
    if let Ok(json) = serde_json::from_str::<Value>(body) {
        if let Some(error) = json["error"].as_str() {
            return match json["field"].as_str() {
                Some(field) => format!("{error} (field `{field}`)"),
                None => error.to_string(),
            };
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return "(no message)".into();
    }
    body.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_token_comes_before_the_file() {
        let dir = std::env::temp_dir().join(format!("vigilctl-token-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        assert_eq!(token(Some("env".into()), Some(&dir)).unwrap(), "env");
        assert_eq!(token(Some("  ".into()), Some(&dir)).unwrap(), "from-file");
        assert_eq!(token(None, Some(&dir)).unwrap(), "from-file");
        std::fs::write(&dir, "\n").unwrap();
        assert!(matches!(
            token(None, Some(&dir)),
            Err(CtlError::TokenFile { .. })
        ));
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(token(None, None), Err(CtlError::NoToken)));
    }

    #[test]
    fn an_api_error_shows_its_message_and_field() {
        assert_eq!(
            api_message(r#"{"ok":false,"error":"limit too big","field":"limit"}"#),
            "limit too big (field `limit`)"
        );
        assert_eq!(api_message(r#"{"ok":false,"error":"no"}"#), "no");
        assert_eq!(api_message("plain"), "plain");
        assert_eq!(api_message(""), "(no message)");
    }
}
