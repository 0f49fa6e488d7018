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
        if authority.as_str().contains('@') {
            // Never echo the URL: it holds a password.
            return Err(Error::configuration(
                "the authority URL holds a user name or password; remove it (credentials go in \
                 the application's credential, never in the authority)",
            ));
        }
        // The raw port text (after an IPv6 literal's `]`): `http::Uri` hides ports it cannot
        // read (`:99999`) rather than refusing them.
        let raw = authority.as_str();
        let after_host = raw.rfind(']').map_or(raw, |end| &raw[end..]);
        if let Some((_, port)) = after_host.rsplit_once(':')
            && !matches!(port.parse::<u16>(), Ok(1..))
        {
            return Err(Error::configuration(format!(
                "authority '{url}' has an invalid port '{port}' (1-65535)"
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
        let decoded_dots = tenant.to_ascii_lowercase().replace("%2e", ".");
        if decoded_dots == "." || decoded_dots == ".." || tenant.contains('%') {
            return Err(Error::configuration(format!(
                "authority '{url}' has an invalid tenant segment '{tenant}' (dot segments and \
                 percent-encoding are refused)"
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

    /// Issue 14: passwords, invalid ports and dot segments are refused, and the error never
    /// shows the password.
    #[test]
    fn refuses_credentials_bad_ports_and_dot_segments() {
        let error = Authority::parse("https://user:hunter2@login.example/t").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
        for url in [
            "https://login.example:0/t",
            "https://login.example:99999/t",
            "https://login.example:/t",
            "https://login.example/..",
            "https://login.example/.",
            "https://login.example/%2e%2e",
            "https://login.example/%2E%2e/",
            "https://login.example/ten%41nt",
        ] {
            assert!(Authority::parse(url).is_err(), "{url} was accepted");
        }
        assert!(Authority::parse("https://login.example:8443/contoso.onmicrosoft.com").is_ok());
    }

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
