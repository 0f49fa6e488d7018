//! Import: MSAL cache JSON into partitions, raw sections and skipped entries.

use super::*;
use crate::intern::SharedStr;

impl MsalCacheFormat {
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
    pub(super) fn import_user_entries(
        &self,
        entries: Vec<(String, String, Value)>,
        result: &mut MsalImport,
    ) {
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

    pub(super) fn refresh_token_from_json(
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

    pub(super) fn id_token_from_json(
        &self,
        key: &str,
        entry: &Value,
    ) -> Result<IdToken, MsalJsonError> {
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

    pub(super) fn account_from_json(
        &self,
        key: &str,
        entry: &Value,
    ) -> Result<Account, MsalJsonError> {
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

    pub(super) fn access_token_from_json(
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
            .map(Into::into);
        token.extended_expires_on = timestamp("extended_expires_on")?.unwrap_or(expires_on);
        token.refresh_on = timestamp("refresh_on")?;
        token.key_id = string("key_id")?.map(SharedStr::from);
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
        .chain(partition.access_tokens().map(|t| t.client_id.to_string()))
        .next()
}

/// Typed access to the fields of one refresh-token, ID-token or account entry.
struct EntryFields<'a> {
    section: &'static str,
    key: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> EntryFields<'a> {
    pub(super) fn new(
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

    pub(super) fn invalid(&self, reason: String) -> MsalJsonError {
        MsalJsonError::InvalidEntry {
            section: self.section.to_owned(),
            key: self.key.to_owned(),
            reason,
        }
    }

    pub(super) fn string(&self, name: &str) -> Result<Option<&'a str>, MsalJsonError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.invalid(format!("'{name}' is not a string"))),
        }
    }

    pub(super) fn required(&self, name: &str) -> Result<&'a str, MsalJsonError> {
        self.string(name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.invalid(format!("'{name}' is missing")))
    }

    pub(super) fn timestamp(&self, name: &str) -> Result<Option<u64>, MsalJsonError> {
        unix_time(self.fields.get(name))
            .map_err(|value| self.invalid(format!("'{name}' is not a Unix time: {value}")))
    }

    /// Fields outside `modelled`, as (name, raw JSON).
    pub(super) fn extra(&self, modelled: &[&str]) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter(|(name, _)| !modelled.contains(&name.as_str()))
            .filter(|(name, _)| !name.starts_with(HINT_PREFIX))
            .map(|(name, value)| (name.clone(), value.to_string()))
            .collect()
    }
}

/// A time field of an imported entry: absent or null, or a Unix time as MSAL writes it (a
/// string of digits; a JSON integer is accepted too). The one bound of every absolute time
/// from outside applies: above [`MAX_STORE_SECONDS`] (no store holds it, stores refuse such
/// rows) the entry is invalid, as it is for a negative or fractional time. `Err` carries the
/// offending JSON for the message.
pub(super) fn unix_time(value: Option<&Value>) -> Result<Option<u64>, &Value> {
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

pub(super) fn push_key_hint(extra: &mut Vec<(String, String)>, original: &str, computed: &str) {
    if original != computed {
        let hint = Value::from(vec![original.to_owned(), computed.to_owned()]);
        extra.push((HINT_KEY.to_owned(), hint.to_string()));
    }
}

pub(super) fn parse_document(
    json: &str,
) -> Result<BTreeMap<String, Map<String, Value>>, MsalJsonError> {
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
