//! `provision migrate`: one schema, a migrate-all run with a live progress
//! bar, or the public schema.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use provision_shared::ledger::read_ledger;
use provision_shared::migrate_all::{RunScope, RunStart, RunSummary, RunTrigger, run_summary, start_run};
use provision_shared::migration_set::import::store_built_in_if_none;
use provision_shared::public_schema::prepare_public_schema;
use provision_shared::{ProvisionError, TenantState, db};
use serde_json::json;
use sqlx::PgPool;

use crate::MigrateArgs;
use crate::commands::{Ctx, actor, existing_schema_name};
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
    let prepared = prepare_public_schema(&pool).await.map_err(|e| ctx.error(e))?;
    store_built_in_if_none(&pool).await.map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&json!({
            "public_migrations_applied": prepared.applied,
            "platform_tables_made": prepared.platform_tables_made,
        }));
    } else if prepared.applied.is_empty() {
        println!("Public migrations: already current");
    } else {
        println!("Public migrations applied: {:?}", prepared.applied);
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate_one(ctx: &Ctx, schema: &str, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    existing_schema_name(schema)?;
    if schema == "public" {
        return Err(CliError::invalid(
            "schema_name",
            "public holds the shared apps' tables, not a tenant's: `provision migrate --shared` applies this project's public migrations",
        ));
    }
    let pool = ctx.pool().await?;
    let set = ctx.migrations(&pool).await?;
    let row: Option<(Option<String>, bool)> = sqlx::query_as(
        "SELECT p.state, c.schema_name IS NOT NULL
         FROM (SELECT $1::text AS name) AS s
         LEFT JOIN public.provision_tenant p ON p.schema_name = s.name
         LEFT JOIN public.tenants_client c ON c.schema_name = s.name
         WHERE p.schema_name IS NOT NULL OR c.schema_name IS NOT NULL",
    )
    .bind(schema)
    .fetch_optional(&pool)
    .await
    .map_err(|e| ctx.error(e.into()))?;
    let (state, in_client) = row.ok_or_else(|| ctx.error(ProvisionError::UnknownTenant(schema.into())))?;
    // A tenant being provisioned gets its migrations from its provisioning;
    // one whose row the platform deleted has nothing to migrate.
    let not_ready = match (state, in_client) {
        (_, false) => Some("gone (its tenants_client row was deleted)".to_owned()),
        (Some(state), true) if state != TenantState::Ready.as_str() => Some(state),
        _ => None,
    };
    if let Some(state) = not_ready {
        return Err(CliError::new(
            FAILURE,
            "wrong_state",
            format!(
                "tenant {schema} is {state}, not ready: its provisioning applies the migrations \
                 (`provision status --schema-name {schema}`)"
            ),
        ));
    }
    let before = read_ledger(&pool, &set, schema).await.map_err(|e| ctx.error(e))?;
    let latest = set.len();
    // Without Redis the run still starts: a worker's dispatch hands it out.
    let queue = ctx.queue().await.ok();
    let run_id = match start_run(
        &pool,
        &set,
        RunTrigger::Operator,
        RunScope::Schema(schema),
        &actor(),
        queue.as_ref(),
    )
    .await
    .map_err(|e| ctx.error(e))?
    {
        RunStart::Started(id) | RunStart::AlreadyRunning(id) | RunStart::TickTaken(id) => id,
    };
    if !args.json {
        println!(
            "Started migration run {run_id} for {schema}; {} of {latest} migrations applied",
            before.applied_count()
        );
    }
    let mut outcome = json!({
        "schema_name": schema,
        "run_id": run_id,
        "applied": before.applied_count(),
        "latest": latest,
        "set_version": set.version(),
    });
    if args.wait {
        let summary = follow(&pool, run_id, false).await.map_err(|e| ctx.error(e))?;
        let after = read_ledger(&pool, &set, schema).await.map_err(|e| ctx.error(e))?;
        outcome["applied"] = json!(after.applied_count());
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
            println!("{schema} has {} of {latest} migrations", after.applied_count());
        }
    }
    if args.json {
        print_json(&outcome);
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate_all(ctx: &Ctx, args: &MigrateArgs) -> Result<ExitCode, CliError> {
    let pool = ctx.pool().await?;
    let set = ctx.migrations(&pool).await?;
    // Without Redis the run still starts: a worker's dispatch hands it out.
    let queue = ctx.queue().await.ok();
    let run_id = match start_run(
        &pool,
        &set,
        RunTrigger::Operator,
        RunScope::All,
        &actor(),
        queue.as_ref(),
    )
    .await
    .map_err(|e| ctx.error(e))?
    {
        RunStart::Started(id) => {
            if !args.json {
                println!(
                    "Started migrate-all run {id} to tenant migration set {} ({} migrations)",
                    set.version(),
                    set.len()
                );
            }
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
