//! The seam through which a crate that bundles parts gives application builders their
//! defaults, while this crate depends on no runtime, HTTP client or cache
//! (`docs/adr/0008-facade-crate.md`).

use std::sync::Arc;

use crate::cache::PartitionCache;
use crate::error::Result;
use crate::http::HttpTransport;
use crate::runtime::Runtime;

/// Makes the parts an application builder was not given, when it builds.
///
/// The `tokenwell` crate passes one to every builder it hands out (tokio, reqwest and the
/// memory L1, by its features). A builder asks only for what is still missing at `build()`,
/// so parts set explicitly always win and a default that is not needed is never made; a
/// failure is the build's error, never a panic.
pub trait DefaultParts: Send + Sync + 'static {
    /// A transport for a new application.
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) saying why there is none.
    fn transport(&self) -> Result<Arc<dyn HttpTransport>>;

    /// A runtime for a new application (called where the builder's `build()` runs).
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) saying why there is none (for
    /// tokio: not inside a runtime).
    fn runtime(&self) -> Result<Arc<dyn Runtime>>;

    /// An L1 cache for a new application.
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) saying why there is none.
    fn cache(&self) -> Result<Arc<dyn PartitionCache>>;
}
