//! Broker addresses as users write them: `mqtt://host:port` (plain TCP, port 1883 by
//! default) or `mqtts://host:port` (MQTT over TLS, port 8883 by default). `host:port` alone
//! means `mqtt://`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Where an MQTT broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the connection is MQTT over TLS (`mqtts://`).
    pub tls: bool,
}

/// The usual port of plain MQTT.
pub const MQTT_PORT: u16 = 1883;
/// The usual port of MQTT over TLS.
pub const MQTTS_PORT: u16 = 8883;

/// Why a broker URL could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("broker URL `{url}`: {problem}")]
pub struct BrokerUrlError {
    url: String,
    problem: String,
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let fail = |problem: &str| BrokerUrlError {
            url: url.to_string(),
            problem: problem.to_string(),
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl" | "tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(fail(&format!(
                    "scheme `{scheme}` is not supported; use mqtt://host:port or mqtts://host:port"
                )))
            }
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| fail(&format!("port `{port}` is not a number from 0 to 65535")))?;
                (host, port)
            }
            _ => (rest, if tls { MQTTS_PORT } else { MQTT_PORT }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(fail("no host given"));
        }
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl BrokerUrl {
    /// The same address spoken to in plain MQTT.
    pub fn without_tls(&self) -> BrokerUrl {
        BrokerUrl {
            tls: false,
            ..self.clone()
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let u: BrokerUrl = "mqtt://broker.lan:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("broker.lan", 1884));
        let u: BrokerUrl = "10.0.0.5".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.5", 1883));
        let u: BrokerUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "mqtt://[::1]:1883");
        assert!(!u.tls);
        let u: BrokerUrl = "mqtts://coord.lan".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("coord.lan", 8883, true));
        assert_eq!(u.to_string(), "mqtts://coord.lan:8883");
    }

    #[test]
    fn refused_forms_name_the_problem() {
        assert!("http://x:1"
            .parse::<BrokerUrl>()
            .unwrap_err()
            .to_string()
            .contains("scheme `http`"));
        assert!("mqtt://x:99999"
            .parse::<BrokerUrl>()
            .unwrap_err()
            .to_string()
            .contains("port"));
        assert!("mqtt://:1883".parse::<BrokerUrl>().is_err());
    }
}
