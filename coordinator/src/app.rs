//! Starting and stopping a whole coordinator: store, writer, broker, ingest, the deadman,
//! retention and the REST API. `main` uses it, and so do the end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vigil_shared::broker_url::BrokerUrl;

use crate::config::{BrokerMode, CoordinatorConfig};
use crate::http::{self, Api};
use crate::mqtt::broker::{self, BrokerError};
use crate::policies::{PolicyRegistry, RegistryError};
use crate::store::{Store, StoreError, StoreWriter, Write};
use crate::telemetry::Telemetry;

/// Why the coordinator could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The first admin token could not be made.
    #[error("REST API tokens: {0}")]
    Tokens(String),
    /// The embedded broker could not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The policy directory (or the stored API policies) could not be loaded.
    #[error(transparent)]
    Policies(#[from] RegistryError),
    /// Bundle publishing could not start (signing key, stored versions).
    #[error(transparent)]
    Bundles(#[from] crate::bundles::BundleStartError),
    /// The TLS certificate, key or CA could not be used.
    #[error(transparent)]
    Tls(#[from] vigil_shared::tls::TlsError),
    /// The coordinator's own MQTT client cannot be set up.
    #[error(transparent)]
    MqttClient(#[from] vigil_shared::mqtt::MissingTls),
    /// The alert routing file could not be used.
    #[error(transparent)]
    AlertRoutes(#[from] crate::alerts::routing::RoutesError),
    /// The REST port could not be bound.
    #[error("REST API cannot listen on {addr}: {source} (use --listen to pick another address)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running coordinator.
pub struct Coordinator {
    /// Where the REST API listens (with the real port if 0 was asked for).
    pub http_addr: SocketAddr,
    /// Whether the REST API (and the embedded broker) speak TLS.
    pub tls: bool,
    /// The broker agents should connect to (`mqtts://` when TLS is on).
    pub broker_url: BrokerUrl,
    /// A plaintext address of the embedded broker's front on loopback, for agents on this
    /// machine (the same as `broker_url` without TLS; `None` with an external broker).
    pub local_broker_url: Option<BrokerUrl>,
    /// The store (for in-process readers such as tests).
    pub store: Store,
    /// The coordinator's counters.
    pub telemetry: Arc<Telemetry>,
    /// The admin token file written on this start (the first start of a data dir).
    pub admin_token_file: Option<std::path::PathBuf>,
    writer: StoreWriter,
    writer_thread: ThreadHandle<()>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    front_stop: watch::Sender<bool>,
    front_tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    /// Makes sure `host` has an identity file in `data_dir` this coordinator admits,
    /// enrolling it directly (no join token) if not: how `vigil up` gives its in-process
    /// agent an identity. `coordinator_key` is this coordinator's bundle-signing key, hex.
    pub fn ensure_local_identity(
        &self,
        data_dir: &std::path::Path,
        host: &str,
        coordinator_key: &str,
    ) -> Result<(), String> {
        crate::security::local_agent::ensure_identity(
            &self.store,
            data_dir,
            host,
            Some(coordinator_key),
        )
    }

    /// Starts everything; returns once the REST API and the broker accept connections.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator, StartError> {
        if config.allow_plaintext_remote {
            tracing::warn!(
                "PLAINTEXT beyond loopback allowed (--allow-plaintext-remote): REST tokens, \
                 MQTT passwords and all traffic cross the network unencrypted"
            );
        }
        let store = {
            let dir = config.data_dir.join("lmdb");
            let map_size = config.map_size;
            tokio::task::spawn_blocking(move || Store::open(&dir, map_size))
                .await
                .map_err(|e| StoreError::Corrupt {
                    db: "env",
                    reason: format!("open task failed: {e}"),
                })??
        };
        let telemetry = Arc::new(Telemetry::new());
        crate::events::mirror::register_metrics(&telemetry);
        raise_open_files(&config, &telemetry);
        let policies = {
            let (dir, store, telemetry) = (
                config.policies_dir.clone(),
                store.clone(),
                telemetry.clone(),
            );
            tokio::task::spawn_blocking(move || PolicyRegistry::open(dir, store, telemetry))
                .await
                .map_err(|e| StoreError::Corrupt {
                    db: "policies",
                    reason: format!("policy load task failed: {e}"),
                })??
        };
        let alert_routes = Arc::new(match &config.alert_routes {
            Some(path) => {
                let routes = crate::alerts::routing::AlertRoutes::load(path)?;
                tracing::info!(file = %path.display(), routes = routes.len(), "alert routes loaded");
                routes
            }
            None => crate::alerts::routing::AlertRoutes::default(),
        });
        let (ack_notes, ack_notes_rx) = tokio::sync::mpsc::channel(crate::mqtt::acks::NOTES_QUEUE);
        let (writer, writer_thread) =
            StoreWriter::start_with_acks(store.clone(), telemetry.clone(), Some(ack_notes));

        let server_tls = match &config.tls {
            Some(files) => Some(crate::security::tls::ServerTls::load(
                &files.cert,
                &files.key,
            )?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        // The MQTT listeners stop first, so that nothing arrives that ingest will not take.
        let (front_stop, front_stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Started once ingest has subscribed to every agent channel: a message published
        // before would be acknowledged by the broker into nothing.
        let mut fronts: Vec<Box<dyn FnOnce() -> tokio::task::JoinHandle<()> + Send>> = Vec::new();

        // On the embedded broker the coordinator logs in with a password made now, on its
        // plaintext loopback address; on an external one, with the configured credentials
        // (over TLS for an mqtts:// broker).
        let broker_url = config.broker_url();
        let mut local_front_url = None;
        let mut ingest_backlog = None;
        let mut ingest_mailroom = None;
        let mut ingest_link = None;
        // On the embedded broker the front sees who subscribes to the JSON metrics.
        let mut metrics_audience = None;
        let (client_url, mqtt_username, mqtt_password) = match config.broker {
            BrokerMode::Embedded { listen } => {
                let password = crate::security::agents::generate_password();
                // rumqttd listens on loopback for the coordinator's own clients; every
                // client from outside goes through the front on the public address (over
                // TLS when it is on), which hands it to rumqttd's router in-process.
                let front_listener =
                    tokio::net::TcpListener::bind(listen)
                        .await
                        .map_err(|source| BrokerError::Bind {
                            addr: listen,
                            source,
                        })?;
                let broker_listen = broker::free_loopback_address()?;
                let internal = password.clone();
                let broker_telemetry = telemetry.clone();
                let (embedded, link) = tokio::task::spawn_blocking(move || {
                    broker::start(broker_listen, internal, broker_telemetry)
                })
                .await
                .map_err(|e| BrokerError::Thread(std::io::Error::other(e.to_string())))??;
                ingest_backlog = Some(Arc::clone(&embedded.backlog));
                ingest_mailroom = Some(embedded.mailroom.clone());
                ingest_link = Some(link);
                let audience = crate::events::audience::Audience::new(
                    telemetry.json_mirror_metrics_listeners.clone(),
                );
                metrics_audience = Some(audience.clone());
                let front = crate::mqtt::front::Front::new(
                    embedded,
                    broker::BrokerAuth::new(store.clone(), telemetry.clone()),
                    config.mqtt_limits,
                    telemetry.clone(),
                    audience,
                );
                let public = front_listener.local_addr().unwrap_or(listen);
                tracing::info!(%public, broker = %broker_listen, "MQTT front before the embedded broker");
                // Clients on this machine (`vigil up`'s agent) get a plaintext front on loopback
                // when the public one speaks TLS.
                let local_front = match &server_tls {
                    None => {
                        let (front, stop) = (front.clone(), front_stop_rx.clone());
                        fronts.push(Box::new(move || {
                            tokio::spawn(front.run(front_listener, None, stop))
                        }));
                        broker::loopback_url(public)
                    }
                    Some(tls) => {
                        let local = broker::free_loopback_address()?;
                        let local =
                            tokio::net::TcpListener::bind(local)
                                .await
                                .map_err(|source| BrokerError::Bind {
                                    addr: local,
                                    source,
                                })?;
                        let url = broker::loopback_url(local.local_addr().unwrap_or(listen));
                        let (public_front, stop) = (front.clone(), front_stop_rx.clone());
                        let acceptor = tls.acceptor();
                        fronts.push(Box::new(move || {
                            tokio::spawn(public_front.run(front_listener, Some(acceptor), stop))
                        }));
                        let (local_front, stop) = (front.clone(), front_stop_rx.clone());
                        fronts.push(Box::new(move || {
                            tokio::spawn(local_front.run(local, None, stop))
                        }));
                        url
                    }
                };
                local_front_url = Some(local_front);
                (
                    broker::loopback_url(broker_listen),
                    Some(crate::security::agents::COORDINATOR_MQTT_USER.to_string()),
                    Some(password),
                )
            }
            _ => (
                broker_url.clone(),
                config.mqtt_username.clone(),
                config.mqtt_password.clone(),
            ),
        };
        let client_tls = if client_url.tls {
            Some(vigil_shared::tls::ClientTls::new(config.tls_ca.as_deref())?)
        } else {
            None
        };
        let client_options = |suffix: &str| {
            vigil_shared::mqtt::client_options(
                &format!("vigil-coordinator-{}{suffix}", std::process::id()),
                &client_url,
                mqtt_username.as_deref(),
                mqtt_password.as_deref(),
                client_tls.as_ref(),
            )
        };
        // Ingest: one fixed client id and, on an external broker, a persistent session, so
        // that the broker keeps (and sends again) what arrived while the coordinator was
        // down; deliveries are acknowledged only once stored (on the embedded broker they
        // come at QoS 0: see `mqtt::ingest::Hop`).
        let mut options = vigil_shared::mqtt::client_options(
            INGEST_CLIENT_ID,
            &client_url,
            mqtt_username.as_deref(),
            mqtt_password.as_deref(),
            client_tls.as_ref(),
        )?;
        // (On the embedded broker the session lives and dies with this process: nothing
        // to resume, and rumqttd's session resumption is best left out of the way.)
        options
            .set_clean_session(!matches!(config.broker, BrokerMode::Embedded { .. }))
            .set_manual_acks(true)
            .set_keep_alive(crate::mqtt::ingest::KEEP_ALIVE)
            .set_inflight(1000);
        let (metrics_tap, mirror_tasks) = crate::events::mirror::start(
            client_options("-json")?,
            config.json_mirror.clone(),
            store.feed().clone(),
            telemetry.clone(),
            metrics_audience,
            stop_rx.clone(),
        );
        tasks.extend(mirror_tasks);
        let keys = crate::bundles::load_key(config.bundle_key.clone()).await?;
        let (publisher, eventloop) = crate::mqtt::publisher::connect(options, Arc::clone(&keys));
        let mut subscribed = publisher.connects();
        // Handshakes: a persistent session on an external broker too (fixed client id), so
        // Hellos sent while the coordinator was down are answered when it is back.
        let mut handshake_options = vigil_shared::mqtt::client_options(
            HANDSHAKE_CLIENT_ID,
            &client_url,
            mqtt_username.as_deref(),
            mqtt_password.as_deref(),
            client_tls.as_ref(),
        )?;
        handshake_options.set_clean_session(!matches!(config.broker, BrokerMode::Embedded { .. }));
        let sessions = crate::mqtt::handshake::SharedSessionKeys::default();
        let (handshakes_subscribed, mut handshakes_ready) = watch::channel(false);
        tasks.push(tokio::spawn(crate::mqtt::handshake::run(
            handshake_options,
            store.clone(),
            sessions.clone(),
            Arc::clone(&keys),
            telemetry.clone(),
            handshakes_subscribed,
            stop_rx.clone(),
        )));
        let deadman = crate::deadman::Deadman::new(&config.deadman);
        tasks.push(tokio::spawn(crate::mqtt::ingest::run(
            publisher.clone(),
            eventloop,
            match ingest_link {
                Some(link) => crate::mqtt::ingest::Hop::Embedded(link),
                None => crate::mqtt::ingest::Hop::External,
            },
            (0..config.ingest_threads)
                .map(|_| {
                    crate::mqtt::ingest::Gate::new(
                        store.clone(),
                        sessions.clone(),
                        Arc::clone(&keys),
                    )
                })
                .collect(),
            writer.clone(),
            telemetry.clone(),
            crate::mqtt::ingest::Listeners {
                metrics_tap,
                deadman: deadman.clone(),
                backlog: ingest_backlog,
                mailroom: ingest_mailroom,
            },
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::deadman::run(
            deadman,
            store.clone(),
            writer.clone(),
            telemetry.clone(),
            stop_rx.clone(),
        )));
        if let Some(url) = config.deadman.webhook.clone() {
            tasks.extend(crate::deadman::webhook::start(
                url,
                store.feed().clone(),
                telemetry.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.push(tokio::spawn(crate::mqtt::acks::run(
            client_options("-acks")?,
            Arc::clone(&keys),
            ack_notes_rx,
            stop_rx.clone(),
        )));
        let budgets = crate::budgets::Budgets::new(config.lease_ttl);
        let lease_options = client_options("-leases")?;
        let lease_keys = Arc::clone(&keys);
        if !fronts.is_empty() {
            let ready = tokio::time::timeout(Duration::from_secs(10), async {
                let ingest = subscribed.wait_for(|connects| *connects > 0).await.is_ok();
                let handshakes = handshakes_ready.wait_for(|ready| *ready).await.is_ok();
                ingest && handshakes
            })
            .await;
            if !matches!(ready, Ok(true)) {
                tracing::error!(
                    "ingest or the handshake connection did not subscribe to the embedded \
                     broker within 10 s; opening the MQTT listener anyway"
                );
            }
        }
        let front_tasks: Vec<_> = fronts.into_iter().map(|start| start()).collect();
        let coordinator_key = keys.public_hex();
        let bundles = crate::bundles::start(
            config.bundles_dir.clone(),
            keys,
            store.clone(),
            telemetry.clone(),
            publisher.clone(),
        )
        .await?;
        let policies = Arc::new(policies);
        // Lease requests are answered once the bundles are built: the budgets they hold
        // are the coordinator's to enforce (agents ask again until answered).
        tasks.push(tokio::spawn(crate::budgets::service::run(
            budgets.clone(),
            lease_options,
            lease_keys,
            store.clone(),
            Arc::new(BudgetCatalog {
                bundles: bundles.clone(),
                policies: Arc::clone(&policies),
            }),
            telemetry.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::bundles::watch::run(
            bundles.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::bundles::drift_feed::run(
            store.clone(),
            bundles.clone(),
            writer.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(retention(
            writer.clone(),
            config.retention,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(audit_retention(
            writer.clone(),
            config.audit_retention,
            stop_rx.clone(),
        )));

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let admin_token_file = crate::security::tokens::bootstrap_admin(
            &store,
            &config.data_dir,
            vigil_shared::time::now_ms(),
        )
        .map_err(StartError::Tokens)?;
        if let Some(path) = &admin_token_file {
            tracing::warn!(
                file = %path.display(),
                "created the first REST API token (role admin); send it as `Authorization: Bearer <token>`"
            );
        }
        let auth = Arc::new(http::auth::Auth::new(
            store.clone(),
            telemetry.clone(),
            !config.metrics_auth,
            config.auth_failure_limit,
        ));
        let routes = http::routes(Arc::new(Api {
            store: store.clone(),
            writer: writer.clone(),
            telemetry: telemetry.clone(),
            policies,
            publisher,
            bundles,
            auth,
            coordinator_key,
            alert_routes,
            budgets,
        }));
        tasks.push(tokio::spawn(crate::http::server::serve(
            routes,
            listener,
            server_tls.as_ref().map(|tls| tls.acceptor()),
            config.http_limits,
            telemetry.clone(),
            stop_rx.clone(),
        )));
        tracing::info!(
            http = %http_addr,
            tls = server_tls.is_some(),
            broker = %broker_url,
            data_dir = %config.data_dir.display(),
            "vigil-coordinator {} ready",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Coordinator {
            http_addr,
            tls: server_tls.is_some(),
            broker_url,
            local_broker_url: local_front_url,
            store,
            telemetry,
            admin_token_file,
            writer,
            writer_thread,
            stop,
            front_stop,
            front_tasks,
            tasks,
        })
    }

    /// Stops ingest and the REST API, and waits until everything received is written:
    /// first the MQTT listeners (agents keep what they could not send), then, after a
    /// moment for ingest to take what the broker already holds, everything else.
    pub async fn stop(self) {
        let _ = self.front_stop.send(true);
        for task in self.front_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Err(e) = self.writer.flush().await {
            tracing::error!("final store flush failed: {e}");
        }
        drop(self.writer);
        // The writer thread ends when the last handle is gone; do not wait on handles that
        // a stuck connection might still hold.
        drop(self.writer_thread);
    }
}

/// The client id of the coordinator's ingest connection: fixed, so that its persistent
/// session on an external broker survives restarts. (Two coordinators on one broker
/// would push each other off; run one.)
pub(crate) const INGEST_CLIENT_ID: &str = "vigil-coordinator";

/// The client id of the coordinator's handshake connection ([`crate::mqtt::handshake`]),
/// fixed for the same reason.
pub(crate) const HANDSHAKE_CLIENT_ID: &str = "vigil-coordinator-handshakes";

/// Lifts the soft file-descriptor limit to what the connection bounds need: one per
/// MQTT connection (the front hands it to the broker in-process), one per REST
/// connection, and room for LMDB, logs, the coordinator's own MQTT clients and the rest.
fn raise_open_files(config: &CoordinatorConfig, telemetry: &Telemetry) {
    let needed = config.mqtt_limits.max_connections as u64
        + config.http_limits.max_connections as u64
        + 1024;
    match vigil_service::limits::raise_open_files(needed) {
        Ok(limit) => {
            telemetry
                .open_files_limit
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
            if limit < needed {
                let agents =
                    limit.saturating_sub(1024 + config.http_limits.max_connections as u64) / 2;
                tracing::warn!(
                    limit,
                    needed,
                    "the open-file limit (hard RLIMIT_NOFILE) is below what the connection \
                     bounds need: about {agents} agents can connect (raise LimitNOFILE, or \
                     `ulimit -Hn`)"
                );
            } else {
                tracing::info!(limit, "open-file limit");
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// When a retention job runs: once a minute, or ten times per retention window if that
/// is shorter (at most once a second).
struct RetentionPasses {
    ticker: tokio::time::Interval,
    retention_ms: i64,
}

impl RetentionPasses {
    fn new(retention: Duration) -> RetentionPasses {
        let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        RetentionPasses {
            ticker: tokio::time::interval(every),
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Waits for the next pass; returns its cut-off (epoch ms): what is older goes.
    async fn next(&mut self) -> i64 {
        self.ticker.tick().await;
        vigil_shared::time::now_ms().saturating_sub(self.retention_ms)
    }
}

/// Deletes metric history older than `retention` ([`RetentionPasses`]).
async fn retention(writer: StoreWriter, retention: Duration, mut stop: watch::Receiver<bool>) {
    let mut passes = RetentionPasses::new(retention);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            before_ms = passes.next() => {
                match writer.send_and_wait(|reply| Write::Prune { before_ms, reply: Some(reply) }).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "retention removed old metric history"),
                    Err(e) => tracing::warn!("retention pass failed: {e}"),
                }
            }
        }
    }
}

/// Removes audit records (actions, policy events, feed entries) older than `retention`
/// ([`RetentionPasses`]), in chunks of [`crate::store::audit::DEFAULT_CHUNK`] records so
/// that other writes wait at most one chunk.
async fn audit_retention(
    writer: StoreWriter,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut passes = RetentionPasses::new(retention);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            before_ms = passes.next() => {
                let started = std::time::Instant::now();
                let pass = writer.prune_audit(before_ms, crate::store::audit::DEFAULT_CHUNK);
                // A pass stops with the coordinator (the next one starts where it left).
                let pass = tokio::select! {
                    _ = stop.changed() => return,
                    pass = pass => pass,
                };
                match pass {
                    Ok(pruned) if pruned.total() == 0 => {
                        tracing::debug!(kept = pruned.kept, "audit retention: nothing to remove");
                    }
                    Ok(pruned) => tracing::info!(
                        actions = pruned.actions,
                        events = pruned.events,
                        feed = pruned.feed,
                        kept = pruned.kept,
                        took_ms = started.elapsed().as_millis() as u64,
                        "audit retention removed records older than {}",
                        vigil_shared::time::format_duration(retention)
                    ),
                    Err(e) => tracing::warn!("audit retention pass failed: {e}"),
                }
            }
        }
    }
}

/// The coordinator's copies of budgets, for the lease service: the published bundles,
/// then its own policies.
struct BudgetCatalog {
    bundles: Arc<crate::bundles::Bundles>,
    policies: Arc<PolicyRegistry>,
}

impl crate::budgets::authority::Catalog for BudgetCatalog {
    fn groups(
        &self,
    ) -> Vec<(
        String,
        Vec<vigil_shared::wire::Tag>,
        Arc<crate::budgets::authority::GroupBudgets>,
    )> {
        self.bundles.group_budgets()
    }

    fn coordinator_budget(
        &self,
        name: &str,
    ) -> Option<Option<vigil_shared::policy::budget::Budget>> {
        self.policies
            .get(name)
            .map(|registered| registered.policy.budget.clone())
    }
}
