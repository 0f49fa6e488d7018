//! MSAL cache keys, and the hints in `extra` that keep an imported key or `target` spelling
//! through a round trip.

use super::*;

impl MsalCacheFormat {
    pub(super) fn refresh_token_key(&self, rt: &RefreshToken) -> String {
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

    pub(super) fn id_token_key(&self, id: &IdToken) -> String {
        format!(
            "{}-{}-idtoken-{}-{}-",
            id.home_account_id,
            self.to_msal_environment(&id.environment),
            id.client_id,
            id.realm
        )
        .to_lowercase()
    }

    pub(super) fn account_key(&self, account: &Account) -> String {
        format!(
            "{}-{}-{}",
            account.home_account_id,
            self.to_msal_environment(&account.environment),
            account.realm
        )
        .to_lowercase()
    }

    /// The `target` to write: the imported spelling when it still means the same scopes.
    pub(super) fn export_target(&self, token: &AccessToken) -> String {
        hint(token, HINT_TARGET)
            .filter(|t| ScopeSet::parse(t).normalized() == token.target.normalized())
            .unwrap_or_else(|| token.target.to_target())
    }

    /// MSAL's key for `token` as exported: `home-env-accesstoken-client-realm-target`, lower-case.
    pub(super) fn export_key(&self, token: &AccessToken) -> String {
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

/// The imported key, if the key computed then is still the one computed now.
pub(super) fn original_key(extra: &[(String, String)], computed: String) -> String {
    extra
        .iter()
        .find(|(n, _)| n == HINT_KEY)
        .and_then(|(_, raw)| serde_json::from_str::<(String, String)>(raw).ok())
        .filter(|(_, then)| *then == computed)
        .map_or(computed, |(original, _)| original)
}

/// A hint decoded from an `extra` list.
pub(super) fn extra_hint(extra: &[(String, String)], name: &str) -> Option<String> {
    extra
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, raw)| serde_json::from_str::<String>(raw).ok())
}

/// A hint this module left in `extra`, decoded.
pub(super) fn hint(token: &AccessToken, name: &str) -> Option<String> {
    token
        .extra
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, raw)| serde_json::from_str::<String>(raw).ok())
}
