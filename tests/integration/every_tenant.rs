//! Every tenant of the platform, however it was made: tenants made by hand
//! are migrated, shown and checked; the platform deletes tenants made here
//! with its own commands; `init` changes nothing of the platform's; orphans
//! are found; every command works whether the platform's ids are `bigint`
//! or `integer`.

use std::path::Path;
use std::time::Duration;

use crate::helpers::{Run, TestEnv, guide_tenant_args, strs};
use crate::migrations::built_in_keys_and;
use crate::platform::{copy_platform, platform_dir, provision_tenant};

const WAIT: Duration = Duration::from_secs(120);

fn status(env: &TestEnv, schema: &str) -> serde_json::Value {
    env.provision(&["status", "--schema-name", schema, "--json"])
        .expect_code(0)
        .json()
}

fn check_item(env: &TestEnv, name: &str) -> serde_json::Value {
    let run = env.provision(&["check", "--json"]);
    run.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("check has no {name}: {}", run.stdout))
        .clone()
}

/// A tenant made by hand (`Client.save()`) is one this project migrates,
/// shows and checks like its own; the public tenant is shown as what it is.
#[tokio::test]
async fn a_tenant_made_by_hand_is_shown_checked_and_migrated() {
    let env = TestEnv::new_platform("byhand").await;
    env.django_tenant("legacy", "legacy.newconcierge.app");
    let shown = status(&env, "legacy");
    assert_eq!(shown["made_by"], "platform", "{shown}");
    assert_eq!(shown["state"], "external");
    assert_eq!(shown["gone"], false);
    assert_eq!(shown["domains"][0]["domain"], "legacy.newconcierge.app");
    assert_eq!(shown["users"], 0);
    let initial = built_in_keys_and(&[]).len();
    assert_eq!(shown["migration"]["applied"], initial);
    assert_eq!(shown["migration"]["latest"], initial);

    let public = status(&env, "public");
    assert_eq!(public["made_by"], "public", "{public}");
    assert!(
        public["migration"].is_null(),
        "public shown as a tenant behind: {public}"
    );
    let text = env.provision(&["status", "--schema-name", "public"]);
    assert!(text.stdout.contains("The public tenant"), "{}", text.stdout);
    assert!(!text.stdout.contains("0 of"), "{}", text.stdout);

    assert_eq!(check_item(&env, "schemas_behind")["ok"], true);
    let notes = "ALTER TABLE \"buildings_building\" ADD COLUMN \"notes\" text NULL;";
    env.add_tenant_migrations(&[("buildings", "0002_notes", notes)]);
    let behind = check_item(&env, "schemas_behind");
    assert_eq!(behind["ok"], false);
    assert!(behind["detail"].as_str().unwrap().contains("legacy"), "{behind}");

    let _worker = env.start_worker(&[]).await;
    let run = env.provision(&["migrate", "--schema-name", "legacy", "--wait", "--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["applied"], initial + 1, "{}", run.stdout);
    assert_eq!(
        env.ledger_of("legacy").await,
        built_in_keys_and(&["buildings.0002_notes"])
    );
    assert_eq!(check_item(&env, "schemas_behind")["ok"], true);
    let after = status(&env, "legacy");
    let events: Vec<&serde_json::Value> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "migrate_schema")
        .collect();
    assert_eq!(events.len(), 1, "{after}");
    assert_eq!(events[0]["state"], "external");
    let list = env.provision(&["list", "--json"]).json();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema_name"] == "legacy")
        .expect("legacy listed");
    assert_eq!(row["state"], "external");
    assert_eq!(row["primary_domain"], "legacy.newconcierge.app");
}

/// The platform's `delete_tenant` and `Client.delete()` delete tenants made
/// here: nothing of this project holds on to their rows. `status` then says
/// the tenant is gone, and keeps its history.
#[tokio::test]
async fn the_platform_deletes_tenants_made_here_and_status_says_they_are_gone() {
    let env = TestEnv::new_platform("deleting").await;
    let _worker = env.start_worker(&[]).await;
    provision_tenant(&env, "theo2", false);
    provision_tenant(&env, "theo3", false);
    env.django(&["delete_tenant", "--schema=theo2", "--noinput"])
        .expect_code(0);
    env.django_shell("from tenants.models import Client\nClient.objects.get(schema_name='theo3').delete()\n")
        .expect_code(0);
    let (rows, schemas): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants_client WHERE schema_name IN ('theo2', 'theo3')),
                (SELECT count(*) FROM pg_namespace WHERE nspname = 'theo2')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((rows, schemas), (0, 0), "the platform could not delete them");
    for schema in ["theo2", "theo3"] {
        let gone = status(&env, schema);
        assert_eq!(gone["gone"], true, "{gone}");
        assert!(
            gone["history"].as_array().unwrap().len() >= 6,
            "the history was lost: {gone}"
        );
        let text = env.provision(&["status", "--schema-name", schema]);
        assert!(text.stdout.contains("deleted by the platform"), "{}", text.stdout);
    }
    assert_eq!(status(&env, "theo2")["schema_exists"], false);
}

