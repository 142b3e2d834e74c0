//! The tenant migration set: the platform's own Django migrations, in plan
//! order, with what Django leaves in a new tenant schema beside its tables
//! (the `django_migrations` rows, content types and permissions). Read from
//! the platform's Django by `provision import-migrations` ([`import`]),
//! stored versioned and checksummed in PostgreSQL, and used by every command
//! and worker from then on. The set built into the binaries is the platform
//! model's (`migrations/tenant/platform-model.json`), so a database with no
//! imported set still makes tenants Django cannot tell from its own.

pub mod import;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::sql::ReviewedSql;

/// The export document of the platform model, made by `export.py` on an
/// empty database (`scripts/export-platform-model.sh`).
const BUILT_IN: &str = include_str!("../../../migrations/tenant/platform-model.json");

/// The script `import-migrations` runs inside the platform's Django.
pub const EXPORT_SCRIPT: &str = include_str!("export.py");

/// The catalog of one schema as comparable rows (`$1`: the schema name):
/// what the exporter checks its replay with, and what the tests compare a
/// tenant made here with one Django made.
pub const CATALOG_SQL: &str = include_str!("catalog.sql");

/// The version of the export document this code reads.
pub const EXPORT_FORMAT: u32 = 1;

/// One migration of the platform's plan, as `export.py` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedMigration {
    /// The Django app label.
    pub app: String,
    /// The migration's name.
    pub name: String,
    /// Its SQL as `sqlmigrate` prints it for a tenant schema (comments
    /// included; empty of statements for an app the router keeps out of
    /// tenant schemas).
    pub sql: String,
    /// Operations that run Python in a tenant schema (`RunPython`), which no
    /// SQL can replay; empty for most migrations.
    pub python: Vec<String>,
    /// Whether Django's post-migrate content types and permissions may
    /// change after it.
    pub changes_models: bool,
    /// Whether the router lets it run in the public schema (a shared app's
    /// migration); otherwise Django only records it there.
    #[serde(default)]
    pub public: bool,
    /// The migrations it depends on, `[app, name]`.
    #[serde(default)]
    pub parents: Vec<(String, String)>,
}

/// A migration of the public schema that makes the platform's tenant tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicMigration {
    /// The Django app label.
    pub app: String,
    /// The migration's name.
    pub name: String,
    /// Its SQL for the public schema.
    pub sql: String,
}

/// What `export.py` writes: the platform's plan and a new schema's rows, or
/// why it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    /// [`EXPORT_FORMAT`].
    pub format: u32,
    /// Why the platform could not be exported, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Django's version.
    #[serde(default)]
    pub django: Option<String>,
    /// django-tenants' version.
    #[serde(default)]
    pub django_tenants: Option<String>,
    /// `settings.TENANT_MODEL`.
    #[serde(default)]
    pub tenant_model: Option<String>,
    /// The plan, in order.
    #[serde(default)]
    pub plan: Vec<ExportedMigration>,
    /// The `django_migrations` rows of a new schema, `[app, name]`, in order.
    #[serde(default)]
    pub ledger: Vec<(String, String)>,
    /// `CREATE TABLE django_migrations`, as Django's recorder makes it.
    #[serde(default)]
    pub ledger_table_sql: String,
    /// The content types of a new schema, `[app_label, model]`, in id order.
    #[serde(default)]
    pub content_types: Vec<(String, String)>,
    /// Its permissions, `[app_label, model, codename, name]`, in id order.
    #[serde(default)]
    pub permissions: Vec<(String, String, String, String)>,
    /// On a database whose public schema has no tenant tables yet: the
    /// migrations that make them there.
    #[serde(default)]
    pub public_tables: Option<Vec<PublicMigration>>,
}

/// One migration of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its place in the plan, from 1.
    pub position: i32,
    /// The Django app label.
    pub app: String,
    /// The migration's name.
    pub name: String,
    /// Its SQL for a tenant schema.
    pub sql: ReviewedSql,
    /// SHA-256 of the SQL, hex: a migration whose SQL changes after it was
    /// imported is refused.
    pub checksum: String,
    /// Operations that run Python (see [`ExportedMigration::python`]).
    pub python: Vec<String>,
    /// See [`ExportedMigration::changes_models`].
    pub changes_models: bool,
    /// See [`ExportedMigration::public`].
    pub in_public: bool,
    /// See [`ExportedMigration::parents`].
    pub parents: Vec<(String, String)>,
}

