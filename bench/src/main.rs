//! `provision-bench`: measures migrate-all (issue 3), provisioning
//! (issue 6) and the signup SQL API's pick-up (issue 16) on a fresh database and Redis namespace of its own, each
//! figure beside its lower bound measured in the same run, and prints one
//! table. It asserts no timing: it fails only when something does not
//! work (a failed schema or tenant, a run that never ends), so CI can run
//! `all --quick` to keep it from rotting.

mod burst;
mod dashboard;
mod env;
mod fixtures;
mod lower_bound;
mod migrate_all;
mod platform;
mod progress;
mod provision;
mod report;
mod signup;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use provision_shared::db;

use crate::env::{BenchEnv, Servers};
use crate::report::{Report, machine_line};

/// Benchmarks of the provisioning system against plain-SQL lower bounds.
///
/// Each command creates its own database `provision_bench_<id>` on the
/// server of --admin-url and its own Redis namespace, and removes both at
/// the end. Run it in release mode for figures worth reading:
///
/// Example: cargo run --release -p provision-bench -- all
#[derive(Debug, Parser)]
#[command(name = "provision-bench")]
struct Cli {
    /// PostgreSQL URL of a user that may create and drop databases.
    #[arg(
        long,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,

    /// Redis URL.
    #[arg(long, global = true, default_value = db::DEFAULT_REDIS_URL)]
    redis_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate-all over N ready schemas at worker concurrency 1, 4 and 8,
    /// and a no-op run.
    ///
    /// Example: provision-bench migrate-all --schemas 10000
    MigrateAll(MigrateAllArgs),

    /// Signup-to-ready latency, throughput, memory, and optionally growth.
    ///
    /// Example: provision-bench provision --tenants 2000 --growth
    Provision(ProvisionArgs),

    /// From a signup's commit (`provision_request_tenant`) to its job's
    /// start, with a listening worker and with the reconciler only.
    ///
    /// Example: provision-bench signup --signups 200
    Signup(SignupArgs),

    /// The dashboard's pages over N tenants: server time and client wait.
    ///
    /// Example: provision-bench dashboard --tenants 10000
    Dashboard(DashboardArgs),

    /// The platform's own tools beside this project: Client.save() per
    /// tenant, migrate_schemas (standard, multiprocessing) against
    /// migrate-all, and migrate-all over tenants made by hand.
    ///
    /// Example: provision-bench platform --schemas 1000
    Platform(PlatformArgs),

    /// All of them but burst, with their defaults, in one table.
    ///
    /// Example: provision-bench all --quick
    All(AllArgs),

    /// A signup burst during an outage: N requests recorded and pushed as
    /// the client pushes them while no worker runs, then workers drain
    /// them. Prints the time to drain and Redis memory before, at its peak
    /// and after.
    ///
    /// Example: provision-bench burst --tenants 20000
    Burst(BurstArgs),
}

#[derive(Debug, Clone, Args)]
struct BurstArgs {
    /// Requests in the burst.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    tenants: u32,

    /// Worker processes that drain it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32))]
    workers: u32,

    /// Concurrency of each worker.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
}

#[derive(Debug, Clone, Args)]
struct DashboardArgs {
    /// Tenants in the database.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    tenants: u32,

    /// Requests of each page.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
}

#[derive(Debug, Clone, Args)]
struct PlatformArgs {
    /// Tenants made here that every tool migrates.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    schemas: u32,

    /// Tenants made by Client.save(), one at a time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    by_hand: u32,
}

#[derive(Debug, Clone, Args)]
struct SignupArgs {
    /// Signups of each listened-for repetition.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    signups: u32,

    /// Signups of each reconciler-only repetition (spread over 5 s).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    reconciler_signups: u32,

    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
}

#[derive(Debug, Clone, Args)]
struct MigrateAllArgs {
    /// Ready tenants to migrate.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    schemas: u32,

    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
}

#[derive(Debug, Clone, Args)]
struct ProvisionArgs {
    /// Tenants in each throughput run (a backlog pushed before the worker
    /// starts; at most 5000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    tenants: u32,

    /// Signups in each latency run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    signups: u32,

    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,

    /// Also measure whether the per-tenant time grows over a long drain
    /// (takes minutes).
    #[arg(long)]
    growth: bool,

    /// Tenants of the growth run.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(300..=5000))]
    growth_tenants: u32,
}

#[derive(Debug, Clone, Args)]
struct AllArgs {
    /// A tiny run (20 schemas, 10 signups, 50 tenants, 8 SQL signups, once) that checks
    /// the bench still works; its figures mean little.
    #[arg(long)]
    quick: bool,

    /// Also run the growth measurement.
    #[arg(long)]
    growth: bool,
}

impl MigrateAllArgs {
    fn options(&self) -> migrate_all::Options {
        migrate_all::Options {
            schemas: self.schemas as usize,
            repeat: self.repeat as usize,
        }
    }
}

impl SignupArgs {
    fn options(&self) -> signup::Options {
        signup::Options {
            signups: self.signups as usize,
            reconciler_signups: self.reconciler_signups as usize,
            repeat: self.repeat as usize,
        }
    }
}

