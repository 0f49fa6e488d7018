//! The soak in CI (issue 14): one minute of the 4-node farm on a `redis-server` child and the
//! identity-provider emulator, with the compressed fault plan — every fault kind at least once
//! — and the soak's promises: no failed call, no lost token, every `Retry-After` honoured.

use std::time::Duration;

use tokenwell_examples::soak::{self, FaultKind, SoakConfig, SoakReport};

fn one_minute() -> SoakReport {
    let config = SoakConfig::one_minute().seed(14).print(true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(soak::run(config)).expect("the soak runs");
    println!(
        "\n{}\nfaults as played:\n{}",
        report.summary(),
        report.faults_table()
    );
    report
}

#[test]
fn one_minute_soak_with_every_fault_kind_fails_no_call_and_loses_no_token() {
    let report = one_minute();

    // Every kind of fault was played, and reached the nodes.
    for kind in FaultKind::ALL {
        let played: Vec<_> = report.played_of(kind).collect();
        assert!(!played.is_empty(), "no {kind} was played");
        assert!(
            played.iter().any(|p| p.felt.is_some()),
            "no {kind} reached the nodes: {played:#?}"
        );
    }

    // The load ran, and the checks ran on it.
    assert_eq!(report.intervals.len(), 3, "a checkpoint every 20 s");
    // 800 calls/s offered; a loaded 2-core CI machine may start fewer.
    assert!(
        report.calls() > 24_000,
        "{} calls in a minute at 800 calls/s",
        report.calls()
    );
    assert!(
        report.intervals.iter().all(|i| i.keys_checked > 0),
        "every checkpoint checked keys in Redis"
    );
    assert!(
        report.idp_requests() > 100,
        "{} renewals reached the identity provider",
        report.idp_requests()
    );

    // The promises.
    assert_eq!(
        report.failed_calls(),
        0,
        "failed calls: {:#?}",
        report.failures
    );
    assert_eq!(report.lost_tokens(), 0, "lost tokens: {:#?}", report.lost);
    assert_eq!(
        report.throttle_violations(),
        0,
        "Retry-After not honoured: {:#?}",
        report.notes
    );
    assert_eq!(
        report.expected_failures(),
        0,
        "every key was warm and no fault outlasts a token: {:#?}",
        report.expected_failure_samples
    );
    assert!(
        report.wall_time < Duration::from_secs(90),
        "the soak took {:?}",
        report.wall_time
    );
}
