//! The daemon example restarted: the second start is served from the SQLite file.

use tokenwell_core::TokenSource;
use tokenwell_examples::daemon::{CLIENT_ID, CLIENT_SECRET, start_once};
use tokenwell_idp_emulator::Emulator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_start_is_a_cache_hit_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("daemon.sqlite");
    let idp = Emulator::start().await.unwrap();
    idp.register_client_secret(CLIENT_ID, CLIENT_SECRET);
    let authority = idp.authority("contoso");

    let first = start_once(&cache_file, &authority).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(idp.token_requests(), 1);

    // A new process would start with an empty L1: start_once builds everything anew.
    let second = start_once(&cache_file, &authority).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        second.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(
        idp.token_requests(),
        1,
        "no identity-provider call on restart"
    );
}