impl ProvisionArgs {
    fn options(&self) -> provision::Options {
        provision::Options {
            tenants: self.tenants as usize,
            signups: self.signups as usize,
            repeat: self.repeat as usize,
            growth: self.growth.then_some(self.growth_tenants as usize),
        }
    }
}

/// One benchmark, on a fresh database of its own.
#[derive(Debug)]
enum Part {
    MigrateAll(migrate_all::Options),
    Provision(provision::Options),
    Signup(signup::Options),
    Dashboard(dashboard::Options),
    Platform(platform::Options),
}

impl Command {
    fn parts(&self) -> Vec<Part> {
        match self {
            Self::MigrateAll(args) => vec![Part::MigrateAll(args.options())],
            Self::Burst(_) => Vec::new(),
            Self::Provision(args) => vec![Part::Provision(args.options())],
            Self::Signup(args) => vec![Part::Signup(args.options())],
            Self::Platform(args) => vec![Part::Platform(platform::Options {
                schemas: args.schemas as usize,
                by_hand: args.by_hand as usize,
            })],
            Self::Dashboard(args) => vec![Part::Dashboard(dashboard::Options {
                tenants: args.tenants as usize,
                repeat: args.repeat as usize,
            })],
            Self::All(args) if args.quick => vec![
                Part::MigrateAll(migrate_all::Options {
                    schemas: 20,
                    repeat: 1,
                }),
                Part::Provision(provision::Options {
                    tenants: 50,
                    signups: 10,
                    repeat: 1,
                    growth: args.growth.then_some(300),
                }),
                Part::Signup(signup::Options {
                    signups: 5,
                    reconciler_signups: 3,
                    repeat: 1,
                }),
                Part::Platform(platform::Options {
                    schemas: 10,
                    by_hand: 1,
                }),
                Part::Dashboard(dashboard::Options {
                    tenants: 500,
                    repeat: 3,
                }),
            ],
            Self::All(args) => vec![
                Part::MigrateAll(migrate_all::Options {
                    schemas: 1000,
                    repeat: 3,
                }),
                Part::Provision(provision::Options {
                    tenants: 1000,
                    signups: 50,
                    repeat: 3,
                    growth: args.growth.then_some(5000),
                }),
                Part::Signup(signup::Options {
                    signups: 50,
                    reconciler_signups: 20,
                    repeat: 3,
                }),
                Part::Platform(platform::Options {
                    schemas: 1000,
                    by_hand: 10,
                }),
                Part::Dashboard(dashboard::Options {
                    tenants: 10_000,
                    repeat: 30,
                }),
            ],
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::MigrateAll(_) => "migrate-all",
            Self::Provision(_) => "provision",
            Self::Signup(_) => "signup",
            Self::Platform(_) => "platform",
            Self::Dashboard(_) => "dashboard",
            Self::All(_) => "all",
            Self::Burst(_) => "burst",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let bin_dir = match env::binaries_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let servers = Servers {
        admin_url: cli.admin_url.clone(),
        redis_url: cli.redis_url.clone(),
        bin_dir,
    };
    let profile = servers
        .bin_dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    println!(
        "provision-bench {} ({profile} build)\nat the start: {}",
        cli.command.name(),
        machine_line()
    );
    if let Command::Burst(args) = &cli.command {
        let done = burst::run(
            &servers,
            args.tenants as usize,
            args.workers as usize,
            args.concurrency as usize,
        )
        .await;
        println!("at the end: {}", machine_line());
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut report = Report {
        smoke: matches!(&cli.command, Command::All(args) if args.quick),
        ..Report::default()
    };
    let mut outcome = Ok(());
    // Every part's database is dropped at the very end: dropping one
    // removes thousands of files, and on a file system without a journal
    // ext4 then skips the freed inodes for minutes, which slows whatever
    // phase creates tables next (bench/README.md, "Where the time went (session 4)").
    let mut used = Vec::new();
    for part in cli.command.parts() {
        outcome = measure(&servers, &part, &mut report, &mut used).await;
        if outcome.is_err() {
            break;
        }
    }
    for env in used {
        eprintln!("removing database and namespace {}", env.name);
        env.remove().await;
    }
    println!();
    print!("{}", report.table());
    println!("\nat the end: {}", machine_line());
    let missed = report.missed();
    if !missed.is_empty() {
        println!(
            "goals missed: {}",
            missed
                .iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    match outcome {
        // A missed goal is a finding, not a failure: the bench exits 0.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one part on a fresh database and namespace, which it adds to
/// `used` for removal whatever happened, Ctrl-C included (the workers die
/// with their handles).
async fn measure(
    servers: &Servers,
    part: &Part,
    report: &mut Report,
    used: &mut Vec<BenchEnv>,
) -> anyhow::Result<()> {
    let env = BenchEnv::create(servers).await?;
    eprintln!("bench database and Redis namespace: {}", env.name);
    let outcome = tokio::select! {
        outcome = async {
            match part {
                Part::MigrateAll(options) => migrate_all::run(&env, options, report).await,
                Part::Provision(options) => provision::run(&env, options, report).await,
                Part::Signup(options) => signup::run(&env, options, report).await,
                Part::Platform(options) => platform::run(&env, options, report).await,
                Part::Dashboard(options) => dashboard::run(&env, options, report).await,
            }
        } => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    used.push(env);
    outcome
}
