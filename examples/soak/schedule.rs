//! The soak's fault schedule: drawn from the seed before the load starts, so a seed names one
//! sequence of faults (the load's timing, and therefore what each fault hits, still varies).
//!
//! Three tracks run side by side and may overlap one another: the identity provider (429 with
//! `Retry-After`, 5xx, added latency, outages), Redis (pauses, restarts) and the credential
//! (secret and certificate rotations). Each track plays its kinds in rounds — every kind once
//! per round, in a shuffled order — separated by healthy gaps, so a run long enough for one
//! round of each track plays every kind.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// A kind of fault the soak plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Every token request answered 429 with `Retry-After`, for a while.
    IdpThrottle,
    /// The next few token requests answered 500, 502, 503 or 504 without `Retry-After`.
    IdpServerErrors,
    /// Every token request answered late, for a while.
    IdpLatency,
    /// Every token request answered 503, or its connection dropped, for a while.
    IdpOutage,
    /// Redis frozen with `SIGSTOP`, then thawed with `SIGCONT`.
    RedisPause,
    /// Redis killed (`SIGKILL`) and started again on the same port and directory.
    RedisRestart,
    /// A new client secret registered, written to the secret nodes' files, the old one retired.
    SecretRotation,
    /// The other certificate registered, written to the certificate nodes' files, the old one
    /// retired.
    CertificateRotation,
}

impl FaultKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::IdpThrottle,
        FaultKind::IdpServerErrors,
        FaultKind::IdpLatency,
        FaultKind::IdpOutage,
        FaultKind::RedisPause,
        FaultKind::RedisRestart,
        FaultKind::SecretRotation,
        FaultKind::CertificateRotation,
    ];

    /// Short name used in the reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IdpThrottle => "idp-429",
            FaultKind::IdpServerErrors => "idp-5xx",
            FaultKind::IdpLatency => "idp-latency",
            FaultKind::IdpOutage => "idp-outage",
            FaultKind::RedisPause => "redis-pause",
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::SecretRotation => "secret-rotation",
            FaultKind::CertificateRotation => "cert-rotation",
        }
    }

    /// Whether the fault makes Redis unavailable for a while.
    pub fn impairs_redis(self) -> bool {
        matches!(self, FaultKind::RedisPause | FaultKind::RedisRestart)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an outage looks to the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutageMode {
    /// HTTP 503 `temporarily_unavailable`, no `Retry-After`.
    Unavailable,
    /// The connection is dropped without an answer.
    ConnectionDropped,
}

/// One fault of the schedule, with its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: retry_after` seconds to every token request during `window`.
    IdpThrottle {
        /// The `Retry-After` value, in seconds.
        retry_after: u64,
        /// How long every request is throttled.
        window: Duration,
    },
    /// The next `count` token requests get `status`.
    IdpServerErrors {
        /// 500, 502, 503 or 504.
        status: u16,
        /// How many requests get it.
        count: u32,
    },
    /// Every token request waits `delay` before its answer, during `window`.
    IdpLatency {
        /// The added latency.
        delay: Duration,
        /// How long requests are slowed.
        window: Duration,
    },
    /// No token request succeeds during `window`.
    IdpOutage {
        /// What the nodes see.
        mode: OutageMode,
        /// How long it lasts.
        window: Duration,
    },
    /// Redis frozen during `window`.
    RedisPause {
        /// How long it stays frozen.
        window: Duration,
    },
    /// Redis killed and started again.
    RedisRestart,
    /// The client secret rotated.
    SecretRotation,
    /// The client certificate rotated.
    CertificateRotation,
}

impl Fault {
    /// The fault's kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::IdpThrottle { .. } => FaultKind::IdpThrottle,
            Fault::IdpServerErrors { .. } => FaultKind::IdpServerErrors,
            Fault::IdpLatency { .. } => FaultKind::IdpLatency,
            Fault::IdpOutage { .. } => FaultKind::IdpOutage,
            Fault::RedisPause { .. } => FaultKind::RedisPause,
            Fault::RedisRestart => FaultKind::RedisRestart,
            Fault::SecretRotation => FaultKind::SecretRotation,
            Fault::CertificateRotation => FaultKind::CertificateRotation,
        }
    }

    /// How long the fault lasts (zero for the instantaneous ones).
    pub fn window(&self) -> Duration {
        match self {
            Fault::IdpThrottle { window, .. }
            | Fault::IdpLatency { window, .. }
            | Fault::IdpOutage { window, .. }
            | Fault::RedisPause { window } => *window,
            _ => Duration::ZERO,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Fault::IdpThrottle {
                retry_after,
                window,
            } => write!(f, "idp-429 Retry-After {retry_after}s for {}", secs(window)),
            Fault::IdpServerErrors { status, count } => {
                write!(f, "idp-5xx {status} x{count}")
            }
            Fault::IdpLatency { delay, window } => write!(
                f,
                "idp-latency {}ms for {}",
                delay.as_millis(),
                secs(window)
            ),
            Fault::IdpOutage { mode, window } => {
                let mode = match mode {
                    OutageMode::Unavailable => "503",
                    OutageMode::ConnectionDropped => "dropped connections",
                };
                write!(f, "idp-outage ({mode}) for {}", secs(window))
            }
            Fault::RedisPause { window } => write!(f, "redis-pause for {}", secs(window)),
            Fault::RedisRestart => f.write_str("redis-restart"),
            Fault::SecretRotation => f.write_str("secret-rotation"),
            Fault::CertificateRotation => f.write_str("cert-rotation"),
        }
    }
}

