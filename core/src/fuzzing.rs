//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never part of a normal
//! build). Each function takes the fuzzer's bytes, frames them into what the real parser reads
//! (an HTTP answer, a stored entry …) and calls that parser. Errors are fine; a panic is a bug.
//! Where a property truly holds (a decoded entry encodes and decodes to itself), it is asserted,
//! so a violation shows up as a crash too.
//!
//! Framing of HTTP answers (token endpoint, managed identity): the status line holds the code
//! (`200`), then `Name: value` header lines, an empty line, and the body — a raw HTTP/1.1
//! response without the `HTTP/1.1` prefix.
//!
//! Framing of a stored entry: `written_at` u64 LE, `expires_at` u64 LE, a flags byte (bit 0:
//! tombstone), the 16-byte entry id, then the payload.

// A fuzz target reports a broken property by crashing: here `panic!` is the point.
#![allow(clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::app::flows::client::{ClientIdentity, access_token_from_response};
use crate::app::flows::managed_identity::{MI_ENVIRONMENT, SYSTEM_ASSIGNED_CLIENT_ID};
use crate::app::idp::{FetchStats, StatusRetry};
use crate::app::public::parse_device_code;
use crate::authority::Authority;
use crate::cache::entry::CacheEntry;
use crate::cache::{BlobCodec, KeyRing, Partition, PartitionKey, msal_json};
use crate::credential::{
    Certificate, CertificateFiles, FederatedTokenFile, PrivateKey, SecretFile,
};
use crate::error::Error;
use crate::response::{ResponseShape, parse_error_response, parse_response, parse_token_response};
use crate::retry::RetryPolicy;
use crate::scopes::ScopeSet;
use crate::store::{EntryId, StoreEntry, StoredPartition};
use crate::throttle::{FlowKind, ThrottleKey, Throttler, ThrottlingPolicy};

/// The clock every target reads: 2026-11-30, close to when the seeds were captured, so managed
/// identity's `expires_on` seeds are in the near future.
pub const NOW_SECS: u64 = 1_796_000_000;

/// Largest body the parsers accept (the transport's default limit is of this order).
const MAX_BODY: usize = 64 * 1024;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// The status, headers and body framed as described in the module documentation; `None` when
/// the status line is not a status code.
fn http_response(data: &[u8]) -> Option<http::Response<Bytes>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    let status = http::StatusCode::from_bytes(status_line.trim_ascii()).ok()?;
    let mut response = http::Response::new(Bytes::copy_from_slice(body));
    *response.status_mut() = status;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = http::HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            response.headers_mut().append(name, value);
        }
    }
    Some(response)
}

/// Target `token_response`: a token-endpoint answer (and a device-authorization answer) as a
/// client-credentials and a user flow read it.
pub fn token_response(data: &[u8]) {
    let Some(response) = http_response(data) else {
        return;
    };
    let _ = parse_error_response(&response, now());
    if let Ok(info) = parse_device_code(&response, now()) {
        // The device-code flow adds these to its clock and to each other (`slow_down`).
        let bound = Duration::from_secs(crate::response::MAX_LIFETIME_SECS);
        assert!(info.expires_in <= bound, "expires_in {:?}", info.expires_in);
        assert!(info.interval <= bound, "interval {:?}", info.interval);
    }
    let Ok(token) = parse_token_response(&response, MAX_BODY, now(), None) else {
        return;
    };
    assert!(
        response.status().is_success(),
        "a token from an error answer"
    );
    let requested = ScopeSet::parse("api://fuzz/.default");
    let access = access_token_from_response(
        &token,
        "login.fuzz.example",
        "fuzz-client",
        "fuzz-tenant",
        &requested,
        NOW_SECS,
    );
    check_lifetime(access.cached_at, access.expires_on, access.refresh_on);
    for identity in user_identities() {
        if let Ok(fetched) =
            identity.user_tokens(&token, &requested, NOW_SECS, FetchStats::default(), true)
        {
            check_lifetime(
                fetched.access.cached_at,
                fetched.access.expires_on,
                fetched.access.refresh_on,
            );
        }
    }
}

/// A public client on a multi-tenant and on a tenant authority (user flows read `realm` from
/// the ID token on the first only), built once.
fn user_identities() -> &'static [ClientIdentity] {
    static IDENTITIES: OnceLock<Vec<ClientIdentity>> = OnceLock::new();
    IDENTITIES.get_or_init(|| {
        [
            "https://login.fuzz.example/common",
            "https://login.fuzz.example/fuzz-tenant",
        ]
        .into_iter()
        .filter_map(|url| Authority::parse(url).ok())
        .map(|authority| ClientIdentity::new("fuzz-client".to_owned(), authority, None, None))
        .collect()
    })
}

