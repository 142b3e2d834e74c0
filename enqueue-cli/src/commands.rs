//! The commands of `provision`. Each validates first, so bad input exits 2
//! with nothing written or enqueued.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use provision_queue::RedisQueue;
use provision_queue::options::ConnectionOptions;
use provision_shared::demo_data::request_demo_data;
use provision_shared::jobs::{JobKind, JobRequest, JobSink, MAX_QUEUE_DEPTH};
use provision_shared::migration_set::MigrationSet;
use provision_shared::migration_set::import::store_built_in_if_none;
use provision_shared::operator::DomainFix;
use provision_shared::public_schema::{prepare_public_schema, record_base_domain};
use provision_shared::request::{
    Recorded, TenantRequest, check_request_is_free, job_id_of, push_owed_job, record_request,
};
use provision_shared::requeue::{RetryTarget, retry_and_requeue};
use provision_shared::status::{list_tenants, tenant_history, tenant_status};
use provision_shared::tenant_search::TenantFilter;
use provision_shared::{ProvisionError, TenantState, db, password, validate};
use serde_json::json;
use sqlx::PgPool;

use crate::check::run_checks;
use crate::exit_codes::{CliError, FAILURE, SUCCESS};
use crate::output::{history_line, print_json, print_list, print_status};
use crate::{
    CheckArgs, Command, CreateTenantArgs, FixDomainArgs, InitArgs, ListArgs, RetryArgs, SeedArgs, StatusArgs,
};

/// How often `--wait` looks at the tenant's history.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Connections and the way out for errors, for one command.
pub(crate) struct Ctx {
    pub(crate) options: ConnectionOptions,
}

impl Ctx {
    pub(crate) fn error(&self, e: ProvisionError) -> CliError {
        CliError::from_provision(e, &self.options.database_url, &self.options.redis_url)
    }

    pub(crate) async fn pool(&self) -> Result<PgPool, CliError> {
        db::connect(&self.options.database_url, 2)
            .await
            .map_err(|e| self.error(e))
    }

    /// The tenant migration set in force: the newest stored, or the
    /// built-in one on a database that has none yet.
    pub(crate) async fn migrations(&self, pool: &PgPool) -> Result<MigrationSet, CliError> {
        MigrationSet::in_force(pool).await.map_err(|e| self.error(e))
    }

    pub(crate) async fn queue(&self) -> Result<RedisQueue, CliError> {
        RedisQueue::connect(&self.options.redis_url, &self.options.namespace)
            .await
            .map_err(|e| self.error(e))
    }
}

/// Who ran the command, as recorded in the history.
pub(crate) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("provision ({user})")
}

pub(crate) async fn run(options: ConnectionOptions, command: Command) -> Result<ExitCode, CliError> {
    let ctx = Ctx { options };
    match command {
        Command::CreateTenant(args) => create_tenant(&ctx, args).await,
        Command::SeedDemoData(args) => seed_demo_data(&ctx, args).await,
        Command::Status(args) => status(&ctx, args).await,
        Command::List(args) => list(&ctx, args).await,
        Command::Init(args) => init(&ctx, args).await,
        Command::Retry(args) => retry(&ctx, args).await,
        Command::FixDomain(args) => fix_domain(&ctx, args).await,
        Command::Check(args) => check(&ctx, args).await,
        Command::Migrate(args) => crate::migrate::migrate(&ctx, args).await,
        Command::ImportMigrations(args) => crate::import::import_migrations(&ctx, args).await,
        Command::Dashboard(args) => crate::dashboard::dashboard(&ctx, args).await,
        Command::Suspend(args) => crate::lifecycle::suspend_command(&ctx, args).await,
        Command::Resume(args) => crate::lifecycle::resume_command(&ctx, args).await,
        Command::DeleteTenant(args) => crate::lifecycle::delete_tenant_command(&ctx, args).await,
        Command::CancelDelete(args) => crate::lifecycle::cancel_delete_command(&ctx, args).await,
        Command::RestoreTenant(args) => crate::lifecycle::restore_tenant_command(&ctx, args).await,
    }
}

