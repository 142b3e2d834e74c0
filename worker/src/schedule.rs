//! The nightly pass: the migrate-all run, and (when configured) the
//! suspension of tenants whose `paid_until` is long past. apalis-cron fires
//! in every worker process, so a run's uniqueness per tick is a PostgreSQL
//! constraint, not a hope; a second suspension pass finds nothing left to
//! suspend. A tick missed while every worker was down is noticed at the
//! next start.

use std::str::FromStr;
use std::sync::Arc;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_cron::Tick;
use chrono::{DateTime, Duration, Utc};
use cron::Schedule;
use provision_shared::ProvisionError;
use provision_shared::migrate_all::{RunScope, RunStart, RunTrigger, start_run};

use crate::handlers::WorkerState;

/// Parses a six-field (with seconds) cron expression, UTC; `off` is `None`.
pub fn parse_schedule(expr: &str) -> Result<Option<Schedule>, String> {
    if expr.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "{expr:?}: six fields (sec min hour day month weekday) expected, like \"0 0 3 * * *\", or off"
        ));
    }
    Schedule::from_str(expr)
        .map(Some)
        .map_err(|e| format!("{expr:?}: {e}"))
}

/// The latest tick of `schedule` at or before `now`, if within a day.
pub fn previous_tick(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // `after` starts strictly after its argument; step back one second so a
    // tick exactly at `now` counts.
    let tick = schedule.after(&(now + Duration::seconds(1))).next_back()?;
    (tick > now - Duration::days(1)).then_some(tick)
}

/// Starts the run of the tick at `tick`, unless another worker has.
pub async fn run_for_tick(state: &WorkerState, tick: DateTime<Utc>) -> Result<RunStart, ProvisionError> {
    let started = start_run(
        &state.pool,
        &state.migrations.get()?,
        RunTrigger::Cron(tick),
        RunScope::All,
        &state.name,
        Some(&state.queue),
    )
    .await?;
    match &started {
        RunStart::Started(id) => {
            tracing::info!(run_id = id, %tick, "migrate-all run started by the schedule")
        }
        RunStart::TickTaken(id) => tracing::debug!(run_id = id, %tick, "tick already has its run"),
        RunStart::AlreadyRunning(id) => {
            tracing::warn!(run_id = id, %tick, "a migrate-all run is still in progress; this tick adds none")
        }
    }
    Ok(started)
}

/// At start: the latest tick of the last day, if no run has it or a later
/// tick, was missed while no worker ran: run it now.
pub async fn catch_up(state: &WorkerState, schedule: &Schedule) -> Result<(), ProvisionError> {
    let Some(tick) = previous_tick(schedule, Utc::now()) else {
        return Ok(());
    };
    let covered: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM public.provision_migration_run WHERE tick >= $1)")
            .bind(tick)
            .fetch_one(&state.pool)
            .await?;
    if !covered {
        tracing::info!(%tick, "catching up a migrate-all tick missed while no worker ran");
        run_for_tick(state, tick).await?;
    }
    Ok(())
}

/// The apalis-cron handler.
pub async fn on_tick(tick: Tick, state: Data<Arc<WorkerState>>) -> Result<(), BoxDynError> {
    let at = i64::try_from(tick.get_timestamp())
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or("tick out of range")?;
    run_for_tick(&state, at).await?;
    suspend_expired_tenants(&state).await?;
    Ok(())
}

/// `PROVISION_SUSPEND_EXPIRED_AFTER`: suspends the tenants whose
/// `paid_until` passed that many days ago, recorded as by the system.
pub async fn suspend_expired_tenants(state: &WorkerState) -> Result<Vec<String>, ProvisionError> {
    let Some(days) = state.suspend_expired_after else {
        return Ok(Vec::new());
    };
    let suspended =
        provision_shared::lifecycle::suspend::suspend_expired(&state.pool, days, Utc::now().date_naive())
            .await?;
    if !suspended.is_empty() {
        tracing::info!(tenants = ?suspended, days, "suspended tenants whose paid_until passed");
    }
    Ok(suspended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_need_six_fields_or_off() {
        assert!(parse_schedule("off").unwrap().is_none());
        assert!(parse_schedule("0 0 3 * * *").unwrap().is_some());
        assert!(parse_schedule("0 3 * * *").is_err());
        assert!(parse_schedule("nonsense x y z a b").is_err());
    }

    #[test]
    fn the_previous_tick_is_the_latest_at_or_before_now() {
        let schedule = parse_schedule("0 0 3 * * *").unwrap().unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            previous_tick(&schedule, at("2026-11-29T09:00:00Z")),
            Some(at("2026-11-29T03:00:00Z"))
        );
        assert_eq!(
            previous_tick(&schedule, at("2026-11-29T03:00:00Z")),
            Some(at("2026-11-29T03:00:00Z"))
        );
        assert_eq!(
            previous_tick(&schedule, at("2026-11-29T02:59:59Z")),
            Some(at("2026-11-28T03:00:00Z"))
        );
        let yearly = parse_schedule("0 0 3 1 1 *").unwrap().unwrap();
        assert_eq!(previous_tick(&yearly, at("2026-11-29T09:00:00Z")), None);
    }
}
