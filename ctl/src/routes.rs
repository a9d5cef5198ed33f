//! The coordinator's REST routes `vigilctl` calls, each once: method, path template as
//! the coordinator's OpenAPI document writes it, and how to fill in its `{host}`. The
//! end-to-end test (`tests/cli.rs`) checks every entry against the document a real
//! coordinator serves, so a renamed route breaks a test, not the client in the field.

/// One route: its method and its path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The template, e.g. `/api/v1/hosts/{host}/remediation/pause`.
    pub path: &'static str,
}

impl Route {
    /// The path with `{host}` replaced by `host`, percent-encoded as one path segment.
    pub fn with_host(&self, host: &str) -> String {
        self.path.replace("{host}", &encode_segment(host))
    }
}

/// Every host.
pub const HOSTS: Route = Route {
    method: "GET",
    path: "/api/v1/hosts",
};
/// The action audit trail (query: host, status, policy, target, since, limit).
pub const ACTIONS: Route = Route {
    method: "GET",
    path: "/api/v1/actions",
};
/// A manual action.
pub const ACTIONS_CREATE: Route = Route {
    method: "POST",
    path: "/api/v1/actions",
};
/// The policy audit trail (query: host, policy, target, kind, since, limit).
pub const VIOLATIONS: Route = Route {
    method: "GET",
    path: "/api/v1/violations",
};
/// Drift per host and bundle group.
pub const DRIFT: Route = Route {
    method: "GET",
    path: "/api/v1/drift",
};
/// The live event stream (SSE; query: host, kind).
pub const EVENTS: Route = Route {
    method: "GET",
    path: "/api/v1/events",
};
/// The kill switch on.
pub const PAUSE: Route = Route {
    method: "POST",
    path: "/api/v1/hosts/{host}/remediation/pause",
};
/// The kill switch off.
pub const RESUME: Route = Route {
    method: "POST",
    path: "/api/v1/hosts/{host}/remediation/resume",
};

/// Every route above.
pub const ALL: &[Route] = &[
    HOSTS,
    ACTIONS,
    ACTIONS_CREATE,
    VIOLATIONS,
    DRIFT,
    EVENTS,
    PAUSE,
    RESUME,
];

/// `text` percent-encoded for a path segment or a query value: everything but
/// unreserved characters (RFC 3986).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_becomes_one_encoded_segment() {
        assert_eq!(
            PAUSE.with_host("web-01"),
            "/api/v1/hosts/web-01/remediation/pause"
        );
        assert_eq!(
            RESUME.with_host("a/b c"),
            "/api/v1/hosts/a%2Fb%20c/remediation/resume"
        );
    }
}
