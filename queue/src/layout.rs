//! Where a job kind's queue lives in Redis: its name under the namespace,
//! the apalis-redis configuration (whose key names both binaries read), the
//! heartbeat a worker keeps, and the channel a push is announced on.

use std::time::Duration;

use apalis_redis::Config;
use provision_shared::jobs::JobKind;

/// The queue of `kind` under `namespace`: every Redis key of the queue
/// starts with it.
pub fn queue_name(namespace: &str, kind: JobKind) -> String {
    format!("{namespace}:{}", kind.name())
}

/// The channel a push of `kind` under `namespace` is announced on, so an
/// idle worker fetches at once instead of at its next heartbeat.
pub fn wake_channel(namespace: &str, kind: JobKind) -> String {
    format!("{}:wake", queue_name(namespace, kind))
}

/// How often a worker of `kind` heartbeats. A push wakes an idle worker at
/// once; the heartbeat is the fallback when a wake-up is lost and the poll
/// for delayed jobs (retries), so it still bounds the pick-up delay: 100 ms
/// for `CreateTenant` and `MigrateSchema` (the library's default of 30 s is
/// what a signup must never see), half a second for demo data and the
/// lifecycle jobs.
pub fn heartbeat(kind: JobKind) -> Duration {
    match kind {
        JobKind::CreateTenant | JobKind::MigrateSchema => Duration::from_millis(100),
        JobKind::SeedDemoData | JobKind::DeleteTenant | JobKind::RestoreTenant => Duration::from_millis(500),
    }
}

/// How long a worker may go without a heartbeat before another takes over
/// its jobs: a crashed worker's jobs resume within this (plus one heartbeat
/// of the survivor).
pub const ORPHANED_AFTER: Duration = Duration::from_secs(5);

/// The apalis-redis configuration of `kind`'s queue under `namespace`.
pub fn queue_config(namespace: &str, kind: JobKind) -> Config {
    queue_config_beating(namespace, kind, heartbeat(kind))
}

/// [`queue_config`] with heartbeat `beat` instead of the kind's own.
///
/// One job fetched at a time: with larger batches a busy worker stops
/// heartbeating and its prefetched jobs are run twice.
pub fn queue_config_beating(namespace: &str, kind: JobKind, beat: Duration) -> Config {
    let missed = usize::try_from(ORPHANED_AFTER.as_millis() / beat.as_millis().max(1))
        .unwrap_or(10)
        .max(1);
    Config::default()
        .queue(queue_name(namespace, kind))
        .heartbeat_interval(beat)
        .missed_heartbeats(missed)
        .batch_size(1)
        .emit_events(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_and_their_channels_are_under_the_namespace() {
        assert_eq!(
            queue_name("concierge", JobKind::CreateTenant),
            "concierge:create_tenant"
        );
        assert_eq!(wake_channel("ns", JobKind::CreateTenant), "ns:create_tenant:wake");
    }

    #[test]
    fn a_worker_is_taken_for_dead_after_about_five_seconds_of_silence() {
        for kind in JobKind::ALL {
            assert_eq!(queue_config("ns", kind).orphaned_duration(), ORPHANED_AFTER);
        }
    }
}
