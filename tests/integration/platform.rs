//! The platform comes first: databases made by the platform model's own
//! Django, tenants made by `Client.save()` beside tenants made here, and the
//! platform's own commands (`migrate_schemas`, `showmigrations`, its
//! middleware and login) run over both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::helpers::{Run, TestEnv, guide_tenant_args, strs};

const PASSWORD: &str = "a-long-password";

/// The platform model's Django project.
pub fn platform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("platform")
}

/// The platform model's Python: `PLATFORM_PYTHON`, or the virtualenv
/// `scripts/test.sh` makes under `target/`.
pub fn platform_python() -> PathBuf {
    if let Ok(python) = std::env::var("PLATFORM_PYTHON") {
        return PathBuf::from(python);
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/platform-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with scripts/test.sh (it makes the platform model's virtualenv)",
        python.display()
    );
    python
}

impl TestEnv {
    /// A new database as the platform's own Django makes it: the shared
    /// apps migrated (`migrate_schemas --shared`) and the public tenant
    /// with its domain saved by the ORM; then `provision init` adds this
    /// project's tables, and `import-migrations` reads the platform model's
    /// tenant migrations.
    pub async fn new_platform(label: &str) -> Self {
        Self::new_platform_on(label, &crate::helpers::admin_url(), &crate::helpers::redis_url()).await
    }

    /// [`TestEnv::new_platform`] on the PostgreSQL of `admin_url` and the
    /// Redis of `redis`.
    pub async fn new_platform_on(label: &str, admin_url: &str, redis: &str) -> Self {
        let env = Self::new_on(label, admin_url, redis).await;
        env.django(&["migrate_schemas", "--shared", "--noinput", "-v", "0"])
            .expect_code(0);
        env.django_shell(
            "from tenants.models import Client, Domain\n\
             import datetime\n\
             p = Client(schema_name='public', name='Public', paid_until=datetime.date(2099, 1, 1), on_trial=False)\n\
             p.save()\n\
             Domain.objects.create(domain='newconcierge.app', tenant=p, is_primary=True)\n",
        )
        .expect_code(0);
        env.provision(&["init"]).expect_code(0);
        env.import_platform(&platform_dir(), &[]).expect_code(0);
        env
    }

    /// Runs the platform model's `manage.py` with `args` on this test's
    /// database.
    pub fn django(&self, args: &[&str]) -> Run {
        self.django_in(&platform_dir(), args, None)
    }

    /// Runs the `manage.py` of the project at `project` with `args`, `stdin`
    /// fed to it.
    pub fn django_in(&self, project: &Path, args: &[&str], stdin: Option<&str>) -> Run {
        use std::io::Write;
        let mut child = Command::new(platform_python())
            .arg(project.join("manage.py"))
            .args(args)
            .current_dir(project)
            .env("DATABASE_URL", &self.database_url)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the platform's manage.py");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        Run::from_output(child.wait_with_output().expect("manage.py output"))
    }

    /// Runs `code` in the platform model's `manage.py shell`.
    pub fn django_shell(&self, code: &str) -> Run {
        self.django(&["shell", "-c", code])
    }

    /// Makes tenant `schema` as the platform does: `Client.save()` (which
    /// creates and migrates its schema) and its primary domain, with the
    /// project at `project`.
    pub fn django_tenant_in(&self, project: &Path, schema: &str, domain: &str) {
        let code = format!(
            "from tenants.models import Client, Domain\n\
             import datetime\n\
             t = Client(schema_name='{schema}', name='Made by hand {schema}', paid_until=datetime.date(2099, 1, 1))\n\
             t.save(verbosity=0)\n\
             Domain.objects.create(domain='{domain}', tenant=t, is_primary=True)\n"
        );
        self.django_in(project, &["shell", "-c", &code], None)
            .expect_code(0);
    }

    /// [`TestEnv::django_tenant_in`] with the platform model.
    pub fn django_tenant(&self, schema: &str, domain: &str) {
        self.django_tenant_in(&platform_dir(), schema, domain);
    }

    /// `provision import-migrations` from the project at `project`.
    pub fn import_platform(&self, project: &Path, extra: &[&str]) -> Run {
        let manage = project.join("manage.py");
        let python = platform_python();
        let mut args = vec![
            "import-migrations",
            "--manage-py",
            manage.to_str().expect("UTF-8 path"),
            "--python",
            python.to_str().expect("UTF-8 path"),
            "--json",
        ];
        args.extend(extra);
        self.provision(&args)
    }

    /// What Django could tell of a tenant schema: its catalog (tables,
    /// columns, constraints, indexes, sequences, triggers, views and
    /// functions, by the shared catalog query) and the rows of
    /// `django_migrations`, `django_content_type` and `auth_permission`.
    pub async fn catalog(&self, schema: &str) -> Vec<String> {
        let mut rows: Vec<String> = sqlx::query_as::<_, (String, String, String, String, String)>(
            sqlx::AssertSqlSafe(provision_shared::migration_set::CATALOG_SQL),
        )
        .bind(schema)
        .fetch_all(&self.pool)
        .await
        .expect("catalog")
        .into_iter()
        .map(|(kind, a, b, c, d)| format!("{kind} | {a} | {b} | {c} | {d}"))
        .collect();
        for (table, columns) in [
            ("django_migrations", "id::text || ' ' || app || '.' || name"),
            (
                "django_content_type",
                "id::text || ' ' || app_label || '.' || model",
            ),
            (
                "auth_permission",
                "id::text || ' ' || content_type_id::text || ' ' || codename || ' ' || name",
            ),
        ] {
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT '{table} | ' || {columns} FROM \"{schema}\".{table} ORDER BY id"
            )))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| vec![format!("{table} | unreadable: {e}")]);
            rows.extend(found);
        }
        rows
    }
}

