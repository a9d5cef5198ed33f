//! Benchmark part: latency (not written yet).

use super::{BenchEnv, BenchError, Figure};

/// Measures this part's figures.
pub async fn run(_env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    Err(BenchError::Failed(
        "the latency benchmark is not written yet".into(),
    ))
}
