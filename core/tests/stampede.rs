//! Stampede proofs for request coalescing (issue 11, "One acquisition pipeline for every flow
//! and trigger"), against the real emulator over real HTTP (reqwest) on a 4-worker runtime.
//!
//! - **Stampede**: 1,000 `tokio::spawn`ed callers on a cold key make exactly one
//!   identity-provider request, every time: 200 trials with a fresh key each, with the emulator
//!   answering at once and after 20 ms, for client credentials, on-behalf-of, silent (refresh
//!   token) and managed identity (IMDS). A caller that misses L1 just before a flight finishes
//!   must not start a second request.
//! - **Forced refresh under a stampede**: a forced caller racing hundreds of unforced callers on
//!   a key whose token has just gone stale gets a token newer than the one that was cached when
//!   it started, from the identity provider: it never takes a token from a flight that skipped
//!   the identity provider (one answered from L1 or L2).
//!
//! Every trial of a test runs even after a failure; the test then fails with a list of the
//! broken trials (trial number, identity-provider requests, caller errors).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokenwell_core::cache::{AccessToken, PartitionKey};
use tokenwell_core::{
    AuthenticationResult, CacheRefreshReason, ConfidentialClientApplication, ManagedIdentityId,
    ScopeSet, TokenSource,
};
use tokenwell_idp_emulator::{Fault, RefreshTokenRotation, TokenLifetimes};

use support::{CLIENT_ID, Rig, TENANT, Transport, USER};

/// Trials per flow and latency, each on a fresh cold key.
const TRIALS: usize = 200;
/// Concurrent callers per stampede trial.
const CALLERS: usize = 1_000;
/// Trials of the forced-refresh race.
const FORCED_TRIALS: usize = 100;
/// Unforced callers racing the forced one.
const FORCED_STAMPEDE: usize = 500;

const DOWNSTREAM: &str = "api://downstream/Files.Read";

type Acquired = tokenwell_core::AcquisitionResult;
/// One acquisition in the README's shape, for one trial's key.
type Call = Arc<dyn Fn() -> BoxFuture<'static, Acquired> + Send + Sync>;
/// The token L1 holds for one trial's key right now, if any.
type Cached = Arc<dyn Fn() -> Option<Arc<AccessToken>> + Send + Sync>;

fn emulator_latency(rig: &Rig, latency: Duration) {
    if latency.is_zero() {
        rig.emulator.set_outage(None);
    } else {
        // A persistent fault: every request of every trial waits, then is answered normally.
        rig.emulator.set_outage(Some(Fault::Latency(latency)));
    }
}

fn secret_of(result: &AuthenticationResult) -> String {
    result.access_token().expose_secret().to_owned()
}

