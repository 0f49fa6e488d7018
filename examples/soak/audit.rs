//! The lost-token check run at each checkpoint, with the load stopped and every node flushed:
//! the newest token any node holds for a key must be readable from Redis (see the module docs
//! of [`super`] for the exact rule and its exemptions).

use std::time::{Duration, Instant};

use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::{AccessToken, BlobCodec, Partition, PartitionKey};
use tokenwell_core::{ConfidentialClientApplication, TokenStore};

/// Before a Redis fault starts, tokens cached this many seconds earlier may still be in
/// their write (`cached_at` is in whole seconds, and a write takes milliseconds).
pub(crate) const EXEMPT_BEFORE_SECS: u64 = 2;
/// After Redis answers every node's connection again, the writes of tokens cached from then
/// on succeed (a write still retrying from the fault succeeds too, and the next one follows
/// it): tokens cached this many seconds later (whole seconds again) are still exempt.
pub(crate) const EXEMPT_AFTER_SECS: u64 = 2;
/// How long the check keeps trying to read a partition from Redis.
const READ_DEADLINE: Duration = Duration::from_secs(15);

/// One key of the soak: a scope in a tenant (each scope is used in one tenant only).
#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub(crate) tenant: String,
    pub(crate) scope: String,
    pub(crate) partition: PartitionKey,
}

/// What a check found.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    /// Keys for which some node held a token that must be in L2.
    pub(crate) keys_checked: u64,
    /// Node tokens left out because they were cached while Redis was impaired.
    pub(crate) exempt: u64,
    /// One line per lost token.
    pub(crate) lost: Vec<String>,
}

/// Seconds (Unix) during which Redis was impaired, from the fault's start to the moment every
/// node's connection answered again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Impairment {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl Impairment {
    fn exempts(&self, cached_at: u64) -> bool {
        cached_at + EXEMPT_BEFORE_SECS >= self.from && cached_at <= self.to + EXEMPT_AFTER_SECS
    }
}

fn token_for<'a>(partition: &'a Partition, scope: &str) -> Option<&'a AccessToken> {
    partition
        .access_tokens()
        .filter(|t| t.target.iter().any(|s| s.eq_ignore_ascii_case(scope)))
        .max_by_key(|t| t.cached_at)
        .map(|t| &**t)
}

/// Check every key. `now`: Unix seconds; `impairments`: Redis faults so far (an unfinished
/// one reaches `u64::MAX`).
///
/// # Errors
/// When Redis cannot be read within 15 s (the check cannot conclude).
pub(crate) async fn audit(
    keys: &[Key],
    nodes: &[ConfidentialClientApplication],
    store: &RedisStore,
    codec: &BlobCodec,
    impairments: &[Impairment],
    now: u64,
) -> Result<Audit, String> {
    let mut audit = Audit::default();
    for key in keys {
        // The newest token a node holds that Redis must have.
        let mut required: Option<(usize, u64, u64)> = None;
        for (node, app) in nodes.iter().enumerate() {
            let Some(partition) = app.cache().get(&key.partition) else {
                continue;
            };
            let Some(token) = token_for(&partition, &key.scope) else {
                continue;
            };
            if token.expires_on <= now + 1 {
                continue;
            }
            if impairments.iter().any(|i| i.exempts(token.cached_at)) {
                audit.exempt += 1;
                continue;
            }
            if required.is_none_or(|(_, cached_at, _)| token.cached_at > cached_at) {
                required = Some((node, token.cached_at, token.expires_on));
            }
        }
        let Some((node, cached_at, expires_on)) = required else {
            continue;
        };
        audit.keys_checked += 1;
        let stored = read(store, &key.partition).await?;
        let in_l2 = match codec.decode_partition(&key.partition, &stored, now) {
            Ok(partition) => token_for(&partition, &key.scope).map(|t| t.cached_at),
            Err(error) => {
                audit.lost.push(format!(
                    "{} in {}: Redis holds an entry the soak's codec cannot read ({error})",
                    key.scope, key.tenant
                ));
                continue;
            }
        };
        match in_l2 {
            Some(l2_cached_at) if l2_cached_at >= cached_at => {}
            other => audit.lost.push(format!(
                "{} in {}: node {node} holds a token cached at {cached_at} (expires {expires_on}); Redis holds {}",
                key.scope,
                key.tenant,
                other.map_or_else(|| "none".to_owned(), |at| format!("one cached at {at}")),
            )),
        }
    }
    Ok(audit)
}

async fn read(
    store: &RedisStore,
    key: &PartitionKey,
) -> Result<tokenwell_core::StoredPartition, String> {
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        match store.load(key).await {
            Ok(stored) => return Ok(stored),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "the check could not read partition {key} from Redis within {READ_DEADLINE:?}: {error}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cached_around_a_redis_fault_are_exempt() {
        let fault = Impairment { from: 100, to: 110 };
        assert!(!fault.exempts(97));
        assert!(fault.exempts(98));
        assert!(fault.exempts(105));
        assert!(fault.exempts(112));
        assert!(!fault.exempts(113));
    }
}
