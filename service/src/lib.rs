//! Vigil as a systemd service, shared by `vigil-agent` and `vigil-coordinator`.
//!
//! - [`notify`]: tells systemd when the service is ready, what it is doing (`STATUS=`) and
//!   that its main loop is alive (the watchdog), for units with `Type=notify` and
//!   `WatchdogSec=`. Without systemd every call is a no-op.
//! - [`logging`]: the logger — the journal with structured fields under systemd, text on
//!   stderr otherwise.
//! - [`process`]: the host's name and the signals that ask a daemon to stop.
//! - [`install`]: the steps `vigil-agent install` and `vigil-coordinator install` are made
//!   of: writing files only when their content changes (so a second run changes nothing),
//!   directories with the right owner and mode, a system user, and `systemctl`;
//!   [`systemd_service`]: a program's binary, unit file and state in systemd, whether it
//!   came from the Debian package or from a static binary.
//! - [`dir_watch`]: when to look at a directory of configuration files again (inotify,
//!   with a slow poll where it cannot watch).

pub mod dir_watch;
pub mod install;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod process;
pub mod systemd_service;

pub use self::notify::ServiceManager;
pub use systemd_service::SystemdService;
