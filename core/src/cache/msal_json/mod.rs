//! MSAL's unified cache JSON: export partitions to the file MSAL libraries persist (Python's
//! `SerializableTokenCache`, MSAL.NET's `SerializeMsalV3`, MSAL Node …) and import it back.
//!
//! ```text
//! {"AccessToken":  {"<home>-<env>-accesstoken-<client>-<realm>-<target>": {…}},
//!  "RefreshToken": {…}, "IdToken": {…}, "Account": {…},
//!  "AppMetadata":  {"appmetadata-<env>-<client>": {"client_id": …, "environment": …}}}
//! ```
//!
//! Access tokens become [`Partition`]s: application tokens (no `home_account_id`) under
//! [`PartitionKey::for_app`]`(client_id, realm)`, user tokens under
//! [`PartitionKey::for_user`]`(client_id, home_account_id)`. Fields this version does not know
//! travel in [`AccessToken::extra`]. Refresh tokens and ID tokens join the user partition of
//! their client and account; an account joins every user partition of its `home_account_id`
//! and the client's account index (what `accounts()` lists). App metadata and any other section
//! have no model: the import keeps them verbatim in [`UnmodelledSections`] and the export
//! writes them back, so `export(import(x))` loses nothing. So do entries that cannot be
//! modelled safely (malformed, isolated by MSAL's `ext_cache_key`, duplicates, accounts with no
//! tokens): they stay raw and are listed in [`MsalImport::skipped`].
//!
//! What a round trip normalizes (MSAL reads both forms alike): timestamps written as JSON
//! numbers come back as strings, an empty `home_account_id` comes back as `null`, a missing
//! `extended_expires_on` / `token_type` comes back as `expires_on` / `Bearer`, absent standard
//! sections come back empty, and object keys come back sorted.
//!
//! Environments: MSAL Python keys the cache by the authority's *host name* without its port
//! (`127.0.0.1` for `https://127.0.0.1:8443/t`), tokenwell by `host[:port]`. The two agree on
//! every real cloud; for a loopback IdP on a port, map them with
//! [`MsalCacheFormat::environment_alias`].
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fmt;

use hashbrown::HashMap;
use serde_json::{Map, Value};

use super::model::{
    AccessToken, Account, CREDENTIAL_TYPE_ACCESS_TOKEN, CREDENTIAL_TYPE_ID_TOKEN,
    CREDENTIAL_TYPE_REFRESH_TOKEN, IdToken, RefreshToken, TokenSecret,
};
use super::partition::{AccessTokenKey, Partition, PartitionKey};
use crate::scopes::ScopeSet;
use crate::store::MAX_STORE_SECONDS;

mod export;
mod import;
mod keys;

use import::parse_document;
#[cfg(test)]
mod tests;

/// `AccessToken` section.
pub const SECTION_ACCESS_TOKEN: &str = "AccessToken";
/// `RefreshToken` section.
pub const SECTION_REFRESH_TOKEN: &str = "RefreshToken";
/// `IdToken` section.
pub const SECTION_ID_TOKEN: &str = "IdToken";
/// `Account` section.
pub const SECTION_ACCOUNT: &str = "Account";
/// `AppMetadata` section.
pub const SECTION_APP_METADATA: &str = "AppMetadata";

const STANDARD_SECTIONS: [&str; 5] = [
    SECTION_ACCESS_TOKEN,
    SECTION_REFRESH_TOKEN,
    SECTION_ID_TOKEN,
    SECTION_ACCOUNT,
    SECTION_APP_METADATA,
];

/// Fields the model holds; everything else of an access token goes to `extra`.
const MODELLED_FIELDS: [&str; 13] = [
    "credential_type",
    "secret",
    "home_account_id",
    "environment",
    "client_id",
    "target",
    "realm",
    "token_type",
    "cached_at",
    "expires_on",
    "extended_expires_on",
    "refresh_on",
    "key_id",
];

