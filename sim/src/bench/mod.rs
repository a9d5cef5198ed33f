//! The benchmark suite behind `vigil-sim bench`: each part measures one figure of the
//! README's "Performance" section against real processes, and prints it next to a
//! baseline measured in the same run (the machines here are noisy, so only ratios
//! against a same-run baseline mean anything).
//!
//! Parts: [`ingest`] (samples/s stored and queryable, embedded broker vs Mosquitto),
//! [`latency`] (sample leaves an agent → queryable over REST), [`footprint`] (one real
//! agent's memory and CPU, next to Monit's), [`audit`] (REST audit query over a large audit trail),
//! [`retention`] (audit retention on a large store, and the store's size under steady load),
//! [`restart`] (a killed container running again through a real agent, vs Docker's own
//! `--restart=always`), [`fanout`] (a changed bundle group until 10,000 agents are in sync),
//! [`fleet`] (10,000 agents on the embedded broker: the coordinator's memory).

pub mod audit;
pub mod fanout;
pub mod fleet;
pub mod footprint;
pub mod ingest;
pub mod latency;
pub mod restart;
pub mod retention;
pub mod stack;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use vigil_testkit::KitError;

/// Why a benchmark could not run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A process could not be started.
    #[error(transparent)]
    Proc(#[from] KitError),
    /// Something else went wrong; the message says what.
    #[error("{0}")]
    Failed(String),
}

/// Where and how the benchmarks run.
#[derive(Debug, Clone)]
pub struct BenchEnv {
    /// A scratch directory for data dirs and process logs.
    pub work_dir: PathBuf,
    /// Smaller sizes and shorter runs (for a smoke test), not the README's figures.
    pub quick: bool,
    /// The agent binary the footprint and restart parts run (e.g. the shipped static build);
    /// `None`: the `vigil-agent` beside this program.
    pub agent: Option<PathBuf>,
    /// Samples per second offered in ingest's sustained run; `None`: its default.
    pub sustained_rate: Option<u64>,
}

/// One measured figure, with the same-run baseline it is compared to.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured, e.g. "ingest, 1000 agents, embedded broker".
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit, e.g. "samples/s", "ms", "MiB", "% of one core".
    pub unit: &'static str,
    /// The baseline measured in the same run, if there is one.
    pub baseline: Option<Baseline>,
    /// What limits the figure, or how it was taken.
    pub note: String,
}

/// A same-run baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// What it is, e.g. "Mosquitto as external broker".
    pub name: String,
    /// Its value, in the figure's unit.
    pub value: f64,
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<58} {:>12.1} {}", self.name, self.value, self.unit)?;
        if let Some(b) = &self.baseline {
            write!(f, "   (baseline {}: {:.1} {}; ", b.name, b.value, self.unit)?;
            if b.value != 0.0 {
                write!(f, "ratio {:.2}x)", self.value / b.value)?;
            } else {
                write!(f, "no ratio: the baseline is 0)")?;
            }
        }
        if !self.note.is_empty() {
            write!(f, "\n    {}", self.note)?;
        }
        Ok(())
    }
}

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Ingest throughput.
    Ingest,
    /// Ingest's sustained run alone (the last run of `ingest`).
    Sustained,
    /// End-to-end latency.
    Latency,
    /// Agent footprint.
    Footprint,
    /// Audit query latency.
    Audit,
    /// Audit retention and the store's size.
    Retention,
    /// A killed container running again: the agent vs Docker's restart policy.
    Restart,
    /// A changed bundle group until every agent is in sync.
    Fanout,
    /// A large fleet on the embedded broker: the coordinator's memory.
    Fleet,
}

/// Runs `parts` in order, printing each figure as it is measured; returns them all.
pub async fn run(env: &BenchEnv, parts: &[Part]) -> Result<Vec<Figure>, BenchError> {
    let mut all = Vec::new();
    for part in parts {
        let figures = match part {
            Part::Ingest => ingest::run(env).await?,
            Part::Sustained => ingest::sustained(env).await?,
            Part::Latency => latency::run(env).await?,
            Part::Footprint => footprint::run(env).await?,
            Part::Audit => audit::run(env).await?,
            Part::Retention => retention::run(env).await?,
            Part::Restart => restart::run(env).await?,
            Part::Fanout => fanout::run(env).await?,
            Part::Fleet => fleet::run(env).await?,
        };
        for figure in &figures {
            println!("{figure}");
        }
        all.extend(figures);
    }
    Ok(all)
}
