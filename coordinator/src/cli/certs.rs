//! `vigil-coordinator certs init`: a CA and a server certificate in the data dir
//! ([`crate::security::certs`]), for users with no PKI. The next start of the coordinator serves
//! HTTPS and MQTT over TLS with them.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::DEFAULT_DATA_DIR;
use crate::security::certs::{self, CertPaths};

/// `certs` arguments.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The coordinator's data dir (files go to <data-dir>/tls/).
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// The certs subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA (ca.pem, ca.key) and a server certificate signed by it (server.pem,
    /// server.key) valid for localhost, 127.0.0.1, ::1, this host's name and every --name.
    Init {
        /// A further DNS name or IP address agents reach the coordinator by; repeat for
        /// more.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace an existing CA and server certificate (every agent then needs the new
        /// ca.pem).
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `certs` subcommand.
pub fn run(args: CertsArgs) -> Result<(), String> {
    match args.command {
        CertsCommand::Init { names, force } => {
            let paths = CertPaths::in_data_dir(&args.data_dir);
            let issued = certs::init(&paths, &names, force).map_err(|e| e.to_string())?;
            println!(
                "Made a CA and a server certificate in {dir}:\n  \
                 {ca}  CA certificate: copy it to every agent (--ca)\n  \
                 {ca_key}  CA key (0600): keep it here, or offline\n  \
                 {cert}  server certificate, valid for: {names}\n  \
                 {key}  server key (0600)\n\
                 CA SHA-256 fingerprint: {fingerprint}\n\
                 The coordinator serves HTTPS and MQTT over TLS (mqtts://) from its next start.\n\
                 Agents: vigil-agent --ca {ca} --broker mqtts://<this host>:<mqtt port> \
                 --coordinator https://<this host>:<port> …",
                dir = paths
                    .ca_cert
                    .parent()
                    .map_or(String::new(), |d| d.display().to_string()),
                ca = paths.ca_cert.display(),
                ca_key = paths.ca_key.display(),
                cert = paths.server_cert.display(),
                key = paths.server_key.display(),
                names = issued.names.join(", "),
                fingerprint = issued.ca_fingerprint,
            );
            Ok(())
        }
    }
}
