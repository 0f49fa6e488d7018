//! L2 payloads: one per cache entry, a small header then a postcard body, optionally sealed
//! with AES-256-GCM.
//!
//! ```text
//! entry:  magic "TWE" | format u8 | flags u8 | key-id length u8 | key id | [nonce 12] | body
//! legacy: magic "TWC1" | format u8 | flags u8 | key-id length u8 | key id | [nonce 12] | payload
//! ```
//! The format byte lets the body codec change without breaking stored caches: decoders keep
//! reading old formats. When sealed, the header, the partition key, the entry id and the clear
//! fields the store merges on (`written_at`, `expires_at`, tombstone) are authenticated
//! (associated data), so an entry copied under another key or id, or edited, fails to open.
//!
//! The legacy format is the whole-partition blob of the layout before entries; it is still
//! read so a store written by an older release migrates on its first write (ADR 0006).
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::entry::CacheEntry;
use super::model::{AccessToken, Account, IdToken, RefreshToken};
use super::partition::{AccessTokenKey, Partition, PartitionKey};
use crate::store::{StoreEntry, StoredPartition};

const ENTRY_MAGIC: &[u8; 3] = b"TWE";
/// Current entry body format: postcard of one `CacheEntry`.
pub const ENTRY_FORMAT: u8 = 1;

const MAGIC: &[u8; 4] = b"TWC1";
/// Current payload format: postcard of the access tokens, refresh tokens, ID tokens, accounts
/// and tombstones of the partition. Format 1 (access tokens and their tombstones) still decodes.
pub const FORMAT_VERSION: u8 = 2;
/// The first format: access tokens and their tombstones only.
const FORMAT_V1: u8 = 1;
const FLAG_SEALED: u8 = 0b0000_0001;
const NONCE_LEN: usize = 12;

/// Why a blob could not be read. Every case means "treat as a miss and count it".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Too short to hold a header.
    #[error("blob truncated")]
    Truncated,
    /// Not a tokenwell blob.
    #[error("not a tokenwell cache blob (bad magic)")]
    BadMagic,
    /// Written by a newer (or unknown) format.
    #[error("unknown blob format version {0}")]
    UnknownFormat(u8),
    /// The payload does not decode.
    #[error("corrupt blob payload: {0}")]
    Corrupt(String),
    /// Sealed with a key id the key ring does not hold.
    #[error("blob sealed with unknown key id '{0}'")]
    UnknownKey(String),
    /// Sealed, but no key ring is configured.
    #[error("blob is encrypted but no key ring is configured")]
    NoKeyRing,
    /// Plain, but a key ring that requires sealed blobs is configured.
    #[error("blob is not encrypted but encryption is required")]
    NotSealed,
    /// Authentication failed: tampered, truncated ciphertext, or moved to another partition.
    #[error("blob failed authentication (tampered or moved)")]
    Tampered,
}

impl BlobError {
    /// Whether the blob is fine for somebody else: sealed with a key this ring lacks, sealed
    /// while we have no ring, plain while we require sealed blobs, or in a newer format. A node
    /// must leave such a blob alone rather than overwrite it; anything else is garbage.
    pub fn is_foreign(&self) -> bool {
        match self {
            // Entries and legacy blobs share this error: any format above the oldest one we
            // know may be a newer release's (entry format 2 is one while legacy format 2 is
            // known), so only formats below it are garbage.
            BlobError::UnknownFormat(format) => *format > FORMAT_VERSION.min(ENTRY_FORMAT),
            BlobError::UnknownKey(_) | BlobError::NoKeyRing | BlobError::NotSealed => true,
            BlobError::Truncated
            | BlobError::BadMagic
            | BlobError::Corrupt(_)
            | BlobError::Tampered => false,
        }
    }
}

/// AES-256-GCM keys: one active key seals, every key in the ring opens (rotation).
#[derive(Clone)]
pub struct KeyRing {
    active: String,
    keys: Vec<(String, Arc<Aes256Gcm>)>,
    require_sealed: bool,
}

