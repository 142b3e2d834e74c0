//! `provision`: the client. Enqueues provisioning jobs and runs the
//! operator's commands. Exit codes: see `exit_codes.rs`.

mod check;
mod commands;
mod dashboard;
mod exit_codes;
mod import;
mod lifecycle;
mod migrate;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use provision_queue::options::{ConnectionOptions, init_logging};

use crate::exit_codes::{CliError, INVALID};

/// Provisions tenants of the platform: enqueues CreateTenant, SeedDemoData
/// and MigrateSchema jobs for provision-worker, and shows and repairs what
/// they did.
#[derive(Debug, Parser)]
#[command(name = "provision", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionOptions,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a new tenant, record it and enqueue CreateTenant.
    ///
    /// Without a password option, a strong password is generated and printed
    /// once. The password is hashed here: only the hash leaves this process.
    ///
    /// Example: provision create-tenant --schema-name theo --tenant-name "Theo Stam"
    /// --domain theo.newconcierge.app --admin-email theo@example.com
    /// --admin-password-stdin --trial-days 30 --wait
    CreateTenant(CreateTenantArgs),

    /// Enqueue SeedDemoData: the demo building and its 10 apartments, once.
    ///
    /// Example: provision seed-demo-data --schema-name theo --wait
    SeedDemoData(SeedArgs),

    /// One tenant: state, history, domains, trial, counts, schema version.
    ///
    /// Example: provision status --schema-name theo --json
    Status(StatusArgs),

    /// Every tenant, one line each, newest first.
    ///
    /// Example: provision list --state failed
    List(ListArgs),

    /// Apply tenant migrations: one tenant's schema, every schema (a
    /// migrate-all run), or the public schema.
    ///
    /// Example: provision migrate --all --wait
    Migrate(MigrateArgs),

    /// Re-queue failed provisioning from the step that failed, or a schema
    /// whose migration failed in a migrate-all run.
    ///
    /// Refuses (exit 1) a tenant that is not failed, naming its state.
    ///
    /// Example: provision retry --schema-name theo
    Retry(RetryArgs),

    /// Make a domain the tenant's primary domain (the guide's
    /// fix_tenant_domain): adds it if missing, demotes any other primary,
    /// refuses a domain owned by another tenant, changes nothing when already
    /// right.
    ///
    /// Example: provision fix-domain --schema-name theo --domain theo.newconcierge.app
    FixDomain(FixDomainArgs),

    /// The pre-deployment check: each item pass or fail with a hint. Exit 0
    /// when all pass, 1 otherwise.
    ///
    /// Example: provision check --json
    Check(CheckArgs),

    /// Apply public migrations and make sure the public tenant and its
    /// domain exist (creates the database if it is missing). On a database
    /// the platform's Django made, adds only this project's tables; on an
    /// empty one, makes the platform's tenant tables as its Django would.
    ///
    /// Example: provision init --public-domain newconcierge.app
    Init(InitArgs),

    /// Read the platform's tenant migrations from its own Django and store
    /// them as the tenant migration set every command and worker uses.
    ///
    /// Runs `PY PATH shell -c <script>` with this environment, so the
    /// platform's settings choose the database; the script reads the
    /// migration plan, each migration's SQL, and what Django leaves in a new
    /// tenant schema, inside a transaction it rolls back. Importing an
    /// unchanged plan is a no-op; a plan that rewrites an imported
    /// migration is refused. Running workers load a new set at once.
    ///
    /// Example: DJANGO_SETTINGS_MODULE=concierge.settings provision import-migrations
    /// --manage-py backend/manage.py --python backend/.venv/bin/python
    ImportMigrations(ImportArgs),

    /// Switch a tenant off: `tenants_client.is_active` false, so the
    /// platform refuses its domains; recorded with who and why.
    ///
    /// Refused (exit 1) while it is being provisioned or deleted.
    ///
    /// Example: provision suspend --schema-name theo --reason "invoice 2026-11 unpaid"
    Suspend(lifecycle::SuspendArgs),

    /// Switch a suspended tenant on again.
    ///
    /// Example: provision resume --schema-name theo
    Resume(lifecycle::TenantArgs),

    /// Schedule a tenant's deletion: suspended at once; when due (after
    /// --grace days, 7 by default, or --now) a worker backs it up to
    /// PROVISION_BACKUP_DIR, verifies the backup, then drops the schema and
    /// its rows. Without --confirm naming the same schema nothing happens
    /// (exit 2).
    ///
    /// Example: provision delete-tenant --schema-name theo --confirm theo --grace 7
    DeleteTenant(lifecycle::DeleteTenantArgs),

    /// Take back a scheduled deletion while nothing is dropped yet: the
    /// tenant is active again.
    ///
    /// Example: provision cancel-delete --schema-name theo
    CancelDelete(lifecycle::TenantArgs),

    /// Bring a deleted tenant back from the backup its deletion wrote:
    /// schema, rows, domains, active. The file's SHA-256 must be the one
    /// recorded, and the schema name and domains free.
    ///
    /// Example: provision restore-tenant --backup /var/backups/provision/theo-1.dump --wait
    RestoreTenant(lifecycle::RestoreTenantArgs),

    /// The operator's web dashboard: tenants by state, each tenant's
    /// history and errors, the queues and the migrate-all run, live; and,
    /// for operators, retry, fix-domain, migrate-all, suspend, resume and
    /// scheduling or cancelling a deletion.
    ///
    /// On an address that is not loopback it refuses to start (exit 2)
    /// unless PROVISION_DASHBOARD_USERS names a users file: lines of
    /// `name:role:hash`, role `viewer` (reads) or `operator` (acts), hash
    /// from `--hash-password`. On loopback without one it is read-only for
    /// everyone.
    ///
    /// Example: PROVISION_DASHBOARD_USERS=/etc/provision/users provision dashboard --addr 0.0.0.0:9899
    Dashboard(DashboardArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Where to serve; port 0 (`127.0.0.1:0`) picks a free one, printed at start.
    #[arg(long, value_name = "A", default_value = "127.0.0.1:9899")]
    pub(crate) addr: String,

    /// The users file; required on an address that is not loopback.
    #[arg(long, value_name = "FILE", env = "PROVISION_DASHBOARD_USERS")]
    pub(crate) users: Option<PathBuf>,

    /// Seconds a session lasts from sign-in.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "PROVISION_DASHBOARD_SESSION_TTL",
        default_value_t = 28_800
    )]
    pub(crate) session_ttl: u64,

    /// Print the users-file hash of the password on the first line of
    /// standard input, and exit.
    ///
    /// Example: printf '%s\n' "$PASSWORD" | provision dashboard --hash-password
    #[arg(long)]
    pub(crate) hash_password: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The platform's manage.py.
    #[arg(long, value_name = "PATH", required_unless_present = "from_file")]
    pub(crate) manage_py: Option<PathBuf>,

    /// The Python that runs it (the platform's virtualenv).
    #[arg(long, value_name = "PY", default_value = "python3")]
    pub(crate) python: String,

    /// Read an export written by the same script elsewhere (for a machine
    /// without the platform's Python) instead of running Django.
    #[arg(long, value_name = "FILE", conflicts_with = "manage_py")]
    pub(crate) from_file: Option<PathBuf>,

    /// Print what would be imported; store nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the admin password comes from: at most one of these.