/// A fault and when it starts, from the start of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledFault {
    /// Start, from the start of the load.
    pub at: Duration,
    /// What happens.
    pub fault: Fault,
}

/// A closed range `[min, max]` drawn uniformly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Smallest value.
    pub min: Duration,
    /// Largest value.
    pub max: Duration,
}

impl Span {
    /// `[min, max]` in milliseconds.
    pub const fn millis(min: u64, max: u64) -> Span {
        Span {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }

    /// `[min, max]` in seconds.
    pub const fn secs(min: u64, max: u64) -> Span {
        Span::millis(min * 1000, max * 1000)
    }

    fn draw(&self, rng: &mut StdRng) -> Duration {
        let (min, max) = (self.min.as_millis() as u64, self.max.as_millis() as u64);
        Duration::from_millis(rng.random_range(min..=max.max(min)))
    }
}

/// The shape of the faults: gaps between them on each track and their sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// No fault starts before this (from the start of the load).
    pub quiet_start: Duration,
    /// Every fault is over this long before the end of the run.
    pub quiet_end: Duration,
    /// Healthy time before each identity-provider fault.
    pub idp_gap: Span,
    /// Healthy time before each Redis fault.
    pub redis_gap: Span,
    /// Time before each rotation.
    pub rotation_gap: Span,
    /// Length of a throttling window.
    pub throttle_window: Span,
    /// `Retry-After` of the 429s, in seconds (inclusive range).
    pub retry_after_secs: (u64, u64),
    /// Number of consecutive 5xx answers (inclusive range).
    pub server_errors: (u32, u32),
    /// Length of a latency window.
    pub latency_window: Span,
    /// The added latency.
    pub latency: Span,
    /// Length of an outage.
    pub outage_window: Span,
    /// Length of a Redis pause.
    pub pause_window: Span,
    /// Faults with a window (identity provider, Redis pauses) and Redis restarts keep this far
    /// from the checkpoints: a checkpoint reads Redis, and it stops the load while it waits
    /// for the nodes, which would stretch a window it spans.
    pub checkpoint_margin: Duration,
}

impl FaultPlan {
    /// For runs of minutes: a fault on each track every half minute to two minutes, outages of
    /// up to 20 s, throttling with `Retry-After` up to 12 s, latency up to 2.5 s, Redis paused
    /// up to 8 s.
    pub fn long() -> FaultPlan {
        FaultPlan {
            quiet_start: Duration::from_secs(15),
            quiet_end: Duration::from_secs(30),
            idp_gap: Span::secs(20, 60),
            redis_gap: Span::secs(30, 90),
            rotation_gap: Span::secs(60, 180),
            throttle_window: Span::secs(3, 10),
            retry_after_secs: (2, 12),
            server_errors: (1, 6),
            latency_window: Span::secs(5, 20),
            latency: Span::millis(100, 2500),
            outage_window: Span::secs(3, 20),
            pause_window: Span::secs(1, 8),
            checkpoint_margin: Duration::from_secs(5),
        }
    }

    /// For a one-minute run with checkpoints every 20 s: every kind within the first 52 s,
    /// with smaller faults and shorter gaps; outages still long enough (4-7 s) to push the stale-window node's tokens into its
    /// expiry buffer.
    pub fn compressed() -> FaultPlan {
        FaultPlan {
            quiet_start: Duration::from_secs(2),
            quiet_end: Duration::from_secs(8),
            idp_gap: Span::secs(3, 5),
            redis_gap: Span::secs(8, 14),
            rotation_gap: Span::secs(5, 12),
            throttle_window: Span::secs(2, 4),
            retry_after_secs: (1, 4),
            server_errors: (1, 3),
            latency_window: Span::secs(2, 4),
            latency: Span::millis(100, 800),
            outage_window: Span::secs(4, 7),
            pause_window: Span::secs(2, 3),
            checkpoint_margin: Duration::from_secs(2),
        }
    }