impl KeyRing {
    /// A ring whose active key is `key` under id `key_id` (1–255 bytes).
    ///
    /// # Panics
    /// When `key_id` is empty or longer than 255 bytes: key ids are configuration, not input.
    pub fn new(key_id: impl Into<String>, key: [u8; 32]) -> Self {
        let key_id = key_id.into();
        assert!(
            !key_id.is_empty() && key_id.len() <= 255,
            "key id must be 1-255 bytes"
        );
        KeyRing {
            active: key_id.clone(),
            keys: vec![(key_id, Arc::new(Aes256Gcm::new(&key.into())))],
            require_sealed: true,
        }
    }

    /// Also accept blobs sealed with an older key.
    pub fn with_retired(mut self, key_id: impl Into<String>, key: [u8; 32]) -> Self {
        let key_id = key_id.into();
        assert!(
            !key_id.is_empty() && key_id.len() <= 255,
            "key id must be 1-255 bytes"
        );
        self.keys
            .push((key_id, Arc::new(Aes256Gcm::new(&key.into()))));
        self
    }

    /// Also read plain (unencrypted) blobs, for migrating a store to encryption.
    pub fn accept_plain_blobs(mut self) -> Self {
        self.require_sealed = false;
        self
    }

    /// The id of the key new blobs are sealed with.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    fn key(&self, id: &str) -> Option<&Aes256Gcm> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c.as_ref())
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field(
                "key_ids",
                &self.keys.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct PayloadV1 {
    access_tokens: Vec<AccessToken>,
    tombstones: Vec<(AccessTokenKey, u64)>,
}

#[derive(Serialize, Deserialize)]
struct PayloadV2 {
    access_tokens: Vec<AccessToken>,
    tombstones: Vec<(AccessTokenKey, u64)>,
    refresh_tokens: Vec<RefreshToken>,
    id_tokens: Vec<IdToken>,
    accounts: Vec<Account>,
    entry_tombstones: Vec<(String, u64)>,
}

/// Encodes and decodes partitions, sealing them when a key ring is set.
#[derive(Clone, Debug, Default)]
pub struct BlobCodec {
    keyring: Option<KeyRing>,
}

impl BlobCodec {
    /// Plain blobs (no encryption).
    pub fn plain() -> Self {
        BlobCodec { keyring: None }
    }

    /// Whether entries are sealed (encrypted and authenticated).
    pub fn is_sealed(&self) -> bool {
        self.keyring.is_some()
    }

    /// Sealed blobs with `keyring`.
    pub fn sealed(keyring: KeyRing) -> Self {
        BlobCodec {
            keyring: Some(keyring),
        }
    }

    /// Encode one entry of partition `key` for a store.
    pub(crate) fn encode_entry(&self, key: &PartitionKey, entry: &CacheEntry) -> StoreEntry {
        let id = entry.id();
        // Clamp first: the associated data covers the values the store will hold.
        let clear = StoreEntry::new(
            id,
            entry.written_at(),
            entry.expires_at(),
            entry.is_tombstone(),
            Bytes::new(),
        );
        // Serializing owned, in-memory values to a Vec cannot fail.
        let body = postcard::to_stdvec(entry).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len().saturating_add(48));
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(ENTRY_FORMAT);
        self.seal_into(&mut out, &body, |header| entry_aad(header, key, &clear));
        StoreEntry::new(
            id,
            clear.written_at(),
            clear.expires_at(),
            clear.is_tombstone(),
            Bytes::from(out),
        )
    }

    /// Decode one stored entry of partition `key`, checking that the clear fields the store
    /// merged on agree with the entry.
    pub(crate) fn decode_entry(
        &self,
        key: &PartitionKey,
        stored: &StoreEntry,
    ) -> Result<CacheEntry, BlobError> {
        let blob = stored.payload();
        let Some(([m0, m1, m2, format], _)) = blob.split_first_chunk::<4>() else {
            return Err(BlobError::Truncated);
        };
        if [*m0, *m1, *m2] != *ENTRY_MAGIC {
            return Err(BlobError::BadMagic);
        }
        if *format != ENTRY_FORMAT {
            return Err(BlobError::UnknownFormat(*format));
        }
        let body = self.open(blob, 4, |header| entry_aad(header, key, stored))?;
        let entry: CacheEntry =
            postcard::from_bytes(&body).map_err(|e| BlobError::Corrupt(e.to_string()))?;
        // The clear fields the store merged on must be the entry's own (sealed entries also
        // authenticate them). The id is not recomputed: a hash per entry would double the cost
        // of reading a large partition, and a misfiled entry only shadows its own identity.
        let written_at = entry.written_at().min(crate::store::MAX_STORE_SECONDS);
        if written_at != stored.written_at() || entry.is_tombstone() != stored.is_tombstone() {
            return Err(BlobError::Corrupt(
                "entry does not match its stored time or kind".into(),
            ));
        }
        Ok(entry)
    }

    /// Every entry of `partition` for a store (a full rewrite, e.g. to seed a store in a
    /// bench or a test).
    pub fn encode_partition(&self, key: &PartitionKey, partition: &Partition) -> Vec<StoreEntry> {
        partition
            .to_entries()
            .iter()
            .map(|entry| self.encode_entry(key, entry))
            .collect()
    }

    /// Decode everything a store holds for `key` (entries and a legacy blob) into a partition
    /// without entries expired at `now`.
    ///
    /// # Errors
    /// The first [`BlobError`] of any entry or of the legacy blob; the engine instead skips
    /// and repairs what it cannot read.
    pub fn decode_partition(
        &self,
        key: &PartitionKey,
        stored: &StoredPartition,
        now: u64,
    ) -> Result<Partition, BlobError> {
        let entries = stored
            .entries
            .iter()
            .map(|entry| self.decode_entry(key, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let partition = Partition::from_entries(entries, now);
        match &stored.legacy {
            Some(blob) => Ok(partition.merge(&self.decode_legacy(key, blob)?, now)),
            None => Ok(partition),
        }
    }

    /// Write the sealing header (flags, key id, nonce) and `body` — sealed when a key ring is
    /// set — after the magic and format already in `out`. `aad` builds the associated data
    /// from the header written so far.
    fn seal_into(&self, out: &mut Vec<u8>, body: &[u8], aad: impl FnOnce(&[u8]) -> Vec<u8>) {
        match &self.keyring {
            None => {
                out.push(0);
                out.push(0);
                out.extend_from_slice(body);
            }
            Some(ring) => {
                out.push(FLAG_SEALED);
                // `KeyRing` refuses key ids longer than 255 bytes.
                out.push(u8::try_from(ring.active.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(ring.active.as_bytes());
                let mut nonce = [0u8; NONCE_LEN];
                rand::rng().fill(&mut nonce);
                let aad = aad(out);
                let Some(cipher) = ring.key(&ring.active) else {
                    // The active key is always in the ring (built that way).
                    return;
                };
                let sealed = cipher
                    .encrypt(
                        &Nonce::from(nonce),
                        Payload {
                            msg: body,
                            aad: &aad,
                        },
                    )
                    .unwrap_or_default();
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
        }
    }

    /// Open the body of `blob` whose flags byte is at `at` (after magic and format): a plain
    /// body is borrowed, not copied (reading a large partition decodes every entry).
    fn open<'b>(
        &self,
        blob: &'b [u8],
        at: usize,
        aad: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Cow<'b, [u8]>, BlobError> {
        let Some((_, [flags, key_id_len, rest @ ..])) = blob.split_at_checked(at) else {
            return Err(BlobError::Truncated);
        };
        let (key_id, body) = rest
            .split_at_checked(usize::from(*key_id_len))
            .ok_or(BlobError::Truncated)?;
        if flags & FLAG_SEALED != 0 {
            let ring = self.keyring.as_ref().ok_or(BlobError::NoKeyRing)?;
            let key_id = String::from_utf8_lossy(key_id).into_owned();
            let cipher = ring.key(&key_id).ok_or(BlobError::UnknownKey(key_id))?;
            let (nonce, sealed) = body
                .split_first_chunk::<NONCE_LEN>()
                .ok_or(BlobError::Truncated)?;
            // The header is everything before the body (`body` is a suffix of `blob`).
            let header = blob
                .get(..blob.len().saturating_sub(body.len()))
                .ok_or(BlobError::Truncated)?;
            let aad = aad(header);
            cipher
                .decrypt(
                    &Nonce::from(*nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map(Cow::Owned)
                .map_err(|_| BlobError::Tampered)
        } else {
            if self.keyring.as_ref().is_some_and(|r| r.require_sealed) {
                return Err(BlobError::NotSealed);
            }
            Ok(Cow::Borrowed(body))
        }
    }

    /// Encode `partition` as one whole-partition blob in the legacy format (releases before
    /// entries). Kept for migration tests and tools; the engine never writes it.
    pub fn encode_legacy(&self, key: &PartitionKey, partition: &Partition) -> Bytes {
        let payload = PayloadV2 {
            access_tokens: partition.access_tokens().map(|t| (**t).clone()).collect(),
            tombstones: partition
                .tombstones()
                .map(|(k, at)| (k.clone(), at))
                .collect(),
            refresh_tokens: partition.refresh_tokens().map(|t| (**t).clone()).collect(),
            id_tokens: partition.id_tokens().map(|t| (**t).clone()).collect(),
            accounts: partition.accounts().map(|a| (**a).clone()).collect(),
            entry_tombstones: partition
                .entry_tombstones()
                .map(|(k, at)| (k.to_owned(), at))
                .collect(),
        };
        // Serializing owned, in-memory values to a Vec cannot fail.
        let payload = postcard::to_stdvec(&payload).unwrap_or_default();
        let mut out = Vec::with_capacity(payload.len().saturating_add(64));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        self.seal_into(&mut out, &payload, |header| associated_data(header, key));
        Bytes::from(out)
    }

    /// Decode a legacy whole-partition blob read for `key`.
    ///
    /// # Errors
    /// A [`BlobError`] for anything but a well-formed, authentic blob of a known format.
    pub fn decode_legacy(&self, key: &PartitionKey, blob: &[u8]) -> Result<Partition, BlobError> {
        let Some(([m0, m1, m2, m3, format, _, _], _)) = blob.split_first_chunk::<7>() else {
            return Err(BlobError::Truncated);
        };
        if [*m0, *m1, *m2, *m3] != *MAGIC {
            return Err(BlobError::BadMagic);
        }
        let format = *format;
        if format != FORMAT_VERSION && format != FORMAT_V1 {
            return Err(BlobError::UnknownFormat(format));
        }
        let payload = self.open(blob, 5, |header| associated_data(header, key))?;
        let corrupt = |e: postcard::Error| BlobError::Corrupt(e.to_string());
        if format == FORMAT_V1 {
            let decoded: PayloadV1 = postcard::from_bytes(&payload).map_err(corrupt)?;
            return Ok(Partition::from_parts(
                decoded.access_tokens,
                decoded.tombstones,
            ));
        }
        let decoded: PayloadV2 = postcard::from_bytes(&payload).map_err(corrupt)?;
        Ok(
            Partition::from_parts(decoded.access_tokens, decoded.tombstones).with_sections(
                decoded.refresh_tokens,
                decoded.id_tokens,
                decoded.accounts,
                decoded.entry_tombstones,
            ),
        )
    }
}

/// Associated data of a sealed entry: its header, the partition key, and the clear fields the
/// store merges on.
fn entry_aad(header: &[u8], key: &PartitionKey, clear: &StoreEntry) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        header
            .len()
            .saturating_add(key.as_str().len())
            .saturating_add(40),
    );
    aad.extend_from_slice(header);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(clear.id().as_bytes());
    aad.extend_from_slice(&clear.written_at().to_be_bytes());
    aad.extend_from_slice(&clear.expires_at().to_be_bytes());
    aad.push(u8::from(clear.is_tombstone()));
    aad
}

fn associated_data(header: &[u8], key: &PartitionKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len().saturating_add(key.as_str().len()));
    aad.extend_from_slice(header);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::TokenSecret;
    use crate::scopes::ScopeSet;

    fn sample() -> Partition {
        Partition::from_access_tokens((0..3).map(|i| {
            AccessToken::new(
                "login.example",
                "client",
                format!("t{i}"),
                ScopeSet::parse("api://x/.default"),
                "Bearer",
                TokenSecret::new(format!("token-{i}")),
                100,
                10_000,
            )
        }))
    }

    fn key() -> PartitionKey {
        PartitionKey::for_app("client", "t")
    }

    #[test]
    fn plain_round_trip() {
        let codec = BlobCodec::plain();
        let blob = codec.encode_legacy(&key(), &sample());
        let back = codec.decode_legacy(&key(), &blob).unwrap();
        assert_eq!(back.access_token_count(), 3);
        let mut a: Vec<_> = sample().access_tokens().map(|t| (**t).clone()).collect();
        let mut b: Vec<_> = back.access_tokens().map(|t| (**t).clone()).collect();
        a.sort_by(|x, y| x.realm.cmp(&y.realm));
        b.sort_by(|x, y| x.realm.cmp(&y.realm));
        assert_eq!(a, b);
    }

    #[test]
    fn sealed_round_trip_rotation_and_tampering() {
        let old = KeyRing::new("k1", [1; 32]);
        let blob_k1 = BlobCodec::sealed(old).encode_legacy(&key(), &sample());
        assert!(
            !blob_k1.windows(7).any(|w| w == b"token-0"),
            "payload is encrypted"
        );

        let rotated = BlobCodec::sealed(KeyRing::new("k2", [2; 32]).with_retired("k1", [1; 32]));
        assert_eq!(
            rotated
                .decode_legacy(&key(), &blob_k1)
                .unwrap()
                .access_token_count(),
            3
        );

        let dropped = BlobCodec::sealed(KeyRing::new("k2", [2; 32]));
        assert_eq!(
            dropped.decode_legacy(&key(), &blob_k1).unwrap_err(),
            BlobError::UnknownKey("k1".into())
        );

        let mut tampered = blob_k1.to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            rotated.decode_legacy(&key(), &tampered).unwrap_err(),
            BlobError::Tampered
        );

        let other_key = PartitionKey::for_app("client", "other");
        assert_eq!(
            rotated.decode_legacy(&other_key, &blob_k1).unwrap_err(),
            BlobError::Tampered
        );
        assert_eq!(
            BlobCodec::plain()
                .decode_legacy(&key(), &blob_k1)
                .unwrap_err(),
            BlobError::NoKeyRing
        );
    }

    #[test]
    fn garbage_never_panics() {
        let codec = BlobCodec::plain();
        let good = codec.encode_legacy(&key(), &sample());
        assert_eq!(
            codec.decode_legacy(&key(), b"").unwrap_err(),
            BlobError::Truncated
        );
        assert_eq!(
            codec
                .decode_legacy(&key(), b"XXXX\x01\x00\x00")
                .unwrap_err(),
            BlobError::BadMagic
        );
        let mut future = good.to_vec();
        future[4] = 99;
        assert_eq!(
            codec.decode_legacy(&key(), &future).unwrap_err(),
            BlobError::UnknownFormat(99)
        );
        for cut in 7..good.len() {
            let _ = codec.decode_legacy(&key(), &good[..cut]);
        }
        let mut rng = rand::rng();
        for _ in 0..2_000 {
            let mut noisy = good.to_vec();
            let i = rng.random_range(7..noisy.len());
            noisy[i] = rng.random();
            let _ = codec.decode_legacy(&key(), &noisy);
        }
        assert!(matches!(
            codec.decode_legacy(&key(), b"TWC1\x01\x00\x00\xff\xff\xff\xff\xff"),
            Err(BlobError::Corrupt(_))
        ));
    }

    /// Issue 14: an entry's payload cut anywhere or hit by noise, sealed or plain, is an error
    /// (the header is parsed without indexing); absurd times in an entry saturate at the
    /// stores' bound on the way out, never overflow.
    #[test]
    fn entries_never_panic_and_absurd_times_saturate() {
        use crate::runtime::{from_unix_seconds, unix_seconds};
        use crate::store::MAX_STORE_SECONDS;
        let mut token = AccessToken::new(
            "login.example",
            "client",
            "t",
            ScopeSet::parse("api://x/.default"),
            "Bearer",
            TokenSecret::new("s"),
            u64::MAX,
            u64::MAX,
        );
        token.extended_expires_on = u64::MAX;
        token.refresh_on = Some(u64::MAX);
        let partition = Partition::from_access_tokens([token]);
        let mut rng = rand::rng();
        for codec in [
            BlobCodec::plain(),
            BlobCodec::sealed(KeyRing::new("k1", [7; 32])),
        ] {
            let stored = codec.encode_partition(&key(), &partition);
            let [entry] = stored.as_slice() else {
                panic!("one entry: {stored:?}")
            };
            assert_eq!(entry.written_at(), MAX_STORE_SECONDS);
            assert_eq!(entry.expires_at(), MAX_STORE_SECONDS);
            let held = StoredPartition {
                entries: stored.clone(),
                ..StoredPartition::default()
            };
            let back = codec.decode_partition(&key(), &held, 1_000).unwrap();
            let token = back.access_tokens().next().unwrap();
            assert_eq!(
                unix_seconds(from_unix_seconds(token.expires_on)),
                MAX_STORE_SECONDS
            );
            assert!(token.refresh_gate.jittered(u64::MAX, u64::MAX) > 0);

            let with_payload = |payload: Bytes| {
                StoreEntry::new(
                    entry.id(),
                    entry.written_at(),
                    entry.expires_at(),
                    false,
                    payload,
                )
            };
            let payload = entry.payload();
            for cut in 0..payload.len() {
                let cut_entry = with_payload(payload.slice(..cut));
                assert!(codec.decode_entry(&key(), &cut_entry).is_err(), "cut {cut}");
            }
            for _ in 0..2_000 {
                let mut noisy = payload.to_vec();
                let i = rng.random_range(0..noisy.len());
                noisy[i] = rng.random();
                let _ = codec.decode_entry(&key(), &with_payload(Bytes::from(noisy)));
            }
        }
    }

    fn user_partition() -> Partition {
        let mut token = AccessToken::new(
            "login.example",
            "client",
            "t",
            ScopeSet::parse("user.read"),
            "Bearer",
            TokenSecret::new("at"),
            100,
            10_000,
        );
        token.home_account_id = Some("uid.utid".into());
        let mut rt = RefreshToken::new(
            "uid.utid",
            "login.example",
            "client",
            ScopeSet::parse("user.read"),
            TokenSecret::new("rt"),
            100,
        );
        rt.family_id = Some("1".into());
        Partition::from_access_tokens([token])
            .with_refresh_token(rt)
            .with_id_token(IdToken::new(
                "uid.utid",
                "login.example",
                "t",
                "client",
                TokenSecret::new("a.b.c"),
                100,
            ))
            .with_account(Account::new(
                "uid.utid",
                "login.example",
                "t",
                "uid",
                "ada@example.com",
                100,
            ))
    }

    #[test]
    fn format_2_carries_user_entries_and_their_removals() {
        let codec = BlobCodec::plain();
        let partition = user_partition();
        let blob = codec.encode_legacy(&key(), &partition);
        assert_eq!(blob[4], FORMAT_VERSION);
        let back = codec.decode_legacy(&key(), &blob).unwrap();
        assert_eq!(back.refresh_tokens().count(), 1);
        assert_eq!(
            back.refresh_tokens().next().unwrap().family_id.as_deref(),
            Some("1")
        );
        assert_eq!(back.id_tokens().count(), 1);
        assert_eq!(back.accounts().next().unwrap().username, "ada@example.com");
        let removed = partition.without_account("uid.utid", 200);
        let back = codec
            .decode_legacy(&key(), &codec.encode_legacy(&key(), &removed))
            .unwrap();
        assert_eq!(back.access_token_count(), 0);
        assert_eq!(back.accounts().count(), 0);
        // The removal survives the round trip: merging an older copy does not resurrect.
        assert_eq!(back.merge(&partition, 300).refresh_tokens().count(), 0);
    }

    #[test]
    fn format_1_blobs_still_decode() {
        let payload = PayloadV1 {
            access_tokens: sample().access_tokens().map(|t| (**t).clone()).collect(),
            tombstones: Vec::new(),
        };
        let mut blob = b"TWC1\x01\x00\x00".to_vec();
        blob.extend(postcard::to_stdvec(&payload).unwrap());
        let back = BlobCodec::plain().decode_legacy(&key(), &blob).unwrap();
        assert_eq!(back.access_token_count(), 3);
    }
}
