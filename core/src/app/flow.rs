//! The plug-in side of the acquisition pipeline: what a flow (client credentials,
//! on-behalf-of, silent, managed identity) supplies to the engine, and nothing more.
//!
//! A flow knows how to ask the identity provider for one key and how to turn the answer into
//! cache entries. Everything else — lookup, proactive refresh, coalescing, throttling, L2,
//! farm lease, write-through, stale serving, refresh-ahead — belongs to the engine
//! (`engine.rs`), so it holds the same way for every flow and every trigger.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::idp::{FetchStats, Idp};
use crate::cache::{
    AccessToken, AccessTokenQuery, Account, IdToken, Partition, PartitionKey, RefreshToken,
};
use crate::controls::RequestControls;
use crate::error::Result;
use crate::scopes::ScopeSet;
use crate::telemetry::MetricFlow;
use crate::throttle::{FlowKind, ThrottleKey};

/// A flow's renewal of one key at the identity provider.
pub(crate) trait Flow: Send + Sync + 'static {
    /// Ask the identity provider once (retries included) and return the entries to cache.
    /// `cached` is L1's snapshot of the partition after L2 was read, for flows that redeem a
    /// cached refresh token.
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>>;

    /// Whether a token of this flow can be renewed with nobody asking (refresh-ahead): true
    /// for the application's own tokens, false where a user must be present.
    fn renews_unattended(&self) -> bool;

    /// Whether [`renew`](Self::renew) reads `cached` (a refresh token): with an L1 that keeps
    /// nothing, the engine then decodes the partition L2 holds for it.
    fn renews_from_cache(&self) -> bool {
        true
    }

    /// Until when (Unix seconds) unattended renewal makes sense: `None` for as long as the
    /// application lives; an on-behalf-of key ends with its user assertion.
    fn unattended_until(&self) -> Option<u64> {
        None
    }
}

/// What one renewal produced: the access token and, for user flows, the entries around it.
pub(crate) struct Fetched {
    pub access: AccessToken,
    pub refresh: Option<RefreshToken>,
    pub id_token: Option<IdToken>,
    pub account: Option<Account>,
    /// Also list the account in this partition (the client's index of signed-in accounts).
    pub account_index: Option<PartitionKey>,
    pub stats: FetchStats,
}

impl Fetched {
    /// An application token: no user entries.
    pub(crate) fn access_only(access: AccessToken, stats: FetchStats) -> Self {
        Fetched {
            access,
            refresh: None,
            id_token: None,
            account: None,
            account_index: None,
            stats,
        }
    }
}

/// Identifies an in-flight renewal: partition + realm + normalized scopes.
pub(crate) type FlightKey = (PartitionKey, Arc<str>, Arc<str>);

/// Everything the engine needs to renew one key, built only on the miss path (never on a hit).
pub(crate) struct Job {
    pub partition: PartitionKey,
    pub query: OwnedQuery,
    pub flight_key: FlightKey,
    pub throttle_key: ThrottleKey,
    pub kind: FlowKind,
    pub flow: Arc<dyn Flow>,
    /// The request's controls (claims, revocation, extra query parameters), when it set any.
    pub controls: Option<Arc<RequestControls>>,
    /// The request's correlation id (set by the engine on the miss path).
    pub correlation_id: uuid::Uuid,
    /// The `flow` label of the request's metrics (set by the engine on the miss path).
    pub metric: MetricFlow,
}

impl Job {
    /// A job whose flight is keyed by `partition`, `query.realm` and the query's scopes.
    pub(crate) fn new(
        partition: &PartitionKey,
        query: &AccessTokenQuery<'_>,
        throttle_key: ThrottleKey,
        kind: FlowKind,
        flow: Arc<dyn Flow>,
    ) -> Self {
        Job {
            partition: partition.clone(),
            flight_key: (
                partition.clone(),
                query.realm.into(),
                query.scopes.normalized().into(),
            ),
            query: OwnedQuery::from_query(query),
            throttle_key,
            kind,
            flow,
            controls: None,
            correlation_id: uuid::Uuid::nil(),
            metric: MetricFlow::ClientCredentials,
        }
    }

    /// The farm lease of this key (partition, realm and scopes), so renewals of other scopes
    /// of one partition never wait for each other. Computed when a lease is taken, not per
    /// miss: a miss that L2 answers needs no lease (a SHA-256 and a string saved).
    pub(crate) fn lease_key(&self) -> PartitionKey {
        use sha2::{Digest, Sha256};
        let (_, realm, scopes) = &self.flight_key;
        let digest = Sha256::new()
            .chain_update(realm.as_bytes())
            .chain_update([0u8])
            .chain_update(scopes.as_bytes())
            .finalize();
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        PartitionKey::from_raw(format!(
            "{}#{:016x}",
            self.partition,
            u64::from_be_bytes(prefix)
        ))
    }

    /// The claims the request asked for, if any.
    pub(crate) fn claims(&self) -> Option<&Arc<str>> {
        self.controls.as_ref().and_then(|c| c.claims.as_ref())
    }
}

/// An owned access-token query, carried into a coalesced flight and refresh-ahead loops.
#[derive(Clone, Debug)]
pub(crate) struct OwnedQuery {
    pub home_account_id: Option<String>,
    pub environment: String,
    pub realm: String,
    pub token_type: String,
    pub key_id: Option<String>,
    pub scopes: ScopeSet,
}

impl OwnedQuery {
    pub(crate) fn from_query(q: &AccessTokenQuery<'_>) -> Self {
        OwnedQuery {
            home_account_id: q.home_account_id.map(str::to_owned),
            environment: q.environment.to_owned(),
            realm: q.realm.to_owned(),
            token_type: q.token_type.to_owned(),
            key_id: q.key_id.map(str::to_owned),
            scopes: q.scopes.clone(),
        }
    }

    /// The query, borrowed.
    pub(crate) fn as_query(&self) -> AccessTokenQuery<'_> {
        AccessTokenQuery {
            home_account_id: self.home_account_id.as_deref(),
            environment: &self.environment,
            realm: &self.realm,
            token_type: &self.token_type,
            key_id: self.key_id.as_deref(),
            scopes: &self.scopes,
        }
    }

    /// The matching token in `partition`, if any.
    pub(crate) fn find(&self, partition: &Partition) -> Option<Arc<AccessToken>> {
        partition.find_access_token(&self.as_query()).cloned()
    }
}
