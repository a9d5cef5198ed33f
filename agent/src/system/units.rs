//! systemd unit names: a name with a unit type suffix (`nginx.service`, `backup.timer`)
//! names a unit of that type; a bare name (`nginx`) means a service. The watchers, the
//! dispatcher and the action queue all tell units from containers by this one list.

/// Unit type suffixes: every unit type systemd has.
const UNIT_TYPES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".mount",
    ".automount",
    ".swap",
    ".path",
    ".slice",
    ".scope",
    ".device",
];

/// Whether `name` names a unit by its type: a name, then a unit type suffix.
pub(crate) fn has_unit_type(name: &str) -> bool {
    UNIT_TYPES
        .iter()
        .any(|t| name.len() > t.len() && name.ends_with(t))
}

/// The unit id for a name: as written if it has a unit type suffix, else a service
/// (`nginx` → `nginx.service`).
pub(crate) fn unit_id(name: &str) -> String {
    if has_unit_type(name) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_a_type_are_services() {
        assert_eq!(unit_id("nginx"), "nginx.service");
        assert_eq!(unit_id("nginx.service"), "nginx.service");
        assert_eq!(unit_id("backup.timer"), "backup.timer");
    }

    #[test]
    fn every_unit_type_counts_and_a_bare_suffix_does_not() {
        for name in [
            "a.service",
            "b.socket",
            "-.slice",
            "dev-sda.device",
            "x.automount",
        ] {
            assert!(has_unit_type(name), "{name}");
        }
        for name in ["web-1", "api", ".service", "servicefoo"] {
            assert!(!has_unit_type(name), "{name}");
        }
    }
}
