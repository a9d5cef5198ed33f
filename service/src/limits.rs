//! Process limits a long-running server sets for itself at start.
//!
//! A coordinator holds a few sockets per agent; the soft file-descriptor limit most
//! shells and units start with (1024) is far below that, and running out of descriptors
//! stops every listener at once. [`raise_open_files`] lifts the soft limit as far as the
//! hard limit allows (the units also set `LimitNOFILE`).

/// The soft `RLIMIT_NOFILE` after raising it towards `wanted` (never above the hard
/// limit); the error says why it could not be read or set.
pub fn raise_open_files(wanted: u64) -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_what_is_asked_or_the_hard_limit() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        let got = raise_open_files(4096).expect("raise");
        assert!(got >= 4096.min(hard), "{got}");
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert_eq!(soft, got);
    }
}
