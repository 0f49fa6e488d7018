//! Authorities: where tokens come from. `https://host[:port]/{tenant}`; plain HTTP only on
//! loopback (the emulator, local test rigs).

use std::net::IpAddr;

use crate::error::{Error, Result};

/// A parsed authority URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    scheme: String,
    /// `host[:port]`, lower-cased.
    host: String,
    tenant: String,
}

impl Authority {
    /// Parse `https://login.microsoftonline.com/{tenant}` (a trailing slash is fine).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL without a tenant segment, a query, or plain HTTP to a
    /// host that is not loopback.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Error::configuration(format!("authority '{url}' is not a URL: {e}")))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| Error::configuration(format!("authority '{url}' has no scheme")))?
            .to_ascii_lowercase();
        let authority = uri
            .authority()
            .ok_or_else(|| Error::configuration(format!("authority '{url}' has no host")))?;
        if uri.query().is_some() {
            return Err(Error::configuration(format!(
                "authority '{url}' must not have a query"
            )));
        }
        let mut segments = uri.path().split('/').filter(|s| !s.is_empty());
        let tenant = segments.next().ok_or_else(|| {
            Error::configuration(format!(
                "authority '{url}' has no tenant: expected https://host/{{tenant}}"
            ))
        })?;
        if segments.next().is_some() {
            return Err(Error::configuration(format!(
                "authority '{url}' has more than a tenant in its path"
            )));
        }
        let host_only = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        match scheme.as_str() {
            "https" => {}
            "http" if is_loopback(host_only) => {}
            "http" => {
                return Err(Error::configuration(format!(
                    "authority '{url}' uses plain HTTP; HTTPS is required except on loopback"
                )));
            }
            other => {
                return Err(Error::configuration(format!(
                    "authority '{url}' has unsupported scheme '{other}'"
                )));
            }
        }
        Ok(Authority {
            scheme,
            host: authority.as_str().to_ascii_lowercase(),
            tenant: tenant.to_owned(),
        })
    }

    /// The same authority for another tenant.
    pub fn with_tenant(&self, tenant: &str) -> Self {
        Authority {
            tenant: tenant.to_owned(),
            ..self.clone()
        }
    }

    /// Tenant id or name (`contoso.onmicrosoft.com`, a GUID, `organizations` …).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// `host[:port]`: MSAL's `environment` cache field.
    pub fn environment(&self) -> &str {
        &self.host
    }

    /// `scheme://host[:port]/tenant`.
    pub fn url(&self) -> String {
        format!("{}://{}/{}", self.scheme, self.host, self.tenant)
    }

    /// The OAuth2 v2 token endpoint.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/v2.0/token", self.url())
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_https_and_loopback_http() {
        let a = Authority::parse("https://login.microsoftonline.com/contoso/").unwrap();
        assert_eq!(a.tenant(), "contoso");
        assert_eq!(
            a.token_endpoint(),
            "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
        );
        let local = Authority::parse("http://127.0.0.1:8080/t1").unwrap();
        assert_eq!(local.environment(), "127.0.0.1:8080");
        assert_eq!(local.with_tenant("t2").url(), "http://127.0.0.1:8080/t2");
        assert!(Authority::parse("http://[::1]:9/t").is_ok());
    }

    #[test]
    fn rejects_bad_authorities() {
        for bad in [
            "http://login.example.com/t",
            "https://login.example.com",
            "https://login.example.com/t/extra",
            "ftp://h/t",
            "not a url",
        ] {
            assert!(
                matches!(Authority::parse(bad), Err(Error::Configuration(_))),
                "{bad}"
            );
        }
    }
}
