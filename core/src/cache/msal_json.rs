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

    /// Import an MSAL cache document.
    ///
    /// # Errors
    /// [`MsalJsonError`] when the document is not JSON, not an object, or a section is not an
    /// object. A bad access-token entry is not an error: it is kept raw and listed in
    /// [`MsalImport::skipped`].
    pub fn import(&self, json: &str) -> Result<MsalImport, MsalJsonError> {
        let sections = parse_document(json)?;
        let mut result = MsalImport::default();
        // Per partition and token identity: (MSAL key, raw entry, token).
        let mut tokens: HashMap<
            PartitionKey,
            HashMap<AccessTokenKey, (String, Value, AccessToken)>,
        > = HashMap::new();
        let mut others: Vec<(String, String, Value)> = Vec::new();
        for (name, entries) in sections {
            if [SECTION_REFRESH_TOKEN, SECTION_ID_TOKEN, SECTION_ACCOUNT].contains(&name.as_str()) {
                others.extend(entries.into_iter().map(|(k, v)| (name.clone(), k, v)));
                continue;
            }
            if name != SECTION_ACCESS_TOKEN {
                result.unmodelled.sections.insert(name, entries);
                continue;
            }
            for (key, entry) in entries {
                let token = match self.access_token_from_json(&key, &entry) {
                    Ok(token) => token,
                    Err(error) => {
                        result.skipped.push(error);
                        result
                            .unmodelled
                            .section_mut(SECTION_ACCESS_TOKEN)
                            .insert(key, entry);
                        continue;
                    }
                };
                let partition = match token.home_account_id.as_deref() {
                    None => PartitionKey::for_app(&token.client_id, &token.realm),
                    Some(home) => PartitionKey::for_user(&token.client_id, home),
                };
                let slot = tokens.entry(partition).or_default();
                let identity = AccessTokenKey::of(&token);
                let candidate = (key, entry, token);
                // Two entries tokenwell sees as one token: import the newer, keep the other raw.
                let loser = match slot.remove(&identity) {
                    None => {
                        slot.insert(identity, candidate);
                        continue;
                    }
                    Some(old) if old.2.cached_at >= candidate.2.cached_at => {
                        slot.insert(identity, old);
                        candidate
                    }
                    Some(old) => {
                        slot.insert(identity, candidate);
                        old
                    }
                };
                result.skipped.push(MsalJsonError::DuplicateAccessToken {
                    key: loser.0.clone(),
                });
                result
                    .unmodelled
                    .section_mut(SECTION_ACCESS_TOKEN)
                    .insert(loser.0, loser.1);
            }
        }
        result.partitions = tokens
            .into_iter()
            .map(|(key, entries)| {
                let partition =
                    Partition::from_access_tokens(entries.into_values().map(|(_, _, t)| t));
                (key, partition)
            })
            .collect();
        self.import_user_entries(others, &mut result);
        Ok(result)
    }

    /// Refresh tokens and ID tokens into their user partitions, then accounts into every
    /// partition of their user and the clients' account indexes.
    fn import_user_entries(&self, entries: Vec<(String, String, Value)>, result: &mut MsalImport) {
        let keep_raw = |result: &mut MsalImport, section: &str, key: String, raw: Value| {
            result.unmodelled.section_mut(section).insert(key, raw);
        };
        let mut accounts = Vec::new();
        // Per section: MSAL key and raw entry of what each partition slot holds, to undo a
        // duplicate.
        let mut slots: HashMap<String, (String, Value)> = HashMap::new();
        for (section, key, raw) in entries {
            let parsed = match section.as_str() {
                SECTION_REFRESH_TOKEN => self.refresh_token_from_json(&key, &raw).map(Parsed::Rt),
                SECTION_ID_TOKEN => self.id_token_from_json(&key, &raw).map(Parsed::Id),
                _ => self.account_from_json(&key, &raw).map(Parsed::Account),
            };
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(error) => {
                    result.skipped.push(error);
                    keep_raw(result, &section, key, raw);
                    continue;
                }
            };
            let (partition_key, slot, written_at) = match &parsed {
                Parsed::Rt(rt) => (
                    PartitionKey::for_user(&rt.client_id, &rt.home_account_id),
                    rt.entry_key(),
                    rt.last_modification_time,
                ),
                Parsed::Id(id) => (
                    PartitionKey::for_user(&id.client_id, &id.home_account_id),
                    id.entry_key(),
                    id.cached_at,
                ),
                Parsed::Account(account) => {
                    accounts.push((key, raw, account.clone()));
                    continue;
                }
            };
            let existing = result
                .partitions
                .get(&partition_key)
                .and_then(|p| match &parsed {
                    Parsed::Rt(_) => p
                        .refresh_tokens()
                        .find(|t| t.entry_key() == slot)
                        .map(|t| t.last_modification_time),
                    Parsed::Id(_) => p
                        .id_tokens()
                        .find(|t| t.entry_key() == slot)
                        .map(|t| t.cached_at),
                    Parsed::Account(_) => None,
                });
            let slot_id = format!("{partition_key}\u{0}{slot}");
            if existing.is_some_and(|then| then >= written_at) {
                result.skipped.push(MsalJsonError::DuplicateEntry {
                    section: section.clone(),
                    key: key.clone(),
                });
                keep_raw(result, &section, key, raw);
                continue;
            }
            if existing.is_some()
                && let Some((old_key, old_raw)) = slots.remove(&slot_id)
            {
                result.skipped.push(MsalJsonError::DuplicateEntry {
                    section: section.clone(),
                    key: old_key.clone(),
                });
                keep_raw(result, &section, old_key, old_raw);
            }
            slots.insert(slot_id, (key, raw));
            let partition = result.partitions.entry(partition_key).or_default();
            let taken = std::mem::take(partition);
            *partition = match parsed {
                Parsed::Rt(rt) => taken.with_refresh_token(rt),
                Parsed::Id(id) => taken.with_id_token(id),
                Parsed::Account(_) => taken,
            };
        }
        for (key, raw, account) in accounts {
            let homes: Vec<PartitionKey> = result
                .partitions
                .iter()
                .filter(|(_, p)| {
                    user_of(p).is_some_and(|h| h.eq_ignore_ascii_case(&account.home_account_id))
                })
                .map(|(k, _)| k.clone())
                .collect();
            if homes.is_empty() {
                result
                    .skipped
                    .push(MsalJsonError::OrphanAccount { key: key.clone() });
                keep_raw(result, SECTION_ACCOUNT, key, raw);
                continue;
            }
            let clients: Vec<String> = homes
                .iter()
                .filter_map(|k| result.partitions.get(k).and_then(client_of))
                .collect();
            for home in homes {
                if let Some(partition) = result.partitions.get_mut(&home) {
                    *partition = std::mem::take(partition).with_account(account.clone());
                }
            }
            for client in clients {
                let index = result
                    .partitions
                    .entry(PartitionKey::for_user(&client, ""))
                    .or_default();
                *index = std::mem::take(index).with_account(account.clone());
            }
        }
    }

    fn refresh_token_from_json(
        &self,
        key: &str,
        entry: &Value,
    ) -> Result<RefreshToken, MsalJsonError> {
        let f = EntryFields::new(
            SECTION_REFRESH_TOKEN,
            key,
            entry,
            CREDENTIAL_TYPE_REFRESH_TOKEN,
        )?;
        let target_text = f.string("target")?.unwrap_or("");
        let mut rt = RefreshToken::new(
            f.required("home_account_id")?,
            self.to_tokenwell_environment(f.required("environment")?),
            f.required("client_id")?,
            ScopeSet::parse(target_text),
            TokenSecret::new(f.required("secret")?),
            f.timestamp("last_modification_time")?.unwrap_or(0),
        );
        rt.family_id = f.string("family_id")?.map(str::to_owned);
        rt.extra = f.extra(&RT_FIELDS);
        if ScopeSet::parse(target_text).to_target() != target_text {
            rt.extra
                .push((HINT_TARGET.to_owned(), Value::from(target_text).to_string()));
        }
        let computed = self.refresh_token_key(&rt);
        push_key_hint(&mut rt.extra, key, &computed);
        Ok(rt)
    }

    fn id_token_from_json(&self, key: &str, entry: &Value) -> Result<IdToken, MsalJsonError> {
        let f = EntryFields::new(SECTION_ID_TOKEN, key, entry, CREDENTIAL_TYPE_ID_TOKEN)?;
        let mut id = IdToken::new(
            f.required("home_account_id")?,
            self.to_tokenwell_environment(f.required("environment")?),
            f.required("realm")?,
            f.required("client_id")?,
            TokenSecret::new(f.required("secret")?),
            0,
        );
        id.extra = f.extra(&ID_FIELDS);
        let computed = self.id_token_key(&id);
        push_key_hint(&mut id.extra, key, &computed);
        Ok(id)
    }

    fn account_from_json(&self, key: &str, entry: &Value) -> Result<Account, MsalJsonError> {
        let f = EntryFields::new(SECTION_ACCOUNT, key, entry, "")?;
        let mut account = Account::new(
            f.required("home_account_id")?,
            self.to_tokenwell_environment(f.required("environment")?),
            f.required("realm")?,
            f.string("local_account_id")?.unwrap_or(""),
            f.string("username")?.unwrap_or(""),
            0,
        );
        if let Some(kind) = f.string("authority_type")? {
            kind.clone_into(&mut account.authority_type);
        }
        account.extra = f.extra(&ACCOUNT_FIELDS);
        let computed = self.account_key(&account);
        push_key_hint(&mut account.extra, key, &computed);
        Ok(account)
    }

    fn refresh_token_key(&self, rt: &RefreshToken) -> String {
        format!(
            "{}-{}-refreshtoken-{}--{}",
            rt.home_account_id,
            self.to_msal_environment(&rt.environment),
            rt.client_id,
            extra_hint(&rt.extra, HINT_TARGET)
                .filter(|t| ScopeSet::parse(t).normalized() == rt.target.normalized())
                .unwrap_or_else(|| rt.target.to_target()),
        )
        .to_lowercase()
    }

    fn id_token_key(&self, id: &IdToken) -> String {
        format!(
            "{}-{}-idtoken-{}-{}-",
            id.home_account_id,
            self.to_msal_environment(&id.environment),
            id.client_id,
            id.realm
        )
        .to_lowercase()
    }

    fn account_key(&self, account: &Account) -> String {
        format!(
            "{}-{}-{}",
            account.home_account_id,
            self.to_msal_environment(&account.environment),
            account.realm
        )
        .to_lowercase()
    }

    fn access_token_from_json(
        &self,
        key: &str,
        entry: &Value,
    ) -> Result<AccessToken, MsalJsonError> {
        let invalid = |reason: String| MsalJsonError::InvalidAccessToken {
            key: key.to_owned(),
            reason,
        };
        let fields = entry
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        if let Some(field) = ISOLATING_FIELDS.iter().find(|f| fields.contains_key(**f)) {
            return Err(MsalJsonError::IsolatedAccessToken {
                key: key.to_owned(),
                field: (*field).to_owned(),
            });
        }
        match fields.get("credential_type") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case(CREDENTIAL_TYPE_ACCESS_TOKEN) => {}
            Some(other) => return Err(invalid(format!("credential_type is {other}"))),
        }
        let string = |name: &str| -> Result<Option<&str>, MsalJsonError> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(invalid(format!("'{name}' is not a string"))),
            }
        };
        let required = |name: &str| -> Result<&str, MsalJsonError> {
            string(name)?.ok_or_else(|| invalid(format!("'{name}' is missing")))
        };
        let timestamp = |name: &str| -> Result<Option<u64>, MsalJsonError> {
            unix_time(fields.get(name))
                .map_err(|value| invalid(format!("'{name}' is not a Unix time: {value}")))
        };

        let secret = required("secret")?;
        let environment = self.to_tokenwell_environment(required("environment")?);
        let client_id = required("client_id")?;
        let realm = required("realm")?;
        let target_text = required("target")?;
        let token_type = string("token_type")?.unwrap_or("Bearer");
        let expires_on =
            timestamp("expires_on")?.ok_or_else(|| invalid("'expires_on' is missing".into()))?;
        let cached_at = timestamp("cached_at")?.unwrap_or(0);
        let target = ScopeSet::parse(target_text);

        let mut token = AccessToken::new(
            environment,
            client_id,
            realm,
            target,
            token_type,
            TokenSecret::new(secret),
            cached_at,
            expires_on,
        );
        token.home_account_id = string("home_account_id")?
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        token.extended_expires_on = timestamp("extended_expires_on")?.unwrap_or(expires_on);
        token.refresh_on = timestamp("refresh_on")?;
        token.key_id = string("key_id")?.map(str::to_owned);
        token.extra = fields
            .iter()
            .filter(|(name, _)| !MODELLED_FIELDS.contains(&name.as_str()))
            .filter(|(name, _)| !name.starts_with(HINT_PREFIX))
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect();

        // Remember spellings that normalization would change, so the export restores them.
        if self.export_target(&token) != target_text {
            token
                .extra
                .push((HINT_TARGET.to_owned(), Value::from(target_text).to_string()));
        }
        let computed = self.export_key(&token);
        if computed != key {
            let hint = Value::from(vec![key.to_owned(), computed]);
            token.extra.push((HINT_KEY.to_owned(), hint.to_string()));
        }
        Ok(token)
    }

    /// Export partitions (and, to write a complete cache back, the sections an import kept) to
    /// MSAL's cache JSON.
    ///
    /// # Errors
    /// [`MsalJsonError::InvalidExtraField`] when an unknown field kept in
    /// [`AccessToken::extra`] is not valid JSON.
    pub fn export<'a, I>(
        &self,
        partitions: I,
        unmodelled: Option<&UnmodelledSections>,
    ) -> Result<String, MsalJsonError>
    where
        I: IntoIterator<Item = &'a Partition>,
    {
        let mut doc = unmodelled.cloned().unwrap_or_default();
        for name in STANDARD_SECTIONS {
            doc.section_mut(name);
        }
        let mut app_metadata: Vec<(String, String)> = Vec::new();
        for partition in partitions {
            for token in partition.access_tokens() {
                let (key, value) = self.access_token_to_json(token)?;
                doc.section_mut(SECTION_ACCESS_TOKEN).insert(key, value);
                let environment = self.to_msal_environment(&token.environment).to_owned();
                app_metadata.push((environment, token.client_id.clone()));
            }
            for rt in partition.refresh_tokens() {
                let key = original_key(&rt.extra, self.refresh_token_key(rt));
                let target = extra_hint(&rt.extra, HINT_TARGET)
                    .filter(|t| ScopeSet::parse(t).normalized() == rt.target.normalized())
                    .unwrap_or_else(|| rt.target.to_target());
                let mut entry = Map::new();
                entry.insert(
                    "credential_type".into(),
                    Value::from(CREDENTIAL_TYPE_REFRESH_TOKEN),
                );
                entry.insert("secret".into(), Value::from(rt.secret.expose_secret()));
                entry.insert(
                    "home_account_id".into(),
                    Value::from(rt.home_account_id.as_str()),
                );
                entry.insert(
                    "environment".into(),
                    Value::from(self.to_msal_environment(&rt.environment)),
                );
                entry.insert("client_id".into(), Value::from(rt.client_id.as_str()));
                entry.insert("target".into(), Value::from(target));
                if rt.last_modification_time != 0 {
                    entry.insert(
                        "last_modification_time".into(),
                        Value::from(rt.last_modification_time.to_string()),
                    );
                }
                if let Some(family) = &rt.family_id {
                    entry.insert("family_id".into(), Value::from(family.as_str()));
                }
                write_extra(&mut entry, &rt.extra, &RT_FIELDS, &key)?;
                let environment = self.to_msal_environment(&rt.environment).to_owned();
                app_metadata.push((environment, rt.client_id.clone()));
                doc.section_mut(SECTION_REFRESH_TOKEN)
                    .entry(key)
                    .or_insert(Value::Object(entry));
            }
            for id in partition.id_tokens() {
                let key = original_key(&id.extra, self.id_token_key(id));
                let mut entry = Map::new();
                entry.insert(
                    "credential_type".into(),
                    Value::from(CREDENTIAL_TYPE_ID_TOKEN),
                );
                entry.insert("secret".into(), Value::from(id.secret.expose_secret()));
                entry.insert(
                    "home_account_id".into(),
                    Value::from(id.home_account_id.as_str()),
                );
                entry.insert(
                    "environment".into(),
                    Value::from(self.to_msal_environment(&id.environment)),
                );
                entry.insert("realm".into(), Value::from(id.realm.as_str()));
                entry.insert("client_id".into(), Value::from(id.client_id.as_str()));
                write_extra(&mut entry, &id.extra, &ID_FIELDS, &key)?;
                doc.section_mut(SECTION_ID_TOKEN)
                    .entry(key)
                    .or_insert(Value::Object(entry));
            }
            for account in partition.accounts() {
                let key = original_key(&account.extra, self.account_key(account));
                let mut entry = Map::new();
                entry.insert(
                    "home_account_id".into(),
                    Value::from(account.home_account_id.as_str()),
                );
                entry.insert(
                    "environment".into(),
                    Value::from(self.to_msal_environment(&account.environment)),
                );
                entry.insert("realm".into(), Value::from(account.realm.as_str()));
                entry.insert(
                    "local_account_id".into(),
                    Value::from(account.local_account_id.as_str()),
                );
                entry.insert("username".into(), Value::from(account.username.as_str()));
                entry.insert(
                    "authority_type".into(),
                    Value::from(account.authority_type.as_str()),
                );
                write_extra(&mut entry, &account.extra, &ACCOUNT_FIELDS, &key)?;
                doc.section_mut(SECTION_ACCOUNT)
                    .entry(key)
                    .or_insert(Value::Object(entry));
            }
        }
        let metadata = doc.section_mut(SECTION_APP_METADATA);
        for (environment, client_id) in app_metadata {
            // MSAL Python does not lower-case this key.
            let key = format!("appmetadata-{environment}-{client_id}");
            metadata.entry(key).or_insert_with(|| {
                let mut entry = Map::new();
                entry.insert("client_id".into(), Value::from(client_id));
                entry.insert("environment".into(), Value::from(environment));
                Value::Object(entry)
            });
        }
        // Serializing in-memory JSON values to a string cannot fail.
        Ok(serde_json::to_string_pretty(&doc.sections).unwrap_or_default())
    }

    fn access_token_to_json(&self, token: &AccessToken) -> Result<(String, Value), MsalJsonError> {
        let computed = self.export_key(token);
        // The imported key, if the key computed then is still the one computed now.
        let key = token
            .extra
            .iter()
            .find(|(n, _)| n == HINT_KEY)
            .and_then(|(_, raw)| serde_json::from_str::<(String, String)>(raw).ok())
            .filter(|(_, then)| *then == computed)
            .map_or(computed, |(original, _)| original);
        let mut entry = Map::new();
        entry.insert(
            "credential_type".into(),
            Value::from(CREDENTIAL_TYPE_ACCESS_TOKEN),
        );
        entry.insert("secret".into(), Value::from(token.secret.expose_secret()));
        entry.insert(
            "home_account_id".into(),
            token
                .home_account_id
                .as_deref()
                .map_or(Value::Null, Value::from),
        );
        entry.insert(
            "environment".into(),
            Value::from(self.to_msal_environment(&token.environment)),
        );
        entry.insert("client_id".into(), Value::from(token.client_id.as_str()));
        entry.insert("target".into(), Value::from(self.export_target(token)));
        entry.insert("realm".into(), Value::from(token.realm.as_str()));
        entry.insert("token_type".into(), Value::from(token.token_type.as_str()));
        entry.insert("cached_at".into(), Value::from(token.cached_at.to_string()));
        entry.insert(
            "expires_on".into(),
            Value::from(token.expires_on.to_string()),
        );
        entry.insert(
            "extended_expires_on".into(),
            Value::from(token.extended_expires_on.to_string()),
        );
        if let Some(refresh_on) = token.refresh_on {
            entry.insert("refresh_on".into(), Value::from(refresh_on.to_string()));
        }
        if let Some(key_id) = &token.key_id {
            entry.insert("key_id".into(), Value::from(key_id.as_str()));
        }
        for (name, raw) in &token.extra {
            if name.starts_with(HINT_PREFIX) || MODELLED_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let value: Value =
                serde_json::from_str(raw).map_err(|_| MsalJsonError::InvalidExtraField {
                    key: key.clone(),
                    field: name.clone(),
                })?;
            entry.insert(name.clone(), value);
        }
        Ok((key, Value::Object(entry)))
    }

    /// The `target` to write: the imported spelling when it still means the same scopes.
    fn export_target(&self, token: &AccessToken) -> String {
        hint(token, HINT_TARGET)
            .filter(|t| ScopeSet::parse(t).normalized() == token.target.normalized())
            .unwrap_or_else(|| token.target.to_target())
    }

    /// MSAL's key for `token` as exported: `home-env-accesstoken-client-realm-target`, lower-case.
    fn export_key(&self, token: &AccessToken) -> String {
        format!(
            "{}-{}-accesstoken-{}-{}-{}",
            token.home_account_id.as_deref().unwrap_or(""),
            self.to_msal_environment(&token.environment),
            token.client_id,
            token.realm,
            self.export_target(token),
        )
        .to_lowercase()
    }
}

