//! Benchmark part: footprint (not written yet).

use super::{BenchEnv, BenchError, Figure};

/// Measures this part's figures.
pub async fn run(_env: &BenchEnv) -> Result<Vec<Figure>, BenchError> {
    Err(BenchError::Failed(
        "the footprint benchmark is not written yet".into(),
    ))
}
