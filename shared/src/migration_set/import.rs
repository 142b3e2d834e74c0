//! `provision import-migrations`: the platform's own Django is run to read
//! its tenant migrations ([`export_from_platform`]), and what it says is
//! stored as the next version of the set ([`store`]). Importing an unchanged
//! plan again is a no-op; a plan that rewrites or drops a migration already
//! imported is refused, naming it, with nothing stored.

use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::locks::advisory_key;

use super::{CATALOG_SQL, EXPORT_SCRIPT, ExportDocument, MigrationSet};

/// The channel a stored set is announced on: a running worker loads it.
pub const SET_CHANNEL: &str = "provision_migration_set";

/// How long the platform's Django may take to say what its migrations are.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `python manage_py shell -c <export.py>` in the caller's environment
/// (so the platform's settings choose the database) and reads what it
/// wrote. A platform that does not start is an error with the end of what
/// Django printed.
pub async fn export_from_platform(manage_py: &Path, python: &str) -> Result<ExportDocument, ProvisionError> {
    if !manage_py.is_file() {
        return Err(ProvisionError::Platform(format!(
            "{}: no such file (--manage-py names the platform's manage.py)",
            manage_py.display()
        )));
    }
    let mut token = [0u8; 8];
    getrandom::fill(&mut token).expect("the operating system's random source failed");
    let out = std::env::temp_dir().join(format!(
        "provision-export-{}-{:016x}.json",
        std::process::id(),
        u64::from_le_bytes(token)
    ));
    let dir = manage_py.parent().filter(|p| !p.as_os_str().is_empty());
    let mut command = tokio::process::Command::new(python);
    command
        .arg(manage_py)
        .args(["shell", "-c", EXPORT_SCRIPT])
        .env("PROVISION_EXPORT_OUT", &out)
        .env("PROVISION_CATALOG_SQL", CATALOG_SQL)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let child = command.spawn().map_err(|e| {
        ProvisionError::Platform(format!(
            "cannot run {python}: {e} (--python names the platform's Python)"
        ))
    })?;
    let output = tokio::time::timeout(EXPORT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            ProvisionError::Platform(format!(
                "the platform's Django did not finish in {} s",
                EXPORT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| ProvisionError::Platform(format!("running {python}: {e}")))?;
    let written = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        let message = format!(
            "the platform's Django exited with {}:\n{tail}",
            output
                .status
                .code()
                .map_or_else(|| "a signal".to_owned(), |c| c.to_string())
        );
        // Django could not reach its database: the same as ours not
        // answering.
        let unreachable = lines[lines.len().saturating_sub(4)..].iter().any(|l| {
            l.contains("OperationalError")
                && (l.contains("connect") || l.contains("could not translate host name"))
        });
        return Err(if unreachable {
            ProvisionError::PlatformUnreachable(message)
        } else {
            ProvisionError::Platform(message)
        });
    }
    let text = written.map_err(|e| {
        ProvisionError::Platform(format!(
            "the platform's Django wrote no export ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| ProvisionError::Platform(format!("unreadable export: {e}")))
}

/// What an import found, and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Migrations in the platform's plan.
    pub migrations: usize,
    /// Those not in any stored set before, `app.name`, in plan order.
    pub new: Vec<String>,
    /// Migrations of the plan that run Python, with what they run: applied
    /// to new schemas by replaying Django's end state, refused by `migrate`
    /// for existing schemas that lack them.
    pub python: Vec<PythonMigration>,
    /// The set version in force afterwards (what it would be, with
    /// `--dry-run`).
    pub version: i32,
    /// The set's checksum.
    pub checksum: String,
    /// Whether the plan was the stored set already (nothing to store).
    pub unchanged: bool,
    /// Whether anything was stored.
    pub stored: bool,
}

/// A migration that runs Python.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PythonMigration {
    /// `app.name`.
    pub migration: String,
    /// Its Python operations.
    pub operations: Vec<String>,
}

/// Stores `set` as the next version, unless it is the
/// newest stored set already, or rewrites or drops a migration some stored
/// set has. With `dry_run`, says what it would do and stores nothing. A
/// stored set is announced on [`SET_CHANNEL`] when the transaction commits.
pub async fn store(
    pool: &PgPool,
    set: &MigrationSet,
    source: &str,
    actor: &str,
    dry_run: bool,
) -> Result<ImportReport, ProvisionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(advisory_key("migration-set", ""))
        .execute(&mut *tx)
        .await?;
    let latest: Option<(i32, String)> = sqlx::query_as(
        "SELECT version, checksum FROM public.provision_migration_set ORDER BY version DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let stored: Vec<(String, String, String)> =
        sqlx::query_as("SELECT app, name, checksum FROM public.provision_django_migration")
            .fetch_all(&mut *tx)
            .await?;
    for member in set.members() {
        if let Some((_, _, known)) = stored
            .iter()
            .find(|(app, name, _)| *app == member.app && *name == member.name)
            && *known != member.checksum
        {
            return Err(ProvisionError::conflict(
                "manage_py",
                format!(
                    "migration {} was changed after it was imported (its SQL is not what was stored); \
                     a migration already applied must not be rewritten: add a new one instead",
                    member.key()
                ),
            ));
        }
    }
    if let Some((version, _)) = &latest {
        let dropped: Vec<String> = sqlx::query_scalar(
            "SELECT app || '.' || name FROM public.provision_migration_set_member
             WHERE set_version = $1 AND NOT ((app, name) = ANY (SELECT * FROM unnest($2::text[], $3::text[])))
             ORDER BY position",
        )
        .bind(version)
        .bind(set.members().iter().map(|m| m.app.clone()).collect::<Vec<_>>())
        .bind(set.members().iter().map(|m| m.name.clone()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        if let Some(first) = dropped.first() {
            return Err(ProvisionError::conflict(
                "manage_py",
                format!(
                    "migration {first} of the stored set is not in the platform's plan any more \
                     ({} in all: squashed or removed); that is not supported",
                    dropped.len()
                ),
            ));
        }
    }
    let new: Vec<String> = set
        .members()
        .iter()
        .filter(|m| {
            !stored
                .iter()
                .any(|(app, name, _)| *app == m.app && *name == m.name)
        })
        .map(|m| m.key())
        .collect();
    let python = set
        .members()
        .iter()
        .filter(|m| !m.python.is_empty())
        .map(|m| PythonMigration {
            migration: m.key(),
            operations: m.python.clone(),
        })
        .collect();
    let unchanged = latest.as_ref().is_some_and(|(_, sum)| sum == set.checksum());
    let version = match &latest {
        Some((v, _)) if unchanged => *v,
        Some((v, _)) => v + 1,
        None => 1,
    };
    let mut report = ImportReport {
        migrations: set.len(),
        new,
        python,
        version,
        checksum: set.checksum().to_owned(),
        unchanged,
        stored: false,
    };
    if unchanged || dry_run {
        tx.rollback().await?;
        return Ok(report);
    }
    let members = set.members();
    sqlx::query(
        "INSERT INTO public.provision_django_migration
             (app, name, sql, checksum, python, changes_models, in_public, parents, first_set)
         SELECT app, name, sql, checksum, python::jsonb, changes_models, in_public, parents::jsonb, $9
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[],
                     $7::boolean[], $8::text[])
              AS m(app, name, sql, checksum, python, changes_models, in_public, parents)
         ON CONFLICT (app, name) DO NOTHING",
    )
    .bind(members.iter().map(|m| m.app.clone()).collect::<Vec<_>>())
    .bind(members.iter().map(|m| m.name.clone()).collect::<Vec<_>>())
    .bind(
        members
            .iter()
            .map(|m| m.sql.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(members.iter().map(|m| m.checksum.clone()).collect::<Vec<_>>())
    .bind(
        members
            .iter()
            .map(|m| serde_json::to_string(&m.python).expect("a list of strings"))
            .collect::<Vec<_>>(),
    )
    .bind(members.iter().map(|m| m.changes_models).collect::<Vec<_>>())
    .bind(members.iter().map(|m| m.in_public).collect::<Vec<_>>())
    .bind(
        members
            .iter()
            .map(|m| serde_json::to_string(&m.parents).expect("a list of pairs"))
            .collect::<Vec<_>>(),
    )
    .bind(version)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO public.provision_migration_set
             (version, checksum, ledger_table_sql, content_types, permissions, django, django_tenants, source, imported_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(version)
    .bind(set.checksum())
    .bind(set.ledger_table_sql().as_str())
    .bind(sqlx::types::Json(set.content_types()))
    .bind(sqlx::types::Json(set.permissions()))
    .bind(set.made_with().0)
    .bind(set.made_with().1)
    .bind(source)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO public.provision_migration_set_member (set_version, position, app, name)
         SELECT $1, position, app, name FROM unnest($2::int[], $3::text[], $4::text[]) AS m(position, app, name)",
    )
    .bind(version)
    .bind(members.iter().map(|m| m.position).collect::<Vec<_>>())
    .bind(members.iter().map(|m| m.app.clone()).collect::<Vec<_>>())
    .bind(members.iter().map(|m| m.name.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2::text)")
        .bind(SET_CHANNEL)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    report.stored = true;
    Ok(report)
}

/// Stores the built-in set on a database whose platform tables this
/// project made from nothing (the demo: its public ledger holds only what
/// `prepare_public_schema` recorded), when it has no set yet: what `init`
/// and a worker's start do. A database the platform made gets no set until
/// `import-migrations` reads the platform's own, since the model's would not
/// be the platform's.
pub async fn store_built_in_if_none(pool: &PgPool) -> Result<Option<ImportReport>, ProvisionError> {
    let set = MigrationSet::built_in();
    let apps: Vec<String> = set.public_tables().iter().map(|m| m.app.clone()).collect();
    let names: Vec<String> = set.public_tables().iter().map(|m| m.name.clone()).collect();
    let (any_set, platform_made): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM public.provision_migration_set),
                to_regclass('public.django_migrations') IS NULL OR EXISTS (
                    SELECT 1 FROM public.django_migrations m
                    WHERE NOT ((m.app, m.name) = ANY (SELECT * FROM unnest($1::text[], $2::text[]))))",
    )
    .bind(&apps)
    .bind(&names)
    .fetch_one(pool)
    .await?;
    if any_set || platform_made {
        return Ok(None);
    }
    let report = store(pool, &set, "built-in", "provision", false).await?;
    Ok(Some(report))
}
