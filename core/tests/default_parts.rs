//! The `DefaultParts` seam (ADR 0008): a builder asks it only for the parts still missing at
//! `build()`, explicit parts win, and its failure is the build's error.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, DefaultParts, Error, HttpTransport,
    ManagedIdentityApplication, ManagedIdentityId, PartitionCache, PublicClientApplication, Result,
    Runtime, TokenSource,
};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_runtime_tokio::TokioRuntime;

use support::{CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT};

/// Real parts, counted; `runtime` fails when `no_runtime` is set.
#[derive(Default)]
struct Counted {
    transports: AtomicUsize,
    runtimes: AtomicUsize,
    caches: AtomicUsize,
    no_runtime: bool,
}

impl DefaultParts for Counted {
    fn transport(&self) -> Result<Arc<dyn HttpTransport>> {
        self.transports.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(ReqwestTransport::new()))
    }

    fn runtime(&self) -> Result<Arc<dyn Runtime>> {
        self.runtimes.fetch_add(1, Ordering::SeqCst);
        if self.no_runtime {
            return Err(Error::Configuration("no runtime here".into()));
        }
        Ok(Arc::new(TokioRuntime::current()))
    }

    fn cache(&self) -> Result<Arc<dyn PartitionCache>> {
        self.caches.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(MemoryCache::new()))
    }
}

impl Counted {
    fn counts(&self) -> [usize; 3] {
        [&self.transports, &self.runtimes, &self.caches].map(|c| c.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_parts_come_from_the_defaults_once_each() {
    let idp = support::emulator().await;
    let defaults = Arc::new(Counted::default());
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(idp.authority(TENANT))
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .default_parts(defaults.clone())
        .build()
        .unwrap();
    assert_eq!(defaults.counts(), [1, 1, 1]);
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        defaults.counts(),
        [1, 1, 1],
        "building is the only time asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_parts_win_over_the_defaults() {
    let idp = support::emulator().await;
    let defaults = Arc::new(Counted::default());
    let cache = Arc::new(MemoryCache::new());
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(idp.authority(TENANT))
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .default_parts(defaults.clone())
        .cache(cache.clone())
        .runtime(Arc::new(TokioRuntime::current()))
        .build()
        .unwrap();
    assert_eq!(defaults.counts(), [1, 0, 0]);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        cache.partition_count(),
        1,
        "the token is in the explicit cache"
    );
}

#[test]
fn a_default_that_cannot_be_made_is_the_build_error() {
    let defaults = Arc::new(Counted {
        no_runtime: true,
        ..Counted::default()
    });
    let public = PublicClientApplication::builder(CLIENT_ID)
        .authority("https://login.microsoftonline.com/contoso")
        .default_parts(defaults.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(&public, Error::Configuration(m) if m == "no runtime here"),
        "{public:?}"
    );
    let managed = ManagedIdentityApplication::builder(ManagedIdentityId::SystemAssigned)
        .default_parts(defaults)
        .build()
        .unwrap_err();
    assert!(
        matches!(&managed, Error::Configuration(m) if m == "no runtime here"),
        "{managed:?}"
    );
}

#[test]
fn without_parts_or_defaults_the_error_points_at_both_ways() {
    let error = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority("https://login.microsoftonline.com/contoso")
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .build()
        .unwrap_err();
    let Error::Configuration(message) = &error else {
        panic!("{error:?}");
    };
    assert!(
        message.contains("no HTTP transport configured"),
        "{message}"
    );
    assert!(message.contains("ReqwestTransport"), "{message}");
    assert!(
        message.contains("tokenwell::confidential_client"),
        "{message}"
    );
}