impl Member {
    /// `app.name`, as Django writes a migration's key.
    pub fn key(&self) -> String {
        format!("{}.{}", self.app, self.name)
    }
}

/// A content type of a new tenant schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentType {
    /// `app_label`.
    pub app_label: String,
    /// `model`.
    pub model: String,
}

/// A permission of a new tenant schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Its content type's `app_label`.
    pub app_label: String,
    /// Its content type's `model`.
    pub model: String,
    /// `codename`.
    pub codename: String,
    /// `name`.
    pub name: String,
}

/// A tenant migration set. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    inner: Arc<SetInner>,
}

#[derive(Debug)]
struct SetInner {
    version: i32,
    checksum: String,
    members: Vec<Member>,
    ledger_table_sql: ReviewedSql,
    content_types: Vec<ContentType>,
    permissions: Vec<Permission>,
    public_tables: Vec<PublicMigration>,
    /// The Django and django-tenants versions it was read from.
    made_with: (Option<String>, Option<String>),
}

/// SHA-256 of `text`, as hex.
pub fn checksum(text: &str) -> String {
    use std::fmt::Write as _;
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        write!(hex, "{byte:02x}").expect("writing to a String");
    }
    hex
}

/// The export document of the set built into the binaries (the platform
/// model's), for a caller that adds to it (the benchmark).
pub fn built_in_export() -> ExportDocument {
    serde_json::from_str(BUILT_IN).expect("the built-in export document parses")
}

impl MigrationSet {
    /// The set built into the binaries: the platform model's.
    pub fn built_in() -> Self {
        Self::from_export(&built_in_export(), 0).expect("the built-in export document is a valid set")
    }