/// A parsed refresh token, ID token or account.
enum Parsed {
    Rt(RefreshToken),
    Id(IdToken),
    Account(Account),
}

/// The user a partition's user entries belong to.
fn user_of(partition: &Partition) -> Option<&str> {
    partition
        .refresh_tokens()
        .map(|t| t.home_account_id.as_str())
        .chain(partition.id_tokens().map(|t| t.home_account_id.as_str()))
        .chain(
            partition
                .access_tokens()
                .filter_map(|t| t.home_account_id.as_deref()),
        )
        .next()
}

/// The client a partition's entries belong to.
fn client_of(partition: &Partition) -> Option<String> {
    partition
        .refresh_tokens()
        .map(|t| t.client_id.clone())
        .chain(partition.id_tokens().map(|t| t.client_id.clone()))
        .chain(partition.access_tokens().map(|t| t.client_id.clone()))
        .next()
}

/// Typed access to the fields of one refresh-token, ID-token or account entry.
struct EntryFields<'a> {
    section: &'static str,
    key: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> EntryFields<'a> {
    fn new(
        section: &'static str,
        key: &'a str,
        entry: &'a Value,
        credential_type: &str,
    ) -> Result<Self, MsalJsonError> {
        let invalid = |reason: String| MsalJsonError::InvalidEntry {
            section: section.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let fields = entry
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        if let Some(field) = ISOLATING_FIELDS.iter().find(|f| fields.contains_key(**f)) {
            return Err(invalid(format!("isolated by '{field}'")));
        }
        match fields.get("credential_type") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case(credential_type) => {}
            Some(other) => return Err(invalid(format!("credential_type is {other}"))),
        }
        Ok(EntryFields {
            section,
            key,
            fields,
        })
    }

    fn invalid(&self, reason: String) -> MsalJsonError {
        MsalJsonError::InvalidEntry {
            section: self.section.to_owned(),
            key: self.key.to_owned(),
            reason,
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, MsalJsonError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.invalid(format!("'{name}' is not a string"))),
        }
    }

    fn required(&self, name: &str) -> Result<&'a str, MsalJsonError> {
        self.string(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.invalid(format!("'{name}' is missing")))
    }

    fn timestamp(&self, name: &str) -> Result<Option<u64>, MsalJsonError> {
        unix_time(self.fields.get(name))
            .map_err(|value| self.invalid(format!("'{name}' is not a Unix time: {value}")))
    }

    /// Fields outside `modelled`, as (name, raw JSON).
    fn extra(&self, modelled: &[&str]) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter(|(name, _)| !modelled.contains(&name.as_str()))
            .filter(|(name, _)| !name.starts_with(HINT_PREFIX))
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect()
    }
}

