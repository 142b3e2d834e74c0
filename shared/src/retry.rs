//! The one retry policy of every job kind. A unit of work (a tenant's step,
//! its demo data, one schema of a migration run) counts its attempts in
//! PostgreSQL before it runs, so a crash counts too. After a transient error
//! the next attempt comes [`backoff_ms`] later; a permanent error, or the
//! last of `max_attempts`, ends it as failed, with the error recorded.

use crate::error::ProvisionError;

/// What to do after an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again after this many milliseconds.
    RetryAfter(u64),
    /// Stop: the unit of work is failed with this error.
    GiveUp(String),
}

/// How many times a unit of work is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Executions of one unit of work (crashes included) before it fails.
    pub max_attempts: i32,
}

impl RetryPolicy {
    /// What follows attempt number `attempt` (1 for the first) ending with
    /// `error`.
    pub fn after(&self, attempt: i32, error: &ProvisionError) -> Next {
        if error.is_permanent() {
            Next::GiveUp(error.to_string())
        } else if attempt >= self.max_attempts {
            Next::GiveUp(format!("gave up after {attempt} attempts: {error}"))
        } else {
            Next::RetryAfter(backoff_ms(attempt))
        }
    }

    /// The error recorded for a unit of work that used up its attempts
    /// without ending (its worker crashed each time, say).
    pub fn gave_up(&self, last_error: Option<&str>) -> String {
        format!(
            "gave up after {} attempts; last error: {}",
            self.max_attempts,
            last_error.unwrap_or("none recorded (the worker may have crashed)")
        )
    }

    /// Whether an attempt numbered `attempt` is past the last one allowed
    /// (the one before it crashed without recording its end).
    pub fn exhausted(&self, attempt: i32) -> bool {
        attempt > self.max_attempts
    }
}

/// The delay after attempt `attempt` failed: about 0.5 s, 1 s, 2 s … capped
/// at 60 s, each scaled by a random factor in [0.5, 1.0) so retries of many
/// units spread out instead of arriving together.
pub fn backoff_ms(attempt: i32) -> u64 {
    let exponent = u32::try_from(attempt.clamp(1, 8) - 1).expect("clamped");
    let nominal = (1000u64 << exponent).min(60_000);
    let mut byte = [0u8; 1];
    getrandom::fill(&mut byte).expect("the operating system's random source failed");
    nominal / 2 + nominal * u64::from(byte[0]) / 512
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(attempt: i32) -> Vec<u64> {
        (0..200).map(|_| backoff_ms(attempt)).collect()
    }

    #[test]
    fn the_first_retry_comes_within_a_second_and_later_ones_wait_longer() {
        let first = samples(1);
        assert!(first.iter().all(|d| (500..1000).contains(d)), "{first:?}");
        let third = samples(3);
        assert!(third.iter().all(|d| (2000..4000).contains(d)), "{third:?}");
    }

    #[test]
    fn delays_are_capped_at_a_minute_and_spread_out() {
        for attempt in [8, 9, 20, 1000] {
            let delays = samples(attempt);
            assert!(delays.iter().all(|d| (30_000..60_000).contains(d)), "{delays:?}");
        }
        let mut distinct = samples(5);
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 20, "retries would arrive together: {distinct:?}");
    }

    #[test]
    fn permanent_errors_and_the_last_attempt_give_up() {
        let policy = RetryPolicy { max_attempts: 3 };
        let transient = ProvisionError::Queue("down".into());
        let permanent = ProvisionError::conflict("domain", "taken");
        assert!(matches!(policy.after(1, &transient), Next::RetryAfter(_)));
        assert!(matches!(policy.after(2, &transient), Next::RetryAfter(_)));
        match policy.after(3, &transient) {
            Next::GiveUp(message) => assert!(message.starts_with("gave up after 3 attempts"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(policy.after(1, &permanent), Next::GiveUp(permanent.to_string()));
        assert!(!policy.exhausted(3));
        assert!(policy.exhausted(4));
    }
}