/// A cached token's times: it expires after it was cached and is refreshed before it expires.
fn check_lifetime(cached_at: u64, expires_on: u64, refresh_on: Option<u64>) {
    assert!(expires_on > cached_at, "{expires_on} <= {cached_at}");
    if let Some(refresh_on) = refresh_on {
        assert!(
            refresh_on < expires_on,
            "refresh at {refresh_on} after expiry"
        );
    }
}

/// Target `managed_identity_response`: an IMDS or App Service answer, the cache entry built
/// from it, and the endpoints' retry rules applied to its error.
pub fn managed_identity_response(data: &[u8]) {
    let Some(response) = http_response(data) else {
        return;
    };
    match parse_response(&response, MAX_BODY, now(), ResponseShape::ManagedIdentity) {
        Ok(token) => {
            let access = access_token_from_response(
                &token,
                MI_ENVIRONMENT,
                SYSTEM_ASSIGNED_CLIENT_ID,
                MI_ENVIRONMENT,
                &ScopeSet::parse("https://management.azure.com/"),
                NOW_SECS,
            );
            check_lifetime(access.cached_at, access.expires_on, access.refresh_on);
        }
        Err(error) => {
            for retry in 0..4 {
                let _ = StatusRetry::IMDS.delay_before_retry(retry, &error);
                let _ = StatusRetry::APP_SERVICE.delay_before_retry(retry, &error);
            }
        }
    }
}

/// Target `retry_after`: a `Retry-After` value, alone and on a 429 and a 503 answer, through
/// the retry and throttling policies that read it.
pub fn retry_after(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::response::parse_retry_after(text, now());
        let _ = crate::response::parse_retry_after(text, SystemTime::UNIX_EPOCH);
    }
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    for status in [429u16, 503] {
        let mut response = http::Response::new(Bytes::from_static(
            br#"{"error":"temporarily_unavailable","error_codes":[50196]}"#,
        ));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value.clone());
        let error = parse_error_response(&response, now());
        let _ = RetryPolicy::default().delay_before_retry(0, &error);
        let _ = StatusRetry::IMDS.delay_before_retry(0, &error);
        let _ = StatusRetry::APP_SERVICE.delay_before_retry(0, &error);
        let policy = ThrottlingPolicy::default();
        let throttler = Throttler::new(policy.clone());
        let key = ThrottleKey::new("fuzz-client", "https://login.fuzz.example/t", "s", None);
        throttler.record_failure(key, FlowKind::Public, &error, now());
        match throttler.check(key, now()) {
            Err(Error::Throttled { retry_after, .. }) => {
                assert!(retry_after <= policy.max_retry_after, "{retry_after:?}");
            }
            Ok(()) => {}
            Err(other) => panic!("the throttler answered {other:?}"),
        }
    }
}

/// Target `authority`: an authority URL; one that parses prints as a URL that parses to it.
pub fn authority(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same text as a generic issuer: its URL is the issuer, which parses to it again.
    if let Ok(issuer) = Authority::oidc(text) {
        let _ = issuer.discovery_url();
        match Authority::oidc(&issuer.url()) {
            Ok(again) => assert_eq!(again, issuer, "{text:?} printed as {:?}", issuer.url()),
            Err(e) => panic!("{text:?} parsed as an issuer, but its URL does not: {e}"),
        }
    }
    let Ok(authority) = Authority::parse(text) else {
        return;
    };
    let _ = authority.token_endpoint();
    let url = authority.url();
    match Authority::parse(&url) {
        Ok(again) => assert_eq!(again, authority, "{text:?} printed as {url:?}"),
        Err(e) => panic!("{text:?} parsed, but its URL {url:?} does not: {e}"),
    }
}

/// The partition every cache target decodes for (sealed entries authenticate it).
pub fn partition_key() -> PartitionKey {
    PartitionKey::for_app("fuzz-client", "fuzz-tenant")
}

/// The key ring of the sealed cache targets: active key `fuzz-2`, retired key `fuzz-1`.
pub fn key_ring() -> KeyRing {
    KeyRing::new("fuzz-2", [2; 32]).with_retired("fuzz-1", [1; 32])
}