/// Asserts two catalogs are the same, showing what differs.
#[track_caller]
pub fn assert_same_catalog(ours: &[String], django: &[String], what: &str) {
    if ours == django {
        return;
    }
    let only_ours: Vec<&String> = ours.iter().filter(|r| !django.contains(r)).collect();
    let only_django: Vec<&String> = django.iter().filter(|r| !ours.contains(r)).collect();
    panic!(
        "{what}: the catalogs differ\nonly in ours ({}):\n  {}\nonly in Django's ({}):\n  {}",
        only_ours.len(),
        only_ours
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_django.len(),
        only_django
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
}

/// A copy of the platform model in `dir`, to change as a platform release
/// would.
pub fn copy_platform(dir: &Path) -> PathBuf {
    let target = dir.join("platform");
    copy_dir(&platform_dir(), &target);
    target
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy folder");
    for entry in std::fs::read_dir(from).expect("read folder").flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "__pycache__") {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy file");
        }
    }
}

/// Provisions the guide's tenant under `schema` through `create-tenant
/// --wait` (a worker must run), with the password on standard input.
pub fn provision_tenant(env: &TestEnv, schema: &str, demo_data: bool) {
    let mut args = guide_tenant_args(schema);
    args.extend(["--admin-password-stdin".into(), "--wait".into()]);
    if !demo_data {
        args.push("--skip-demo-data".into());
    }
    env.provision_with_stdin(&strs(&args), Some(&format!("{PASSWORD}\n")))
        .expect_code(0);
}