/// Reads the admin password from where the operator said, or generates one.
/// Returns the password and whether it was generated.
fn admin_password(args: &CreateTenantArgs) -> Result<(String, bool), CliError> {
    let first_line = |text: &str| text.lines().next().unwrap_or("").to_owned();
    let password = if args.password.admin_password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::invalid("admin_password", format!("cannot read standard input: {e}")))?;
        first_line(&line)
    } else if let Some(path) = &args.password.admin_password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::invalid("admin_password", format!("cannot read {}: {e}", path.display()))
        })?;
        first_line(&text)
    } else if let Some(p) = &args.password.admin_password {
        eprintln!(
            "warning: --admin-password is visible to other users in the process list; \
             prefer --admin-password-stdin or --admin-password-file"
        );
        p.clone()
    } else {
        return Ok((password::generate_password(), true));
    };
    validate::admin_password(&password).map_err(|e| CliError::invalid(e.field, e.to_string()))?;
    Ok((password, false))
}

/// A schema name an operator may look at or repair: any schema
/// django-tenants accepts, the public tenant's `public` included.
pub(crate) fn existing_schema_name(name: &str) -> Result<(), CliError> {
    validate::existing_schema_name(name).map_err(invalid)
}

pub(crate) fn invalid(e: provision_shared::InvalidInput) -> CliError {
    CliError::invalid(e.field, e.to_string())
}

