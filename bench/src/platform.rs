//! `platform` (issues 14 and 15): the platform's own tools beside this
//! project on the same database, from the platform model's virtualenv:
//! `Client.save()` per tenant against provisioning one tenant at a time,
//! and `migrate_schemas` (standard and multiprocessing executors) against
//! migrate-all over the same schemas, each applying one new migration of
//! the platform model's. Then migrate-all over the same schemas once this
//! project has forgotten them (no row of its own, ledgers never seen), as
//! tenants made by hand are, against the same run over tenants made here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use provision_shared::migration_set::MigrationSet;
use provision_shared::password::django_argon2_hash;
use tokio::process::Command;

use crate::env::BenchEnv;
use crate::fixtures::{self, PASSWORD};
use crate::migrate_all::timed_run;
use crate::report::{Goal, Report, Samples, Unit, millis};

/// Sessions making the ready tenants.
const SETUP_PARALLEL: usize = 4;
/// The worker's concurrency for migrate-all.
const CONCURRENCY: usize = 4;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Tenants made here, which every tool then migrates.
    pub(crate) schemas: usize,
    /// Tenants made by `Client.save()`, one at a time (each runs Django's
    /// whole migrate in its new schema: about a second).
    pub(crate) by_hand: usize,
}

/// Runs the benchmark and adds its rows to `report`.
pub(crate) async fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let (n, k) = (options.schemas, options.by_hand);
    let platform = Platform::prepare(env).await?;
    eprintln!(
        "== the platform's own tools: {k} tenants by Client.save(), then {n} made here, \
         migrated by migrate_schemas (standard, multiprocessing) and migrate-all"
    );
    platform
        .django(&["migrate_schemas", "--shared", "--noinput", "-v", "0"])
        .await?;

    // One tenant at a time, each way.
    let saved = platform.client_saves(k).await?;
    let hash = django_argon2_hash(PASSWORD);
    let mut ours = Samples::default();
    for name in fixtures::names("one", k) {
        let started = Instant::now();
        fixtures::make_ready(&env.pool, vec![name], &hash, 1).await?;
        ours.push(millis(started.elapsed()));
    }
    let save_median = Samples::new(saved.clone()).median();
    report.row(
        "Client.save() per tenant (django-tenants)",
        Unit::Ms,
        Samples::new(vec![save_median]),
        None,
        Goal::None,
    );
    report.row(
        "provisioning per tenant, one at a time (the worker's steps, no queue)",
        Unit::Ms,
        Samples::new(vec![ours.median()]),
        None,
        Goal::None,
    );
    report.row(
        "Client.save() ÷ provisioning, per tenant",
        Unit::Factor,
        Samples::new(vec![save_median / ours.median()]),
        None,
        Goal::None,
    );

    fixtures::make_ready(&env.pool, fixtures::names("pf", n), &hash, SETUP_PARALLEL).await?;
    let total = n + 2 * k;
    let standard = platform.timed_migrate_schemas(1, "standard").await?;
    let multiprocessing = platform.timed_migrate_schemas(2, "multiprocessing").await?;
    platform.add_migration(3)?;
    platform.import().await?;
    let ours_made = migrate_all(env, total, "migrate-all, made here").await?;
    report.row(
        format!("migrate_schemas --executor=standard, {total} schemas"),
        Unit::MsForSchemas(total),
        Samples::new(vec![millis(standard)]),
        None,
        Goal::None,
    );
    report.row(
        format!("migrate_schemas --executor=multiprocessing, {total} schemas"),
        Unit::MsForSchemas(total),
        Samples::new(vec![millis(multiprocessing)]),
        None,
        Goal::None,
    );
    report.row(
        format!("migrate-all, concurrency {CONCURRENCY}, the same {total} schemas"),
        Unit::MsForSchemas(total),
        Samples::new(vec![millis(ours_made)]),
        None,
        Goal::None,
    );
    report.row(
        "migrate_schemas standard ÷ migrate-all",
        Unit::Factor,
        Samples::new(vec![standard.as_secs_f64() / ours_made.as_secs_f64()]),
        None,
        Goal::None,
    );
    report.row(
        "migrate_schemas multiprocessing ÷ migrate-all",
        Unit::Factor,
        Samples::new(vec![multiprocessing.as_secs_f64() / ours_made.as_secs_f64()]),
        None,
        Goal::AtLeast {
            limit: 20.0,
            text: "≥ 20×",
        },
    );

    // The same schemas, as if every one had been made by hand: no row of
    // this project's, and no ledger hint, so each ledger is read.
    sqlx::query("DELETE FROM public.provision_tenant")
        .execute(&env.pool)
        .await?;
    sqlx::query("DELETE FROM public.provision_ledger_hint")
        .execute(&env.pool)
        .await?;
    platform.add_migration(4)?;
    platform.import().await?;
    let by_hand = migrate_all(env, total, "migrate-all, made by hand").await?;
    report.row(
        format!("migrate-all over {total} tenants this project never saw"),
        Unit::MsForSchemas(total),
        Samples::new(vec![millis(by_hand)]),
        None,
        Goal::None,
    );
    report.row(
        "migrate-all per schema: tenants made by hand ÷ made here",
        Unit::Factor,
        Samples::new(vec![by_hand.as_secs_f64() / ours_made.as_secs_f64()]),
        None,
        Goal::AtMost {
            scale: 1.0,
            limit: 1.1,
            text: "≤ 1.1×",
        },
    );
    report.note(format!(
        "platform: the multiprocessing executor ran TENANT_MULTIPROCESSING_MAX_PROCESSES (default 2) \
         processes; migrate-all ran one worker at concurrency {CONCURRENCY}. Each tool applied one new \
         migration (a nullable column) to every tenant schema; Client.save() figures are the median \
         of {k}."
    ));
    Ok(())
}