#[derive(Debug, Args)]
#[group(multiple = false)]
struct PasswordSource {
    /// Read the admin password from the first line of standard input
    /// (keeps it out of the process list).
    #[arg(long)]
    admin_password_stdin: bool,

    /// Read the admin password from the first line of this file.
    #[arg(long, value_name = "FILE")]
    admin_password_file: Option<PathBuf>,

    /// The admin password itself. Works, as in the platform's guide, but
    /// other users of this machine can read it in the process list.
    #[arg(long, value_name = "PASSWORD")]
    admin_password: Option<String>,
}

#[derive(Debug, Args)]
struct CreateTenantArgs {
    /// Schema name: 1 to 63 of a-z, 0-9 and _, starting with a letter.
    #[arg(long)]
    schema_name: String,

    /// The tenant's display name (any text, up to 100 characters).
    #[arg(long)]
    tenant_name: String,

    /// Primary domain [default: <schema-name>.<base domain>].
    #[arg(long)]
    domain: Option<String>,

    /// The admin user's email [default: admin@<domain>].
    #[arg(long)]
    admin_email: Option<String>,

    #[command(flatten)]
    password: PasswordSource,

    /// Days of trial: paid_until is today plus this (0: no trial).
    #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
    trial_days: i32,

    /// Do not seed the demo building.
    #[arg(long)]
    skip_demo_data: bool,

