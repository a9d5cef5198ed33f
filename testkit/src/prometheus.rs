//! Reading values from a Prometheus text page (a coordinator's `/metrics`).

/// Reads one series' value from a Prometheus text page (`name{labels}` exactly as
/// printed, or `name` alone for the sum of every series of that name); 0 if absent.
pub fn prometheus_value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series
                || (!series.contains('{')
                    && name
                        .strip_prefix(series)
                        .is_some_and(|r| r.starts_with('{')))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::prometheus_value;

    #[test]
    fn reads_one_series_or_the_sum_of_a_name() {
        let page = "# HELP x\nvigil_a_total{c=\"m\"} 3\nvigil_a_total{c=\"s\"} 4\nvigil_ab 9\n";
        assert_eq!(prometheus_value(page, "vigil_a_total{c=\"m\"}"), 3.0);
        assert_eq!(prometheus_value(page, "vigil_a_total"), 7.0);
        assert_eq!(prometheus_value(page, "vigil_ab"), 9.0);
        assert_eq!(prometheus_value(page, "missing"), 0.0);
    }
}
