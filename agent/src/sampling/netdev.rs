//! Network byte counters from `/proc/net/dev`: one read for every interface per sample
//! (sysinfo's network refresh opens nine `/sys/class/net/IFACE/...` files per interface).

use std::collections::HashMap;

/// The counters of the last reading, per interface.
#[derive(Debug, Default)]
pub(crate) struct NetCounters {
    last: HashMap<String, (u64, u64)>,
}

impl NetCounters {
    /// Reads `/proc/net/dev` and returns, per interface (without `lo`), the bytes received
    /// and sent since the previous call: 0 for an interface seen for the first time or
    /// whose counters went back (a driver reset). Empty when the file cannot be read.
    pub(crate) fn refresh(&mut self) -> Vec<(String, u64, u64)> {
        let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
        self.update(&text)
    }

    /// [`NetCounters::refresh`] on the text of `/proc/net/dev`.
    fn update(&mut self, text: &str) -> Vec<(String, u64, u64)> {
        let mut now = HashMap::new();
        let mut out = Vec::new();
        for (iface, rx, tx) in text.lines().filter_map(parse_line) {
            if iface == "lo" {
                continue;
            }
            let (rx0, tx0) = self.last.get(iface).copied().unwrap_or((rx, tx));
            out.push((
                iface.to_string(),
                rx.saturating_sub(rx0),
                tx.saturating_sub(tx0),
            ));
            now.insert(iface.to_string(), (rx, tx));
        }
        self.last = now;
        out
    }
}

/// `iface: rx_bytes rx_packets … (8 receive fields) tx_bytes …` → (iface, rx, tx); `None`
/// for the two header lines and anything malformed.
fn parse_line(line: &str) -> Option<(&str, u64, u64)> {
    let (iface, fields) = line.split_once(':')?;
    let mut fields = fields.split_whitespace();
    let rx = fields.next()?.parse().ok()?;
    let tx = fields.nth(7)?.parse().ok()?;
    Some((iface.trim(), rx, tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 2088     50    0    0    0     0          0         0 2088     50    0    0    0     0       0          0
  eth0: 1000     10    0    0    0     0          0         0  500      5    0    0    0     0       0          0
";

    #[test]
    fn deltas_per_interface_without_loopback() {
        let mut c = NetCounters::default();
        assert_eq!(c.update(DEV), vec![("eth0".to_string(), 0, 0)]);
        let later = DEV
            .replace("eth0: 1000", "eth0: 4000")
            .replace(" 500      5", " 800      5")
            + "veth1: 7 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n";
        assert_eq!(
            c.update(&later),
            vec![("eth0".to_string(), 3000, 300), ("veth1".to_string(), 0, 0)]
        );
        // Counters that went back (a reset) count as nothing, not as a huge number.
        assert_eq!(c.update(DEV), vec![("eth0".to_string(), 0, 0)]);
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("x: 1 2"), None);
    }

    #[test]
    fn this_host_has_readable_counters() {
        let mut c = NetCounters::default();
        c.refresh();
        assert!(c.refresh().iter().all(|(iface, _, _)| iface != "lo"));
    }
}