/// The platform's own `migrate_schemas` over every schema: it must succeed
/// and find nothing to apply.
#[track_caller]
pub fn assert_migrate_schemas_applies_nothing(env: &TestEnv, project: &Path) {
    let run = env.django_in(project, &["migrate_schemas", "--noinput"], None);
    run.expect_code(0);
    assert!(
        !run.stdout.contains("Applying"),
        "the platform's migrate_schemas applied something:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("No migrations to apply"), "{}", run.stdout);
}

/// A tenant made here and one made by the platform's `Client.save()` from
/// the same platform code are the same to Django: its `migrate_schemas`
/// applies nothing, `showmigrations` lists nothing unapplied, the catalogs
/// (and Django's rows) are equal, and through the platform's middleware the
/// tenant's domain serves its data and its admin logs in.
#[tokio::test]
async fn a_tenant_provisioned_here_is_one_django_cannot_tell_from_its_own() {
    let env = TestEnv::new_platform("djsame").await;
    env.django_tenant("legacy", "legacy.newconcierge.app");
    // The model's migrations as its own Django says them (imported by
    // `new_platform`) are the set built into the binaries; importing them
    // again changes nothing, nor does a dry run.
    for extra in [&[][..], &["--dry-run"]] {
        let import = env.import_platform(&platform_dir(), extra);
        import.expect_code(0);
        let report = import.json();
        assert_eq!(report["unchanged"], true, "{report}");
        assert_eq!(report["stored"], false, "{report}");
        assert_eq!(report["migrations"], 17, "{report}");
        assert_eq!(
            report["checksum"],
            provision_shared::migration_set::MigrationSet::built_in().checksum(),
            "the built-in set is not the platform model's"
        );
    }
    let _worker = env.start_worker(&[]).await;
    provision_tenant(&env, "theo", true);

    assert_migrate_schemas_applies_nothing(&env, &platform_dir());
    let shown = env.django(&["tenant_command", "showmigrations", "--schema=theo"]);
    shown.expect_code(0);
    assert!(
        !shown.stdout.contains("[ ]") && shown.stdout.contains("[X] 0001_initial"),
        "{}",
        shown.stdout
    );
    assert_same_catalog(
        &env.catalog("theo").await,
        &env.catalog("legacy").await,
        "theo (provisioned here) against legacy (Client.save())",
    );

    let platform_check = |password: &str| {
        env.django_in(
            &platform_dir(),
            &[
                "platform_check",
                "--domain",
                "theo.newconcierge.app",
                "--email",
                "theo@example.com",
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        )
    };
    let check = platform_check(PASSWORD);
    check.expect_code(0);
    let served = check.json();
    assert_eq!(served["tenant"]["status"], 200, "{served}");
    assert_eq!(served["tenant"]["body"]["schema_name"], "theo");
    assert_eq!(served["tenant"]["body"]["users"], 1);
    assert_eq!(served["buildings"]["body"]["buildings"][0]["name"], "Κτίριο Demo");
    assert_eq!(served["buildings"]["body"]["buildings"][0]["apartments"], 10);
    assert_eq!(served["login"]["status"], 200, "{served}");
    assert_eq!(served["login"]["body"]["role"], "admin");
    let wrong = platform_check("not-the-password");
    assert_eq!(wrong.json()["login"]["status"], 401);
}

/// The platform's next release, a nullable field and a new model made by
/// its `makemigrations`, imported from its Django: `migrate --all` brings
/// every tenant to it, made here or by the platform; its `migrate_schemas`
/// then applies nothing; and a schema migrated here is the same as a twin
/// the platform's own `migrate_schemas` brought from the release before.
/// The release's migration, rewritten after the import, is refused.
#[tokio::test]
async fn a_platform_release_reaches_every_tenant_as_djangos_own_migrate_would() {
    let env = TestEnv::new_platform("djnext").await;
    for i in 1..=3 {
        env.django_tenant(&format!("legacy_{i}"), &format!("legacy-{i}.newconcierge.app"));
    }
    let worker = env.start_worker(&[]).await;
    for i in 1..=3 {
        provision_tenant(&env, &format!("made_{i}"), false);
    }
    let release = copy_platform(env.dir());
    let models = release.join("buildings/models.py");
    let mut text = std::fs::read_to_string(&models).unwrap();
    text = text.replace(
        "    created_at = models.DateTimeField(auto_now_add=True)\n",
        "    created_at = models.DateTimeField(auto_now_add=True)\n    notes = models.TextField(null=True, blank=True)\n",
    );
    text.push_str(
        "\n\nclass Meter(models.Model):\n    building = models.ForeignKey(Building, on_delete=models.CASCADE)\n    serial = models.CharField(max_length=40, unique=True)\n",
    );
    std::fs::write(&models, text).unwrap();
    env.django_in(
        &release,
        &["makemigrations", "buildings", "--name", "notes_and_meters"],
        None,
    )
    .expect_code(0);

    let import = env.import_platform(&release, &[]);
    import.expect_code(0);
    let report = import.json();
    assert_eq!(report["stored"], true, "{report}");
    assert_eq!(
        report["new_migrations"],
        serde_json::json!(["buildings.0002_notes_and_meters"])
    );

    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(
        (summary["migrated"].as_i64(), summary["failed"].as_i64()),
        (Some(6), Some(0)),
        "{summary}"
    );
    assert_migrate_schemas_applies_nothing(&env, &release);

    // The twin: made by the platform at the release before, then migrated
    // by the platform's own command to this one.
    env.django_tenant("twin", "twin.newconcierge.app");
    env.django_in(
        &release,
        &["migrate_schemas", "--schema=twin", "--noinput", "-v", "0"],
        None,
    )
    .expect_code(0);
    let twin = env.catalog("twin").await;
    assert!(
        twin.iter().any(|r| r.contains("buildings_meter")),
        "the twin has no new model"
    );
    for schema in ["made_1", "legacy_1"] {
        assert_same_catalog(
            &env.catalog(schema).await,
            &twin,
            &format!("{schema} against the twin"),
        );
    }
    drop(worker);

    // The release's migration, changed after it was imported.
    let migration = release.join("buildings/migrations/0002_notes_and_meters.py");
    let changed = std::fs::read_to_string(&migration)
        .unwrap()
        .replace("max_length=40", "max_length=80");
    std::fs::write(&migration, changed).unwrap();
    let refused = env.import_platform(&release, &[]);
    refused.expect_code(2);
    let error = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        error.contains("buildings.0002_notes_and_meters") && error.contains("changed after it was imported"),
        "{error}"
    );
}

/// A release whose migration runs Python (a data migration) cannot be
/// replayed as SQL on schemas that have data: `migrate` refuses it by name
/// and applies nothing of it, the platform's own `migrate_schemas` applies
/// it, after which nothing is left to do here. A tenant made after the
/// import gets its effect with the rows Django leaves in a new schema.
#[tokio::test]
async fn a_python_migration_is_refused_by_name_with_nothing_half_done() {
    let env = TestEnv::new_platform("djpython").await;
    env.django_tenant("legacy", "legacy.newconcierge.app");
    let worker = env.start_worker(&[]).await;
    provision_tenant(&env, "made", true);
    let release = copy_platform(env.dir());
    std::fs::write(
        release.join("buildings/migrations/0002_fill_city.py"),
        "from django.db import migrations, models\n\n\n\
         def fill(apps, schema_editor):\n    apps.get_model('buildings', 'Building').objects.filter(city='').update(city='Αθήνα')\n\n\n\
         class Migration(migrations.Migration):\n    dependencies = [('buildings', '0001_initial')]\n    operations = [\n        \
         migrations.AddField('building', 'region', models.CharField(max_length=50, null=True)),\n        \
         migrations.RunPython(fill, migrations.RunPython.noop),\n    ]\n",
    )
    .unwrap();
    let import = env.import_platform(&release, &[]);
    import.expect_code(0);
    let report = import.json();
    assert!(
        report["python"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["migration"] == "buildings.0002_fill_city"),
        "the Python migration is not flagged: {report}"
    );

    let before = (env.ledger_of("made").await, env.ledger_of("legacy").await);
    let run = env.provision(&["migrate", "--all", "--wait", "--json"]);
    run.expect_code(1);
    let summary = run.json();
    assert_eq!(summary["failed"], 2, "{summary}");
    for failure in summary["failures"].as_array().unwrap() {
        let error = failure["error"].as_str().unwrap();
        assert!(
            error.contains("buildings.0002_fill_city") && error.contains("runs Python"),
            "{error}"
        );
    }
    assert_eq!(
        (env.ledger_of("made").await, env.ledger_of("legacy").await),
        before
    );
    let region: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'region'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(region, 0, "half of the migration was applied");

    env.django_in(&release, &["migrate_schemas", "--noinput", "-v", "0"], None)
        .expect_code(0);
    let city: String = sqlx::query_scalar("SELECT city FROM made.buildings_building LIMIT 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(city, "Αθήνα");
    let again = env.provision(&["migrate", "--all", "--wait", "--json"]);
    again.expect_code(0);
    // "made" is taken as behind at its hint (this project last brought it
    // to the set before), and found current by its job.
    let again = again.json();
    assert_eq!(
        (&again["migrated"], &again["failed"], &again["already_current"]),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(2)
        ),
        "the platform's own migrate left nothing to apply: {again}"
    );

    // A new tenant, made with the Python migration in the set.
    provision_tenant(&env, "fresh", false);
    env.django_tenant_in(&release, "fresh_twin", "fresh-twin.newconcierge.app");
    assert_same_catalog(
        &env.catalog("fresh").await,
        &env.catalog("fresh_twin").await,
        "a new tenant with a Python migration in the set",
    );
    drop(worker);
}

/// A platform that does not start is Django's error, exit 2 (or 3 when its
/// database does not answer), and the stored set stays as it was.
#[tokio::test]
async fn an_import_from_a_platform_that_does_not_start_changes_nothing() {
    let env = TestEnv::new_platform("djbroken").await;
    let sets = || async {
        sqlx::query_as::<_, (i32, String)>("SELECT version, checksum FROM provision_migration_set ORDER BY 1")
            .fetch_all(&env.pool)
            .await
            .unwrap()
    };
    let before = sets().await;
    let python = platform_python();
    let manage = platform_dir().join("manage.py");
    let (python, manage) = (python.to_str().unwrap(), manage.to_str().unwrap());
    // The arguments, the environment, the exit code and what it says.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &["--manage-py", "/no/such/manage.py", "--python", python],
            &[],
            2,
            "no such file",
        ),
        (
            &["--manage-py", manage, "--python", "/no/such/python"],
            &[],
            2,
            "cannot run",
        ),
        (
            &["--manage-py", manage, "--python", python],
            &[("DJANGO_SETTINGS_MODULE", "concierge.no_such_settings")],
            2,
            "ModuleNotFoundError",
        ),
        (
            &["--manage-py", manage, "--python", python],
            &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")],
            3,
            "OperationalError",
        ),
    ];
    for (args, extra_env, code, says) in cases {
        let mut all = vec!["import-migrations", "--json"];
        all.extend(args);
        let mut child = env.spawn_provision_with(&all, extra_env);
        drop(child.stdin.take());
        let run = TestEnv::finish(child);
        run.expect_code(code);
        let message = run.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{args:?} {extra_env:?}: {message}");
        assert_eq!(
            sets().await,
            before,
            "{args:?} {extra_env:?} changed the stored set"
        );
    }
}
