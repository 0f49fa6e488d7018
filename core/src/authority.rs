//! Authorities: where tokens come from, by kind. Entra ID (`https://host/{tenant}`), Entra
//! External ID (`{tenant}.ciamlogin.com`), Azure AD B2C (`…/{tenant}/{policy}`), AD FS
//! (`…/adfs`) have well-known endpoint paths; a generic OpenID Connect issuer's endpoints are
//! read from its discovery document. Plain HTTP only on loopback (the emulator, local rigs).

use std::net::IpAddr;

use crate::error::{Error, Result};

/// Which kind of identity provider an [`Authority`] names; it decides the endpoint paths and
/// what the cache keys use as the realm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthorityKind {
    /// Entra ID: `https://login.microsoftonline.com/{tenant}` (tenant id, domain, `common`,
    /// `organizations`, `consumers`), on any cloud's host.
    Entra,
    /// Entra External ID: `https://{tenant}.ciamlogin.com[/{tenant}.onmicrosoft.com | /{id}]`.
    Ciam,
    /// Azure AD B2C: `https://{tenant}.b2clogin.com/{tenant}.onmicrosoft.com/{policy}` (also
    /// `/tfp/{tenant}/{policy}`, on any host; policies are named `B2C_1_…` or `B2C_1A_…`).
    B2c,
    /// AD FS: `https://host/adfs`.
    Adfs,
    /// A generic OpenID Connect issuer; endpoints come from
    /// `{issuer}/.well-known/openid-configuration`.
    Oidc,
}

/// A parsed authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    kind: AuthorityKind,
    scheme: String,
    /// `host[:port]`, lower-cased.
    host: String,
    /// Entra / CIAM / B2C: the tenant; AD FS: `adfs`; OIDC: the issuer (the realm of cache keys).
    tenant: String,
    /// B2C: the user-flow policy.
    policy: Option<String>,
}

/// Endpoints an authority's flows talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub token: String,
    pub device_authorization: Option<String>,
    pub authorization: Option<String>,
    /// The provider's `token_endpoint_auth_methods_supported`, when it published it.
    pub auth_methods: Option<Vec<String>>,
}

/// URL parts every authority kind checks the same way.
struct Parsed {
    scheme: String,
    host: String,
    segments: Vec<String>,
}

fn parse_url(url: &str, what: &str) -> Result<Parsed> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::configuration(format!("{what} '{url}' is not a URL: {e}")))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| Error::configuration(format!("{what} '{url}' has no scheme")))?
        .to_ascii_lowercase();
    let authority = uri
        .authority()
        .ok_or_else(|| Error::configuration(format!("{what} '{url}' has no host")))?;
    if uri.query().is_some() {
        return Err(Error::configuration(format!(
            "{what} '{url}' must not have a query"
        )));
    }
    if authority.as_str().contains('@') {
        // Never echo the URL: it holds a password.
        return Err(Error::configuration(format!(
            "the {what} URL holds a user name or password; remove it (credentials go in the \
             application's credential, never in the {what})"
        )));
    }
    // The raw port text (after an IPv6 literal's `]`): `http::Uri` hides ports it cannot
    // read (`:99999`) rather than refusing them.
    let raw = authority.as_str();
    let after_host = raw.rfind(']').map_or(raw, |end| &raw[end..]);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !matches!(port.parse::<u16>(), Ok(1..))
    {
        return Err(Error::configuration(format!(
            "{what} '{url}' has an invalid port '{port}' (1-65535)"
        )));
    }
    let host_only = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    require_https(&scheme, host_only, url, what)?;
    let segments: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for segment in &segments {
        let decoded_dots = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded_dots == "." || decoded_dots == ".." || segment.contains('%') {
            return Err(Error::configuration(format!(
                "{what} '{url}' has an invalid path segment '{segment}' (dot segments and \
                 percent-encoding are refused)"
            )));
        }
    }
    Ok(Parsed {
        scheme,
        host: authority.as_str().to_ascii_lowercase(),
        segments,
    })
}