/// The codecs a cache target picks from with its first byte: plain, sealed (sealed entries
/// only), sealed but also reading plain entries (a store being migrated to encryption).
fn codec(selector: u8) -> &'static BlobCodec {
    static CODECS: OnceLock<[BlobCodec; 3]> = OnceLock::new();
    let codecs = CODECS.get_or_init(|| {
        [
            BlobCodec::plain(),
            BlobCodec::sealed(key_ring()),
            BlobCodec::sealed(key_ring().accept_plain_blobs()),
        ]
    });
    &codecs[usize::from(selector) % codecs.len()]
}

/// Length of a framed entry's clear fields.
pub const ENTRY_HEADER_LEN: usize = 8 + 8 + 1 + 16;

/// Frame `entry` as the cache targets read it.
pub fn frame_entry(entry: &StoreEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + entry.payload().len());
    out.extend_from_slice(&entry.written_at().to_le_bytes());
    out.extend_from_slice(&entry.expires_at().to_le_bytes());
    out.push(u8::from(entry.is_tombstone()));
    out.extend_from_slice(entry.id().as_bytes());
    out.extend_from_slice(entry.payload());
    out
}

fn read_entry(data: &[u8]) -> Option<StoreEntry> {
    if data.len() < ENTRY_HEADER_LEN {
        return None;
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&data[17..33]);
    Some(StoreEntry::new(
        EntryId::from_bytes(id),
        u64_at(0),
        u64_at(8),
        data[16] & 1 == 1,
        Bytes::copy_from_slice(&data[ENTRY_HEADER_LEN..]),
    ))
}

fn same_entry(a: &CacheEntry, b: &CacheEntry) -> bool {
    match (a, b) {
        (CacheEntry::AccessToken(a), CacheEntry::AccessToken(b)) => a == b,
        (CacheEntry::RefreshToken(a), CacheEntry::RefreshToken(b)) => a == b,
        (CacheEntry::IdToken(a), CacheEntry::IdToken(b)) => a == b,
        (CacheEntry::Account(a), CacheEntry::Account(b)) => a == b,
        (
            CacheEntry::AccessTokenRemoved { key, at },
            CacheEntry::AccessTokenRemoved { key: k, at: t },
        ) => key == k && at == t,
        (CacheEntry::EntryRemoved { key, at }, CacheEntry::EntryRemoved { key: k, at: t }) => {
            key == k && at == t
        }
        _ => false,
    }
}

/// Target `cache_entry`: one stored entry (first byte: codec, then the framed entry). An entry
/// that decodes is encoded again and decodes to itself.
pub fn cache_entry(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some(stored) = read_entry(rest) else {
        return;
    };
    let codec = codec(selector);
    let key = partition_key();
    let Ok(entry) = codec.decode_entry(&key, &stored) else {
        return;
    };
    let again = codec.encode_entry(&key, &entry);
    match codec.decode_entry(&key, &again) {
        Ok(back) => assert!(same_entry(&entry, &back), "{entry:?} came back as {back:?}"),
        Err(e) => panic!("{entry:?} was encoded as an entry that does not decode: {e}"),
    }
}

/// The entries of a partition, each encoded as postcard and sorted: equal for partitions that
/// hold the same entries.
fn contents(partition: &Partition) -> Vec<Vec<u8>> {
    let mut entries: Vec<Vec<u8>> = partition
        .to_entries()
        .iter()
        .map(|e| postcard::to_stdvec(e).unwrap_or_default())
        .collect();
    entries.sort();
    entries
}

/// Target `cache_legacy`: a legacy whole-partition blob (first byte: codec, then the blob). A
/// blob that decodes is encoded again and decodes to the same partition.
pub fn cache_legacy(data: &[u8]) {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let codec = codec(selector);
    let key = partition_key();
    let Ok(partition) = codec.decode_legacy(&key, blob) else {
        return;
    };
    let again = codec.encode_legacy(&key, &partition);
    match codec.decode_legacy(&key, &again) {
        Ok(back) => assert_eq!(contents(&partition), contents(&back)),
        Err(e) => panic!("a decoded legacy blob was encoded as one that does not decode: {e}"),
    }
}

/// Frame a stored partition as `cache_partition` reads it (after its codec byte).
pub fn frame_partition(now: u64, stored: &StoredPartition) -> Vec<u8> {
    let mut out = now.to_le_bytes().to_vec();
    let mut record = |bytes: &[u8]| {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes[..usize::from(len)]);
    };
    match &stored.legacy {
        Some(blob) => {
            record(&[1]);
            record(blob);
        }
        None => record(&[0]),
    }
    for entry in &stored.entries {
        record(&frame_entry(entry));
    }
    out
}