/// `TRIALS` stampedes of `CALLERS` spawned callers, each trial on the key `call_for(trial)`
/// acquires; `requests()` reads the identity-provider counter. Fails with every broken trial.
async fn stampede(
    flow: &str,
    rig: &Rig,
    latency: Duration,
    requests: impl Fn() -> u64,
    mut call_for: impl FnMut(usize) -> Call,
) {
    emulator_latency(rig, latency);
    let started = Instant::now();
    let mut broken = Vec::new();
    for trial in 0..TRIALS {
        let call = call_for(trial);
        let before = requests();
        let mut tasks = Vec::with_capacity(CALLERS);
        for _ in 0..CALLERS {
            let call = Arc::clone(&call);
            tasks.push(tokio::spawn(async move { call().await }));
        }
        // Distinct tokens handed out (a short list: comparing is cheaper than hashing JWTs).
        let mut tokens: Vec<String> = Vec::new();
        let mut errors = 0usize;
        let mut first_error = None;
        for task in tasks {
            match task.await.expect("a caller panicked") {
                Ok(result) => {
                    let token = result.access_token().expose_secret();
                    if !tokens.iter().any(|seen| seen == token) {
                        tokens.push(token.to_owned());
                    }
                }
                Err(error) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| error.to_string());
                }
            }
        }
        let made = requests() - before;
        if made != 1 || errors > 0 || tokens.len() != 1 {
            broken.push(format!(
                "trial {trial}: {made} identity-provider requests (expected 1), \
                 {errors} of {CALLERS} callers failed{}, {} distinct tokens",
                first_error
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                tokens.len(),
            ));
        }
    }
    emulator_latency(rig, Duration::ZERO);
    eprintln!(
        "{flow}, emulator latency {latency:?}: {TRIALS} trials x {CALLERS} callers in {:.1?}, \
         {} broken",
        started.elapsed(),
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{flow}, emulator latency {latency:?}: {} of {TRIALS} trials did not make exactly one \
         identity-provider request:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

// ---- client credentials ----------------------------------------------------------------------

async fn client_credentials(latency: Duration) {
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig.app();
    let ms = latency.as_millis();
    stampede(
        "client credentials",
        &rig,
        latency,
        || rig.cc_requests(),
        |trial| {
            let app = app.clone();
            let scope = format!("api://stampede-cc-{ms}ms-{trial}/.default");
            Arc::new(move || {
                let app = app.clone();
                let scope = scope.clone();
                async move { app.acquire_token_for_client([scope.as_str()]).await }.boxed()
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_stampede_makes_one_request_latency_0ms() {
    client_credentials(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_stampede_makes_one_request_latency_20ms() {
    client_credentials(Duration::from_millis(20)).await;
}

// ---- on-behalf-of ----------------------------------------------------------------------------

fn incoming_assertion(rig: &Rig) -> String {
    // Every assertion is a new JWT (its own `jti`), hence a new OBO partition: a cold key.
    rig.emulator.user_access_token(
        USER,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    )
}

fn obo_call(app: &ConfidentialClientApplication, assertion: &str, force: bool) -> Call {
    let app = app.clone();
    let assertion = assertion.to_owned();
    Arc::new(move || {
        let app = app.clone();
        let assertion = assertion.clone();
        async move {
            app.acquire_token_on_behalf_of([DOWNSTREAM], assertion)
                .with_force_refresh(force)
                .await
        }
        .boxed()
    })
}

async fn on_behalf_of(latency: Duration) {
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig.app();
    stampede(
        "on-behalf-of",
        &rig,
        latency,
        // Every grant counts: a second flight could redeem the assertion or a refresh token.
        || rig.emulator.token_requests(),
        |_| obo_call(&app, &incoming_assertion(&rig), false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_behalf_of_stampede_makes_one_request_latency_0ms() {
    on_behalf_of(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_behalf_of_stampede_makes_one_request_latency_20ms() {
    on_behalf_of(Duration::from_millis(20)).await;
}

// ---- silent (refresh token) ------------------------------------------------------------------

/// Sign `USER` in with an authorization code and PKCE: the account then has a refresh token.
async fn sign_in(rig: &Rig) -> ConfidentialClientApplication {
    let app = rig.app();
    rig.sign_in(&app).await;
    app
}

async fn silent(latency: Duration) {
    let rig = Rig::start(Transport::Reqwest).await;
    let app = sign_in(&rig).await;
    let account = Arc::new(app.accounts().remove(0));
    let ms = latency.as_millis();
    stampede(
        "silent",
        &rig,
        latency,
        || rig.emulator.token_requests(),
        |trial| {
            // A scope no access token has: the one refresh token of the account must be
            // redeemed exactly once (the emulator revokes a redeemed refresh token, so a second
            // redemption would also fail callers).
            let app = app.clone();
            let account = Arc::clone(&account);
            let scope = format!("api://stampede-silent-{ms}ms/Scope{trial}");
            Arc::new(move || {
                let app = app.clone();
                let account = Arc::clone(&account);
                let scope = scope.clone();
                async move { app.acquire_token_silent([scope.as_str()], &account).await }.boxed()
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_stampede_makes_one_request_latency_0ms() {
    silent(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_stampede_makes_one_request_latency_20ms() {
    silent(Duration::from_millis(20)).await;
}

// ---- managed identity ------------------------------------------------------------------------

async fn managed_identity(latency: Duration) {
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .imds_endpoint(rig.emulator.imds_endpoint())
        .build()
        .expect("valid configuration");
    let ms = latency.as_millis();
    stampede(
        "managed identity",
        &rig,
        latency,
        || rig.emulator.msi_requests(),
        |trial| {
            let app = app.clone();
            let resource = format!("https://stampede-mi-{ms}ms-{trial}.example/");
            Arc::new(move || {
                let app = app.clone();
                let resource = resource.clone();
                async move { app.acquire_token(resource).await }.boxed()
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_identity_stampede_makes_one_request_latency_0ms() {
    managed_identity(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_identity_stampede_makes_one_request_latency_20ms() {
    managed_identity(Duration::from_millis(20)).await;
}

// ---- forced refresh under a stampede ---------------------------------------------------------

/// The newest access token of `partition` whose scopes cover `scope`.
fn cached_token(
    app: &ConfidentialClientApplication,
    partition: PartitionKey,
    scope: &str,
) -> Cached {
    let app = app.clone();
    let scopes = ScopeSet::parse(scope);
    Arc::new(move || {
        app.cache().get(&partition).and_then(|snapshot| {
            snapshot
                .access_tokens()
                .filter(|token| token.target.is_superset_of(&scopes))
                .max_by_key(|token| token.cached_at)
                .cloned()
        })
    })
}

/// What one forced-refresh trial needs: the unforced and forced acquisitions of its key, and a
/// view of what L1 holds for it.
struct ForcedTrial {
    unforced: Call,
    forced: Call,
    cached: Cached,
}

/// `FORCED_TRIALS` races: warm the trial's key, move the clock into the 5-minute expiry buffer
/// (every unforced caller misses and renews), then spawn `FORCED_STAMPEDE` unforced callers and,
/// at positions that vary by trial, `forced_callers` forced ones. Each forced caller reads what
/// L1 holds for the key, moves the clock 1 s, and acquires: its token must come from the
/// identity provider and differ from the one it read; it must not be older, and with a single
/// forced caller (whose request is necessarily sent after its read) it must be cached later.
async fn forced_refresh_race(
    flow: &str,
    rig: &Rig,
    forced_callers: usize,
    requests: impl Fn() -> u64,
    mut trial_for: impl FnMut(usize) -> ForcedTrial,
) {
    rig.emulator.set_token_lifetimes(TokenLifetimes::new(3600));
    let started = Instant::now();
    let mut broken = Vec::new();
    for trial in 0..FORCED_TRIALS {
        let ForcedTrial {
            unforced,
            forced,
            cached,
        } = trial_for(trial);
        let warm = unforced().await.expect("warm-up");
        assert_eq!(warm.metadata().token_source, TokenSource::IdentityProvider);
        let warm = secret_of(&warm);
        // 2 minutes of life left: inside the expiry buffer, so every unforced caller misses.
        rig.clock.advance(Duration::from_secs(3600 - 120));
        let before_requests = requests();
        let forced_at: Vec<usize> = (0..forced_callers)
            .map(|k| (trial * 53 + k * FORCED_STAMPEDE / forced_callers) % (FORCED_STAMPEDE + 1))
            .collect();
        let mut tasks = Vec::with_capacity(FORCED_STAMPEDE);
        let mut forced_tasks = Vec::with_capacity(forced_callers);
        for n in 0..=FORCED_STAMPEDE {
            for _ in forced_at.iter().filter(|&&at| at == n) {
                let forced = Arc::clone(&forced);
                let cached = Arc::clone(&cached);
                let clock = rig.clock.clone();
                forced_tasks.push((
                    n,
                    tokio::spawn(async move {
                        let skipped = cached();
                        // What the identity provider issues for a request sent from here on
                        // is cached later than `skipped`.
                        clock.advance(Duration::from_secs(1));
                        (skipped, forced().await)
                    }),
                ));
            }
            if n < FORCED_STAMPEDE {
                let unforced = Arc::clone(&unforced);
                tasks.push(tokio::spawn(async move { unforced().await }));
            }
        }
        let mut problems = Vec::new();
        let mut errors = 0usize;
        for task in tasks {
            if let Err(error) = task.await.expect("a caller panicked") {
                errors += 1;
                if errors == 1 {
                    problems.push(format!("unforced caller failed: {error}"));
                }
            }
        }
        if errors > 1 {
            problems.push(format!("{errors} unforced callers failed"));
        }
        for (at, task) in forced_tasks {
            let (skipped, forced_result) = task.await.expect("a forced caller panicked");
            let who = format!("forced caller spawned after {at} unforced callers");
            match (skipped, forced_result) {
                (_, Err(error)) => problems.push(format!("{who} failed: {error}")),
                (None, Ok(_)) => problems.push(format!("{who}: L1 held no token for the key")),
                (Some(skipped), Ok(result)) => {
                    let metadata = result.metadata();
                    if metadata.token_source != TokenSource::IdentityProvider {
                        problems.push(format!(
                            "{who}: token came from {:?}, not the identity provider",
                            metadata.token_source
                        ));
                    }
                    if metadata.cache_refresh_reason != CacheRefreshReason::ForceRefreshOrClaims {
                        problems.push(format!(
                            "{who}: refresh reason is {:?}",
                            metadata.cache_refresh_reason
                        ));
                    }
                    let entry = result.cache_entry();
                    let older = if forced_callers == 1 {
                        entry.cached_at <= skipped.cached_at
                            || entry.expires_on <= skipped.expires_on
                    } else {
                        entry.cached_at < skipped.cached_at
                    };
                    if entry.secret.expose_secret() == skipped.secret.expose_secret() {
                        problems.push(format!(
                            "{who} got the token it skipped (cached at {}, {})",
                            skipped.cached_at,
                            if skipped.secret.expose_secret() == warm {
                                "the warm-up token"
                            } else {
                                "a renewal made during the race"
                            }
                        ));
                    } else if older {
                        problems.push(format!(
                            "{who}: token (cached at {}, expires {}) is not newer than the \
                             skipped one (cached at {}, expires {})",
                            entry.cached_at,
                            entry.expires_on,
                            skipped.cached_at,
                            skipped.expires_on
                        ));
                    }
                }
            }
        }
        let made = requests() - before_requests;
        if !(1..=1 + forced_callers as u64).contains(&made) {
            problems.push(format!(
                "{made} identity-provider requests (expected 1 to {}: the stampede's renewal, \
                 and at most one per forced caller)",
                1 + forced_callers
            ));
        }
        if !problems.is_empty() {
            broken.push(format!(
                "trial {trial} ({made} identity-provider requests): {}",
                problems.join("; ")
            ));
        }
    }
    eprintln!(
        "{flow}: {FORCED_TRIALS} forced-refresh races ({forced_callers} forced, \
         {FORCED_STAMPEDE} unforced callers) in {:.1?}, {} broken",
        started.elapsed(),
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{flow}: {} of {FORCED_TRIALS} forced-refresh races ({forced_callers} forced callers) \
         broke:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

async fn client_credentials_forced(forced_callers: usize) {
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig.app();
    forced_refresh_race(
        "client credentials",
        &rig,
        forced_callers,
        || rig.cc_requests(),
        |trial| {
            let scope = format!("api://forced-cc-{trial}/.default");
            let call = |force: bool| -> Call {
                let app = app.clone();
                let scope = scope.clone();
                Arc::new(move || {
                    let app = app.clone();
                    let scope = scope.clone();
                    async move {
                        app.acquire_token_for_client([scope.as_str()])
                            .with_force_refresh(force)
                            .await
                    }
                    .boxed()
                })
            };
            ForcedTrial {
                unforced: call(false),
                forced: call(true),
                cached: cached_token(&app, PartitionKey::for_app(CLIENT_ID, TENANT), &scope),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_forced_refresh_under_stampede_gets_a_newer_token() {
    client_credentials_forced(1).await;
}

/// Ten forced callers in the stampede: forced requests may share a flight with each other, but
/// none may be handed the token it skipped (one written by a flight it then joined).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_forced_callers_racing_each_other_never_get_what_they_skipped() {
    client_credentials_forced(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_behalf_of_forced_refresh_under_stampede_gets_a_newer_token() {
    let rig = Rig::start(Transport::Reqwest).await;
    // The stampede's renewal and the forced request may both redeem the partition's refresh
    // token at once; like Entra ID, keep a redeemed refresh token valid so that is no error.
    rig.emulator
        .set_refresh_token_rotation(RefreshTokenRotation::KeepOld);
    let app = rig.app();
    forced_refresh_race(
        "on-behalf-of",
        &rig,
        1,
        || rig.emulator.token_requests(),
        |_| {
            let assertion = incoming_assertion(&rig);
            ForcedTrial {
                unforced: obo_call(&app, &assertion, false),
                forced: obo_call(&app, &assertion, true),
                cached: cached_token(
                    &app,
                    PartitionKey::for_on_behalf_of(CLIENT_ID, &assertion),
                    DOWNSTREAM,
                ),
            }
        },
    )
    .await;
}
