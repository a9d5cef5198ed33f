//! Waiting for a condition with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{or_panic, KitError};

/// Polls `probe` every 50 ms until it yields `Some`; [`KitError::TimedOut`] (naming
/// `what`) once `timeout` has passed.
pub async fn try_wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, KitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(KitError::TimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`try_wait_for`], panicking ("timed out after … waiting for `what`") at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    or_panic(try_wait_for(what, timeout, probe).await)
}
