//! How a confidential client proves itself at the token endpoint (OpenID Connect Core §9):
//! the secret in the form, the secret in an `Authorization: Basic` header, or a signed JWT
//! assertion. Configured, or chosen from what the provider publishes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::authority::{Authority, AuthorityKind};
use crate::error::{Error, Result};

/// A token-endpoint client authentication method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// `client_secret` in the form body (what Entra ID expects).
    ClientSecretPost,
    /// `Authorization: Basic base64(client_id:client_secret)` (the OAuth2 default for generic
    /// providers).
    ClientSecretBasic,
    /// A signed JWT (`client_assertion`): certificates, keys and federated assertions.
    PrivateKeyJwt,
}

impl ClientAuthMethod {
    /// The name providers publish in `token_endpoint_auth_methods_supported`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// Turn a form the credential filled into what the chosen method sends: the form, and the
/// `Authorization` header value for `client_secret_basic`.
///
/// `configured` wins; otherwise a secret goes in the form for Entra-family and AD FS
/// authorities, and for a generic issuer by what it publishes (`client_secret_basic` first,
/// the OAuth2 default, also when it publishes nothing).
pub(crate) fn apply_method(
    form: &mut Vec<(&'static str, String)>,
    client_id: &str,
    authority: &Authority,
    configured: Option<ClientAuthMethod>,
    published: Option<&[String]>,
) -> Result<Option<String>> {
    let secret_at = form.iter().position(|(name, _)| *name == "client_secret");
    let has_assertion = form.iter().any(|(name, _)| *name == "client_assertion");
    let method = match configured {
        Some(method) => method,
        None if has_assertion => ClientAuthMethod::PrivateKeyJwt,
        None if secret_at.is_none() => return Ok(None), // a public client
        None => secret_method(authority, published)?,
    };
    match (method, secret_at) {
        (ClientAuthMethod::ClientSecretPost, Some(_)) => Ok(None),
        (ClientAuthMethod::ClientSecretBasic, Some(at)) => {
            let (_, secret) = form.remove(at);
            // RFC 6749 §2.3.1: both halves are form-urlencoded before the base64.
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(client_id), encode(&secret));
            Ok(Some(format!("Basic {}", STANDARD.encode(pair))))
        }
        (ClientAuthMethod::PrivateKeyJwt, None) if has_assertion => Ok(None),
        (method, _) => Err(Error::configuration(format!(
            "client authentication method {} does not fit the credential (a {})",
            method.as_str(),
            if has_assertion {
                "signed assertion"
            } else if secret_at.is_some() {
                "client secret"
            } else {
                "public client without one"
            }
        ))),
    }
}

fn secret_method(authority: &Authority, published: Option<&[String]>) -> Result<ClientAuthMethod> {
    if authority.kind() != AuthorityKind::Oidc {
        return Ok(ClientAuthMethod::ClientSecretPost);
    }
    let Some(published) = published else {
        return Ok(ClientAuthMethod::ClientSecretBasic);
    };
    let offers = |m: ClientAuthMethod| published.iter().any(|p| p == m.as_str());
    [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
    ]
    .into_iter()
    .find(|m| offers(*m))
    .ok_or_else(|| {
        Error::configuration(format!(
            "the provider accepts none of client_secret_basic and client_secret_post (it \
             publishes {published:?}); use a certificate or key credential"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_form() -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", "app 1".to_owned()),
            ("client_secret", "s3:cr%t".to_owned()),
        ]
    }

    #[test]
    fn basic_moves_the_encoded_secret_to_the_header() {
        let issuer = Authority::oidc("https://id.example.com").unwrap();
        let mut form = secret_form();
        let header = apply_method(&mut form, "app 1", &issuer, None, None)
            .unwrap()
            .unwrap();
        assert!(form.iter().all(|(name, _)| *name != "client_secret"));
        let decoded = STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"app+1:s3%3Acr%25t");
    }

    #[test]
    fn published_methods_and_configuration_choose() {
        let issuer = Authority::oidc("https://id.example.com").unwrap();
        let entra = Authority::parse("https://login.example/t").unwrap();
        let post_only = vec![
            "client_secret_post".to_owned(),
            "private_key_jwt".to_owned(),
        ];
        let mut form = secret_form();
        assert_eq!(
            apply_method(&mut form, "a", &issuer, None, Some(&post_only)).unwrap(),
            None
        );
        assert!(form.iter().any(|(name, _)| *name == "client_secret"));
        let mut form = secret_form();
        assert_eq!(
            apply_method(&mut form, "a", &entra, None, None).unwrap(),
            None
        );
        let mut form = secret_form();
        assert!(
            apply_method(
                &mut form,
                "a",
                &entra,
                Some(ClientAuthMethod::ClientSecretBasic),
                None
            )
            .unwrap()
            .is_some()
        );
        let jwt_only = vec!["private_key_jwt".to_owned()];
        let error =
            apply_method(&mut secret_form(), "a", &issuer, None, Some(&jwt_only)).unwrap_err();
        assert!(
            error.to_string().contains("none of client_secret_basic"),
            "{error}"
        );
        let error = apply_method(
            &mut secret_form(),
            "a",
            &issuer,
            Some(ClientAuthMethod::PrivateKeyJwt),
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
        let mut assertion = vec![("client_assertion", "jwt".to_owned())];
        assert_eq!(
            apply_method(&mut assertion, "a", &issuer, None, Some(&jwt_only)).unwrap(),
            None
        );
    }
}