/// Fields the refresh-token model holds.
const RT_FIELDS: [&str; 8] = [
    "credential_type",
    "secret",
    "home_account_id",
    "environment",
    "client_id",
    "target",
    "last_modification_time",
    "family_id",
];

/// Fields the ID-token model holds.
const ID_FIELDS: [&str; 6] = [
    "credential_type",
    "secret",
    "home_account_id",
    "environment",
    "realm",
    "client_id",
];

/// Fields the account model holds.
const ACCOUNT_FIELDS: [&str; 6] = [
    "home_account_id",
    "environment",
    "realm",
    "local_account_id",
    "username",
    "authority_type",
];

/// Fields with which MSAL isolates an entry from ordinary lookups. tokenwell would ignore them
/// and serve the token to the wrong caller, so such entries stay raw.
const ISOLATING_FIELDS: [&str; 1] = ["ext_cache_key"];

/// `extra` entries whose name starts with this byte are this module's own notes (the original
/// cache key or `target` spelling when normalization would change them); never written as
/// fields. No JSON producer writes field names starting with NUL.
const HINT_PREFIX: char = '\0';
const HINT_KEY: &str = "\0msal:key";
const HINT_TARGET: &str = "\0msal:target";

/// Why an MSAL cache could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsalJsonError {
    /// Not JSON at all.
    #[error("MSAL cache is not valid JSON: {0}")]
    Syntax(String),
    /// The document is not a JSON object of sections.
    #[error("MSAL cache must be a JSON object of sections")]
    NotAnObject,
    /// A section is not a JSON object of entries.
    #[error("MSAL cache section '{section}' must be a JSON object")]
    SectionNotAnObject {
        /// The section name.
        section: String,
    },
    /// An access-token entry lacks a field or has one of the wrong type.
    #[error("MSAL access token '{key}' is invalid: {reason}")]
    InvalidAccessToken {
        /// The entry's cache key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An access-token entry uses a field that isolates it from ordinary lookups, which
    /// tokenwell does not model.
    #[error("MSAL access token '{key}' is isolated by '{field}', which tokenwell does not model")]
    IsolatedAccessToken {
        /// The entry's cache key.
        key: String,
        /// The isolating field.
        field: String,
    },
    /// Two entries are the same token for tokenwell (same identity and scopes); the newer one
    /// was imported.
    #[error("MSAL access token '{key}' duplicates another entry; the newer one was imported")]
    DuplicateAccessToken {
        /// The key of the entry kept raw.
        key: String,
    },
    /// A refresh-token, ID-token or account entry lacks a field or has one of the wrong type.
    #[error("MSAL {section} entry '{key}' is invalid: {reason}")]
    InvalidEntry {
        /// The section.
        section: String,
        /// The entry's cache key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A refresh-token, ID-token or account entry is the same entry for tokenwell as another
    /// (one refresh token per account and client); the newer one was imported.
    #[error("MSAL {section} entry '{key}' duplicates another entry; the newer one was imported")]
    DuplicateEntry {
        /// The section.
        section: String,
        /// The key of the entry kept raw.
        key: String,
    },
    /// An account with no token of any client in the cache: no partition to hold it.
    #[error("MSAL account '{key}' has no tokens; kept raw")]
    OrphanAccount {
        /// The account's cache key.
        key: String,
    },
    /// An unknown field kept in [`AccessToken::extra`] does not hold JSON (export).
    #[error("access token '{key}': unknown field '{field}' does not hold valid JSON")]
    InvalidExtraField {
        /// The entry's cache key.
        key: String,
        /// The field name.
        field: String,
    },
}

/// Sections (and entries) of an MSAL cache that tokenwell does not model,
/// kept as raw JSON so an export writes them back unchanged.
///
/// Holds refresh tokens and ID tokens: its `Debug` shows section names and sizes only.
#[derive(Clone, Default, PartialEq)]
pub struct UnmodelledSections {
    sections: BTreeMap<String, Map<String, Value>>,
}

impl UnmodelledSections {
    /// True when nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.sections.values().all(Map::is_empty)
    }

    /// The raw entries of `section` (`RefreshToken`, `IdToken`, `Account`, `AppMetadata`, an
    /// unknown section, or `AccessToken` entries that were not imported).
    pub fn section(&self, name: &str) -> Option<&Map<String, Value>> {
        self.sections.get(name)
    }

    /// Names of the sections kept.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// Serialize, to persist beside a token store until these sections have a model.
    pub fn to_json(&self) -> String {
        // Serializing in-memory JSON values to a string cannot fail.
        serde_json::to_string(&self.sections).unwrap_or_default()
    }

    /// Read what [`to_json`](Self::to_json) wrote.
    ///
    /// # Errors
    /// [`MsalJsonError`] when `json` is not an object of objects.
    pub fn from_json(json: &str) -> Result<Self, MsalJsonError> {
        let sections = parse_document(json)?;
        Ok(UnmodelledSections { sections })
    }

    fn section_mut(&mut self, name: &str) -> &mut Map<String, Value> {
        self.sections.entry(name.to_owned()).or_default()
    }
}