/// Remember the imported key when the computed one differs.
/// A time field of an imported entry: absent or null, or a Unix time as MSAL writes it (a
/// string of digits; a JSON integer is accepted too). The one bound of every absolute time
/// from outside applies: above [`MAX_STORE_SECONDS`] (no store holds it, stores refuse such
/// rows) the entry is invalid, as it is for a negative or fractional time. `Err` carries the
/// offending JSON for the message.
fn unix_time(value: Option<&Value>) -> Result<Option<u64>, &Value> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    };
    match (seconds, value) {
        (Some(seconds), _) if seconds <= MAX_STORE_SECONDS => Ok(Some(seconds)),
        (_, Some(value)) => Err(value),
        (_, None) => Ok(None),
    }
}

fn push_key_hint(extra: &mut Vec<(String, String)>, original: &str, computed: &str) {
    if original != computed {
        let hint = Value::from(vec![original.to_owned(), computed.to_owned()]);
        extra.push((HINT_KEY.to_owned(), hint.to_string()));
    }
}

/// The imported key, if the key computed then is still the one computed now.
fn original_key(extra: &[(String, String)], computed: String) -> String {
    extra
        .iter()
        .find(|(n, _)| n == HINT_KEY)
        .and_then(|(_, raw)| serde_json::from_str::<(String, String)>(raw).ok())
        .filter(|(_, then)| *then == computed)
        .map_or(computed, |(original, _)| original)
}

