//! The D-Bus client for systemd (`org.freedesktop.systemd1` on the system bus, via
//! `zbus`): the calls and signal subscriptions the systemd watcher and the systemd
//! executor make, and what a failed call means.
//!
//! A [`Systemd`] is one connection to the system bus; cloning it shares the connection.

use std::collections::HashMap;

use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, Message, MessageStream};

/// systemd's bus name.
const SYSTEMD: &str = "org.freedesktop.systemd1";
/// The manager object.
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// The manager interface.
pub(crate) const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// The interface every unit object has.
pub(crate) const UNIT: &str = "org.freedesktop.systemd1.Unit";
/// The interface of service units.
pub(crate) const SERVICE: &str = "org.freedesktop.systemd1.Service";
/// The standard properties interface.
pub(crate) const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// Where unit objects live.
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";
/// How many signals zbus may hold for one subscription (a reader must move them on
/// promptly: zbus stops reading the socket, method replies included, while one is full).
const SIGNAL_QUEUE: usize = 1024;

/// One row of `ListUnitsByPatterns`: id, description, load state, active state, sub
/// state, following, object path, job id, job type, job path.
pub(crate) type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// Which of systemd's signals to receive.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subscription {
    /// `PropertiesChanged` of every unit object.
    UnitChanges,
    /// Every signal of the manager (`UnitNew`, `Reloading`, `JobRemoved`, …).
    Manager,
    /// The manager's `JobRemoved` alone.
    JobRemoved,
}

impl Subscription {
    /// The match rule that selects these signals.
    fn rule(self) -> zbus::Result<MatchRule<'static>> {
        let builder = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD)?;
        let rule = match self {
            Subscription::UnitChanges => builder
                .interface(PROPERTIES)?
                .member("PropertiesChanged")?
                .path_namespace(UNIT_PATHS)?
                .build(),
            Subscription::Manager => builder.path(MANAGER_PATH)?.interface(MANAGER)?.build(),
            Subscription::JobRemoved => builder
                .path(MANAGER_PATH)?
                .interface(MANAGER)?
                .member("JobRemoved")?
                .build(),
        };
        Ok(rule)
    }
}

/// A connection to systemd on the system bus.
#[derive(Clone)]
pub(crate) struct Systemd {
    /// The system bus connection.
    conn: Connection,
}

impl Systemd {
    /// Connects to the system bus.
    pub(crate) async fn connect() -> zbus::Result<Systemd> {
        Ok(Systemd {
            conn: Connection::system().await?,
        })
    }

    /// Subscribes to `signals` on this connection.
    pub(crate) async fn signals(&self, signals: Subscription) -> zbus::Result<MessageStream> {
        MessageStream::for_match_rule(signals.rule()?, &self.conn, Some(SIGNAL_QUEUE)).await
    }

    /// Calls a method of the manager; its reply as it came.
    pub(crate) async fn call_manager(
        &self,
        method: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> zbus::Result<Message> {
        self.conn
            .call_method(Some(SYSTEMD), MANAGER_PATH, Some(MANAGER), method, body)
            .await
    }

    /// The manager's `Subscribe`: without a subscriber systemd may send no unit or job
    /// signals at all.
    pub(crate) async fn subscribe(&self) -> zbus::Result<()> {
        self.call_manager("Subscribe", &()).await?;
        Ok(())
    }

    /// The object path of a unit, loading it if need be (unknown units load as
    /// `not-found`).
    pub(crate) async fn load_unit(&self, unit: &str) -> zbus::Result<OwnedObjectPath> {
        self.call_manager("LoadUnit", &(unit,))
            .await?
            .body()
            .deserialize()
    }

    /// All properties of one interface (`UNIT`, `SERVICE`) of the unit object at `path`.
    pub(crate) async fn properties(
        &self,
        path: &str,
        interface: &str,
    ) -> zbus::Result<HashMap<String, OwnedValue>> {
        self.conn
            .call_method(
                Some(SYSTEMD),
                path,
                Some(PROPERTIES),
                "GetAll",
                &(interface,),
            )
            .await?
            .body()
            .deserialize()
    }

    /// The loaded units matching any of `patterns`.
    pub(crate) async fn list_units(&self, patterns: &[&str]) -> zbus::Result<Vec<UnitRow>> {
        let states: &[&str] = &[];
        self.call_manager("ListUnitsByPatterns", &(states, patterns))
            .await?
            .body()
            .deserialize()
    }
}

/// Whether an error is systemd refusing a request (an unknown or invalid unit, say) rather
/// than the connection failing: its message if so.
pub(crate) fn refusal(error: &zbus::Error) -> Option<String> {
    match error {
        zbus::Error::MethodError(name, message, _) => {
            Some(message.clone().unwrap_or_else(|| name.to_string()))
        }
        zbus::Error::FDO(e) => Some(e.to_string()),
        _ => None,
    }
}

/// Whether an error means the connection itself is gone (rather than a refusal).
pub(crate) fn is_lost(error: &zbus::Error) -> bool {
    matches!(
        error,
        zbus::Error::InputOutput(_) | zbus::Error::Handshake(_) | zbus::Error::Address(_)
    )
}

/// The unit id a unit object path names (systemd escapes every byte that is not a letter
/// or digit as `_xx`): `/org/freedesktop/systemd1/unit/nginx_2eservice` → `nginx.service`.
pub(crate) fn unit_id_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATHS)?.strip_prefix('/')?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_unescaped() {
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/nginx_2eservice").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/vigil_2dsleep_5fa_2eservice")
                .as_deref(),
            Some("vigil-sleep_a.service")
        );
        assert_eq!(
            unit_id_from_path("/org/freedesktop/systemd1/unit/bad_2"),
            None
        );
        assert_eq!(unit_id_from_path("/org/freedesktop/systemd1"), None);
    }

    #[test]
    fn every_subscription_has_a_rule() {
        for signals in [
            Subscription::UnitChanges,
            Subscription::Manager,
            Subscription::JobRemoved,
        ] {
            assert!(signals.rule().is_ok(), "{signals:?}");
        }
    }
}
