//! The coordinator's own Prometheus metrics, served at `GET /metrics`.
//!
//! Names follow Prometheus conventions: a `vigil_` prefix, `_total` on counters, seconds
//! and bytes as units.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use vigil_shared::topics::AgentChannel;

/// Every metric the coordinator exports.
pub struct Telemetry {
    registry: Registry,
    /// `vigil_mqtt_messages_total{channel}`: agent messages accepted.
    pub mqtt_messages: IntCounterVec,
    /// `vigil_mqtt_messages_rejected_total{channel,reason}`: agent messages refused.
    pub mqtt_rejected: IntCounterVec,
    /// `vigil_samples_stored_total{source}`: samples written to LMDB.
    pub samples_stored: IntCounterVec,
    /// `vigil_http_ingest_rejected_total{field}`: HTTP ingest bodies refused.
    pub http_ingest_rejected: IntCounterVec,
    /// `vigil_store_errors_total{reason}`: failed store writes.
    pub store_errors: IntCounterVec,
    /// `vigil_http_requests_total{method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `vigil_http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// `vigil_store_commits_total`: write transactions the store writer committed.
    pub store_commits: prometheus::IntCounter,
    /// `vigil_store_commit_writes_total`: writes in those transactions (per commit: this
    /// over `vigil_store_commits_total`).
    pub store_commit_writes: prometheus::IntCounter,
    /// `vigil_store_commit_duration_seconds`: applying and committing one transaction,
    /// the flush to disk included.
    pub store_commit_duration: prometheus::Histogram,
    /// `vigil_hosts_online`: hosts currently online.
    pub hosts_online: IntGauge,
    /// `vigil_hosts_known`: hosts ever seen.
    pub hosts_known: IntGauge,
    /// `vigil_store_map_size_bytes`: the LMDB map's current size.
    pub store_map_size_bytes: IntGauge,
    /// `vigil_store_file_bytes`: the LMDB data file's size (its highest page in use).
    pub store_file_bytes: IntGauge,
    /// `vigil_store_used_bytes`: the pages of that file holding data; the rest are free
    /// pages LMDB reuses before it grows the file.
    pub store_used_bytes: IntGauge,
    /// `vigil_policy_load_errors_total{source}`: policy sets that failed to load
    /// (`source="coordinator"`: the `--policies` directory, or a stored API policy).
    pub policy_load_errors: IntCounterVec,
    /// `vigil_agent_policy_load_errors{host}`: failed policy loads each agent reported
    /// in its status (set when `/metrics` is scraped).
    pub agent_policy_load_errors: IntGaugeVec,
    /// `vigil_metric_batches_missing_total`: metric batches an agent dropped (its full
    /// buffer dropped the oldest) before the coordinator stored them.
    pub batches_missing: prometheus::IntCounter,
    /// `vigil_http_auth_failures_total{reason}`: REST requests refused by the token check.
    pub http_auth_failures: IntCounterVec,
    /// `vigil_actions_total{state}`: action transitions stored in the audit trail (new
    /// ones only; redeliveries are not counted).
    pub actions: IntCounterVec,
    /// `vigil_mqtt_messages_duplicate_total{channel}`: sealed agent messages received a
    /// second time (an MQTT redelivery), or an earlier connection's last will arriving
    /// after the agent reconnected; dropped.
    pub mqtt_duplicates: IntCounterVec,
    /// `vigil_mqtt_auth_failures_total{reason}`: logins the embedded broker refused.
    pub mqtt_auth_failures: IntCounterVec,
    /// `vigil_agent_handshakes_total{outcome}`: session key handshakes (Hellos), by
    /// outcome (`accepted` or the refusal's reason).
    pub agent_handshakes: IntCounterVec,
    /// `vigil_agent_enrollments_total{result}`: enrollment requests, by outcome.
    pub enrollments: IntCounterVec,
    /// `vigil_connections_refused_total{listener,reason}`: connections closed at once
    /// because a bound was reached.
    pub connections_refused: IntCounterVec,
    /// `vigil_mqtt_acl_refusals_total{role,reason}`: MQTT connections the broker's front
    /// closed for a packet the login may not send.
    pub mqtt_acl_refusals: IntCounterVec,
    /// `vigil_open_files_limit`: the file descriptors the process may hold.
    pub open_files_limit: IntGauge,
    /// `vigil_tls_handshake_failures_total{listener,reason}`: connections dropped because
    /// their TLS handshake failed (a plaintext client, a client that does not trust our
    /// certificate) or timed out.
    pub tls_handshake_failures: IntCounterVec,
    /// `vigil_json_mirror_messages_total{stream}`: JSON messages published for
    /// integrations.
    pub json_mirror_messages: IntCounterVec,
    /// `vigil_json_mirror_dropped_total{stream}`: JSON messages dropped because the mirror
    /// fell behind.
    pub json_mirror_dropped: IntCounterVec,
    /// `vigil_json_mirror_metrics_listeners`: connections on the embedded broker
    /// subscribed to the `metrics` JSON stream.
    pub json_mirror_metrics_listeners: IntGauge,
    /// `vigil_mqtt_mail_dropped_total{reason}`: messages for agents the embedded broker
    /// dropped (a session's queue full, a session away forgotten).
    pub mqtt_mail_dropped: IntCounterVec,
    /// `vigil_mqtt_front_waits_total{outcome}`: times an agent's connection on the
    /// embedded broker stopped reading because ingest was far behind.
    pub mqtt_front_waits: IntCounterVec,
    /// `vigil_http_requests_rejected_total{field,route}`: REST requests refused because a
    /// parameter or body field was out of range or unreadable (a time, a TTL, a limit);
    /// `route` is the route template, `field` one of a fixed set of names (`other` for
    /// the rest), so the label values stay few.
    pub http_rejected: IntCounterVec,
    /// `vigil_delivery_redelivered_total{stream,outcome}`: queued agent messages not
    /// stored because the store already had them (`duplicate`) or they were too far
    /// ahead of what it had (`ahead`: the agent sends them again).
    pub delivery_redelivered: IntCounterVec,
    /// `vigil_agent_clock_skewed_total{channel}`: agent messages sealed more than five
    /// minutes from the coordinator's clock (stored; the skew is reported).
    pub clock_skewed: IntCounterVec,
    /// `vigil_mqtt_deliveries_unacknowledged_total`: MQTT deliveries left unacknowledged
    /// to the broker because the store could not take them (the broker and the agent
    /// send them again).
    pub mqtt_unacknowledged: prometheus::IntCounter,
    /// `vigil_audit_pruned_total{kind}`: audit records removed by the audit retention
    /// (`action`: whole action records, `event`: policy events, `feed`: feed entries).
    pub audit_pruned: IntCounterVec,
    /// `vigil_alertmanager_alerts_total{outcome}`: alerts received from Alertmanager, by
    /// what became of them (see [`ALERT_OUTCOMES`]).
    pub alertmanager_alerts: IntCounterVec,
    /// `vigil_hosts_silent_total`: hosts found silent by the deadman (their agent said
    /// online, but no status or sample came for `--silent-after` intervals).
    pub hosts_silent_total: prometheus::IntCounter,
    /// `vigil_hosts_silent`: hosts silent now.
    pub hosts_silent: IntGauge,
    /// `vigil_deadman_webhooks_total{result}`: silence events POSTed to
    /// `--silent-webhook` (`sent`, `failed`, `dropped`).
    pub deadman_webhooks: IntCounterVec,
}

