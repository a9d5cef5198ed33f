//! Notices lost metric batches. Every agent numbers its batches 1, 2, 3, … during one
//! run, so a jump in a host's sequence means batches were lost on the way: an agent
//! queue that overflowed during a broker outage, or a broker that dropped messages for
//! a subscriber that fell too far behind. The ingest loop counts the gaps in
//! `vigil_metric_batches_missing_total` and the stragglers in
//! `vigil_metric_batches_late_total`, so loss is never silent.

use std::collections::HashMap;

/// What one batch's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next one, or the first heard from this host.
    InOrder,
    /// This many batches before it never arrived (so far).
    Gap(u64),
    /// At or before one already seen: a redelivery or a straggler (which may have been
    /// counted in a [`Sequence::Gap`] before it arrived).
    Late,
    /// The agent started again (its numbering restarted).
    Restarted,
}

/// The last sequence number seen from each host.
#[derive(Debug, Default)]
pub struct BatchGaps {
    last: HashMap<String, u64>,
}

impl BatchGaps {
    /// Records batch `seq` from `host` and says how it fits.
    pub fn observe(&mut self, host: &str, seq: u64) -> Sequence {
        let Some(last) = self.last.get_mut(host) else {
            self.last.insert(host.to_string(), seq);
            return Sequence::InOrder;
        };
        if seq > *last {
            let gap = seq - *last - 1;
            *last = seq;
            if gap == 0 {
                Sequence::InOrder
            } else {
                Sequence::Gap(gap)
            }
        } else if seq <= 1 && *last > 1 {
            *last = seq;
            Sequence::Restarted
        } else {
            Sequence::Late
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_stragglers_and_restarts_are_told_apart() {
        let mut gaps = BatchGaps::default();
        assert_eq!(gaps.observe("a", 5), Sequence::InOrder);
        assert_eq!(gaps.observe("a", 6), Sequence::InOrder);
        assert_eq!(gaps.observe("a", 9), Sequence::Gap(2));
        assert_eq!(gaps.observe("a", 8), Sequence::Late);
        assert_eq!(gaps.observe("a", 9), Sequence::Late);
        assert_eq!(gaps.observe("a", 10), Sequence::InOrder);
        assert_eq!(gaps.observe("a", 1), Sequence::Restarted);
        assert_eq!(gaps.observe("a", 2), Sequence::InOrder);
        // Hosts are counted apart.
        assert_eq!(gaps.observe("b", 100), Sequence::InOrder);
        assert_eq!(gaps.observe("a", 3), Sequence::InOrder);
    }
}
