//! Client assertions (`private_key_jwt`) of every kind against the real emulator over real HTTP:
//! RS256, PS256 and ES256 certificates (`x5t#S256`), bare RSA and EC keys named by `kid`, keys
//! the identity provider refuses, and algorithms a key cannot sign.

mod support;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Header};
use tokenwell_core::credential::CertificateFiles;
use tokenwell_core::{
    AssertionAlgorithm, Certificate, ClientCredential, Error, PrivateKey, TokenSource,
};
use tokenwell_idp_emulator::fixtures;

use support::{CLIENT_ID, Rig, SCOPE, Transport};

over_each_transport!(
    certificates_sign_with_the_algorithm_of_their_key,
    bare_keys_are_named_by_kid,
    a_bare_key_authenticates_to_a_generic_provider,
    a_wrong_key_is_refused_by_the_idp_as_a_typed_error,
    an_algorithm_the_key_cannot_sign_is_a_configuration_error_without_a_request,
    a_key_that_is_not_the_certificates_is_refused_without_a_request,
);

/// The header of the client assertion the emulator last received.
fn last_assertion_header(rig: &Rig) -> Header {
    let recorded = rig.emulator.last_token_request().expect("a request");
    let assertion = recorded.form.get("client_assertion").expect("an assertion");
    assert!(!recorded.form.contains_key("client_secret"));
    jsonwebtoken::decode_header(assertion).expect("a JWT")
}

/// A token from the identity provider (never the rig's shared cache) with `credential`.
async fn token_with(rig: &Rig, credential: ClientCredential) -> Result<(), Error> {
    let app = rig.builder().credential(credential).build().unwrap();
    let result = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await?;
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    Ok(())
}

async fn certificates_sign_with_the_algorithm_of_their_key(t: Transport) {
    let rig = Rig::start(t).await;
    let rsa = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let ec = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::EC_CERT_A_PEM)
        .unwrap();
    let cases = [
        (
            fixtures::KEY_A_PEM,
            fixtures::CERT_A_PEM,
            None,
            Algorithm::RS256,
            &rsa,
        ),
        (
            fixtures::KEY_A_PEM,
            fixtures::CERT_A_PEM,
            Some(AssertionAlgorithm::Ps256),
            Algorithm::PS256,
            &rsa,
        ),
        (
            fixtures::EC_KEY_A_PEM,
            fixtures::EC_CERT_A_PEM,
            None,
            Algorithm::ES256,
            &ec,
        ),
        (
            fixtures::EC_KEY_A_SEC1_PEM,
            fixtures::EC_CERT_A_PEM,
            None,
            Algorithm::ES256,
            &ec,
        ),
    ];
    for (key, cert, chosen, algorithm, thumbprint) in cases {
        let mut certificate = Certificate::from_pem(key, cert).unwrap();
        if let Some(chosen) = chosen {
            certificate = certificate.with_algorithm(chosen).unwrap();
        }
        token_with(&rig, ClientCredential::certificate(certificate))
            .await
            .unwrap_or_else(|e| panic!("{algorithm:?}: {e}"));
        let header = last_assertion_header(&rig);
        assert_eq!(header.alg, algorithm);
        assert_eq!(header.x5t_s256.as_deref(), Some(thumbprint.as_str()));
        assert_eq!(header.kid, None);
    }
    // The files-based certificate takes the EC pair as well, and follows its key.
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("ec.pem");
    std::fs::write(
        &both,
        format!("{}{}", fixtures::EC_CERT_A_PEM, fixtures::EC_KEY_A_PEM),
    )
    .unwrap();
    token_with(&rig, ClientCredential::certificate_file(&both))
        .await
        .unwrap();
    assert_eq!(last_assertion_header(&rig).alg, Algorithm::ES256);
    assert_eq!(rig.cc_requests(), 5);
}

async fn bare_keys_are_named_by_kid(t: Transport) {
    let rig = Rig::start(t).await;
    // The public halves: RSA A as a certificate PEM, EC A as a JWK.
    rig.emulator
        .register_client_key(CLIENT_ID, "rsa-1", fixtures::CERT_A_PEM)
        .unwrap();
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(fixtures::EC_KEY_A_PEM.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    rig.emulator
        .register_client_key(CLIENT_ID, "ec-1", &serde_json::to_string(&jwk).unwrap())
        .unwrap();

    for (pem, kid, algorithm) in [
        (fixtures::KEY_A_PEM, "rsa-1", Algorithm::RS256),
        (fixtures::EC_KEY_A_PEM, "ec-1", Algorithm::ES256),
    ] {
        let key = PrivateKey::from_pem(pem).unwrap().with_key_id(kid);
        token_with(&rig, ClientCredential::private_key(key))
            .await
            .unwrap_or_else(|e| panic!("{kid}: {e}"));
        let header = last_assertion_header(&rig);
        assert_eq!(header.alg, algorithm);
        assert_eq!(header.kid.as_deref(), Some(kid));
        assert_eq!(header.x5t_s256, None);
    }
    assert_eq!(rig.cc_requests(), 2);
}

async fn a_bare_key_authenticates_to_a_generic_provider(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_key(CLIENT_ID, "ec-1", fixtures::EC_CERT_A_PEM)
        .unwrap();
    let key = PrivateKey::from_pem(fixtures::EC_KEY_A_PEM)
        .unwrap()
        .with_key_id("ec-1");
    let app = rig
        .builder()
        .oidc_authority(rig.emulator.oidc_issuer())
        .credential(ClientCredential::private_key(key))
        .build()
        .unwrap();
    let result = app.acquire_token_for_client(["orders.read"]).await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let header = last_assertion_header(&rig);
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::ES256, Some("ec-1"))
    );
}