/// Starts one worker and times a migrate-all run over `total` schemas.
async fn migrate_all(env: &BenchEnv, total: usize, label: &str) -> anyhow::Result<Duration> {
    let set = MigrationSet::in_force(&env.pool).await?;
    let mut worker = env.start_worker(CONCURRENCY).await?;
    let run = timed_run(env, &mut worker, &set, total, label).await?;
    worker.stop().await?;
    Ok(run.elapsed)
}

/// A copy of the platform model in the bench's folder, run with its
/// virtualenv's Python on the bench database.
struct Platform<'a> {
    env: &'a BenchEnv,
    project: PathBuf,
    python: PathBuf,
}

impl<'a> Platform<'a> {
    /// Makes (or finds) the virtualenv and copies the model, whose
    /// migrations the measurements add to.
    async fn prepare(env: &'a BenchEnv) -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let made = Command::new("bash")
            .arg(root.join("scripts/platform-venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running scripts/platform-venv.sh")?;
        ensure!(made.status.success(), "scripts/platform-venv.sh failed");
        let python = PathBuf::from(String::from_utf8(made.stdout)?.trim());
        let project = env.dir.join("platform");
        copy_tree(&root.join("tests/platform"), &project)?;
        Ok(Self { env, project, python })
    }

    /// Runs `manage.py` with `args`; fails with Django's output.
    async fn django(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.python)
            .arg(self.project.join("manage.py"))
            .args(args)
            .current_dir(&self.project)
            .env("DATABASE_URL", &self.env.database_url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running the platform model's manage.py")?;
        if !out.status.success() {
            bail!(
                "manage.py {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Makes `k` tenants by `Client.save()`, one after the other, in one
    /// Django process; the milliseconds each took.
    async fn client_saves(&self, k: usize) -> anyhow::Result<Vec<f64>> {
        let code = format!(
            "import datetime, time\n\
             from tenants.models import Client, Domain\n\
             took = []\n\
             for i in range({k}):\n\
             \x20   started = time.perf_counter()\n\
             \x20   t = Client(schema_name=f'hand_{{i:05}}', name=f'Made by hand {{i}}', paid_until=datetime.date(2099, 1, 1))\n\
             \x20   t.save(verbosity=0)\n\
             \x20   Domain.objects.create(domain=f'hand-{{i}}.bench.newconcierge.app', tenant=t, is_primary=True)\n\
             \x20   took.append((time.perf_counter() - started) * 1000)\n\
             print(' '.join(f'{{ms:.3f}}' for ms in took))\n"
        );
        let out = self.django(&["shell", "-c", &code]).await?;
        let line = out.lines().last().context("Client.save() printed nothing")?;
        line.split_whitespace()
            .map(|ms| ms.parse().with_context(|| format!("reading {line:?}")))
            .collect()
    }

    /// Adds migration `number` (a nullable column on `buildings_building`)
    /// to the copy, and times the platform's `migrate_schemas` applying it
    /// to every tenant with `executor`.
    async fn timed_migrate_schemas(&self, number: usize, executor: &str) -> anyhow::Result<Duration> {
        self.add_migration(number)?;
        eprintln!("migrate_schemas --executor={executor} …");
        let started = Instant::now();
        self.django(&[
            "migrate_schemas",
            "--tenant",
            &format!("--executor={executor}"),
            "--noinput",
            "-v",
            "0",
        ])
        .await?;
        Ok(started.elapsed())
    }

    /// Writes `buildings/migrations/000<number>_bench_<number>.py`.
    fn add_migration(&self, number: usize) -> anyhow::Result<()> {
        let previous = if number == 1 {
            "0001_initial".to_owned()
        } else {
            format!("{:04}_bench_{}", number, number - 1)
        };
        let name = format!("{:04}_bench_{number}", number + 1);
        let source = format!(
            "from django.db import migrations, models\n\n\n\
             class Migration(migrations.Migration):\n\
             \x20   dependencies = [(\"buildings\", \"{previous}\")]\n\
             \x20   operations = [\n\
             \x20       migrations.AddField(\"building\", \"bench_col_{number}\", models.IntegerField(null=True)),\n\
             \x20   ]\n"
        );
        let path = self.project.join(format!("buildings/migrations/{name}.py"));
        std::fs::write(&path, source).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// `provision import-migrations` from the copy.
    async fn import(&self) -> anyhow::Result<()> {
        let out = self
            .env
            .client_command(&self.env.binary("provision"))
            .arg("import-migrations")
            .arg("--manage-py")
            .arg(self.project.join("manage.py"))
            .arg("--python")
            .arg(&self.python)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running provision import-migrations")?;
        ensure!(
            out.status.success(),
            "provision import-migrations failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// Copies the folder `from` to `to`, leaving out Python's caches.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&entry.path(), &target)?;
            }
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
