//! What a tenant schema has applied, read from its own `django_migrations`:
//! Django's ledger is the only record of it. Many schemas are read in one
//! query per batch, and the batches go over several connections, so reading
//! every tenant's ledger costs about what a query per hundred schemas does.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::migration_set::MigrationSet;
use crate::sql::{Ident, Marker, Script};

/// Schemas read in one query: each adds a table and its index to the
/// transaction's locks, and the server's lock table is shared.
pub const LEDGERS_PER_QUERY: usize = 100;

/// Queries of ledgers in flight at once.
const PARALLEL_QUERIES: usize = 4;

/// What one schema has of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ledger {
    /// There is no such schema.
    NoSchema,
    /// The schema has no `django_migrations` table: nothing is applied.
    NoLedger,
    /// The positions in the set of the migrations its ledger records (it
    /// may record others, unknown to the set, too).
    Applied(Vec<i32>),
}

impl Ledger {
    /// The positions of the set's migrations the schema lacks, in order.
    pub fn pending(&self, set: &MigrationSet) -> Vec<i32> {
        match self {
            Self::NoSchema => Vec::new(),
            Self::NoLedger => set.members().iter().map(|m| m.position).collect(),
            Self::Applied(applied) => set
                .members()
                .iter()
                .map(|m| m.position)
                .filter(|p| !applied.contains(p))
                .collect(),
        }
    }

    /// How many of the set's migrations the schema has.
    pub fn applied_count(&self) -> usize {
        match self {
            Self::Applied(applied) => applied.len(),
            _ => 0,
        }
    }

    /// Whether no migration of the set was ever applied there: the state of
    /// a schema being made, whose new-schema rows (what Python migrations
    /// leave, among them) the set replays.
    pub fn is_fresh(&self) -> bool {
        match self {
            Self::NoSchema | Self::NoLedger => true,
            Self::Applied(applied) => applied.is_empty(),
        }
    }
}

/// The ledgers of `schemas` against stored set `set`. Names that are not a
/// schema django-tenants could have made ([`Ident::existing_schema`]) are
/// given as [`Ledger::NoSchema`] too: nothing could be there.
pub async fn read_ledgers(
    pool: &PgPool,
    set: &MigrationSet,
    schemas: &[String],
) -> Result<HashMap<String, Ledger>, ProvisionError> {
    let found: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT s.name, n.oid IS NOT NULL, c.oid IS NOT NULL
         FROM unnest($1::text[]) AS s(name)
         LEFT JOIN pg_namespace n ON n.nspname = s.name
         LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'django_migrations' AND c.relkind = 'r'",
    )
    .bind(schemas)
    .fetch_all(pool)
    .await?;
    let mut ledgers = HashMap::with_capacity(found.len());
    let mut to_read = Vec::new();
    for (name, schema, ledger) in found {
        match (schema, ledger, Ident::existing_schema(&name)) {
            (true, true, Ok(ident)) => to_read.push(ident),
            (true, false, Ok(_)) => {
                ledgers.insert(name, Ledger::NoLedger);
            }
            _ => {
                ledgers.insert(name, Ledger::NoSchema);
            }
        }
    }
    // Keys are matched to the set's positions here, not by a join in each
    // of a query's hundred arms, which would cost the server a plan each.
    let positions: std::sync::Arc<HashMap<String, i32>> =
        std::sync::Arc::new(set.members().iter().map(|m| (m.key(), m.position)).collect());
    let mut batches = to_read.chunks(LEDGERS_PER_QUERY);
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < PARALLEL_QUERIES {
            let Some(batch) = batches.next() else {
                break;
            };
            let (pool, batch, positions) = (pool.clone(), batch.to_vec(), positions.clone());
            running.spawn(async move { read_batch(&pool, &positions, &batch).await });
        }
        match running.join_next().await {
            None => break,
            Some(done) => {
                let applied =
                    done.map_err(|e| ProvisionError::Contended(format!("reading ledgers: {e}")))??;
                ledgers.extend(applied);
            }
        }
    }
    Ok(ledgers)
}

