//! Samples the host's health with `sysinfo` (network counters from `/proc/net/dev`).
//!
//! Metric names (all tagged, by the runner, with the agent's labels):
//!
//! | name | unit | extra tags |
//! | --- | --- | --- |
//! | `cpu_percent` | % of all cores | |
//! | `memory_percent` | % of RAM used | |
//! | `swap_percent` | % of swap used (0 without swap) | |
//! | `disk_free_percent` | % of the filesystem available | `mount` |
//! | `load1`, `load5`, `load15` | load average | |
//! | `net_rx_bytes_per_second`, `net_tx_bytes_per_second` | bytes/s since the last sample | `iface` |
//! | `process_count` | processes (not their threads; counted from `/proc`) | |
//! | `uptime_seconds` | seconds since boot | |

use std::collections::BTreeSet;
use std::time::Instant;

use sysinfo::{Disks, System};
use vigil_shared::wire::Sample;

use crate::sampling::netdev::NetCounters;

/// Keeps the state sampling needs between two calls (CPU and network counters are deltas).
pub struct HostSampler {
    system: System,
    disks: Disks,
    networks: NetCounters,
    last_network_refresh: Instant,
}

impl HostSampler {
    /// Creates a sampler and takes the first CPU and network readings, so the first
    /// [`HostSampler::sample`] already reports meaningful deltas.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut system = System::new()?;
        system.refresh_cpu_usage();
        let mut networks = NetCounters::default();
        networks.refresh();
        Ok(HostSampler {
            system,
            disks: Disks::new_with_refreshed_list()?,
            networks,
            last_network_refresh: Instant::now(),
        })
    }

    /// Takes one set of samples, all stamped `ts_ms`.
    pub fn sample(&mut self, ts_ms: i64) -> Vec<Sample> {
        let mut out = Vec::with_capacity(24);
        let mut push = |name: &str, value: f64, tags: Vec<(String, String)>| {
            if value.is_finite() {
                out.push(Sample {
                    name: name.to_string(),
                    value,
                    ts_ms,
                    tags,
                });
            }
        };

        self.system.refresh_cpu_usage();
        push(
            "cpu_percent",
            f64::from(self.system.global_cpu_usage()),
            vec![],
        );

        self.system.refresh_memory();
        push(
            "memory_percent",
            percent(self.system.used_memory(), self.system.total_memory()),
            vec![],
        );
        push(
            "swap_percent",
            percent(self.system.used_swap(), self.system.total_swap()),
            vec![],
        );

        self.disks.refresh(true);
        let mut seen_mounts = BTreeSet::new();
        for disk in &self.disks {
            let mount = disk.mount_point().to_string_lossy().into_owned();
            if disk.total_space() == 0 || !seen_mounts.insert(mount.clone()) {
                continue;
            }
            push(
                "disk_free_percent",
                percent(disk.available_space(), disk.total_space()),
                vec![("mount".into(), mount)],
            );
        }

        if let Ok(load) = System::load_average() {
            push("load1", load.one, vec![]);
            push("load5", load.five, vec![]);
            push("load15", load.fifteen, vec![]);
        }

        let counters = self.networks.refresh();
        let elapsed = self.last_network_refresh.elapsed().as_secs_f64().max(0.001);
        self.last_network_refresh = Instant::now();
        for (iface, received, sent) in counters {
            let tags = vec![("iface".to_string(), iface)];
            push(
                "net_rx_bytes_per_second",
                received as f64 / elapsed,
                tags.clone(),
            );
            push("net_tx_bytes_per_second", sent as f64 / elapsed, tags);
        }

        // Counted from the names in /proc: one directory read, where a sysinfo process
        // refresh opens several files per process and per thread (2% of a core at 1000
        // processes and a 1 s interval).
        if let Some(count) = count_processes() {
            push("process_count", count as f64, vec![]);
        }

        if let Ok(uptime) = System::uptime() {
            push("uptime_seconds", uptime as f64, vec![]);
        }
        out
    }
}

/// The number of processes: the all-digit names in `/proc` (threads are not listed there).
/// `None` where `/proc` cannot be read.
pub fn count_processes() -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.as_encoded_bytes();
                !name.is_empty() && name.iter().all(u8::is_ascii_digit)
            })
            .count(),
    )
}

/// `part / whole` as a percentage; 0 when `whole` is 0.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_holds_every_host_metric_with_sane_values() {
        let mut sampler = HostSampler::new().unwrap();
        let samples = sampler.sample(1);
        let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        for name in [
            "cpu_percent",
            "memory_percent",
            "swap_percent",
            "disk_free_percent",
            "load1",
            "load5",
            "load15",
            "process_count",
            "uptime_seconds",
        ] {
            assert!(names.contains(name), "missing {name} in {names:?}");
        }
        for s in &samples {
            assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
            if s.name.ends_with("_percent") {
                assert!(s.value <= 100.0 + 1e-9, "{s:?}");
            }
            assert_eq!(s.ts_ms, 1);
        }
        let processes = samples.iter().find(|s| s.name == "process_count").unwrap();
        assert!(processes.value >= 1.0);
        assert!(samples
            .iter()
            .filter(|s| s.name == "disk_free_percent")
            .all(|s| s.tags.iter().any(|(k, _)| k == "mount")));
    }

    #[test]
    fn percent_of_zero_is_zero() {
        assert_eq!(percent(5, 0), 0.0);
        assert_eq!(percent(1, 4), 25.0);
    }
}
