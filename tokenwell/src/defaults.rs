//! The parts the enabled features give an application that was not passed its own.

use std::sync::Arc;

use tokenwell_core::{DefaultParts, Error, HttpTransport, PartitionCache, Result, Runtime};

/// The defaults every entry point of this crate attaches to its builder.
pub(crate) fn parts() -> Arc<dyn DefaultParts> {
    Arc::new(FeatureParts)
}

/// Makes a part from the first enabled feature that provides it.
struct FeatureParts;

impl DefaultParts for FeatureParts {
    /// A new client per application: a pool outlives no runtime it was not made for.
    fn transport(&self) -> Result<Arc<dyn HttpTransport>> {
        #[cfg(feature = "reqwest")]
        {
            tokenwell_http_reqwest::ReqwestTransport::try_new()
                .map(|t| Arc::new(t) as Arc<dyn HttpTransport>)
                .map_err(|e| {
                    Error::Configuration(format!("the reqwest HTTP client could not be made: {e}"))
                })
        }
        #[cfg(all(feature = "hyper", not(feature = "reqwest")))]
        {
            tokenwell_http_hyper::HyperTransport::builder()
                .build()
                .map(|t| Arc::new(t) as Arc<dyn HttpTransport>)
                .map_err(|e| {
                    Error::Configuration(format!("the hyper HTTP client could not be made: {e}"))
                })
        }
        #[cfg(not(any(feature = "reqwest", feature = "hyper")))]
        {
            Err(Error::Configuration(
                "no HTTP transport: enable the `reqwest` or `hyper` feature of tokenwell, or \
                 pass one with .transport(..)"
                    .into(),
            ))
        }
    }

    /// The runtime of the context that builds, or an error that says there is none.
    fn runtime(&self) -> Result<Arc<dyn Runtime>> {
        #[cfg(feature = "tokio")]
        {
            Ok(Arc::new(
                tokenwell_runtime_tokio::TokioRuntime::try_current()?,
            ))
        }
        #[cfg(not(feature = "tokio"))]
        {
            Err(Error::Configuration(
                "no runtime: enable the `tokio` feature of tokenwell, or pass one with \
                 .runtime(..)"
                    .into(),
            ))
        }
    }

    /// A cache of its own per application, as MSAL gives each application.
    fn cache(&self) -> Result<Arc<dyn PartitionCache>> {
        #[cfg(feature = "memory")]
        {
            Ok(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
        }
        #[cfg(not(feature = "memory"))]
        {
            Err(Error::Configuration(
                "no cache: enable the `memory` feature of tokenwell, or pass one with \
                 .cache(..)"
                    .into(),
            ))
        }
    }
}
