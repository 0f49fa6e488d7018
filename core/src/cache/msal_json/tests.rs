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
