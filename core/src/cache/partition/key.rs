//! Partition keys: which flow, client and tenant or user a partition belongs to.

use std::fmt;
use std::sync::Arc;

/// Names one partition: one blob in L2, one slot in L1.
///
/// Build it with the constructor of the flow, so two flows never share a partition by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey(Arc<str>);

impl PartitionKey {
    /// Application tokens (client credentials): client id + tenant.
    pub fn for_app(client_id: &str, tenant: &str) -> Self {
        Self::build("app", client_id, tenant)
    }

    /// On-behalf-of: client id + SHA-256 of the incoming user assertion (never the assertion).
    pub fn for_on_behalf_of(client_id: &str, user_assertion: &str) -> Self {
        Self::build(
            "obo",
            client_id,
            &crate::controls::sha256_hex(user_assertion),
        )
    }

    /// A long-running on-behalf-of session by its key: the partition
    /// [`for_on_behalf_of`](Self::for_on_behalf_of) gives the assertion whose SHA-256 (hex) the
    /// key is.
    pub fn for_on_behalf_of_session(client_id: &str, session_key: &str) -> Self {
        Self::build("obo", client_id, session_key)
    }

    /// User tokens: client id + home account id (`uid.utid`).
    pub fn for_user(client_id: &str, home_account_id: &str) -> Self {
        Self::build("user", client_id, home_account_id)
    }

    /// Managed identity: the identity (system-assigned, or a user-assigned id) + resource.
    pub fn for_managed_identity(identity: &str, resource: &str) -> Self {
        Self::build("mi", identity, resource)
    }

    fn build(kind: &str, a: &str, b: &str) -> Self {
        PartitionKey(format!("{kind}:{a}:{b}").to_lowercase().into())
    }

    /// The address of the shared key: identifies it while a clone is held.
    #[inline]
    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as *const u8 as usize
    }

    /// True when both are the same shared key (not merely equal).
    #[inline]
    pub(crate) fn same_as(&self, other: &PartitionKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The key as a string (used as the L2 key, under a prefix).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuild a key from [`as_str`](Self::as_str) (e.g. read back from a store).
    pub fn from_raw(raw: impl Into<Arc<str>>) -> Self {
        PartitionKey(raw.into())
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionKey({})", self.0)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
