//! Helpers of the hit-path adversarial tests (`hit_path_adversarial`,
//! `hot_names_adversarial`): tasks spread over a multi-threaded runtime's workers, the
//! incoming assertions of on-behalf-of requests, and strings that the hit path's hashes read
//! alike.

use tokenwell_core::AuthenticationResult;

use super::{CLIENT_ID, Rig};

/// Tasks per round: more than the runtime's worker threads, so every worker takes copies.
pub const TASKS: usize = 16;

/// The access token of `result`, in the clear (to compare).
pub fn secret(result: &AuthenticationResult) -> String {
    result.access_token().expose_secret().to_owned()
}

/// An incoming access token of `username` for the test client's API: the user assertion of
/// an on-behalf-of request.
pub fn incoming_assertion(rig: &Rig, username: &str) -> String {
    rig.emulator.user_access_token(
        username,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    )
}

/// `raw` with the byte at `at` changed (to another byte of the base64url alphabet), so its
/// length, first 16 and last 16 bytes are unchanged: what the hit path's string hashes read
/// (`edge_words`).
pub fn changed_in_the_middle(raw: &str, at: usize) -> String {
    let mut bytes = raw.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'Q' { b'R' } else { b'Q' };
    let changed = String::from_utf8(bytes).unwrap();
    assert_eq!(changed.len(), raw.len());
    assert_eq!(changed[..16], raw[..16]);
    assert_eq!(changed[raw.len() - 16..], raw[raw.len() - 16..]);
    assert_ne!(changed, raw);
    changed
}

/// Run `task(i)` for `i` in `0..TASKS` as tasks of the (multi-threaded) runtime; panics in a
/// task fail the test.
pub async fn on_workers<F, Fut>(task: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = (0..TASKS).map(|i| tokio::spawn(task(i))).collect();
    for handle in handles {
        handle.await.expect("task");
    }
}