    /// The faults of a run of `duration` with checkpoints every `checkpoint_every`, drawn
    /// from `rng`, in order of start.
    pub fn schedule(
        &self,
        duration: Duration,
        checkpoint_every: Duration,
        rng: &mut StdRng,
    ) -> Vec<ScheduledFault> {
        let end = duration.saturating_sub(self.quiet_end);
        let near_checkpoint = |start: Duration, window: Duration| {
            let from = start.saturating_sub(self.checkpoint_margin);
            let to = start + window + self.checkpoint_margin;
            let mut at = checkpoint_every;
            while at <= duration {
                if from <= at && at <= to {
                    return Some(at);
                }
                at += checkpoint_every;
            }
            None
        };
        let mut faults = Vec::new();

        // Identity provider.
        let mut t = self.quiet_start;
        'idp: loop {
            let mut round = [
                FaultKind::IdpThrottle,
                FaultKind::IdpServerErrors,
                FaultKind::IdpLatency,
                FaultKind::IdpOutage,
            ];
            round.shuffle(rng);
            for kind in round {
                t += self.idp_gap.draw(rng);
                let fault = match kind {
                    FaultKind::IdpThrottle => Fault::IdpThrottle {
                        retry_after: rng
                            .random_range(self.retry_after_secs.0..=self.retry_after_secs.1),
                        window: self.throttle_window.draw(rng),
                    },
                    FaultKind::IdpServerErrors => Fault::IdpServerErrors {
                        status: [500, 502, 503, 504][rng.random_range(0..4)],
                        count: rng.random_range(self.server_errors.0..=self.server_errors.1),
                    },
                    FaultKind::IdpLatency => Fault::IdpLatency {
                        delay: self.latency.draw(rng),
                        window: self.latency_window.draw(rng),
                    },
                    _ => Fault::IdpOutage {
                        mode: if rng.random_bool(0.5) {
                            OutageMode::Unavailable
                        } else {
                            OutageMode::ConnectionDropped
                        },
                        window: self.outage_window.draw(rng),
                    },
                };
                // A checkpoint stops the load and waits for the nodes: no window spans one
                // (its end would wait for the checkpoint).
                while !fault.window().is_zero()
                    && let Some(checkpoint) = near_checkpoint(t, fault.window())
                {
                    t = checkpoint + self.checkpoint_margin + Duration::from_millis(1);
                }
                if t + fault.window() > end {
                    break 'idp;
                }
                let at = t;
                t += fault.window();
                faults.push(ScheduledFault { at, fault });
            }
        }

        // Redis: never across a checkpoint either (the check reads Redis).
        let mut t = self.quiet_start;
        'redis: loop {
            let mut round = [FaultKind::RedisPause, FaultKind::RedisRestart];
            round.shuffle(rng);
            for kind in round {
                t += self.redis_gap.draw(rng);
                let fault = match kind {
                    FaultKind::RedisPause => Fault::RedisPause {
                        window: self.pause_window.draw(rng),
                    },
                    _ => Fault::RedisRestart,
                };
                while let Some(checkpoint) = near_checkpoint(t, fault.window()) {
                    t = checkpoint + self.checkpoint_margin + Duration::from_millis(1);
                }
                if t + fault.window() > end {
                    break 'redis;
                }
                let at = t;
                t += fault.window();
                faults.push(ScheduledFault { at, fault });
            }
        }

        // Credentials.
        let mut t = self.quiet_start;
        'rotation: loop {
            let mut round = [Fault::SecretRotation, Fault::CertificateRotation];
            round.shuffle(rng);
            for fault in round {
                t += self.rotation_gap.draw(rng);
                if t > end {
                    break 'rotation;
                }
                faults.push(ScheduledFault { at: t, fault });
            }
        }

        faults.sort_by_key(|f| f.at);
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_compressed_plan_plays_every_kind_in_a_minute_whatever_the_seed() {
        let minute = Duration::from_secs(60);
        let every = Duration::from_secs(20);
        let plan = FaultPlan::compressed();
        for seed in 0..500 {
            let faults = plan.schedule(minute, every, &mut StdRng::seed_from_u64(seed));
            for kind in FaultKind::ALL {
                assert!(
                    faults.iter().any(|f| f.fault.kind() == kind),
                    "seed {seed}: no {kind} in {faults:#?}"
                );
            }
            for f in &faults {
                assert!(f.at >= plan.quiet_start);
                assert!(f.at + f.fault.window() <= minute - plan.quiet_end);
            }
        }
    }

    #[test]
    fn windows_and_redis_faults_keep_clear_of_checkpoints() {
        let plan = FaultPlan::long();
        let every = Duration::from_secs(60);
        let faults = plan.schedule(
            Duration::from_secs(1800),
            every,
            &mut StdRng::seed_from_u64(1),
        );
        let windowed =
            |f: &&ScheduledFault| f.fault.kind().impairs_redis() || !f.fault.window().is_zero();
        for f in faults.iter().filter(windowed) {
            let from = f.at.saturating_sub(plan.checkpoint_margin);
            let to = f.at + f.fault.window() + plan.checkpoint_margin;
            let mut at = every;
            while at <= Duration::from_secs(1800) {
                assert!(
                    !(from <= at && at <= to),
                    "{f:?} is near the checkpoint at {at:?}"
                );
                at += every;
            }
        }
    }

    #[test]
    fn a_seed_names_one_schedule() {
        let plan = FaultPlan::long();
        let draw = |seed| {
            plan.schedule(
                Duration::from_secs(600),
                Duration::from_secs(60),
                &mut StdRng::seed_from_u64(seed),
            )
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
