//! The lifecycle commands: `suspend`, `resume`, `delete-tenant`,
//! `cancel-delete` and `restore-tenant`. Each checks its input before it
//! connects, and refuses (naming the tenant's lifecycle) what the tenant's
//! state does not allow, with nothing written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use provision_queue::RedisQueue;
use provision_shared::jobs::JobKind;
use provision_shared::lifecycle::restore_tenant::request_restore;
use provision_shared::lifecycle::schedule::{
    DEFAULT_GRACE_DAYS, DeleteWhen, cancel_deletion, push_owed_lifecycle_job, schedule_deletion,
};
use provision_shared::lifecycle::suspend::{Switched, resume, suspend};
use provision_shared::lifecycle::{LifecycleDetail, lifecycle_detail};
use provision_shared::status::tenant_history;
use provision_shared::{ProvisionError, validate};
use serde_json::json;
use sqlx::PgPool;

use crate::commands::{Ctx, actor, invalid};
use crate::exit_codes::{CliError, FAILURE, SUCCESS};
use crate::output::{history_line, print_json};

/// How often `--wait` looks at the tenant's history.
const WAIT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub(crate) struct SuspendArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// Why, recorded in the history and shown by `status`.
    #[arg(long, value_name = "R")]
    reason: Option<String>,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TenantArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteTenantArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// The schema name again: without it nothing happens.
    #[arg(long, value_name = "S")]
    confirm: Option<String>,

    /// Days from now until the deletion is carried out; meanwhile the
    /// tenant is suspended and `cancel-delete` takes it back.
    #[arg(long, value_name = "DAYS", conflicts_with = "now")]
    grace: Option<u32>,

    /// Carry out the deletion now.
    #[arg(long)]
    now: bool,

    /// Drop the schema without a backup (the confirmation covers this too).
    #[arg(long)]
    no_backup: bool,

    /// Why, recorded in the history.
    #[arg(long, value_name = "R")]
    reason: Option<String>,

    /// Follow the deletion until deleted (exit 0) or failed (exit 1); only
    /// for a deletion due now.
    #[arg(long)]
    wait: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreTenantArgs {
    /// The backup file a deletion wrote (its path is in `provision status`).
    #[arg(long, value_name = "FILE")]
    backup: PathBuf,

    /// The tenant the backup must hold [default: the one it holds].
    #[arg(long)]
    schema_name: Option<String>,

    /// Follow the restore until active (exit 0) or failed (exit 1).
    #[arg(long)]
    wait: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

fn lifecycle_schema_name(name: &str) -> Result<(), CliError> {
    validate::existing_schema_name(name).map_err(invalid)
}

pub(crate) async fn suspend_command(ctx: &Ctx, args: SuspendArgs) -> Result<ExitCode, CliError> {
    lifecycle_schema_name(&args.schema_name)?;
    if let Some(r) = &args.reason {
        validate::reason(r).map_err(invalid)?;
    }
    let pool = ctx.pool().await?;
    let switched = suspend(&pool, &args.schema_name, args.reason.as_deref(), &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    report_switch(&args.schema_name, "suspended", switched, args.json);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn resume_command(ctx: &Ctx, args: TenantArgs) -> Result<ExitCode, CliError> {
    lifecycle_schema_name(&args.schema_name)?;
    let pool = ctx.pool().await?;
    let switched = resume(&pool, &args.schema_name, &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    report_switch(&args.schema_name, "active", switched, args.json);
    Ok(ExitCode::SUCCESS)
}

fn report_switch(schema: &str, lifecycle: &str, switched: Switched, json: bool) {
    let changed = switched == Switched::Changed;
    if json {
        print_json(&json!({"schema_name": schema, "lifecycle": lifecycle, "changed": changed}));
    } else if changed {
        println!("Tenant {schema} is {lifecycle}.");
    } else {
        println!("Tenant {schema} was {lifecycle} already: nothing changed.");
    }
}

pub(crate) async fn delete_tenant_command(ctx: &Ctx, args: DeleteTenantArgs) -> Result<ExitCode, CliError> {
    lifecycle_schema_name(&args.schema_name)?;
    if args.confirm.as_deref() != Some(args.schema_name.as_str()) {
        return Err(CliError::invalid(
            "confirm",
            format!(
                "deleting a tenant needs --confirm {} (its schema name again); nothing was done",
                args.schema_name
            ),
        ));
    }
    if let Some(r) = &args.reason {
        validate::reason(r).map_err(invalid)?;
    }
    let when = match (args.now, args.grace) {
        (true, _) | (false, Some(0)) => DeleteWhen::Now,
        (false, Some(days)) => DeleteWhen::GraceDays(days),
        (false, None) => DeleteWhen::GraceDays(DEFAULT_GRACE_DAYS),
    };
    if args.wait && when != DeleteWhen::Now {
        return Err(CliError::invalid(
            "wait",
            "--wait follows a deletion carried out now: give --now (or --grace 0); nothing was done",
        ));
    }
    let pool = ctx.pool().await?;
    let queue = ctx.queue().await?;
    let schema = args.schema_name.as_str();
    let planned = schedule_deletion(
        &pool,
        schema,
        when,
        !args.no_backup,
        args.reason.as_deref(),
        &actor(),
    )
    .await
    .map_err(|e| ctx.error(e))?;
    // Due now: pushed here; due later: a worker pushes it when it is due.
    let job_id = if when == DeleteWhen::Now {
        push_recorded_job(ctx, &pool, &queue, schema, JobKind::DeleteTenant).await?
    } else {
        None
    };
    if !args.json {
        let backup = if planned.with_backup {
            "with a backup"
        } else {
            "WITHOUT a backup"
        };
        println!(
            "{} the deletion of {schema} ({backup}): suspended now, due {}{}",
            if planned.rescheduled {
                "Rescheduled"
            } else {
                "Scheduled"
            },
            planned.delete_after.to_rfc3339(),
            job_id
                .as_deref()
                .map(|id| format!("; DeleteTenant job {id}"))
                .unwrap_or_default()
        );
        if when != DeleteWhen::Now {
            println!("`provision cancel-delete --schema-name {schema}` takes it back until then.");
        }
    }
    let mut final_state = "deletion_scheduled".to_owned();
    if args.wait {
        final_state = wait_for_lifecycle(&pool, schema, &["deleted"], !args.json)
            .await
            .map_err(|e| ctx.error(e))?;
    }
    let detail = lifecycle_detail(&pool, schema).await.map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&json!({
            "schema_name": schema,
            "deletion_id": planned.deletion_id,
            "delete_after": planned.delete_after,
            "with_backup": planned.with_backup,
            "rescheduled": planned.rescheduled,
            "job_id": job_id,
            "lifecycle_state": final_state,
            "backup": detail.as_ref().and_then(backup_json),
        }));
    } else if args.wait && final_state == "deleted" {
        print_backup(detail.as_ref());
    }
    Ok(exit_for(&final_state, args.wait, "deleted"))
}

pub(crate) async fn cancel_delete_command(ctx: &Ctx, args: TenantArgs) -> Result<ExitCode, CliError> {
    lifecycle_schema_name(&args.schema_name)?;
    let pool = ctx.pool().await?;
    cancel_deletion(&pool, &args.schema_name, &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&json!({"schema_name": args.schema_name, "lifecycle": "active"}));
    } else {
        println!(
            "The deletion of {} is cancelled; it is active again.",
            args.schema_name
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn restore_tenant_command(ctx: &Ctx, args: RestoreTenantArgs) -> Result<ExitCode, CliError> {
    if let Some(schema) = &args.schema_name {
        lifecycle_schema_name(schema)?;
    }
    let pool = ctx.pool().await?;
    let queue = ctx.queue().await?;
    let backup = request_restore(&pool, &args.backup, args.schema_name.as_deref(), &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    let schema = backup.schema_name.as_str();
    let job_id = push_recorded_job(ctx, &pool, &queue, schema, JobKind::RestoreTenant).await?;
    if !args.json {
        println!(
            "Restoring {schema} from {} (sha256 {}){}",
            args.backup.display(),
            backup.sha256,
            job_id
                .as_deref()
                .map(|id| format!(": RestoreTenant job {id}"))
                .unwrap_or_default()
        );
    }
    let mut final_state = "restore_requested".to_owned();
    if args.wait {
        final_state = wait_for_lifecycle(&pool, schema, &["active"], !args.json)
            .await
            .map_err(|e| ctx.error(e))?;
    }
    if args.json {
        print_json(&json!({
            "schema_name": schema,
            "backup_id": backup.id,
            "sha256": backup.sha256,
            "domains": backup.domains,
            "job_id": job_id,
            "lifecycle_state": final_state,
        }));
    }
    Ok(exit_for(&final_state, args.wait, "active"))
}

/// Pushes the lifecycle job just recorded. What is recorded stays so when
/// Redis does not take the job: a worker's reconciler pushes it, which is
/// said on stderr instead of failing a command whose change is made.
async fn push_recorded_job(
    ctx: &Ctx,
    pool: &PgPool,
    queue: &RedisQueue,
    schema: &str,
    kind: JobKind,
) -> Result<Option<String>, CliError> {
    match push_owed_lifecycle_job(pool, queue, schema, kind, None).await {
        Ok(id) => Ok(id),
        Err(e) if e.is_unreachable() => {
            eprintln!(
                "warning: the job could not be pushed ({e}); it is recorded, and a worker's reconciler pushes it"
            );
            Ok(None)
        }
        Err(e) => Err(ctx.error(e)),
    }
}

fn exit_for(state: &str, waited: bool, wanted: &str) -> ExitCode {
    if waited && state != wanted {
        ExitCode::from(FAILURE)
    } else {
        ExitCode::from(SUCCESS)
    }
}

/// Follows the tenant's history until its lifecycle row reaches one of
/// `ends`, fails, or is taken back (cancelled); returns the state reached.
async fn wait_for_lifecycle(
    pool: &PgPool,
    schema: &str,
    ends: &[&str],
    print: bool,
) -> Result<String, ProvisionError> {
    let mut last_id = tenant_history(pool, schema, 0)
        .await?
        .iter()
        .map(|e| e.id)
        .max()
        .unwrap_or(0);
    loop {
        for entry in tenant_history(pool, schema, last_id).await? {
            last_id = entry.id;
            if print {
                println!("  {}", history_line(&entry));
            }
        }
        let state: String =
            sqlx::query_scalar("SELECT state FROM public.provision_lifecycle WHERE schema_name = $1")
                .bind(schema)
                .fetch_one(pool)
                .await?;
        let taken_back = state == "active" && !ends.contains(&"active");
        if ends.contains(&state.as_str()) || state == "failed" || taken_back {
            if print {
                match state.as_str() {
                    "failed" => eprintln!(
                        "error: it failed; `provision status --schema-name {schema}` shows why, \
                         `provision retry --schema-name {schema}` goes on"
                    ),
                    s if ends.contains(&s) => println!("Tenant {schema} is {s}."),
                    s => println!("Tenant {schema} is {s}: the deletion was cancelled."),
                }
            }
            return Ok(state);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn backup_json(detail: &LifecycleDetail) -> Option<serde_json::Value> {
    detail
        .backup_path
        .as_ref()
        .map(|path| json!({"path": path, "sha256": detail.backup_sha256, "bytes": detail.backup_bytes}))
}

fn print_backup(detail: Option<&LifecycleDetail>) {
    if let Some(d) = detail
        && let Some(path) = &d.backup_path
    {
        println!(
            "Backup: {path} (sha256 {})",
            d.backup_sha256.as_deref().unwrap_or("not verified")
        );
        println!("`provision restore-tenant --backup {path}` brings it back.");
    }
}