/// The catalog of the platform's own public tables and of Django's ledger
/// rows there: all but this project's.
async fn platform_public_catalog(env: &TestEnv) -> Vec<String> {
    let mut rows: Vec<String> = env
        .catalog("public")
        .await
        .into_iter()
        .filter(|r| {
            !r.split(" | ")
                .nth(1)
                .is_some_and(|name| name.starts_with("provision_"))
        })
        .collect();
    for table in ["tenants_client", "tenants_domain", "django_migrations"] {
        let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT '{table} | ' || t::text FROM public.{table} t ORDER BY 1"
        )))
        .fetch_all(&env.pool)
        .await
        .unwrap();
        rows.extend(found);
    }
    rows
}

/// `init` on a database the platform made adds this project's tables and
/// changes nothing of the platform's: its public catalog and rows are the
/// same before and after.
#[tokio::test]
async fn init_on_a_platform_database_changes_none_of_the_platforms_tables() {
    let env = TestEnv::new_without_migrations("initplat").await;
    env.django(&["migrate_schemas", "--shared", "--noinput", "-v", "0"])
        .expect_code(0);
    env.django_shell(
        "from tenants.models import Client, Domain\nimport datetime\n\
         p = Client(schema_name='public', name='Public', paid_until=datetime.date(2099, 1, 1), on_trial=False)\n\
         p.save()\nDomain.objects.create(domain='newconcierge.app', tenant=p, is_primary=True)\n",
    )
    .expect_code(0);
    env.django_tenant("legacy", "legacy.newconcierge.app");
    let before = platform_public_catalog(&env).await;
    assert!(
        before.iter().any(|r| r.contains("tenants_domain_tenant_id")),
        "{before:?}"
    );
    let init = env.provision(&["init", "--json"]);
    init.expect_code(0);
    assert_eq!(init.json()["platform_tables_made"], false, "{}", init.stdout);
    assert_eq!(init.json()["public_tenant_changed"], false, "{}", init.stdout);
    let after = platform_public_catalog(&env).await;
    crate::platform::assert_same_catalog(&after, &before, "the platform's public schema after init");
    let ours: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'provision%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(ours > 5, "init made none of this project's tables");
}

/// A tenant row without its schema, and a tenant's schema without its row,
/// are each reported by `check`, and the fix its hint names makes it pass.
#[tokio::test]
async fn orphans_are_reported_and_the_hinted_fix_makes_check_pass() {
    let env = TestEnv::new_platform("orphans").await;
    env.django_tenant("legacy", "legacy.newconcierge.app");
    let _worker = env.start_worker(&[]).await;
    provision_tenant(&env, "made", false);
    assert_eq!(check_item(&env, "orphans")["ok"], true);

    sqlx::query("DROP SCHEMA legacy CASCADE")
        .execute(&env.pool)
        .await
        .unwrap();
    let row_only = check_item(&env, "orphans");
    assert_eq!(row_only["ok"], false);
    assert!(
        row_only["detail"]
            .as_str()
            .unwrap()
            .contains("without a schema: legacy"),
        "{row_only}"
    );
    let hint = row_only["hint"].as_str().unwrap();
    assert!(hint.contains("create_missing_schemas"), "{hint}");
    env.django(&["create_missing_schemas"]).expect_code(0);
    assert_eq!(check_item(&env, "orphans")["ok"], true);
    assert_eq!(check_item(&env, "schemas_behind")["ok"], true);

    sqlx::query(
        "DELETE FROM tenants_domain WHERE tenant_id = (SELECT id FROM tenants_client WHERE schema_name = 'made');
         ",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM tenants_client WHERE schema_name = 'made'")
        .execute(&env.pool)
        .await
        .unwrap();
    let schema_only = check_item(&env, "orphans");
    assert_eq!(schema_only["ok"], false);
    assert!(
        schema_only["detail"]
            .as_str()
            .unwrap()
            .contains("no tenant row: made"),
        "{schema_only}"
    );
    let hint = schema_only["hint"].as_str().unwrap();
    assert!(
        hint.contains("pg_dump -n made") && hint.contains("DROP SCHEMA \"made\" CASCADE"),
        "{hint}"
    );
    let dump = env.dir().join("made.dump");
    let dumped = std::process::Command::new("pg_dump")
        .args([
            "-n",
            "made",
            "-Fc",
            "-f",
            dump.to_str().unwrap(),
            &env.database_url,
        ])
        .status()
        .unwrap();
    assert!(dumped.success());
    sqlx::query("DROP SCHEMA \"made\" CASCADE")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(check_item(&env, "orphans")["ok"], true);
}

