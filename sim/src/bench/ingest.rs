//! Benchmark part: ingest (not written yet).

use super::{BenchEnv, BenchError, Figure};

/// Measures this part's figures.
pub async fn run(_env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    Err(BenchError::Failed(
        "the ingest benchmark is not written yet".into(),
    ))
}