/// Target `cache_partition`: what a store holds for a partition (first byte: codec; then `now`
/// u64 LE and length-prefixed records: a legacy flag, the legacy blob when the flag is 1, then
/// framed entries). A partition that decodes is written out as entries, which decode to it.
pub fn cache_partition(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if rest.len() < 8 {
        return;
    }
    let (now_bytes, mut rest) = rest.split_at(8);
    let mut now = [0u8; 8];
    now.copy_from_slice(now_bytes);
    let now = u64::from_le_bytes(now);
    let mut records = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        records.push(&rest[2..end]);
        rest = &rest[end..];
    }
    let mut records = records.into_iter();
    let legacy = match records.next() {
        Some([1, ..]) => records.next().map(Bytes::copy_from_slice),
        _ => None,
    };
    let stored = StoredPartition {
        legacy,
        ..StoredPartition::of(records.filter_map(read_entry).collect())
    };
    let codec = codec(selector);
    let key = partition_key();
    let Ok(partition) = codec.decode_partition(&key, &stored, now) else {
        return;
    };
    let rewritten = StoredPartition::of(codec.encode_partition(&key, &partition));
    match codec.decode_partition(&key, &rewritten, now) {
        Ok(back) => assert_eq!(contents(&partition), contents(&back)),
        Err(e) => panic!("a decoded partition was written as entries that do not decode: {e}"),
    }
}

/// Target `msal_json`: an MSAL cache document. Exporting an import and importing that again is
/// a fixed point: the second export is the first.
pub fn msal_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(imported) = msal_json::import(text) else {
        return;
    };
    let Ok(first) = msal_json::export(imported.partitions.values(), Some(&imported.unmodelled))
    else {
        return;
    };
    let again = match msal_json::import(&first) {
        Ok(again) => again,
        Err(e) => panic!("an export does not import: {e}\n{first}"),
    };
    let second = match msal_json::export(again.partitions.values(), Some(&again.unmodelled)) {
        Ok(second) => second,
        Err(e) => panic!("the export of an export's import fails: {e}\n{first}"),
    };
    let first_json: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
    let second_json: serde_json::Value = serde_json::from_str(&second).unwrap_or_default();
    assert_eq!(first_json, second_json, "export is not a fixed point");
}

/// Target `certificate_pem`: certificate and key PEM text as the credential types read it
/// (first byte: which reader; a NUL byte separates the key from the certificate where two
/// texts are read).
pub fn certificate_pem(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    struct Readers {
        combined: CertificateFiles,
        separate: CertificateFiles,
        secret: SecretFile,
        federated: FederatedTokenFile,
    }
    static READERS: OnceLock<Readers> = OnceLock::new();
    let readers = READERS.get_or_init(|| Readers {
        combined: CertificateFiles::combined("fuzz.pem"),
        separate: CertificateFiles::new("fuzz.cert.pem", "fuzz.key.pem"),
        secret: SecretFile::new("fuzz.secret"),
        federated: FederatedTokenFile::new("fuzz.token"),
    });
    match selector % 6 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = Certificate::from_combined_pem(text);
            }
        }
        1 => {
            if let (Ok(key), Ok(cert)) = (std::str::from_utf8(first), std::str::from_utf8(second)) {
                let _ = PrivateKey::from_pem(key);
                let _ = Certificate::from_pem(key, cert);
            }
        }
        2 => {
            let _ = readers.combined.parse(&[rest.to_vec()]);
        }
        3 => {
            let _ = readers.separate.parse(&[second.to_vec(), first.to_vec()]);
        }
        4 => {
            let _ = readers.secret.parse(&[rest.to_vec()]);
        }
        _ => {
            let _ = readers.federated.parse(&[rest.to_vec()]);
        }
    }
}

/// Target `www_authenticate`: a `WWW-Authenticate` header value through the challenge parser
/// and the claims-challenge reader; claims that are read are a JSON object.
pub fn www_authenticate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        if let Ok(value) = http::HeaderValue::from_bytes(data) {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::WWW_AUTHENTICATE, value);
            let _ = crate::controls::ClaimsChallenge::from_headers(&headers);
        }
        return;
    };
    if let Ok(challenges) = crate::controls::parse_www_authenticate(text) {
        for challenge in &challenges {
            assert!(!challenge.scheme.is_empty(), "{challenges:?}");
        }
    }
    if let Ok(Some(challenge)) = crate::controls::ClaimsChallenge::from_header(text) {
        let parsed: serde_json::Value = serde_json::from_str(&challenge.claims).unwrap_or_default();
        assert!(parsed.is_object(), "{challenge:?}");
    }
}