/// The outcomes `vigil_alertmanager_alerts_total` counts: a firing alert `routed` to an
/// action, a `duplicate` (a repeat of one already routed, or an end already recorded),
/// `unrouted` (no route matches it), `refused` (its route gives no usable host or
/// target, the host has no agent, or the command could not be sent); a `resolved` alert
/// recorded against its action, or `resolved_unknown` (no action was run for it).
pub const ALERT_OUTCOMES: [&str; 6] = [
    "routed",
    "duplicate",
    "unrouted",
    "refused",
    "resolved",
    "resolved_unknown",
];

impl Telemetry {
    /// Creates and registers every metric.
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
            c
        };
        let mqtt_messages = counter(
            "vigil_mqtt_messages_total",
            "Agent messages accepted from MQTT, by channel",
            &["channel"],
        );
        let mqtt_rejected = counter(
            "vigil_mqtt_messages_rejected_total",
            "Agent messages refused (malformed, unknown protocol version, invalid, host mismatch, \
             unknown or revoked agent, bad signature or MAC, replayed, missing delivery header, \
             unknown or replaced session key, replayed handshake)",
            &["channel", "reason"],
        );
        let samples_stored = counter(
            "vigil_samples_stored_total",
            "Metric samples written to the store, by source",
            &["source"],
        );
        let http_ingest_rejected = counter(
            "vigil_http_ingest_rejected_total",
            "HTTP ingest bodies refused, by offending field",
            &["field"],
        );
        let store_errors = counter(
            "vigil_store_errors_total",
            "Store writes that failed, by reason",
            &["reason"],
        );
        let http_requests = counter(
            "vigil_http_requests_total",
            "HTTP requests served, by method, route and status code",
            &["method", "route", "status"],
        );
        let http_auth_failures = counter(
            "vigil_http_auth_failures_total",
            "REST requests refused by the token check (missing, malformed, unknown, revoked, forbidden, rate_limited)",
            &["reason"],
        );
        let policy_load_errors = counter(
            "vigil_policy_load_errors_total",
            "Policy loads that failed (the previous policies stay in force), by source",
            &["source"],
        );
        // Present at zero from the start, so a dashboard can tell "none" from "unknown".
        policy_load_errors.with_label_values(&["coordinator"]);
        let actions = counter(
            "vigil_actions_total",
            "Action transitions stored in the audit trail, by state entered",
            &["state"],
        );
        let plain_counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
            c
        };
        let batches_missing = plain_counter(
            "vigil_metric_batches_missing_total",
            "Metric batches agents dropped (full buffer, oldest first) before the coordinator stored them",
        );
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "vigil_http_request_duration_seconds",
                "HTTP request latency, by method and route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["method", "route"],
        )
        .unwrap_or_else(|e| unreachable!("histogram is well-formed: {e}"));
        registry
            .register(Box::new(http_duration.clone()))
            .unwrap_or_else(|e| unreachable!("histogram is registered once: {e}"));
        let store_commits = plain_counter(
            "vigil_store_commits_total",
            "Write transactions the store writer committed to LMDB",
        );
        let store_commit_writes = plain_counter(
            "vigil_store_commit_writes_total",
            "Writes (agent messages, API writes, retention passes) in the committed \
             transactions; per commit, divide by vigil_store_commits_total",
        );
        let store_commit_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "vigil_store_commit_duration_seconds",
                "Time to apply and commit one LMDB write transaction, its flush to disk \
                 included",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("histogram is well-formed: {e}"));
        registry
            .register(Box::new(store_commit_duration.clone()))
            .unwrap_or_else(|e| unreachable!("histogram is registered once: {e}"));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("gauge {name} is well-formed: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| unreachable!("gauge {name} is registered once: {e}"));
            g
        };
        let hosts_online = gauge("vigil_hosts_online", "Hosts currently online");
        let hosts_known = gauge(
            "vigil_hosts_known",
            "Hosts the coordinator has ever heard from",
        );
        let json_mirror_metrics_listeners = gauge(
            "vigil_json_mirror_metrics_listeners",
            "Connections on the embedded broker subscribed to the metrics JSON stream (at \
             QoS 0 it is made only while there is one)",
        );
        let store_map_size_bytes = gauge(
            "vigil_store_map_size_bytes",
            "Current size of the LMDB memory map in bytes",
        );
        let store_file_bytes = gauge(
            "vigil_store_file_bytes",
            "Size of the LMDB data file in bytes (up to its highest page in use)",
        );
        let store_used_bytes = gauge(
            "vigil_store_used_bytes",
            "Bytes of the LMDB data file holding data; the rest are free pages reused before \
             the file grows",
        );
        let agent_policy_load_errors = IntGaugeVec::new(
            Opts::new(
                "vigil_agent_policy_load_errors",
                "Failed policy loads reported by each agent since it started (its previous \
                 policies stay in force)",
            ),
            &["host"],
        )
        .unwrap_or_else(|e| unreachable!("gauge vec is well-formed: {e}"));
        registry
            .register(Box::new(agent_policy_load_errors.clone()))
            .unwrap_or_else(|e| unreachable!("gauge vec is registered once: {e}"));
        let mqtt_duplicates = counter(
            "vigil_mqtt_messages_duplicate_total",
            "Sealed agent messages received a second time (MQTT redelivery), or a last will \
             superseded by a reconnection; dropped",
            &["channel"],
        );
        let mqtt_auth_failures = counter(
            "vigil_mqtt_auth_failures_total",
            "MQTT logins the embedded broker refused (no credentials, unknown or revoked \
             agent, wrong password, client id not the agent's)",
            &["reason"],
        );
        let enrollments = counter(
            "vigil_agent_enrollments_total",
            "Agent enrollment requests, by outcome",
            &["result"],
        );
        let tls_handshake_failures = counter(
            "vigil_tls_handshake_failures_total",
            "Connections dropped because their TLS handshake failed (plaintext client, \
             client not trusting the certificate) or timed out",
            &["listener", "reason"],
        );
        let connections_refused = counter(
            "vigil_connections_refused_total",
            "Connections closed at once because a bound was reached (connections in all, \
             per client address, not logged in yet)",
            &["listener", "reason"],
        );
        let mqtt_acl_refusals = counter(
            "vigil_mqtt_acl_refusals_total",
            "MQTT connections the embedded broker's front closed: a login that failed to \
             send its CONNECT in time, or a packet it may not send (a topic not its own, a \
             retain, a publish by an integration)",
            &["role", "reason"],
        );
        let open_files_limit = IntGauge::new(
            "vigil_open_files_limit",
            "File descriptors the coordinator may hold (its raised RLIMIT_NOFILE)",
        )
        .unwrap_or_else(|e| unreachable!("gauge is well-formed: {e}"));
        registry
            .register(Box::new(open_files_limit.clone()))
            .unwrap_or_else(|e| unreachable!("gauge is registered once: {e}"));
        let json_mirror_messages = counter(
            "vigil_json_mirror_messages_total",
            "JSON messages published on vigil/v1/json/ for integrations",
            &["stream"],
        );
        let json_mirror_dropped = counter(
            "vigil_json_mirror_dropped_total",
            "JSON mirror messages dropped because the mirror fell behind",
            &["stream"],
        );
        let mqtt_mail_dropped = counter(
            "vigil_mqtt_mail_dropped_total",
            "Messages for agents the embedded broker dropped: queue_full (a session held its \
             most while its agent was away or did not acknowledge), session_evicted (the \
             session away longest was forgotten to keep the sessions bounded)",
            &["reason"],
        );
        let mqtt_front_waits = counter(
            "vigil_mqtt_front_waits_total",
            "Times an agent's connection on the embedded broker stopped reading because \
             ingest was far behind what agents had published, by how the wait ended: room \
             (ingest caught up) or forgotten (ingest took nothing for a while; the count \
             was reset)",
            &["outcome"],
        );
        let http_rejected = counter(
            "vigil_http_requests_rejected_total",
            "REST requests refused for an out-of-range or unreadable parameter or field \
             (a time, a TTL, a limit), by route template and field",
            &["field", "route"],
        );
        // Series whose label values are known up front exist at 0 from the start, so a
        // dashboard shows 0 rather than "no data" and `rate()` has a starting point.
        for channel in [
            AgentChannel::Metrics,
            AgentChannel::Status,
            AgentChannel::Events,
            AgentChannel::Actions,
            AgentChannel::Session,
        ] {
            for reason in [
                "empty",
                "too_large",
                "unknown_version",
                "malformed",
                "invalid",
                "implausible_time",
                "host_mismatch",
                "unknown_agent",
                "revoked",
                "bad_signature",
                "malformed_seal",
                "no_delivery",
                "replayed",
                "unknown_session",
                "rekeyed",
                "replayed_handshake",
            ] {
                mqtt_rejected.with_label_values(&[channel.as_str(), reason]);
            }
        }
        let agent_handshakes = counter(
            "vigil_agent_handshakes_total",
            "Agent session key handshakes (Hellos on vigil/v1/agents/+/session), by outcome: \
             accepted, or why refused (unknown_agent, revoked, bad_signature, malformed, \
             malformed_seal, host_mismatch, replayed_handshake, unanswered)",
            &["outcome"],
        );
        for outcome in [
            "accepted",
            "unknown_agent",
            "revoked",
            "bad_signature",
            "malformed",
            "malformed_seal",
            "host_mismatch",
            "replayed_handshake",
            "unanswered",
        ] {
            agent_handshakes.with_label_values(&[outcome]);
        }
        for state in vigil_shared::wire::ActionState::ALL {
            actions.with_label_values(&[state.as_str()]);
        }
        for reason in [
            "missing",
            "malformed",
            "unknown",
            "revoked",
            "forbidden",
            "rate_limited",
        ] {
            http_auth_failures.with_label_values(&[reason]);
        }
        for reason in ["bad_password", "client_id", "revoked", "unknown_user"] {
            mqtt_auth_failures.with_label_values(&[reason]);
        }
        for listener in ["http", "mqtt"] {
            for reason in ["handshake", "timeout"] {
                tls_handshake_failures.with_label_values(&[listener, reason]);
            }
        }
        for listener in ["http", "mqtt"] {
            for reason in ["max_connections", "max_pending", "max_per_address"] {
                connections_refused.with_label_values(&[listener, reason]);
            }
        }
        let delivery_redelivered = counter(
            "vigil_delivery_redelivered_total",
            "Queued agent messages not stored again: already stored (duplicate) or too far ahead \
             of what is stored (ahead, sent again by the agent)",
            &["stream", "outcome"],
        );
        for stream in vigil_shared::delivery::Stream::ALL {
            for outcome in ["duplicate", "ahead"] {
                delivery_redelivered.with_label_values(&[stream.as_str(), outcome]);
            }
        }
        let clock_skewed = counter(
            "vigil_agent_clock_skewed_total",
            "Agent messages sealed more than five minutes from the coordinator's clock (stored)",
            &["channel"],
        );
        let mqtt_unacknowledged = plain_counter(
            "vigil_mqtt_deliveries_unacknowledged_total",
            "MQTT deliveries left unacknowledged because the store could not take them",
        );
        let audit_pruned = counter(
            "vigil_audit_pruned_total",
            "Audit records removed by --audit-retention, by kind (action: whole action records, \
             event: policy events, feed: event feed entries)",
            &["kind"],
        );
        for kind in ["action", "event", "feed"] {
            audit_pruned.with_label_values(&[kind]);
        }
        let alertmanager_alerts = counter(
            "vigil_alertmanager_alerts_total",
            "Alerts received from Alertmanager's webhook, by outcome (routed, duplicate, unrouted, \
             refused, resolved, resolved_unknown)",
            &["outcome"],
        );
        for outcome in ALERT_OUTCOMES {
            alertmanager_alerts.with_label_values(&[outcome]);
        }
        let hosts_silent_total = plain_counter(
            "vigil_hosts_silent_total",
            "Hosts found silent: their agent said online, but no status or sample came for \
             --silent-after sampling intervals",
        );
        let hosts_silent = gauge(
            "vigil_hosts_silent",
            "Hosts silent now (their agent said online, but nothing comes)",
        );
        let deadman_webhooks = counter(
            "vigil_deadman_webhooks_total",
            "Host silence events POSTed to --silent-webhook, by result (sent, failed, dropped)",
            &["result"],
        );
        for result in ["sent", "failed", "dropped"] {
            deadman_webhooks.with_label_values(&[result]);
        }
        Telemetry {
            registry,
            alertmanager_alerts,
            hosts_silent_total,
            hosts_silent,
            deadman_webhooks,
            audit_pruned,
            delivery_redelivered,
            clock_skewed,
            mqtt_unacknowledged,
            connections_refused,
            mqtt_acl_refusals,
            open_files_limit,
            http_rejected,
            tls_handshake_failures,
            json_mirror_messages,
            json_mirror_dropped,
            json_mirror_metrics_listeners,
            mqtt_mail_dropped,
            mqtt_front_waits,
            mqtt_duplicates,
            mqtt_auth_failures,
            agent_handshakes,
            enrollments,
            agent_policy_load_errors,
            mqtt_messages,
            mqtt_rejected,
            samples_stored,
            http_ingest_rejected,
            store_errors,
            http_requests,
            http_duration,
            store_commits,
            store_commit_writes,
            store_commit_duration,
            hosts_online,
            hosts_known,
            store_map_size_bytes,
            store_file_bytes,
            store_used_bytes,
            policy_load_errors,
            batches_missing,
            http_auth_failures,
            actions,
        }
    }

    /// The registry, for modules that keep metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
    use prometheus::proto::MetricType;

    use super::Telemetry;

    /// Gives a vector metric one series (label values `x`), so that `gather()` shows it.
    fn touch<T: MetricVecBuilder>(vec: &MetricVec<T>) {
        let labels = vec!["x"; vec.desc()[0].variable_labels.len()];
        vec.with_label_values(&labels);
    }

    /// Every metric of `telemetry`, by name: its type and help. The destructuring names
    /// every field, so a metric added to [`Telemetry`] does not compile until it is listed
    /// here (and so checked); `gather()` then shows that the registry holds exactly these.
    fn metrics(telemetry: &Telemetry) -> BTreeMap<String, (MetricType, String)> {
        let Telemetry {
            registry,
            mqtt_messages,
            mqtt_rejected,
            samples_stored,
            http_ingest_rejected,
            store_errors,
            http_requests,
            http_duration,
            store_commits,
            store_commit_writes,
            store_commit_duration,
            hosts_online,
            hosts_known,
            store_map_size_bytes,
            store_file_bytes,
            store_used_bytes,
            policy_load_errors,
            agent_policy_load_errors,
            batches_missing,
            http_auth_failures,
            actions,
            mqtt_duplicates,
            mqtt_auth_failures,
            agent_handshakes,
            enrollments,
            tls_handshake_failures,
            json_mirror_messages,
            json_mirror_dropped,
            json_mirror_metrics_listeners,
            mqtt_mail_dropped,
            mqtt_front_waits,
            connections_refused,
            mqtt_acl_refusals,
            open_files_limit,
            http_rejected,
            delivery_redelivered,
            clock_skewed,
            mqtt_unacknowledged,
            audit_pruned,
            alertmanager_alerts,
            hosts_silent_total,
            hosts_silent,
            deadman_webhooks,
        } = telemetry;
        let counter_vecs = [
            mqtt_messages,
            mqtt_rejected,
            samples_stored,
            http_ingest_rejected,
            store_errors,
            http_requests,
            policy_load_errors,
            http_auth_failures,
            actions,
            mqtt_duplicates,
            mqtt_auth_failures,
            agent_handshakes,
            enrollments,
            tls_handshake_failures,
            json_mirror_messages,
            json_mirror_dropped,
            mqtt_mail_dropped,
            mqtt_front_waits,
            connections_refused,
            mqtt_acl_refusals,
            http_rejected,
            delivery_redelivered,
            clock_skewed,
            audit_pruned,
            alertmanager_alerts,
            deadman_webhooks,
        ];
        counter_vecs.iter().for_each(|v| touch(v));
        touch(http_duration);
        touch(agent_policy_load_errors);
        let mut collectors: Vec<&dyn Collector> = vec![
            http_duration,
            store_commits,
            store_commit_writes,
            store_commit_duration,
            hosts_online,
            hosts_known,
            store_map_size_bytes,
            store_file_bytes,
            store_used_bytes,
            open_files_limit,
            json_mirror_metrics_listeners,
            agent_policy_load_errors,
            batches_missing,
            mqtt_unacknowledged,
            hosts_silent_total,
            hosts_silent,
        ];
        collectors.extend(counter_vecs.iter().map(|v| *v as &dyn Collector));

        let mut by_name = BTreeMap::new();
        for collector in collectors {
            let descs = collector.desc();
            let families = collector.collect();
            assert_eq!(descs.len(), 1, "one metric per collector: {descs:?}");
            assert_eq!(families.len(), 1, "one family per collector");
            assert_eq!(families[0].name(), descs[0].fq_name);
            let previous = by_name.insert(
                descs[0].fq_name.clone(),
                (families[0].get_field_type(), descs[0].help.clone()),
            );
            assert!(previous.is_none(), "{} twice", descs[0].fq_name);
        }
        let registered: BTreeMap<String, MetricType> = registry
            .gather()
            .iter()
            .map(|f| (f.name().to_string(), f.get_field_type()))
            .collect();
        let listed: BTreeMap<String, MetricType> = by_name
            .iter()
            .map(|(name, (kind, _))| (name.clone(), *kind))
            .collect();
        assert_eq!(
            registered, listed,
            "the registry holds exactly the struct's metrics"
        );
        by_name
    }

    /// Why `name` (of type `kind`) breaks a Prometheus naming convention, if it does.
    fn naming_problem(name: &str, kind: MetricType) -> Option<String> {
        if !name.starts_with("vigil_") {
            return Some("no `vigil_` prefix".into());
        }
        if !name[6..]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Some("not snake_case".into());
        }
        let is_counter = kind == MetricType::COUNTER;
        if is_counter != name.ends_with("_total") {
            return Some(if is_counter {
                "a counter without the `_total` suffix".into()
            } else {
                format!("a {kind:?} with the counters' `_total` suffix")
            });
        }
        for reserved in ["_bucket", "_sum", "_count", "_created", "_info"] {
            if name.ends_with(reserved) {
                return Some(format!("ends in the reserved suffix `{reserved}`"));
            }
        }
        // The name without `_total`: its last word is the unit, if it has one.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let words: Vec<&str> = base.split('_').collect();
        let has = |w: &[&str]| words.iter().any(|word| w.contains(word));
        // Durations in seconds, sizes in bytes: base units only.
        let other_units = [
            "ms",
            "millis",
            "milliseconds",
            "us",
            "micros",
            "microseconds",
            "ns",
            "nanoseconds",
            "minutes",
            "hours",
            "days",
            "kb",
            "mb",
            "gb",
            "kib",
            "mib",
            "gib",
            "kilobytes",
            "megabytes",
            "gigabytes",
        ];
        if let Some(unit) = words.iter().find(|w| other_units.contains(w)) {
            return Some(format!(
                "unit `{unit}`: durations are `_seconds`, sizes `_bytes`"
            ));
        }
        let duration = has(&[
            "duration", "latency", "time", "elapsed", "age", "delay", "lag", "seconds", "uptime",
        ]);
        if duration && !base.ends_with("_seconds") {
            return Some("a duration not ending in `_seconds`".into());
        }
        let size = has(&["size", "bytes", "memory"]);
        if size && !base.ends_with("_bytes") {
            return Some("a size not ending in `_bytes`".into());
        }
        if kind == MetricType::HISTOGRAM && !(duration || size) {
            return Some("a histogram without a unit (`_seconds`, `_bytes`)".into());
        }
        None
    }

    #[test]
    fn every_metric_follows_the_prometheus_naming_conventions() {
        let metrics = metrics(&Telemetry::new());
        assert!(metrics.len() >= 22, "{metrics:?}");
        let problems: Vec<String> = metrics
            .iter()
            .filter_map(|(name, (kind, help))| {
                if help.trim().is_empty() {
                    return Some(format!("{name}: no help text"));
                }
                naming_problem(name, *kind).map(|why| format!("{name} ({kind:?}): {why}"))
            })
            .collect();
        assert!(
            problems.is_empty(),
            "naming problems:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_naming_check_catches_bad_names() {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        for (name, kind) in [
            ("vigil_requests_total", COUNTER),
            ("vigil_hosts_online", GAUGE),
            ("vigil_request_duration_seconds", HISTOGRAM),
            ("vigil_busy_seconds_total", COUNTER),
            ("vigil_store_map_size_bytes", GAUGE),
        ] {
            assert_eq!(naming_problem(name, kind), None, "{name}");
        }
        for (name, kind) in [
            ("requests_total", COUNTER),
            ("vigil_requests", COUNTER),
            ("vigil_hosts_online_total", GAUGE),
            ("vigil_request_duration_ms", HISTOGRAM),
            ("vigil_request_duration", HISTOGRAM),
            ("vigil_request_latency_seconds_total_ms", GAUGE),
            ("vigil_map_size", GAUGE),
            ("vigil_map_size_mb", GAUGE),
            ("vigil_queue_depth", HISTOGRAM),
            ("vigil_hosts_count", GAUGE),
        ] {
            assert!(naming_problem(name, kind).is_some(), "{name} passes");
        }
    }

    #[test]
    fn series_known_up_front_exist_from_the_start() {
        let text = Telemetry::new().render();
        for series in [
            r#"vigil_tls_handshake_failures_total{listener="http",reason="handshake"} 0"#,
            r#"vigil_mqtt_auth_failures_total{reason="bad_password"} 0"#,
            r#"vigil_http_auth_failures_total{reason="missing"} 0"#,
            r#"vigil_actions_total{state="dead_letter"} 0"#,
            r#"vigil_mqtt_messages_rejected_total{channel="metrics",reason="bad_signature"} 0"#,
            "vigil_metric_batches_missing_total 0",
            r#"vigil_delivery_redelivered_total{outcome="duplicate",stream="outbox"} 0"#,
            "vigil_mqtt_deliveries_unacknowledged_total 0",
            "vigil_hosts_silent_total 0",
            "vigil_hosts_silent 0",
            r#"vigil_deadman_webhooks_total{result="failed"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing:\n{text}"
            );
        }
    }
}
