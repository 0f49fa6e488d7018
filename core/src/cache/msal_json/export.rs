//! Export: partitions (and the raw sections an import kept) back to MSAL cache JSON.

use super::keys::{extra_hint, original_key};
use super::*;

impl MsalCacheFormat {
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
                app_metadata.push((environment, token.client_id.to_string()));
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
        entry.insert("realm".into(), Value::from(&*token.realm));
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
}

/// Write unknown fields back (hints and modelled names skipped).
pub(super) fn write_extra(
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