    /// Check everything against the live database and print the plan;
    /// write and enqueue nothing.
    #[arg(long)]
    dry_run: bool,

    /// Follow the steps until ready (exit 0) or failed (exit 1).
    #[arg(long)]
    wait: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// Wait until the demo data is there.
    #[arg(long)]
    wait: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only tenants in this state.
    #[arg(long)]
    state: Option<String>,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct MigrateTarget {
    /// Migrate this tenant's schema, however the tenant was made (a
    /// migration run of one schema). `--schema` works too, as in the
    /// platform's `migrate_schemas --schema`.
    #[arg(long, alias = "schema")]
    schema_name: Option<String>,

    /// Start a migrate-all run over every tenant of tenants_client whose
    /// schema lacks a migration of the set (or follow the run in progress).
    #[arg(long)]
    all: bool,

    /// Apply the public migrations now, from this process.
    #[arg(long)]
    shared: bool,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    target: MigrateTarget,

    /// Follow until done: a live progress bar for --all, ending with the
    /// counts (exit 1 if a schema failed).
    #[arg(long)]
    wait: bool,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "target")]
struct RetryTarget {
    /// The failed tenant to retry.
    #[arg(long)]
    schema_name: Option<String>,

    /// Retry every failed tenant.
    #[arg(long)]
    all_failed: bool,
}

#[derive(Debug, Args)]
struct RetryArgs {
    #[command(flatten)]
    target: RetryTarget,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FixDomainArgs {
    /// The tenant.
    #[arg(long)]
    schema_name: String,

    /// The domain to make primary [default: <schema-name>.<base domain>].
    #[arg(long)]
    domain: Option<String>,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Seconds a tenant may stay in a non-final state before it counts as
    /// stuck.
    #[arg(long, default_value_t = 600)]
    stuck_after: u64,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The public tenant's domain [default: the base domain].
    #[arg(long)]
    public_domain: Option<String>,

    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

impl Command {
    fn json(&self) -> bool {
        match self {
            Self::CreateTenant(a) => a.json,
            Self::SeedDemoData(a) => a.json,
            Self::Status(a) => a.json,
            Self::List(a) => a.json,
            Self::Init(a) => a.json,
            Self::Retry(a) => a.json,
            Self::Migrate(a) => a.json,
            Self::FixDomain(a) => a.json,
            Self::Check(a) => a.json,
            Self::ImportMigrations(a) => a.json,
            Self::Suspend(a) => a.json,
            Self::Resume(a) | Self::CancelDelete(a) => a.json,
            Self::DeleteTenant(a) => a.json,
            Self::RestoreTenant(a) => a.json,
            Self::Dashboard(_) => false,
        }
    }
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.connection.log_format, "warn", None);
    let json = cli.command.json();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.connection, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&e, json);
            e.exit_code()
        }
    }
}

/// What a shell reports for a program that a closed pipe stopped (128 +
/// SIGPIPE).
const BROKEN_PIPE_EXIT: i32 = 141;

/// `provision list | head` closes stdout before everything is printed, and
/// `println!` then panics. Exit quietly, as a Unix tool stopped by the
/// closed pipe does, instead of printing a panic and its backtrace. (The
/// standard library ignores SIGPIPE, and `unsafe` is forbidden here, so
/// the write's error is the only sign; its message is the only way to tell
/// it from a real panic.)
fn exit_quietly_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        report(info);
    }));
}

/// Help and version go out as clap prints them; any other parse error is
/// exit 2, as JSON on stdout when `--json` was asked for.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--json") {
        let message = e.kind().to_string();
        let detail = e.to_string();
        let first_line = detail
            .lines()
            .next()
            .unwrap_or(&message)
            .trim_start_matches("error: ");
        output::print_error(&CliError::new(INVALID, "usage", first_line), true);
    } else {
        let _ = e.print();
    }
    ExitCode::from(INVALID)
}
