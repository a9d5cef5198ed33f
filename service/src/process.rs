//! What every Vigil daemon asks of the process it runs in: the host's name and the signals
//! that ask it to stop.

/// Why the host's name cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot tell this host's name ({0}): set it with --host")]
pub struct NoHostName(String);

/// This machine's host name (the kernel's node name, as `uname -n` prints it).
pub fn local_host_name() -> Result<String, NoHostName> {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        return Err(NoHostName("it is empty".into()));
    }
    Ok(name)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_name_is_the_kernels() {
        let expected = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(super::local_host_name().unwrap(), expected.trim());
    }
}