impl fmt::Debug for UnmodelledSections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, section) in &self.sections {
            map.entry(name, &section.len());
        }
        map.finish()
    }
}

/// The result of an import.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MsalImport {
    /// Tokens and accounts, grouped into the partitions tokenwell reads them from.
    pub partitions: BTreeMap<PartitionKey, Partition>,
    /// Everything else, verbatim (see [`UnmodelledSections`]).
    pub unmodelled: UnmodelledSections,
    /// Entries kept raw in `unmodelled` instead of imported, and why.
    pub skipped: Vec<MsalJsonError>,
}

impl MsalImport {
    /// Number of access tokens imported.
    pub fn access_token_count(&self) -> usize {
        self.partitions
            .values()
            .map(Partition::access_token_count)
            .sum()
    }
}

/// Reads and writes MSAL's cache JSON, with optional environment aliases.
#[derive(Clone, Debug, Default)]
pub struct MsalCacheFormat {
    /// (MSAL's environment, tokenwell's environment), both lower-case.
    aliases: Vec<(String, String)>,
}

impl MsalCacheFormat {
    /// No aliases: environments are copied as they are.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read MSAL's environment `msal` as tokenwell's `tokenwell` on import, and write it back on
    /// export. For an IdP on a non-default port, MSAL Python writes `127.0.0.1` where tokenwell's
    /// authority says `127.0.0.1:8443`.
    pub fn environment_alias(mut self, msal: &str, tokenwell: &str) -> Self {
        self.aliases
            .push((msal.to_ascii_lowercase(), tokenwell.to_ascii_lowercase()));
        self
    }

    fn to_tokenwell_environment(&self, msal: &str) -> String {
        self.aliases
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(msal))
            .map_or_else(|| msal.to_owned(), |(_, t)| t.clone())
    }

    fn to_msal_environment<'a>(&'a self, tokenwell: &'a str) -> &'a str {
        self.aliases
            .iter()
            .find(|(_, t)| t.eq_ignore_ascii_case(tokenwell))
            .map_or(tokenwell, |(m, _)| m.as_str())
    }
}

/// Import `json` without environment aliases; see [`MsalCacheFormat::import`].
///
/// # Errors
/// As [`MsalCacheFormat::import`].
pub fn import(json: &str) -> Result<MsalImport, MsalJsonError> {
    MsalCacheFormat::new().import(json)
}

/// Export `partitions` (and `unmodelled`) without environment aliases; see
/// [`MsalCacheFormat::export`].
///
/// # Errors
/// As [`MsalCacheFormat::export`].
pub fn export<'a, I>(
    partitions: I,
    unmodelled: Option<&UnmodelledSections>,
) -> Result<String, MsalJsonError>
where
    I: IntoIterator<Item = &'a Partition>,
{
    MsalCacheFormat::new().export(partitions, unmodelled)
}
