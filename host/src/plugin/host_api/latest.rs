//! The latest sample the host holds per tag, behind the `latest` host import (contract 0.2.0):
//! the backend trait and the default that holds nothing. Write-back plugs in the real
//! latest-value store; without it every lookup answers `none`.

use crate::plugin::bindings::LatestSample;

/// Read-only view of the latest sample per normalised tag path.
pub trait LatestValues: Send + Sync {
    /// The latest sample of the tag at `path`; None when the tag is unknown or has no sample.
    fn latest(&self, path: &str) -> Option<LatestSample>;
}

/// Holds no data: every lookup is `none` (the default until a store is plugged in).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLatestValues;

impl LatestValues for NoLatestValues {
    fn latest(&self, _path: &str) -> Option<LatestSample> {
        None
    }
}