/// HTTPS, or plain HTTP to a loopback host.
fn require_https(scheme: &str, host: &str, url: &str, what: &str) -> Result<()> {
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err(Error::configuration(format!(
            "{what} '{url}' uses plain HTTP; HTTPS is required except on loopback"
        ))),
        other => Err(Error::configuration(format!(
            "{what} '{url}' has unsupported scheme '{other}'"
        ))),
    }
}

/// An endpoint a discovery document names must be HTTPS (or loopback HTTP) too: a document
/// must not send secrets to a plain-HTTP host.
pub(crate) fn check_endpoint(url: &str, what: &str) -> Result<()> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::configuration(format!("{what} '{url}' is not a URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let host = uri
        .host()
        .ok_or_else(|| Error::configuration(format!("{what} '{url}' has no host")))?;
    require_https(
        &scheme,
        host.trim_start_matches('[').trim_end_matches(']'),
        url,
        what,
    )
}

impl Authority {
    /// Parse an authority URL and tell its kind from its shape:
    /// `https://login.microsoftonline.com/{tenant}` (Entra ID, a trailing slash is fine),
    /// `https://{tenant}.ciamlogin.com[/…]` (External ID), `https://host/{tenant}/{policy}` or
    /// `https://host/tfp/{tenant}/{policy}` (B2C), `https://host/adfs` (AD FS). A generic
    /// OpenID Connect issuer is [`Authority::oidc`].
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL without a tenant, a query, a password, an invalid
    /// port, dot segments, or plain HTTP to a host that is not loopback.
    pub fn parse(url: &str) -> Result<Self> {
        let Parsed {
            scheme,
            host,
            mut segments,
        } = parse_url(url, "authority")?;
        let host_name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        let make = |kind, tenant: String, policy| Authority {
            kind,
            scheme: scheme.clone(),
            host: host.clone(),
            tenant,
            policy,
        };
        if let Some(sub) = host_name.strip_suffix(".ciamlogin.com") {
            return match segments.as_slice() {
                [] => Ok(make(
                    AuthorityKind::Ciam,
                    format!("{sub}.onmicrosoft.com"),
                    None,
                )),
                [tenant] => Ok(make(AuthorityKind::Ciam, tenant.clone(), None)),
                _ => Err(Error::configuration(format!(
                    "authority '{url}' has more than a tenant in its path"
                ))),
            };
        }
        // `tfp` introduces `{tenant}/{policy}` only: with fewer segments after it, it is the
        // tenant itself (`https://host/tfp` names a tenant called `tfp`), so that every
        // authority's printed URL parses back to it.
        if segments.len() == 3 && segments[0].eq_ignore_ascii_case("tfp") {
            segments.remove(0);
        }
        let b2c_host = host_name.ends_with(".b2clogin.com");
        // B2C policies are `B2C_1_…` (user flows) or `B2C_1A_…` (custom policies): a second
        // segment of another name is a mistake (`…/{tenant}/v2.0`), not a policy.
        let is_policy =
            |s: &str| s.len() > 4 && s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("b2c_"));
        match segments.as_slice() {
            [] => Err(Error::configuration(format!(
                "authority '{url}' has no tenant: expected https://host/{{tenant}}; for a \
                 generic OpenID Connect provider use Authority::oidc(issuer) (the builders' \
                 .oidc_authority(issuer))"
            ))),
            [adfs] if adfs.eq_ignore_ascii_case("adfs") => {
                Ok(make(AuthorityKind::Adfs, "adfs".to_owned(), None))
            }
            [_] if b2c_host => Err(Error::configuration(format!(
                "B2C authority '{url}' has no policy: expected \
                 https://{{tenant}}.b2clogin.com/{{tenant}}.onmicrosoft.com/{{policy}}"
            ))),
            [tenant] => Ok(make(AuthorityKind::Entra, tenant.clone(), None)),
            [tenant, policy] if is_policy(policy) => Ok(make(
                AuthorityKind::B2c,
                tenant.clone(),
                Some(policy.clone()),
            )),
            _ => Err(Error::configuration(format!(
                "authority '{url}' has too many path segments: expected https://host/{{tenant}} \
                 or, for B2C, https://host/{{tenant}}/{{B2C_1_policy}}"
            ))),
        }
    }

    /// A generic OpenID Connect issuer (`https://issuer.example`, `https://host/realms/acme`):
    /// the token, device-authorization and authorization endpoints are read from
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must match this one.
    ///
    /// # Errors
    /// [`Error::Configuration`] as for [`Authority::parse`].
    pub fn oidc(issuer: &str) -> Result<Self> {
        let Parsed {
            scheme,
            host,
            segments,
        } = parse_url(issuer, "OpenID Connect issuer")?;
        let path: String = segments.iter().map(|s| format!("/{s}")).collect();
        Ok(Authority {
            kind: AuthorityKind::Oidc,
            tenant: format!("{scheme}://{host}{path}"),
            scheme,
            host,
            policy: None,
        })
    }

    /// The kind of identity provider.
    pub fn kind(&self) -> AuthorityKind {
        self.kind
    }

    /// The same authority for another tenant (Entra ID and External ID only).
    ///
    /// # Errors
    /// [`Error::Configuration`] for other kinds, or a tenant that is not a GUID or a domain
    /// name (see `validate_tenant`: never a path, `..` or an escaped character).
    pub fn with_tenant(&self, tenant: &str) -> Result<Self> {
        if !matches!(self.kind, AuthorityKind::Entra | AuthorityKind::Ciam) {
            return Err(Error::configuration(format!(
                "a tenant override needs an Entra ID authority, not {:?} '{}'",
                self.kind,
                self.url()
            )));
        }
        validate_tenant(tenant)?;
        Ok(Authority {
            tenant: tenant.to_owned(),
            ..self.clone()
        })
    }

    /// The tenant (id, domain or alias) of Entra ID, External ID and B2C authorities.
    pub fn tenant(&self) -> Option<&str> {
        match self.kind {
            AuthorityKind::Entra | AuthorityKind::Ciam | AuthorityKind::B2c => Some(&self.tenant),
            AuthorityKind::Adfs | AuthorityKind::Oidc => None,
        }
    }

    /// What the cache keys use as the realm: the tenant, `adfs`, or a generic issuer's URL.
    pub fn realm(&self) -> &str {
        &self.tenant
    }

    /// `host[:port]`: MSAL's `environment` cache field.
    pub fn environment(&self) -> &str {
        &self.host
    }

    /// The authority as a URL: `scheme://host[:port]/tenant[/policy]`, `…/adfs`, or the issuer.
    pub fn url(&self) -> String {
        match (&self.kind, &self.policy) {
            (AuthorityKind::Oidc, _) => self.tenant.clone(),
            (_, Some(policy)) => {
                format!("{}://{}/{}/{policy}", self.scheme, self.host, self.tenant)
            }
            (_, None) => format!("{}://{}/{}", self.scheme, self.host, self.tenant),
        }
    }

    /// The OAuth2 token endpoint, when the kind fixes it (`None` for a generic issuer, whose
    /// endpoint discovery reveals).
    pub fn token_endpoint(&self) -> Option<String> {
        self.well_known_endpoints().map(|e| e.token)
    }

    /// Where a generic issuer publishes its OpenID Connect metadata.
    pub fn discovery_url(&self) -> String {
        match self.kind {
            AuthorityKind::Oidc => format!("{}/.well-known/openid-configuration", self.tenant),
            _ => format!("{}/v2.0/.well-known/openid-configuration", self.url()),
        }
    }

    /// Whether token requests ask for `client_info` (Entra's home-account source) and use
    /// Entra's multi-tenant aliases.
    pub(crate) fn is_entra_family(&self) -> bool {
        matches!(
            self.kind,
            AuthorityKind::Entra | AuthorityKind::Ciam | AuthorityKind::B2c
        )
    }

    /// The endpoints of the kinds with fixed paths.
    pub(crate) fn well_known_endpoints(&self) -> Option<Endpoints> {
        let oauth2 = match self.kind {
            AuthorityKind::Entra | AuthorityKind::Ciam | AuthorityKind::B2c => {
                format!("{}/oauth2/v2.0", self.url())
            }
            AuthorityKind::Adfs => format!("{}/oauth2", self.url()),
            AuthorityKind::Oidc => return None,
        };
        Some(Endpoints {
            token: format!("{oauth2}/token"),
            // B2C has no device-code flow.
            device_authorization: (self.kind != AuthorityKind::B2c)
                .then(|| format!("{oauth2}/devicecode")),
            authorization: Some(format!("{oauth2}/authorize")),
            auth_methods: None,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The one rule for a tenant a caller names per request (`with_tenant`): a GUID or a domain
/// name (`contoso.onmicrosoft.com`; a single label such as `common` or `organizations` is
/// one too) — letters, digits and `-` in dot-separated labels of 1 to 63 characters, not
/// starting or ending with `-`, 253 characters at most. Never a path, a query, an
/// escaped character, `.` or `..`: the tenant becomes a segment of the token endpoint's URL
/// and of cache keys, and `../../other` must not reach tenant `other`.
///
/// # Errors
/// [`Error::Configuration`] naming the rule.
pub(crate) fn validate_tenant(tenant: &str) -> Result<()> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    // A GUID is a single label of hex digits and dashes: the label rule covers it.
    if !tenant.is_empty() && tenant.len() <= 253 && tenant.split('.').all(label_ok) {
        return Ok(());
    }
    // The name, shortened and with control characters escaped, so the message stays one line.
    let shown: String = tenant
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect();
    Err(Error::configuration(format!(
        "'{shown}' is not a tenant: a tenant is a GUID or a domain name (letters, digits, '-' \
         and '.'), never a path"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: passwords, invalid ports and dot segments are refused, and the error never
    /// shows the password.
    #[test]
    fn refuses_credentials_bad_ports_and_dot_segments() {
        let error = Authority::parse("https://user:hunter2@login.example/t").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
        let error = Authority::oidc("https://user:hunter2@issuer.example").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        for url in [
            "https://login.example:0/t",
            "https://login.example:99999/t",
            "https://login.example:/t",
            "https://login.example/..",
            "https://login.example/.",
            "https://login.example/%2e%2e",
            "https://login.example/%2E%2e/",
            "https://login.example/ten%41nt",
            "https://login.example/tfp/../B2C_1_x",
        ] {
            assert!(Authority::parse(url).is_err(), "{url} was accepted");
        }
        for issuer in [
            "https://issuer.example/../x",
            "https://issuer.example:0",
            "https://issuer.example/a?b=c",
        ] {
            assert!(Authority::oidc(issuer).is_err(), "{issuer} was accepted");
        }
        assert!(Authority::parse("https://login.example:8443/contoso.onmicrosoft.com").is_ok());
    }

    #[test]
    fn parses_entra_https_and_loopback_http() {
        let a = Authority::parse("https://login.microsoftonline.com/contoso/").unwrap();
        assert_eq!(a.kind(), AuthorityKind::Entra);
        assert_eq!(a.tenant(), Some("contoso"));
        assert_eq!(a.realm(), "contoso");
        assert_eq!(
            a.token_endpoint().as_deref(),
            Some("https://login.microsoftonline.com/contoso/oauth2/v2.0/token")
        );
        let local = Authority::parse("http://127.0.0.1:8080/t1").unwrap();
        assert_eq!(local.environment(), "127.0.0.1:8080");
        assert_eq!(
            local.with_tenant("t2").unwrap().url(),
            "http://127.0.0.1:8080/t2"
        );
        assert!(local.with_tenant("../x").is_err());
        assert!(local.with_tenant("a/b").is_err());
        assert!(Authority::parse("http://[::1]:9/t").is_ok());
        let sovereign = Authority::parse("https://login.microsoftonline.us/organizations").unwrap();
        assert_eq!(sovereign.environment(), "login.microsoftonline.us");
    }

    #[test]
    fn parses_ciam_with_and_without_a_tenant_segment() {
        let bare = Authority::parse("https://contoso.ciamlogin.com").unwrap();
        assert_eq!(bare.kind(), AuthorityKind::Ciam);
        assert_eq!(bare.tenant(), Some("contoso.onmicrosoft.com"));
        assert_eq!(
            bare.token_endpoint().as_deref(),
            Some("https://contoso.ciamlogin.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
        let by_id =
            Authority::parse("https://contoso.ciamlogin.com/aaaabbbb-0000-cccc-1111-dddd2222eeee/")
                .unwrap();
        assert_eq!(by_id.realm(), "aaaabbbb-0000-cccc-1111-dddd2222eeee");
        assert_eq!(Authority::parse(&bare.url()).unwrap(), bare);
        assert!(Authority::parse("https://contoso.ciamlogin.com/a/b").is_err());
    }

    #[test]
    fn parses_b2c_policies_and_refuses_other_second_segments() {
        let expected =
            "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_signin/oauth2/v2.0/token";
        for url in [
            "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_signin",
            "https://contoso.b2clogin.com/tfp/contoso.onmicrosoft.com/B2C_1_signin/",
        ] {
            let b2c = Authority::parse(url).unwrap();
            assert_eq!(b2c.kind(), AuthorityKind::B2c, "{url}");
            assert_eq!(b2c.tenant(), Some("contoso.onmicrosoft.com"));
            assert_eq!(b2c.token_endpoint().as_deref(), Some(expected));
            assert!(
                b2c.well_known_endpoints()
                    .unwrap()
                    .device_authorization
                    .is_none()
            );
            assert!(b2c.with_tenant("other").is_err());
            assert_eq!(Authority::parse(&b2c.url()).unwrap(), b2c);
        }
        let custom = Authority::parse("https://login.contoso.com/tfp/tid/B2C_1A_signup").unwrap();
        assert_eq!(custom.kind(), AuthorityKind::B2c);
        for bad in [
            "https://contoso.b2clogin.com/contoso.onmicrosoft.com",
            "https://login.microsoftonline.com/contoso/v2.0",
            "https://contoso.b2clogin.com/tfp/contoso.onmicrosoft.com/signin",
        ] {
            let error = Authority::parse(bad).unwrap_err();
            assert!(matches!(error, Error::Configuration(_)), "{bad}: {error}");
        }
    }

    /// Found by the `authority` fuzz target: `httpS://L/tfp/tfp/` was read as the tenant `tfp`,
    /// whose printed URL (`https://L/tfp`) no longer parsed. `tfp` is a prefix only before a
    /// tenant and a policy.
    #[test]
    fn a_tenant_named_tfp_round_trips() {
        for (url, kind, tenant) in [
            ("https://login.example/tfp", AuthorityKind::Entra, "tfp"),
            (
                "https://x.b2clogin.com/tfp/tfp/B2C_1_a",
                AuthorityKind::B2c,
                "tfp",
            ),
            (
                "https://x.b2clogin.com/tfp/B2C_1_a",
                AuthorityKind::B2c,
                "tfp",
            ),
        ] {
            let authority = Authority::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(authority.kind(), kind, "{url}");
            assert_eq!(authority.tenant(), Some(tenant), "{url}");
            assert_eq!(
                Authority::parse(&authority.url()).unwrap(),
                authority,
                "{url}"
            );
        }
        // `tfp` then a tenant without a policy is refused, as a tenant and a second segment
        // that is not a policy are.
        let error = Authority::parse("httpS://L/tfp/tfp/").unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error}");
    }

    #[test]
    fn parses_adfs() {
        let adfs = Authority::parse("https://fs.contoso.com/adfs/").unwrap();
        assert_eq!(adfs.kind(), AuthorityKind::Adfs);
        assert_eq!(adfs.tenant(), None);
        assert_eq!(adfs.realm(), "adfs");
        let endpoints = adfs.well_known_endpoints().unwrap();
        assert_eq!(endpoints.token, "https://fs.contoso.com/adfs/oauth2/token");
        assert_eq!(
            endpoints.device_authorization.as_deref(),
            Some("https://fs.contoso.com/adfs/oauth2/devicecode")
        );
        assert!(adfs.with_tenant("t").is_err());
        assert_eq!(Authority::parse(&adfs.url()).unwrap(), adfs);
    }

    #[test]
    fn oidc_issuers_have_no_fixed_endpoints_and_key_the_cache_by_issuer() {
        let issuer = Authority::oidc("https://id.example.com/realms/acme/").unwrap();
        assert_eq!(issuer.kind(), AuthorityKind::Oidc);
        assert_eq!(issuer.url(), "https://id.example.com/realms/acme");
        assert_eq!(issuer.realm(), "https://id.example.com/realms/acme");
        assert_eq!(issuer.environment(), "id.example.com");
        assert_eq!(issuer.token_endpoint(), None);
        assert_eq!(
            issuer.discovery_url(),
            "https://id.example.com/realms/acme/.well-known/openid-configuration"
        );
        assert!(issuer.with_tenant("t").is_err());
        let root = Authority::oidc("http://127.0.0.1:8080").unwrap();
        assert_eq!(root.url(), "http://127.0.0.1:8080");
        let error = Authority::oidc("http://id.example.com").unwrap_err();
        assert!(error.to_string().contains("HTTPS is required"), "{error}");
    }

    #[test]
    fn a_url_without_a_tenant_points_to_oidc() {
        let error = Authority::parse("http://127.0.0.1:9000").unwrap_err();
        assert!(error.to_string().contains("Authority::oidc"), "{error}");
    }

    #[test]
    fn discovered_endpoints_must_be_https_or_loopback() {
        assert!(check_endpoint("https://id.example.com/token", "token endpoint").is_ok());
        assert!(check_endpoint("http://localhost:1/token", "token endpoint").is_ok());
        assert!(check_endpoint("http://evil.example/token", "token endpoint").is_err());
        assert!(check_endpoint("ftp://id.example.com/token", "token endpoint").is_err());
        assert!(check_endpoint("/relative", "token endpoint").is_err());
    }

    #[test]
    fn rejects_bad_authorities() {
        for bad in [
            "http://login.example.com/t",
            "https://login.example.com",
            "https://login.example.com/t/extra",
            "https://login.example.com/a/b/c",
            "ftp://h/t",
            "not a url",
        ] {
            assert!(
                matches!(Authority::parse(bad), Err(Error::Configuration(_))),
                "{bad}"
            );
        }
    }

    /// Issue 16, item 8: a tenant is a GUID or a domain name, never a path.
    #[test]
    fn a_tenant_is_a_guid_or_a_domain_name() {
        let entra = Authority::parse("https://login.microsoftonline.com/contoso").unwrap();
        for good in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "common",
            "organizations",
            "t2",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(entra.with_tenant(good).unwrap().tenant(), Some(good));
        }
        for bad in [
            "",
            ".",
            "..",
            "../../other",
            "..%2F..%2Fother",
            "%2e%2e",
            "a/b",
            "a\\b",
            "other?x=1",
            "other#x",
            "user@other",
            "other:443",
            "a..b",
            ".other",
            "other.",
            "-other",
            "other-",
            "ot her",
            "othér",
            "a\nb",
        ] {
            let err = entra.with_tenant(bad).unwrap_err();
            assert!(matches!(err, Error::Configuration(_)), "{bad:?}: {err:?}");
            assert!(!err.to_string().contains('\n'), "{bad:?}");
        }
        assert!(entra.with_tenant(&"a".repeat(64)).is_err());
        assert!(
            entra
                .with_tenant(&format!("{}.com", "a".repeat(63)))
                .is_ok()
        );
    }
}
