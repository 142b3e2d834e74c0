//! `provision migrate`: one schema, a migrate-all run with a live progress
//! bar, or the public schema.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use provision_shared::migrate::apply_public_migrations;
use provision_shared::migrate_all::{
    RunScope, RunStart, RunSummary, RunTrigger, dispatch, run_summary, start_run,
};
use provision_shared::{ProvisionError, TenantState, db, validate};
use serde_json::json;
use sqlx::PgPool;

use crate::MigrateArgs;
use crate::commands::{Ctx, actor, invalid};
use crate::exit_codes::{CliError, FAILURE, SUCCESS};
use crate::output::print_json;

pub(crate) async fn migrate(ctx: &Ctx, args: MigrateArgs) -> Result<ExitCode, CliError> {
    if args.target.shared {
        return migrate_shared(ctx, &args).await;
    }
    if let Some(schema) = &args.target.schema_name {
        return migrate_one(ctx, schema, &args).await;
    }
    migrate_all(ctx, &args).await
}

async fn migrate_shared(ctx: &Ctx, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    db::create_database_if_missing(&ctx.options.database_url)
        .await
        .map_err(|e| ctx.error(e))?;
    let pool = ctx.pool().await?;
    let applied = apply_public_migrations(&pool).await.map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&json!({"public_migrations_applied": applied}));
    } else if applied.is_empty() {
        println!("Public migrations: already current");
    } else {
        println!("Public migrations applied: {applied:?}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate_one(ctx: &Ctx, schema: &str, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    validate::schema_name(schema).map_err(invalid)?;
    let latest = ctx.migrations()?.latest();
    let pool = ctx.pool().await?;
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT state, schema_version FROM public.provision_tenant WHERE schema_name = $1")
            .bind(schema)
            .fetch_optional(&pool)
            .await
            .map_err(|e| ctx.error(e.into()))?;
    let (state, version) = row.ok_or_else(|| ctx.error(ProvisionError::UnknownTenant(schema.into())))?;
    if state != TenantState::Ready.as_str() {
        return Err(CliError::new(
            FAILURE,
            "wrong_state",
            format!(
                "tenant {schema} is {state}, not ready: its provisioning applies the migrations \
                 (`provision status --schema-name {schema}`)"
            ),
        ));
    }
    let run_id = match start_run(
        &pool,
        RunTrigger::Operator,
        RunScope::Schema(schema),
        &actor(),
        latest,
    )
    .await
    .map_err(|e| ctx.error(e))?
    {
        RunStart::Started(id) | RunStart::AlreadyRunning(id) | RunStart::TickTaken(id) => id,
    };
    hand_out_first_schemas(ctx, &pool).await;
    if !args.json {
        println!("Started migration run {run_id} for {schema}; at migration {version} of {latest}");
    }
    let mut outcome = json!({"schema_name": schema, "run_id": run_id, "applied": version, "latest": latest});
    if args.wait {
        let summary = follow(&pool, run_id, false).await.map_err(|e| ctx.error(e))?;
        let version: i32 =
            sqlx::query_scalar("SELECT schema_version FROM public.provision_tenant WHERE schema_name = $1")
                .bind(schema)
                .fetch_one(&pool)
                .await
                .map_err(|e| ctx.error(e.into()))?;
        outcome["applied"] = json!(version);
        if let Some(failure) = summary.failures.first() {
            outcome["error"] = json!(failure.error);
            if args.json {
                print_json(&outcome);
            } else {
                eprintln!("error: migrating {schema} failed: {}", failure.error);
            }
            return Ok(ExitCode::from(FAILURE));
        }
        if !args.json {
            println!("{schema} is at migration {version} of {latest}");
        }
    }
    if args.json {
        print_json(&outcome);
    }
    Ok(ExitCode::SUCCESS)
}

/// Hands out a new run's first schemas now rather than at a worker's next
/// dispatch tick; if Redis cannot be reached, that tick will.
async fn hand_out_first_schemas(ctx: &Ctx, pool: &PgPool) {
    if let Ok(queue) = ctx.queue().await
        && let Err(e) = dispatch(pool, &queue).await
    {
        tracing::debug!(error = %e, "could not hand out the run's first schemas; a worker will");
    }
}

async fn migrate_all(ctx: &Ctx, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    let latest = ctx.migrations()?.latest();
    let pool = ctx.pool().await?;
    let run_id = match start_run(&pool, RunTrigger::Operator, RunScope::All, &actor(), latest)
        .await
        .map_err(|e| ctx.error(e))?
    {
        RunStart::Started(id) => {
            if !args.json {
                println!("Started migrate-all run {id} to migration {latest}");
            }
            hand_out_first_schemas(ctx, &pool).await;
            id
        }
        RunStart::AlreadyRunning(id) | RunStart::TickTaken(id) => {
            if !args.json {
                println!("Migrate-all run {id} is already in progress: following it");
            }
            id
        }
    };
    let summary = if args.wait {
        follow(&pool, run_id, !args.json)
            .await
            .map_err(|e| ctx.error(e))?
    } else {
        run_summary(&pool, run_id).await.map_err(|e| ctx.error(e))?
    };
    if args.json {
        print_json(&summary);
    } else {
        print_counts(&summary);
    }
    Ok(ExitCode::from(if args.wait && summary.failed > 0 {
        FAILURE
    } else {
        SUCCESS
    }))
}

fn print_counts(summary: &RunSummary) {
    println!(
        "Run {} ({}): migrated {}, already current {}, failed {}{}",
        summary.run_id,
        summary.state,
        summary.migrated,
        summary.already_current,
        summary.failed,
        if summary.state == "running" {
            format!(
                ", {} of {} still to do",
                summary.total - summary.done,
                summary.total
            )
        } else {
            String::new()
        }
    );
    for failure in &summary.failures {
        println!("  failed: {}: {}", failure.schema_name, failure.error);
    }
    if summary.failed > 0 {
        println!(
            "Fix the cause, then `provision retry --all-failed` (or --schema-name S) migrates them again."
        );
    }
}

/// Follows a run to its end, drawing a progress bar on stderr (a line every
/// few seconds when stderr is not a terminal).
async fn follow(pool: &PgPool, run_id: i64, show: bool) -> Result<RunSummary, ProvisionError> {
    let started = Instant::now();
    let first_done = run_summary(pool, run_id).await?.done;
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        let summary = run_summary(pool, run_id).await?;
        let finished = summary.state == "finished";
        // A run with no schema behind has nothing to draw: its summary
        // line says so.
        let drawable = summary.total > 0;
        if show && drawable && (terminal || finished || last_line.elapsed() >= Duration::from_secs(5)) {
            let line = progress_line(&summary, summary.done - first_done, started.elapsed());
            let mut err = std::io::stderr().lock();
            if terminal {
                let _ = write!(err, "\r{line}\x1b[K");
                if finished {
                    let _ = writeln!(err);
                }
            } else {
                let _ = writeln!(err, "{line}");
            }
            last_line = Instant::now();
        }
        if finished {
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `[########------------] 400/1000  40%  812/s  ETA 1s  failed 0`
fn progress_line(summary: &RunSummary, done_here: i64, elapsed: Duration) -> String {
    const WIDTH: i64 = 30;
    let total = summary.total.max(1);
    let filled = (summary.done * WIDTH / total).clamp(0, WIDTH);
    let rate = done_here as f64 / elapsed.as_secs_f64().max(0.001);
    let left = (summary.total - summary.done).max(0);
    let eta = if rate > 0.0 {
        format!("{:.0}s", left as f64 / rate)
    } else {
        "?".into()
    };
    format!(
        "[{}{}] {}/{} {:>3}%  {:.0}/s  ETA {}  failed {}",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize),
        summary.done,
        summary.total,
        summary.done * 100 / total,
        rate,
        eta,
        summary.failed
    )
}