/// A copy of the platform model whose ids are `integer` (Django's
/// `AutoField`, the default of projects made before 3.2), its migrations
/// made again by `makemigrations`.
fn integer_ids_platform(env: &TestEnv) -> std::path::PathBuf {
    let project = copy_platform(env.dir());
    let settings = project.join("concierge/settings.py");
    let text = std::fs::read_to_string(&settings)
        .unwrap()
        .replace("django.db.models.BigAutoField", "django.db.models.AutoField");
    std::fs::write(&settings, text).unwrap();
    for app in ["tenants", "users", "buildings"] {
        std::fs::remove_file(project.join(app).join("migrations/0001_initial.py")).unwrap();
    }
    env.django_in(
        &project,
        &["makemigrations", "tenants", "users", "buildings"],
        None,
    )
    .expect_code(0);
    project
}

/// Runs every command of `provision` on a platform database made by
/// `project`, with a tenant made by hand beside those made here.
async fn every_command_works(env: &TestEnv, project: &Path, id_type: &str) {
    let declared: String = sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = 'tenants_client' AND column_name = 'id'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(declared, id_type);
    env.django_tenant_in(project, "legacy", "legacy.newconcierge.app");
    env.import_platform(project, &[]).expect_code(0);
    let _worker = env.start_worker(&[]).await;
    let ok = |run: Run, what: &str| {
        assert_eq!(run.code, 0, "{what} ({id_type}):\n{}\n{}", run.stdout, run.stderr);
    };
    ok(env.provision(&["init"]), "init");
    let mut args = guide_tenant_args("theo");
    args.extend(["--admin-password-stdin".into(), "--wait".into(), "--json".into()]);
    ok(
        env.provision_with_stdin(&strs(&args), Some("a-long-password\n")),
        "create-tenant",
    );
    for schema in ["theo", "legacy"] {
        ok(
            env.provision(&["status", "--schema-name", schema, "--json"]),
            "status",
        );
        ok(
            env.provision(&[
                "fix-domain",
                "--schema-name",
                schema,
                "--domain",
                &format!("{schema}.example.org"),
            ]),
            "fix-domain (add)",
        );
        ok(
            env.provision(&["fix-domain", "--schema-name", schema]),
            "fix-domain (back)",
        );
        ok(
            env.provision(&["migrate", "--schema-name", schema, "--wait"]),
            "migrate --schema-name",
        );
    }
    let theo = status(env, "theo");
    assert_eq!(theo["domains"].as_array().unwrap().len(), 2, "{theo}");
    assert_eq!(theo["domains"][0]["domain"], "theo.newconcierge.app");
    ok(env.provision(&["list", "--json"]), "list");
    ok(env.provision(&["migrate", "--all", "--wait"]), "migrate --all");
    ok(
        env.provision(&["seed-demo-data", "--schema-name", "theo", "--wait"]),
        "seed-demo-data",
    );
    let refused = env.provision(&["retry", "--schema-name", "theo"]);
    assert_eq!(
        refused.code, 1,
        "retry of a ready tenant ({id_type}): {}",
        refused.stderr
    );
    ok(env.provision(&["retry", "--all-failed"]), "retry --all-failed");
    ok(env.provision(&["migrate", "--shared"]), "migrate --shared");
    ok(env.provision(&["check"]), "check");
    crate::platform::assert_migrate_schemas_applies_nothing(env, project);
    env.wait_for_state("theo", "ready", WAIT).await;
}

#[tokio::test]
async fn every_command_works_on_a_platform_whose_ids_are_bigint() {
    let env = TestEnv::new_platform("bigints").await;
    every_command_works(&env, &platform_dir(), "bigint").await;
}

#[tokio::test]
async fn every_command_works_on_a_platform_whose_ids_are_integer() {
    let env = TestEnv::new_without_migrations("integers").await;
    let project = integer_ids_platform(&env);
    env.django_in(
        &project,
        &["migrate_schemas", "--shared", "--noinput", "-v", "0"],
        None,
    )
    .expect_code(0);
    env.django_in(
        &project,
        &[
            "shell",
            "-c",
            "from tenants.models import Client, Domain\nimport datetime\n\
             p = Client(schema_name='public', name='Public', paid_until=datetime.date(2099, 1, 1), on_trial=False)\n\
             p.save()\nDomain.objects.create(domain='newconcierge.app', tenant=p, is_primary=True)\n",
        ],
        None,
    )
    .expect_code(0);
    env.provision(&["init"]).expect_code(0);
    every_command_works(&env, &project, "integer").await;
}