/// Write unknown fields back (hints and modelled names skipped).
fn write_extra(
    entry: &mut Map<String, Value>,
    extra: &[(String, String)],
    modelled: &[&str],
    key: &str,
) -> Result<(), MsalJsonError> {
    for (name, raw) in extra {
        if name.starts_with(HINT_PREFIX) || modelled.contains(&name.as_str()) {
            continue;
        }
        let value: Value =
            serde_json::from_str(raw).map_err(|_| MsalJsonError::InvalidExtraField {
                key: key.to_owned(),
                field: name.clone(),
            })?;
        entry.insert(name.clone(), value);
    }
    Ok(())
}

/// A hint decoded from an `extra` list.
fn extra_hint(extra: &[(String, String)], name: &str) -> Option<String> {
    extra
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, raw)| serde_json::from_str::<String>(raw).ok())
}

/// A hint this module left in `extra`, decoded.
fn hint(token: &AccessToken, name: &str) -> Option<String> {
    token
        .extra
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, raw)| serde_json::from_str::<String>(raw).ok())
}

fn parse_document(json: &str) -> Result<BTreeMap<String, Map<String, Value>>, MsalJsonError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| MsalJsonError::Syntax(e.to_string()))?;
    let Value::Object(sections) = doc else {
        return Err(MsalJsonError::NotAnObject);
    };
    sections
        .into_iter()
        .map(|(name, section)| match section {
            Value::Object(entries) => Ok((name, entries)),
            _ => Err(MsalJsonError::SectionNotAnObject { section: name }),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::blob::BlobCodec;

    /// What MSAL Python 1.39 wrote after a client-credentials call to the emulator, plus user
    /// sections, unknown fields and entries tokenwell cannot model.
    const MSAL_CACHE: &str = r#"{
        "AccessToken": {
            "-127.0.0.1-accesstoken-app1-contoso-api://downstream/.default": {
                "credential_type": "AccessToken",
                "secret": "app-token",
                "home_account_id": null,
                "environment": "127.0.0.1",
                "client_id": "app1",
                "target": "api://downstream/.default",
                "realm": "contoso",
                "token_type": "Bearer",
                "cached_at": "1795564847",
                "expires_on": "1795568446",
                "extended_expires_on": "1795568446",
                "refresh_on": "1795566646",
                "future_field": {"nested": [1, 2.5, "x", null, true]},
                "another": 42
            },
            "uid.utid-login.example-accesstoken-app1-tenant1-email openid profile user.read": {
                "credential_type": "AccessToken",
                "secret": "user-token",
                "home_account_id": "uid.utid",
                "environment": "login.example",
                "client_id": "app1",
                "target": "email openid profile User.Read",
                "realm": "tenant1",
                "token_type": "pop",
                "key_id": "kid-1",
                "cached_at": "1795564000",
                "expires_on": "1795567600",
                "extended_expires_on": "1795571200"
            },
            "-login.example-atext-app1-contoso-api://x/.default-abc": {
                "credential_type": "AccessToken",
                "secret": "fmi-token",
                "home_account_id": null,
                "environment": "login.example",
                "client_id": "app1",
                "target": "api://x/.default",
                "realm": "contoso",
                "cached_at": "1",
                "expires_on": "2",
                "extended_expires_on": "2",
                "ext_cache_key": "abc"
            },
            "broken": {"credential_type": "AccessToken", "secret": "s", "expires_on": "soon"}
        },
        "RefreshToken": {
            "uid.utid-login.example-refreshtoken-app1--email openid profile user.read": {
                "credential_type": "RefreshToken",
                "secret": "rt",
                "home_account_id": "uid.utid",
                "environment": "login.example",
                "client_id": "app1",
                "target": "email openid profile User.Read",
                "last_modification_time": "1795564000",
                "family_id": "1"
            }
        },
        "IdToken": {
            "uid.utid-login.example-idtoken-app1-tenant1-": {
                "credential_type": "IdToken",
                "secret": "header.payload.signature",
                "home_account_id": "uid.utid",
                "environment": "login.example",
                "realm": "tenant1",
                "client_id": "app1"
            }
        },
        "Account": {
            "uid.utid-login.example-tenant1": {
                "home_account_id": "uid.utid",
                "environment": "login.example",
                "realm": "tenant1",
                "local_account_id": "uid",
                "username": "ada@example.com",
                "authority_type": "MSSTS",
                "account_source": "authorization_code"
            }
        },
        "AppMetadata": {
            "appmetadata-127.0.0.1-app1": {"client_id": "app1", "environment": "127.0.0.1"},
            "appmetadata-login.example-app1": {
                "client_id": "app1",
                "environment": "login.example",
                "family_id": "1"
            }
        },
        "FutureSection": {"k": {"v": 1}}
    }"#;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn import_groups_tokens_and_keeps_everything_else() {
        let imported = import(MSAL_CACHE).unwrap();
        assert_eq!(imported.access_token_count(), 2);
        let app = &imported.partitions[&PartitionKey::for_app("app1", "contoso")];
        let token = app.access_tokens().next().unwrap();
        assert_eq!(token.secret.expose_secret(), "app-token");
        assert_eq!(token.home_account_id, None);
        assert_eq!(token.environment, "127.0.0.1");
        assert_eq!(
            (token.cached_at, token.expires_on, token.refresh_on),
            (1795564847, 1795568446, Some(1795566646))
        );
        assert!(token.extra.contains(&("another".into(), "42".into())));
        let user = &imported.partitions[&PartitionKey::for_user("app1", "uid.utid")];
        let token = user.access_tokens().next().unwrap();
        assert_eq!(token.key_id.as_deref(), Some("kid-1"));
        assert_eq!(token.token_type, "pop");
        assert_eq!(token.target.normalized(), "email user.read");

        assert_eq!(imported.skipped.len(), 2, "{:?}", imported.skipped);
        assert!(imported.skipped.iter().any(|e| matches!(
            e,
            MsalJsonError::IsolatedAccessToken { field, .. } if field == "ext_cache_key"
        )));
        assert!(imported.skipped.iter().any(|e| matches!(
            e,
            MsalJsonError::InvalidAccessToken { key, .. } if key == "broken"
        )));
        for section in ["AppMetadata", "FutureSection"] {
            assert!(imported.unmodelled.section(section).is_some(), "{section}");
        }
        for section in ["RefreshToken", "IdToken", "Account"] {
            assert!(
                imported.unmodelled.section(section).is_none(),
                "{section} is modelled"
            );
        }
        let rt = user.refresh_tokens().next().unwrap();
        assert_eq!(rt.secret.expose_secret(), "rt");
        assert_eq!(rt.family_id.as_deref(), Some("1"));
        assert_eq!(rt.last_modification_time, 1795564000);
        assert_eq!(user.id_tokens().count(), 1);
        let account = user.accounts().next().unwrap();
        assert_eq!(account.username, "ada@example.com");
        assert_eq!(account.authority_type, "MSSTS");
        let index = &imported.partitions[&PartitionKey::for_user("app1", "")];
        assert_eq!(
            index.accounts().count(),
            1,
            "the account index lists the user"
        );
        assert_eq!(
            imported.unmodelled.section("AccessToken").unwrap().len(),
            2,
            "entries not imported stay raw"
        );
        let debug = format!("{:?}", imported.unmodelled);
        assert!(!debug.contains("rt") || !debug.contains("\"rt\""));
        assert!(
            !debug.contains("header.payload"),
            "Debug hides secrets: {debug}"
        );
    }

    #[test]
    fn export_of_import_is_lossless() {
        let imported = import(MSAL_CACHE).unwrap();
        let exported = export(imported.partitions.values(), Some(&imported.unmodelled)).unwrap();
        assert_eq!(json(&exported), json(MSAL_CACHE));
    }

    #[test]
    fn lossless_through_the_blob_codec() {
        let imported = import(MSAL_CACHE).unwrap();
        let codec = BlobCodec::plain();
        let reloaded: Vec<Partition> = imported
            .partitions
            .iter()
            .map(|(key, p)| {
                let stored = crate::store::StoredPartition::of(codec.encode_partition(key, p));
                codec.decode_partition(key, &stored, 0).unwrap()
            })
            .collect();
        let exported = export(&reloaded, Some(&imported.unmodelled)).unwrap();
        assert_eq!(json(&exported), json(MSAL_CACHE));
        let unmodelled = UnmodelledSections::from_json(&imported.unmodelled.to_json()).unwrap();
        assert_eq!(unmodelled, imported.unmodelled);
    }

    #[test]
    fn export_writes_what_msal_writes() {
        let mut token = AccessToken::new(
            "127.0.0.1:8443",
            "App1",
            "contoso",
            ScopeSet::parse("api://downstream/.default"),
            "Bearer",
            TokenSecret::new("t"),
            100,
            3700,
        );
        token.refresh_on = Some(1900);
        let partition = Partition::from_access_tokens([token]);
        let format = MsalCacheFormat::new().environment_alias("127.0.0.1", "127.0.0.1:8443");
        let exported = json(&format.export([&partition], None).unwrap());
        assert_eq!(
            exported,
            json(
                r#"{
                "AccessToken": {
                    "-127.0.0.1-accesstoken-app1-contoso-api://downstream/.default": {
                        "credential_type": "AccessToken",
                        "secret": "t",
                        "home_account_id": null,
                        "environment": "127.0.0.1",
                        "client_id": "App1",
                        "target": "api://downstream/.default",
                        "realm": "contoso",
                        "token_type": "Bearer",
                        "cached_at": "100",
                        "expires_on": "3700",
                        "extended_expires_on": "3700",
                        "refresh_on": "1900"
                    }
                },
                "RefreshToken": {}, "IdToken": {}, "Account": {},
                "AppMetadata": {
                    "appmetadata-127.0.0.1-App1": {"client_id": "App1", "environment": "127.0.0.1"}
                }
            }"#
            )
        );
        // And the alias maps it back.
        let imported = format.import(&exported.to_string()).unwrap();
        let back = imported.partitions.values().next().unwrap();
        let token = back.access_tokens().next().unwrap();
        assert_eq!(token.environment, "127.0.0.1:8443");
        assert!(token.extra.is_empty(), "no hints needed: {:?}", token.extra);
    }

    #[test]
    fn duplicates_keep_the_newer_and_lose_nothing() {
        let doc = r#"{"AccessToken": {
            "a": {"credential_type": "AccessToken", "secret": "old", "home_account_id": null,
                  "environment": "e", "client_id": "c", "realm": "r", "target": "S1 s2",
                  "token_type": "Bearer", "cached_at": "1", "expires_on": "9",
                  "extended_expires_on": "9"},
            "b": {"credential_type": "AccessToken", "secret": "new", "home_account_id": null,
                  "environment": "e", "client_id": "c", "realm": "r", "target": "s2 s1",
                  "token_type": "Bearer", "cached_at": "2", "expires_on": "9",
                  "extended_expires_on": "9"}
        }}"#;
        let imported = import(doc).unwrap();
        assert_eq!(imported.access_token_count(), 1);
        let partition = imported.partitions.values().next().unwrap();
        assert_eq!(
            partition
                .access_tokens()
                .next()
                .unwrap()
                .secret
                .expose_secret(),
            "new"
        );
        assert_eq!(
            imported.skipped,
            vec![MsalJsonError::DuplicateAccessToken { key: "a".into() }]
        );
        let exported = export(imported.partitions.values(), Some(&imported.unmodelled)).unwrap();
        let exported = json(&exported);
        assert_eq!(exported["AccessToken"], json(doc)["AccessToken"]);
    }

    /// Issue 14, found by the `msal_json` fuzz target: entries that differ only in the case of
    /// their token type are one token (compared case-insensitively, as the cache does). The
    /// newer is imported and the other kept raw; both used to be imported, and the partition
    /// silently kept one of them.
    #[test]
    fn token_types_differing_in_case_are_duplicates() {
        let doc = r#"{"AccessToken": {
            "a": {"credential_type": "AccessToken", "secret": "old", "home_account_id": null,
                  "environment": "e", "client_id": "c", "realm": "r", "target": "s1",
                  "token_type": "Bearer", "cached_at": "1", "expires_on": "9",
                  "extended_expires_on": "9"},
            "b": {"credential_type": "AccessToken", "secret": "new", "home_account_id": null,
                  "environment": "e", "client_id": "c", "realm": "r", "target": "s1",
                  "token_type": "bearer", "cached_at": "2", "expires_on": "9",
                  "extended_expires_on": "9"}
        }}"#;
        let imported = import(doc).unwrap();
        assert_eq!(imported.access_token_count(), 1);
        let partition = imported.partitions.values().next().unwrap();
        let token = partition.access_tokens().next().unwrap();
        assert_eq!(token.secret.expose_secret(), "new");
        assert_eq!(
            imported.skipped,
            vec![MsalJsonError::DuplicateAccessToken { key: "a".into() }]
        );
        let exported = export(imported.partitions.values(), Some(&imported.unmodelled)).unwrap();
        assert_eq!(json(&exported)["AccessToken"], json(doc)["AccessToken"]);
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        assert!(matches!(import("{"), Err(MsalJsonError::Syntax(_))));
        assert!(matches!(import(""), Err(MsalJsonError::Syntax(_))));
        assert_eq!(import("[1]").unwrap_err(), MsalJsonError::NotAnObject);
        assert_eq!(
            import(r#"{"AccessToken": []}"#).unwrap_err(),
            MsalJsonError::SectionNotAnObject {
                section: "AccessToken".into()
            }
        );
        for entry in [
            r#"1"#,
            r#"{"secret": 5}"#,
            r#"{"credential_type": "RefreshToken", "secret": "s"}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t"}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": "-5"}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": 1.5}"#,
            // Issue 14: absurd times are invalid entries (the bound every store applies), not
            // values that outlive any store.
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": "18446744073709551615"}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": 9007199254740992}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": "100", "refresh_on": "99999999999999999999"}"#,
            r#"{"secret": "s", "environment": "e", "client_id": "c", "realm": "r", "target": "t",
                "expires_on": "100", "cached_at": 18446744073709551615}"#,
        ] {
            let doc = format!(r#"{{"AccessToken": {{"k": {entry}}}}}"#);
            let imported = import(&doc).unwrap();
            assert_eq!(imported.access_token_count(), 0, "{entry}");
            assert_eq!(imported.skipped.len(), 1, "{entry}");
        }
    }

    /// Issue 14: a refresh token's absurd `last_modification_time` is an invalid entry, like
    /// an access token's absurd times; the largest time a store holds is still accepted.
    #[test]
    fn absurd_refresh_token_time_is_an_invalid_entry() {
        let rt = |time: &str| {
            format!(
                r#"{{"RefreshToken": {{"k": {{"credential_type": "RefreshToken", "secret": "s",
                    "home_account_id": "u.t", "environment": "e", "client_id": "c",
                    "last_modification_time": {time}}}}}}}"#
            )
        };
        for absurd in [r#""18446744073709551615""#, "9007199254740992"] {
            let imported = import(&rt(absurd)).unwrap();
            assert_eq!(imported.skipped.len(), 1, "{absurd}");
            assert!(
                matches!(&imported.skipped[0], MsalJsonError::InvalidEntry { reason, .. }
                    if reason.contains("last_modification_time")),
                "{:?}",
                imported.skipped
            );
        }
        let imported = import(&rt(r#""9007199254740991""#)).unwrap();
        assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    }

    /// Issue 14, found by the `msal_json` fuzz target: numbers in fields and sections tokenwell
    /// keeps verbatim come back exactly, so export ∘ import is a fixed point. serde_json's
    /// default float parser may miss the nearest double by one ulp; this one printed back as
    /// 1.8888888888888892e99 and drifted on every round trip.
    #[test]
    fn kept_numbers_survive_round_trips_exactly() {
        let doc = r#"{"AccessToken": {"k": {"secret": "s", "odd": 1.888888888888889e99}},
                      "Future": {"k": {"v": 1.888888888888889e99}}}"#;
        let mut text = doc.to_owned();
        for _ in 0..2 {
            let imported = import(&text).unwrap();
            text = export(imported.partitions.values(), Some(&imported.unmodelled)).unwrap();
            let value = json(&text);
            for kept in [
                &value["AccessToken"]["k"]["odd"],
                &value["Future"]["k"]["v"],
            ] {
                assert_eq!(kept.as_f64(), Some(1.888888888888889e99), "{text}");
            }
        }
    }

    #[test]
    fn invalid_extra_is_an_export_error() {
        let mut token = AccessToken::new(
            "e",
            "c",
            "r",
            ScopeSet::parse("s"),
            "Bearer",
            TokenSecret::new("t"),
            1,
            2,
        );
        token.extra.push(("odd".into(), "{not json".into()));
        let partition = Partition::from_access_tokens([token]);
        assert!(matches!(
            export([&partition], None),
            Err(MsalJsonError::InvalidExtraField { field, .. }) if field == "odd"
        ));
    }
}