/// What the ledger hints of `schemas` say they lack of `set`: for each schema
/// (with a ledger table) whose hint names an older set, the ledger it would
/// have if nothing but this project had touched it since, every migration
/// of that set applied. Not read from the schemas: a run's transaction
/// checks each ledger under its lock before it applies anything
/// (`migrations/public/0006_ledger_hints.sql`). A schema whose hint names
/// `set` itself, or that has none, is not given: read its ledger.
pub async fn ledgers_by_hint(
    pool: &PgPool,
    set: &MigrationSet,
    schemas: &[String],
) -> Result<HashMap<String, Ledger>, ProvisionError> {
    let hinted: Vec<(String, i32)> = sqlx::query_as(
        "SELECT h.schema_name, h.set_version FROM public.provision_ledger_hint h
         JOIN pg_namespace n ON n.nspname = h.schema_name
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'django_migrations' AND c.relkind = 'r'
         WHERE h.schema_name = ANY($1) AND h.set_version < $2",
    )
    .bind(schemas)
    .bind(set.version())
    .fetch_all(pool)
    .await?;
    let mut versions: Vec<i32> = hinted.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    versions.dedup();
    let keys: Vec<(i32, Vec<String>)> = sqlx::query_as(
        "SELECT set_version, array_agg(app || '.' || name) FROM public.provision_migration_set_member
         WHERE set_version = ANY($1) GROUP BY set_version",
    )
    .bind(&versions)
    .fetch_all(pool)
    .await?;
    // Each older set's migrations, as positions of `set`.
    let applied_by_version: HashMap<i32, Vec<i32>> = keys
        .into_iter()
        .map(|(version, keys)| {
            let keys: std::collections::HashSet<String> = keys.into_iter().collect();
            let applied = set
                .members()
                .iter()
                .filter(|m| keys.contains(&m.key()))
                .map(|m| m.position)
                .collect();
            (version, applied)
        })
        .collect();
    Ok(hinted
        .into_iter()
        .filter(|(name, _)| Ident::existing_schema(name).is_ok())
        .filter_map(|(name, version)| {
            let applied = applied_by_version.get(&version)?;
            Some((name, Ledger::Applied(applied.clone())))
        })
        .collect())
}

/// One query for the ledgers of `schemas`, each known to have one: each
/// schema's applied keys, matched to the set's `positions` (a key the set
/// does not hold is not one of its migrations).
async fn read_batch(
    pool: &PgPool,
    positions: &HashMap<String, i32>,
    schemas: &[Ident],
) -> Result<Vec<(String, Ledger)>, ProvisionError> {
    let mut script = Script::new();
    let applied: Marker<sqlx::types::Json<HashMap<String, Vec<String>>>> = script.marker(|s| {
        s.sql("(SELECT coalesce(jsonb_object_agg(schema_name, keys), '{}') FROM (");
        s.join(schemas, "\nUNION ALL ", |s, schema| {
            s.sql("SELECT ")
                .text(schema.name())
                .sql(" AS schema_name, coalesce(array_agg(m.app || '.' || m.name), '{}') AS keys FROM ")
                .ident(schema)
                .sql(".django_migrations m");
        });
        s.sql(") AS by_schema)");
    });
    let mut conn = pool.acquire().await?;
    let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
    let mut by_schema = output.get(applied).transpose()?.map(|j| j.0).unwrap_or_default();
    Ok(schemas
        .iter()
        .map(|s| {
            let mut applied: Vec<i32> = by_schema
                .remove(s.name())
                .unwrap_or_default()
                .iter()
                .filter_map(|key| positions.get(key).copied())
                .collect();
            applied.sort_unstable();
            applied.dedup();
            (s.name().to_owned(), Ledger::Applied(applied))
        })
        .collect())
}

/// The ledger of one schema.
pub async fn read_ledger(pool: &PgPool, set: &MigrationSet, schema: &str) -> Result<Ledger, ProvisionError> {
    let mut ledgers = read_ledgers(pool, set, &[schema.to_owned()]).await?;
    Ok(ledgers.remove(schema).unwrap_or(Ledger::NoSchema))
}