    /// A set from an export document, numbered `version` (0 until stored).
    pub fn from_export(document: &ExportDocument, version: i32) -> Result<Self, ProvisionError> {
        let invalid = |rule: String| {
            ProvisionError::Invalid(crate::InvalidInput {
                field: "manage_py",
                rule,
            })
        };
        if let Some(why) = &document.refused {
            return Err(invalid(format!("the platform's Django could not be read: {why}")));
        }
        if document.format != EXPORT_FORMAT {
            return Err(invalid(format!(
                "the export document is format {}, this provision reads {EXPORT_FORMAT}",
                document.format
            )));
        }
        if document.plan.is_empty() {
            return Err(invalid("the platform's plan has no migration".into()));
        }
        let plan_keys: Vec<(&str, &str)> = document
            .plan
            .iter()
            .map(|m| (m.app.as_str(), m.name.as_str()))
            .collect();
        let ledger_keys: Vec<(&str, &str)> = document
            .ledger
            .iter()
            .map(|(a, n)| (a.as_str(), n.as_str()))
            .collect();
        if plan_keys != ledger_keys {
            return Err(invalid(
                "Django's ledger of a new schema does not list the plan's migrations in plan order".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &document.plan {
            let ok = |s: &str| !s.is_empty() && s.len() <= 255 && !s.contains('\0');
            if !ok(&m.app) || !ok(&m.name) || m.sql.contains('\0') {
                return Err(invalid(format!(
                    "migration {:?}.{:?} has an empty or unusable name or SQL",
                    m.app, m.name
                )));
            }
            if !seen.insert((m.app.as_str(), m.name.as_str())) {
                return Err(invalid(format!(
                    "migration {}.{} is in the plan twice",
                    m.app, m.name
                )));
            }
        }
        if document.ledger_table_sql.trim().is_empty() {
            return Err(invalid("the export has no django_migrations table".into()));
        }
        let members = document
            .plan
            .iter()
            .enumerate()
            .map(|(i, m)| Member {
                position: i32::try_from(i + 1).expect("a plan of fewer than 2^31 migrations"),
                app: m.app.clone(),
                name: m.name.clone(),
                checksum: checksum(&m.sql),
                sql: ReviewedSql::new(m.sql.clone()),
                python: m.python.clone(),
                changes_models: m.changes_models,
                in_public: m.public,
                parents: m.parents.clone(),
            })
            .collect();
        let content_types = document
            .content_types
            .iter()
            .map(|(app_label, model)| ContentType {
                app_label: app_label.clone(),
                model: model.clone(),
            })
            .collect();
        let permissions = document
            .permissions
            .iter()
            .map(|(app_label, model, codename, name)| Permission {
                app_label: app_label.clone(),
                model: model.clone(),
                codename: codename.clone(),
                name: name.clone(),
            })
            .collect();
        Ok(Self::assemble(
            version,
            members,
            ReviewedSql::new(document.ledger_table_sql.clone()),
            content_types,
            permissions,
            document.public_tables.clone().unwrap_or_default(),
            (document.django.clone(), document.django_tenants.clone()),
        ))
    }

    fn assemble(
        version: i32,
        members: Vec<Member>,
        ledger_table_sql: ReviewedSql,
        content_types: Vec<ContentType>,
        permissions: Vec<Permission>,
        public_tables: Vec<PublicMigration>,
        made_with: (Option<String>, Option<String>),
    ) -> Self {
        let canonical = serde_json::json!({
            "plan": members
                .iter()
                .map(|m| serde_json::json!([m.app, m.name, m.checksum, m.python, m.changes_models, m.in_public, m.parents]))
                .collect::<Vec<_>>(),
            "ledger_table_sql": ledger_table_sql.as_str(),
            "content_types": content_types,
            "permissions": permissions,
        });
        Self {
            inner: Arc::new(SetInner {
                version,
                checksum: checksum(&canonical.to_string()),
                members,
                ledger_table_sql,
                content_types,
                permissions,
                public_tables,
                made_with,
            }),
        }
    }

    /// The Django and django-tenants versions the set was read from.
    pub fn made_with(&self) -> (Option<&str>, Option<&str>) {
        (
            self.inner.made_with.0.as_deref(),
            self.inner.made_with.1.as_deref(),
        )
    }

    /// Its version in the database (0: not stored, the built-in set).
    pub fn version(&self) -> i32 {
        self.inner.version
    }

    /// SHA-256 of everything the set is made of: two sets with the same
    /// checksum make the same schemas.
    pub fn checksum(&self) -> &str {
        &self.inner.checksum
    }

    /// The migrations, in plan order.
    pub fn members(&self) -> &[Member] {
        &self.inner.members
    }

    /// How many migrations the plan has.
    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// Whether the plan is empty (never, for a valid set).
    pub fn is_empty(&self) -> bool {
        self.inner.members.is_empty()
    }

    /// `CREATE TABLE django_migrations` as Django makes it.
    pub fn ledger_table_sql(&self) -> &ReviewedSql {
        &self.inner.ledger_table_sql
    }

    /// A new schema's content types, in Django's order.
    pub fn content_types(&self) -> &[ContentType] {
        &self.inner.content_types
    }

    /// A new schema's permissions, in Django's order.
    pub fn permissions(&self) -> &[Permission] {
        &self.inner.permissions
    }

    /// The migrations that make the platform's tenant tables in an empty
    /// public schema (the built-in set only).
    pub fn public_tables(&self) -> &[PublicMigration] {
        &self.inner.public_tables
    }

    /// The member at `position`.
    pub fn member(&self, position: i32) -> Option<&Member> {
        usize::try_from(position - 1)
            .ok()
            .and_then(|i| self.inner.members.get(i))
    }

    /// The newest set stored in the database, if any.
    pub async fn latest(pool: &PgPool) -> Result<Option<Self>, ProvisionError> {
        let version: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM public.provision_migration_set")
                .fetch_one(pool)
                .await?;
        match version {
            Some(v) => Ok(Some(Self::load(pool, v).await?)),
            None => Ok(None),
        }
    }

    /// The newest stored set: the one every command and worker uses. A
    /// database the platform made has none until `import-migrations` reads
    /// the platform's own; one `provision init` made from nothing has the
    /// built-in set.
    pub async fn in_force(pool: &PgPool) -> Result<Self, ProvisionError> {
        Self::latest(pool).await?.ok_or(ProvisionError::NoMigrationSet)
    }

    /// Set `version` as stored.
    pub async fn load(pool: &PgPool, version: i32) -> Result<Self, ProvisionError> {
        type SetRow = (
            String,
            sqlx::types::Json<Vec<ContentType>>,
            sqlx::types::Json<Vec<Permission>>,
            Option<String>,
            Option<String>,
        );
        let (ledger_table_sql, content_types, permissions, django, django_tenants): SetRow = sqlx::query_as(
            "SELECT ledger_table_sql, content_types, permissions, django, django_tenants
                 FROM public.provision_migration_set WHERE version = $1",
        )
        .bind(version)
        .fetch_one(pool)
        .await?;
        type MemberRow = (
            i32,
            String,
            String,
            String,
            String,
            sqlx::types::Json<Vec<String>>,
            bool,
            bool,
            sqlx::types::Json<Vec<(String, String)>>,
        );
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT m.position, m.app, m.name, d.sql, d.checksum, d.python, d.changes_models,
                    d.in_public, d.parents
             FROM public.provision_migration_set_member m
             JOIN public.provision_django_migration d USING (app, name)
             WHERE m.set_version = $1 ORDER BY m.position",
        )
        .bind(version)
        .fetch_all(pool)
        .await?;
        let members = rows
            .into_iter()
            .map(
                |(position, app, name, sql, checksum, python, changes_models, in_public, parents)| Member {
                    position,
                    app,
                    name,
                    sql: ReviewedSql::new(sql),
                    checksum,
                    python: python.0,
                    changes_models,
                    in_public,
                    parents: parents.0,
                },
            )
            .collect();
        Ok(Self::assemble(
            version,
            members,
            ReviewedSql::new(ledger_table_sql),
            content_types.0,
            permissions.0,
            Vec::new(),
            (django, django_tenants),
        ))
    }
}

/// The set a long-running process (a worker) uses, swapped for a newer one
/// when an import announces it ([`import::SET_CHANNEL`]) or a job finds
/// its set is not the one in force any more. None before the first import.
#[derive(Debug)]
pub struct SetInForce {
    current: std::sync::RwLock<Option<MigrationSet>>,
}

impl SetInForce {
    /// Starts with `set`.
    pub fn new(set: Option<MigrationSet>) -> Self {
        Self {
            current: std::sync::RwLock::new(set),
        }
    }

    /// The set now (cheap: a shared handle), or why there is none.
    pub fn get(&self) -> Result<MigrationSet, ProvisionError> {
        self.current
            .read()
            .expect("set lock")
            .clone()
            .ok_or(ProvisionError::NoMigrationSet)
    }

    /// Loads the newest stored set if it is newer; returns its version when
    /// it changed.
    pub async fn reload(&self, pool: &PgPool) -> Result<Option<i32>, ProvisionError> {
        let Some(latest) = MigrationSet::latest(pool).await? else {
            return Ok(None);
        };
        let mut current = self.current.write().expect("set lock");
        if current.as_ref().is_none_or(|c| latest.version() > c.version()) {
            let version = latest.version();
            *current = Some(latest);
            return Ok(Some(version));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_is_the_platform_models_plan() {
        let set = MigrationSet::built_in();
        let keys: Vec<String> = set.members().iter().map(Member::key).collect();
        assert!(keys.contains(&"buildings.0001_initial".to_owned()), "{keys:?}");
        assert!(keys.contains(&"users.0001_initial".to_owned()));
        assert!(keys.contains(&"tenants.0001_initial".to_owned()));
        assert_eq!(set.content_types().len(), 8);
        assert_eq!(set.permissions().len(), 32);
        assert!(set.ledger_table_sql().as_str().contains("django_migrations"));
        assert!(!set.public_tables().is_empty());
        assert_eq!(set.member(1).map(|m| m.position), Some(1));
    }

    #[test]
    fn the_checksum_follows_the_sql_and_nothing_else() {
        let mut document: ExportDocument = serde_json::from_str(BUILT_IN).unwrap();
        let a = MigrationSet::from_export(&document, 0).unwrap();
        document.django = Some("0.0".into());
        assert_eq!(
            MigrationSet::from_export(&document, 7).unwrap().checksum(),
            a.checksum()
        );
        document.plan[2].sql.push_str("\n-- changed");
        assert_ne!(
            MigrationSet::from_export(&document, 0).unwrap().checksum(),
            a.checksum()
        );
    }

    #[test]
    fn a_refused_or_malformed_export_is_an_error_naming_why() {
        let mut document: ExportDocument = serde_json::from_str(BUILT_IN).unwrap();
        document.ledger.reverse();
        let err = MigrationSet::from_export(&document, 0).unwrap_err();
        assert!(err.to_string().contains("plan order"), "{err}");
        let refused = ExportDocument {
            refused: Some("no django-tenants".into()),
            ..serde_json::from_str(BUILT_IN).unwrap()
        };
        let err = MigrationSet::from_export(&refused, 0).unwrap_err();
        assert!(err.to_string().contains("no django-tenants"), "{err}");
    }
}