async fn a_wrong_key_is_refused_by_the_idp_as_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_key(CLIENT_ID, "rsa-1", fixtures::CERT_A_PEM)
        .unwrap();
    rig.emulator
        .register_client_key(CLIENT_ID, "ec-1", fixtures::EC_CERT_A_PEM)
        .unwrap();
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::EC_CERT_A_PEM)
        .unwrap();
    let wrong = [
        (
            "RSA key B under the id of A",
            ClientCredential::private_key(
                PrivateKey::from_pem(fixtures::KEY_B_PEM)
                    .unwrap()
                    .with_key_id("rsa-1"),
            ),
        ),
        (
            "EC key B under the id of A",
            ClientCredential::private_key(
                PrivateKey::from_pem(fixtures::EC_KEY_B_PEM)
                    .unwrap()
                    .with_key_id("ec-1"),
            ),
        ),
        (
            "an unregistered key id",
            ClientCredential::private_key(
                PrivateKey::from_pem(fixtures::EC_KEY_A_PEM)
                    .unwrap()
                    .with_key_id("ec-2"),
            ),
        ),
        (
            "an unregistered EC certificate",
            ClientCredential::certificate(
                Certificate::from_pem(fixtures::EC_KEY_B_PEM, fixtures::EC_CERT_B_PEM).unwrap(),
            ),
        ),
    ];
    for (case, credential) in wrong {
        let before = rig.cc_requests();
        let err = token_with(&rig, credential).await.unwrap_err();
        let idp = err
            .idp_error()
            .unwrap_or_else(|| panic!("{case}: an IdP error, got {err:?}"));
        assert_eq!(idp.error, "invalid_client", "{case}");
        assert_eq!(idp.error_codes, vec![700027], "{case}");
        assert!(!err.is_transient(), "{case}");
        assert_eq!(
            rig.cc_requests(),
            before + 1,
            "{case}: a 4xx is not retried"
        );
    }
}

async fn an_algorithm_the_key_cannot_sign_is_a_configuration_error_without_a_request(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::EC_CERT_A_PEM)
        .unwrap();
    // In code: refused where the algorithm is chosen.
    let certificate =
        Certificate::from_pem(fixtures::EC_KEY_A_PEM, fixtures::EC_CERT_A_PEM).unwrap();
    let err = certificate
        .with_algorithm(AssertionAlgorithm::Ps256)
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
    assert!(err.to_string().contains("PS256"), "{err}");
    let err = PrivateKey::from_pem(fixtures::KEY_A_PEM)
        .unwrap()
        .with_algorithm(AssertionAlgorithm::Es256)
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");

    // From files: refused when the files are read, before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, fixtures::EC_CERT_A_PEM).unwrap();
    std::fs::write(&key, fixtures::EC_KEY_A_PEM).unwrap();
    let files = CertificateFiles::new(&cert, &key).with_algorithm(AssertionAlgorithm::Ps256);
    let err = token_with(&rig, ClientCredential::provider(Arc::new(files)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
    assert_eq!(rig.cc_requests(), 0, "nothing reached the IdP");
}

async fn a_key_that_is_not_the_certificates_is_refused_without_a_request(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (key, cert) in [
        (fixtures::KEY_B_PEM, fixtures::CERT_A_PEM),
        (fixtures::EC_KEY_A_PEM, fixtures::CERT_A_PEM),
        (fixtures::KEY_A_PEM, fixtures::EC_CERT_A_PEM),
    ] {
        let err = Certificate::from_pem(key, cert).unwrap_err();
        assert!(matches!(err, Error::Credential { .. }), "{err:?}");
        assert!(err.to_string().contains("does not belong"), "{err}");
        // Read from a combined file, the same.
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{cert}{key}")).unwrap();
        let err = token_with(&rig, ClientCredential::certificate_file(&both))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
    assert_eq!(rig.cc_requests(), 0, "nothing reached the IdP");
}