async fn create_tenant(ctx: &Ctx, args: CreateTenantArgs) -> Result<ExitCode, CliError> {
    validate::schema_name(&args.schema_name).map_err(invalid)?;
    validate::tenant_name(&args.tenant_name).map_err(invalid)?;
    let domain = args
        .domain
        .clone()
        .unwrap_or_else(|| format!("{}.{}", args.schema_name, ctx.options.base_domain));
    validate::domain(&domain).map_err(invalid)?;
    let admin_email = args
        .admin_email
        .clone()
        .unwrap_or_else(|| format!("admin@{domain}"));
    validate::email(&admin_email).map_err(invalid)?;
    validate::trial_days(args.trial_days).map_err(invalid)?;
    let (password, generated) = admin_password(&args)?;

    let mut request = TenantRequest {
        schema_name: args.schema_name.clone(),
        tenant_name: args.tenant_name.clone(),
        domain,
        admin_email,
        admin_password_hash: String::new(),
        trial_days: args.trial_days,
        seed_demo_data: !args.skip_demo_data,
    };
    let pool = ctx.pool().await?;
    let queue = ctx.queue().await?;

    if args.dry_run {
        let existing = check_request_is_free(&pool, &request)
            .await
            .map_err(|e| ctx.error(e))?;
        let plan: Vec<&str> = TenantState::ALL
            .iter()
            .filter_map(|s| s.next_step().map(|(step, _)| step.as_str()))
            .chain(request.seed_demo_data.then_some("seed_demo_data"))
            .collect();
        let verdict = match existing {
            None => "would record the tenant and enqueue CreateTenant".to_owned(),
            Some(state) => {
                format!("already requested with the same details (state {state}): nothing new to do")
            }
        };
        if args.json {
            print_json(&json!({
                "dry_run": true,
                "schema_name": request.schema_name,
                "tenant_name": request.tenant_name,
                "domain": request.domain,
                "admin_email": request.admin_email,
                "trial_days": request.trial_days,
                "seed_demo_data": request.seed_demo_data,
                "existing_state": existing.map(|s| s.as_str()),
                "steps": plan,
                "verdict": verdict,
            }));
        } else {
            println!("Dry run: nothing written, nothing enqueued.");
            println!("  schema_name   {}", request.schema_name);
            println!("  tenant_name   {}", request.tenant_name);
            println!("  domain        {} (primary)", request.domain);
            println!("  admin_email   {}", request.admin_email);
            println!("  trial_days    {}", request.trial_days);
            println!("  steps         {}", plan.join(" → "));
            println!("The schema name and domain are free. Verdict: {verdict}.");
        }
        return Ok(ExitCode::SUCCESS);
    }

    request.admin_password_hash = password::django_argon2_hash(&password);
    // A generated password is printed once, below; one the operator gave is
    // never printed.
    let generated_password = generated.then_some(password);
    let recorded = record_request(&pool, &request, &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    let schema = request.schema_name.as_str();
    let (job_id, state) = match recorded {
        Recorded::Existing(state @ (TenantState::Ready | TenantState::Failed)) => (None, state),
        Recorded::New | Recorded::Existing(_) => {
            // Pushing again for a request already in flight is harmless: the
            // job finds the tenant's state and carries on or ends.
            // With the queue full (a burst during an outage), the request
            // waits in PostgreSQL and a worker pushes it when there is room.
            let depth = queue
                .depth(JobKind::CreateTenant)
                .await
                .map_err(|e| ctx.error(e))?;
            // The job id is claimed before the push: a worker woken by the
            // request's announcement may be pushing it too, and only one
            // does. Whoever lost the claim finds the winner's id.
            let job_id = if depth >= MAX_QUEUE_DEPTH {
                None
            } else {
                let expected = match recorded {
                    Recorded::New => None,
                    Recorded::Existing(_) => job_id_of(&pool, schema).await.map_err(|e| ctx.error(e))?,
                };
                match push_owed_job(&pool, &queue, schema, expected.as_deref())
                    .await
                    .map_err(|e| ctx.error(e))?
                {
                    Some(id) => Some(id),
                    None => job_id_of(&pool, schema).await.map_err(|e| ctx.error(e))?,
                }
            };
            let state = match recorded {
                Recorded::Existing(s) => s,
                Recorded::New => TenantState::Requested,
            };
            (job_id, state)
        }
    };
    let is_new = recorded == Recorded::New;
    let shown_password = generated_password.filter(|_| is_new);
    if !args.json {
        match (&recorded, &job_id) {
            (Recorded::New, Some(id)) => println!(
                "Requested tenant {schema} ({}), domain {}, admin {}: CreateTenant job {id}",
                request.tenant_name, request.domain, request.admin_email
            ),
            (_, Some(id)) => println!(
                "Tenant {schema} was already requested (state {state}); pushed CreateTenant job {id} to carry it on"
            ),
            (Recorded::New, None) => println!(
                "Requested tenant {schema}: the queue is full ({MAX_QUEUE_DEPTH} jobs), so it waits in \
                 PostgreSQL and a worker will enqueue it as the queue drains"
            ),
            (_, None) => {
                println!("Tenant {schema} was already requested with the same details; it is {state}")
            }
        }
        if let Some(p) = &shown_password {
            println!("Generated admin password (shown once, store it now): {p}");
        }
    }
    let mut final_state = state;
    if args.wait && !state.is_final() {
        final_state = wait_for_tenant(&pool, schema, !args.json)
            .await
            .map_err(|e| ctx.error(e))?;
    }
    if args.json {
        let mut doc = json!({
            "schema_name": schema,
            "job_id": job_id,
            "state": final_state.as_str(),
            "recorded": if is_new { "new" } else { "existing" },
            "domain": request.domain,
            "admin_email": request.admin_email,
        });
        if let Some(p) = &shown_password {
            doc["admin_password"] = json!(p);
        }
        print_json(&doc);
    }
    Ok(match final_state {
        TenantState::Failed => {
            if !args.json {
                eprintln!(
                    "error: provisioning of {schema} failed; `provision status --schema-name {schema}` shows why, \
                     `provision retry --schema-name {schema}` resumes it"
                );
            }
            ExitCode::from(FAILURE)
        }
        _ => ExitCode::from(SUCCESS),
    })
}

/// Follows the tenant's history until a final state, printing each entry as
/// it appears; then, for a ready tenant whose demo data is pending, until it
/// is seeded.
async fn wait_for_tenant(pool: &PgPool, schema: &str, print: bool) -> Result<TenantState, ProvisionError> {
    let mut last_id: i64 = 0;
    loop {
        for entry in tenant_history(pool, schema, last_id).await? {
            last_id = entry.id;
            if print {
                println!("  {}", history_line(&entry));
            }
        }
        let (state, demo): (String, String) = sqlx::query_as(
            "SELECT state, demo_data_state FROM public.provision_tenant WHERE schema_name = $1",
        )
        .bind(schema)
        .fetch_one(pool)
        .await?;
        let state: TenantState = state.parse().map_err(ProvisionError::WrongState)?;
        let demo_settled = demo != "pending";
        if state == TenantState::Failed || (state == TenantState::Ready && demo_settled) {
            if print {
                println!("Tenant {schema} is {state}.");
            }
            return Ok(state);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

async fn seed_demo_data(ctx: &Ctx, args: SeedArgs) -> Result<ExitCode, CliError> {
    validate::schema_name(&args.schema_name).map_err(invalid)?;
    let pool = ctx.pool().await?;
    let queue = ctx.queue().await?;
    let state = request_demo_data(&pool, &args.schema_name)
        .await
        .map_err(|e| ctx.error(e))?;
    if state == TenantState::Failed {
        return Err(CliError::new(
            FAILURE,
            "wrong_state",
            format!(
                "tenant {} has failed provisioning; `provision retry --schema-name {}` first",
                args.schema_name, args.schema_name
            ),
        ));
    }
    // A tenant still being provisioned gets its demo data when it is ready.
    let job_id = if state == TenantState::Ready {
        let id = queue
            .push(JobRequest::now(JobKind::SeedDemoData, &args.schema_name))
            .await
            .map_err(|e| ctx.error(e))?;
        if !args.json {
            println!("Enqueued SeedDemoData for {} (job {id})", args.schema_name);
        }
        Some(id)
    } else {
        if !args.json {
            println!(
                "{} is {state}: its demo data will be seeded once it is ready",
                args.schema_name
            );
        }
        None
    };
    let mut demo = "pending".to_owned();
    if args.wait {
        loop {
            demo = sqlx::query_scalar(
                "SELECT demo_data_state FROM public.provision_tenant WHERE schema_name = $1",
            )
            .bind(&args.schema_name)
            .fetch_one(&pool)
            .await
            .map_err(|e| ctx.error(e.into()))?;
            if demo != "pending" {
                break;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        if !args.json {
            println!("Demo data of {}: {demo}", args.schema_name);
        }
    }
    if args.json {
        print_json(&json!({"schema_name": args.schema_name, "job_id": job_id, "demo_data": demo}));
    }
    Ok(ExitCode::from(if demo == "failed" { FAILURE } else { SUCCESS }))
}

async fn status(ctx: &Ctx, args: StatusArgs) -> Result<ExitCode, CliError> {
    existing_schema_name(&args.schema_name)?;
    let pool = ctx.pool().await?;
    let set = MigrationSet::latest(&pool).await.map_err(|e| ctx.error(e))?;
    let status = tenant_status(
        &pool,
        &args.schema_name,
        set.as_ref(),
        chrono::Utc::now().date_naive(),
    )
    .await
    .map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&status);
    } else {
        print_status(&status);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode, CliError> {
    let filter = match &args.state {
        None => TenantFilter::default(),
        Some(s) => TenantFilter::state_or_lifecycle(s).map_err(invalid)?,
    };
    let pool = ctx.pool().await?;
    let tenants = list_tenants(&pool, &filter).await.map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&tenants);
    } else {
        print_list(&tenants);
    }
    Ok(ExitCode::SUCCESS)
}

async fn init(ctx: &Ctx, args: InitArgs) -> Result<ExitCode, CliError> {
    let domain = args
        .public_domain
        .clone()
        .unwrap_or_else(|| ctx.options.base_domain.clone());
    validate::domain(&domain).map_err(|e| CliError::invalid("public_domain", e.rule))?;
    let created_db = db::create_database_if_missing(&ctx.options.database_url)
        .await
        .map_err(|e| ctx.error(e))?;
    let pool = ctx.pool().await?;
    let prepared = prepare_public_schema(&pool).await.map_err(|e| ctx.error(e))?;
    record_base_domain(&pool, &ctx.options.base_domain)
        .await
        .map_err(|e| ctx.error(e))?;
    let set_stored = store_built_in_if_none(&pool).await.map_err(|e| ctx.error(e))?;
    let added = provision_shared::operator::ensure_public_tenant(&pool, &domain)
        .await
        .map_err(|e| ctx.error(e))?;
    let applied = prepared.applied;
    if args.json {
        print_json(&json!({
            "database_created": created_db,
            "platform_tables_made": prepared.platform_tables_made,
            "public_migrations_applied": applied,
            "built_in_migration_set_stored": set_stored.is_some(),
            "public_tenant_changed": added,
            "public_domain": domain,
        }));
    } else {
        if created_db {
            println!(
                "Created the database {}",
                db::redact_url(&ctx.options.database_url)
            );
        }
        if prepared.platform_tables_made {
            println!(
                "Made the platform's tenant tables (tenants_client, tenants_domain) as its Django migrations make them"
            );
        }
        if let Some(stored) = &set_stored {
            println!(
                "Stored the built-in tenant migration set ({} migrations) as set {}; `provision import-migrations` reads the platform's own",
                stored.migrations, stored.version
            );
        }
        if applied.is_empty() {
            println!("Public migrations: already current");
        } else {
            println!("Public migrations applied: {applied:?}");
        }
        println!(
            "Public tenant (schema public) with domain {domain}: {}",
            if added { "created" } else { "already there" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(ctx: &Ctx, args: RetryArgs) -> Result<ExitCode, CliError> {
    let only = args.target.schema_name.as_deref();
    if let Some(schema) = only {
        existing_schema_name(schema)?;
    }
    let pool = ctx.pool().await?;
    let queue = ctx.queue().await?;
    // A tenant whose provisioning failed, or (for a ready tenant) whose
    // schema failed in a migrate-all run.
    let target = only.map_or(RetryTarget::AllFailed, RetryTarget::Tenant);
    let done = retry_and_requeue(&pool, &queue, target, &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    let mut requeued = Vec::new();
    for tenant in &done.tenants {
        let (schema, state, job_id) = (&tenant.schema_name, tenant.state, &tenant.job_id);
        if !args.json {
            println!("Re-queued {schema} from {state} (job {job_id})");
        }
        requeued.push(json!({"schema_name": schema, "state": state.as_str(), "job_id": job_id}));
    }
    for (schema, run_id) in &done.migrations {
        if !args.json {
            println!("Re-queued the failed migration of {schema} in migrate-all run {run_id}");
        }
        requeued.push(json!({"schema_name": schema, "migration_run": run_id}));
    }
    for (schema, kind, job_id) in &done.lifecycle {
        if !args.json {
            println!(
                "Re-queued the {} of {schema}{}",
                match kind {
                    JobKind::RestoreTenant => "restore",
                    _ => "deletion",
                },
                job_id
                    .as_deref()
                    .map(|id| format!(" (job {id})"))
                    .unwrap_or_default()
            );
        }
        requeued.push(json!({"schema_name": schema, "job": kind.name(), "job_id": job_id}));
    }
    if args.json {
        print_json(&json!({"requeued": requeued.len(), "tenants": requeued}));
    } else if args.target.all_failed {
        println!(
            "Re-queued {} failed tenant(s) and schema migration(s).",
            requeued.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn fix_domain(ctx: &Ctx, args: FixDomainArgs) -> Result<ExitCode, CliError> {
    existing_schema_name(&args.schema_name)?;
    let domain = args
        .domain
        .clone()
        .unwrap_or_else(|| format!("{}.{}", args.schema_name, ctx.options.base_domain));
    validate::domain(&domain).map_err(invalid)?;
    let pool = ctx.pool().await?;
    let fix = provision_shared::operator::fix_domain(&pool, &args.schema_name, &domain, &actor())
        .await
        .map_err(|e| ctx.error(e))?;
    let (code, message) = match fix {
        DomainFix::Added => (
            "added",
            format!("Added {domain} as the primary domain of {}", args.schema_name),
        ),
        DomainFix::MadePrimary => (
            "made_primary",
            format!("Made {domain} the primary domain of {}", args.schema_name),
        ),
        DomainFix::AlreadyPrimary => (
            "unchanged",
            format!(
                "{domain} is already the primary domain of {}: nothing changed",
                args.schema_name
            ),
        ),
        DomainFix::RequestUpdated => (
            "request_updated",
            format!(
                "{} is not registered yet: it will be registered with {domain} \
                 (`provision retry --schema-name {}` if it failed)",
                args.schema_name, args.schema_name
            ),
        ),
    };
    if args.json {
        print_json(&json!({"schema_name": args.schema_name, "domain": domain, "result": code}));
    } else {
        println!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(ctx: &Ctx, args: CheckArgs) -> Result<ExitCode, CliError> {
    let items = run_checks(&ctx.options, Duration::from_secs(args.stuck_after)).await;
    let ok = items.iter().all(|i| i.ok);
    if args.json {
        print_json(&json!({"ok": ok, "checks": items}));
    } else {
        for item in &items {
            println!(
                "{} {:<18} {}",
                if item.ok { "PASS" } else { "FAIL" },
                item.name,
                item.detail
            );
            if let Some(hint) = &item.hint {
                println!("     {:<18} → {hint}", "");
            }
        }
        println!(
            "{}",
            if ok {
                "All checks passed."
            } else {
                "Some checks failed."
            }
        );
    }
    Ok(ExitCode::from(if ok { SUCCESS } else { FAILURE }))
}
