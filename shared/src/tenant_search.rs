//! The dashboard's tenant list: every tenant `provision list` shows,
//! filtered by state, lifecycle and a search over schema, name and domains,
//! one page at a time, with the counts by state and lifecycle that the
//! search leaves.
//!
//! Two queries whatever the number of tenants: one for the counts (the
//! total of a filter is the sum of its counts, so they always add up) and
//! one for the page, whose primary domains are looked up for its own rows
//! only. Pages are ordered newest first with the schema name as a tie
//! breaker: a total order, so consecutive pages neither repeat nor skip a
//! row while nothing changes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::{InvalidInput, ProvisionError};
pub use crate::lifecycle::Lifecycle;
use crate::state::TenantState;
use crate::status::{EXTERNAL_STATE, TenantListEntry};

/// Rows of one page at most.
pub const MAX_PER_PAGE: u32 = 200;

/// The longest search text accepted, in characters.
pub const MAX_SEARCH_CHARS: usize = 200;

/// The states a listed tenant can be in: the provisioning states and
/// `external`, in the order the dashboard shows them.
pub fn listed_states() -> Vec<&'static str> {
    TenantState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain([EXTERNAL_STATE])
        .collect()
}

/// Which tenants to list. Every part is optional; the parts that are given
/// must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantFilter {
    /// Text found in the schema name, the name or any domain (case
    /// insensitive; `%` and `_` are plain characters).
    search: Option<String>,
    /// A state of [`listed_states`].
    state: Option<&'static str>,
    /// A lifecycle.
    lifecycle: Option<Lifecycle>,
}

impl TenantFilter {
    /// A filter from what a user typed: blank parts are left out, the rest
    /// checked, each error naming its field (`search`, `state`,
    /// `lifecycle`).
    pub fn parse(
        search: Option<&str>,
        state: Option<&str>,
        lifecycle: Option<&str>,
    ) -> Result<Self, InvalidInput> {
        fn given(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        let search = given(search).map(str::to_owned);
        if let Some(text) = &search
            && (text.chars().count() > MAX_SEARCH_CHARS || text.chars().any(char::is_control))
        {
            return Err(InvalidInput {
                field: "search",
                rule: format!("at most {MAX_SEARCH_CHARS} characters, none of them control characters"),
            });
        }
        let state = match given(state) {
            None => None,
            Some(s) => Some(
                listed_states()
                    .into_iter()
                    .find(|known| *known == s)
                    .ok_or_else(|| InvalidInput {
                        field: "state",
                        rule: format!("{s:?} is not a state; one of {}", listed_states().join(", ")),
                    })?,
            ),
        };
        let lifecycle = given(lifecycle).map(str::parse).transpose()?;
        Ok(Self {
            search,
            state,
            lifecycle,
        })
    }

    /// A filter on one name that is a provisioning state or a lifecycle
    /// (`provision list --state`): `failed` is both, and means the same.
    pub fn state_or_lifecycle(name: &str) -> Result<Self, InvalidInput> {
        if name.parse::<Lifecycle>().is_ok() {
            return Self::parse(None, None, Some(name));
        }
        Self::parse(None, Some(name), None).map_err(|_| InvalidInput {
            field: "state",
            rule: format!(
                "{name:?} is neither a state ({}) nor a lifecycle ({})",
                listed_states().join(", "),
                Lifecycle::ALL.map(Lifecycle::as_str).join(", ")
            ),
        })
    }

    /// The search text, if any.
    pub fn search(&self) -> Option<&str> {
        self.search.as_deref()
    }

    /// The state, if any.
    pub fn state(&self) -> Option<&'static str> {
        self.state
    }

    /// The lifecycle, if any.
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        self.lifecycle
    }

    /// This filter with another state (or none).
    pub fn with_state(&self, state: Option<&'static str>) -> Self {
        Self {
            state,
            ..self.clone()
        }
    }

    /// This filter with another lifecycle (or none).
    pub fn with_lifecycle(&self, lifecycle: Option<Lifecycle>) -> Self {
        Self {
            lifecycle,
            ..self.clone()
        }
    }

    /// Whether a tenant counted under `state` and `lifecycle` passes the
    /// state and lifecycle parts of the filter.
    fn admits(&self, state: &str, lifecycle: &str) -> bool {
        self.state.is_none_or(|s| s == state) && self.lifecycle.is_none_or(|l| l.as_str() == lifecycle)
    }

    /// The search as a LIKE pattern: the text anywhere, its own `%`, `_`
    /// and `\` matched as themselves.
    fn pattern(&self) -> Option<String> {
        self.search.as_ref().map(|text| {
            let mut pattern = String::with_capacity(text.len() + 2);
            pattern.push('%');
            for c in text.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            pattern
        })
    }
}

/// How many tenants the search leaves in each state and lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TenantCounts {
    /// `(state, lifecycle, tenants)`, every pair with at least one tenant.
    pub cells: Vec<(String, String, i64)>,
}

impl TenantCounts {
    /// Tenants in `state`.
    pub fn in_state(&self, state: &str) -> i64 {
        self.cells
            .iter()
            .filter(|(s, _, _)| s == state)
            .map(|c| c.2)
            .sum()
    }

    /// Tenants in `lifecycle`.
    pub fn in_lifecycle(&self, lifecycle: Lifecycle) -> i64 {
        self.cells
            .iter()
            .filter(|(_, l, _)| l == lifecycle.as_str())
            .map(|c| c.2)
            .sum()
    }

    /// Every tenant counted.
    pub fn total(&self) -> i64 {
        self.cells.iter().map(|c| c.2).sum()
    }

    /// Tenants that pass `filter` (whose search these counts were made with).
    pub fn matching(&self, filter: &TenantFilter) -> i64 {
        self.cells
            .iter()
            .filter(|(s, l, _)| filter.admits(s, l))
            .map(|c| c.2)
            .sum()
    }
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ListedTenant {
    /// The schema.
    pub schema_name: String,
    /// The display name.
    pub name: String,
    /// The provisioning state, or `external`.
    pub state: String,
    /// See [`Lifecycle`].
    pub lifecycle: String,
    /// The primary domain in `tenants_domain`, if any.
    pub primary_domain: Option<String>,
    /// The domain a tenant not registered yet asked for.
    pub requested_domain: Option<String>,
    /// The step that failed, while failed.
    pub failed_step: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// When its provisioning last changed (or its creation day).
    pub updated_at: DateTime<Utc>,
    /// When it was requested (or its creation day).
    pub created_at: DateTime<Utc>,
}

/// One page of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantPage {
    /// Its rows, newest first.
    pub rows: Vec<ListedTenant>,
    /// Which page (from 1).
    pub page: u32,
    /// Rows per page.
    pub per_page: u32,
    /// Tenants that pass the filter, on every page.
    pub total: i64,
    /// The counts by state and lifecycle under the filter's search.
    pub counts: TenantCounts,
}

impl TenantPage {
    /// How many pages the filter fills (at least one, possibly empty).
    pub fn pages(&self) -> u32 {
        let per_page = i64::from(self.per_page.max(1));
        u32::try_from(((self.total + per_page - 1) / per_page).max(1)).unwrap_or(u32::MAX)
    }
}

/// Every tenant with what the filters test. A tenant provisioned here is a
/// `provision_tenant` row, one made by the platform a `tenants_client` row
/// alone; the lifecycle is one expression, here only.
macro_rules! listed {
    () => {
        "WITH listed AS (
             SELECT coalesce(p.schema_name, c.schema_name, l.schema_name) AS schema_name,
                    coalesce(c.name, p.tenant_name, l.tenant_name) AS name,
                    coalesce(p.state, 'external') AS state,
                    public.provision_lifecycle_of(p.state, l.state, l.failed_step,
                                                  c.schema_name IS NOT NULL, c.is_active) AS lifecycle,
                    c.id::bigint AS client_id,
                    CASE WHEN c.schema_name IS NULL THEN p.domain END AS requested_domain,
                    coalesce(p.failed_step, l.failed_step) AS failed_step,
                    coalesce(p.last_error, l.last_error) AS last_error,
                    greatest(p.updated_at, l.updated_at, c.created_on::timestamptz) AS updated_at,
                    coalesce(p.created_at, c.created_on::timestamptz, l.changed_at) AS created_at
             FROM public.provision_tenant p
             FULL JOIN public.tenants_client c ON c.schema_name = p.schema_name
             FULL JOIN public.provision_lifecycle l ON l.schema_name = coalesce(p.schema_name, c.schema_name)),
         searched AS (
             SELECT * FROM listed t
             WHERE $1::text IS NULL
                OR t.schema_name ILIKE $1 OR t.name ILIKE $1 OR t.requested_domain ILIKE $1
                OR EXISTS (SELECT 1 FROM public.tenants_domain d
                           WHERE d.tenant_id = t.client_id AND d.domain ILIKE $1))
         "
    };
}

const COUNTS_SQL: &str = concat!(
    listed!(),
    "SELECT state, lifecycle, count(*) FROM searched GROUP BY state, lifecycle ORDER BY state, lifecycle"
);

const PAGE_SQL: &str = concat!(
    listed!(),
    "SELECT page.schema_name, page.name, page.state, page.lifecycle,
            (SELECT d.domain FROM public.tenants_domain d
              WHERE d.tenant_id = page.client_id AND d.is_primary
              ORDER BY d.domain LIMIT 1) AS primary_domain,
            page.requested_domain, page.failed_step, page.last_error, page.updated_at, page.created_at
     FROM (SELECT * FROM searched
           WHERE ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR lifecycle = $3)
           ORDER BY created_at DESC, schema_name
           LIMIT $4 OFFSET $5) AS page
     ORDER BY page.created_at DESC, page.schema_name"
);

const FAILED_SQL: &str = concat!(
    listed!(),
    "SELECT schema_name FROM searched
     WHERE state = 'failed' AND ($2::text IS NULL OR lifecycle = $2)
     ORDER BY created_at DESC, schema_name"
);

const LIST_SQL: &str = concat!(
    listed!(),
    "SELECT schema_name, name, state, lifecycle,
            (SELECT d.domain FROM public.tenants_domain d
              WHERE d.tenant_id = searched.client_id AND d.is_primary
              ORDER BY d.domain LIMIT 1) AS primary_domain,
            updated_at
     FROM searched
     WHERE ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR lifecycle = $3)
     ORDER BY created_at DESC, schema_name"
);

/// Every tenant that passes `filter`, newest first: `provision list`.
pub async fn list_matching(
    pool: &PgPool,
    filter: &TenantFilter,
) -> Result<Vec<TenantListEntry>, ProvisionError> {
    Ok(sqlx::query_as(LIST_SQL)
        .bind(filter.pattern())
        .bind(filter.state)
        .bind(filter.lifecycle.map(Lifecycle::as_str))
        .fetch_all(pool)
        .await?)
}

/// The counts by state and lifecycle of the tenants `filter`'s search
/// leaves (its state and lifecycle are not applied: the counts are what
/// choosing one would give).
pub async fn tenant_counts(pool: &PgPool, filter: &TenantFilter) -> Result<TenantCounts, ProvisionError> {
    let cells = sqlx::query_as(COUNTS_SQL)
        .bind(filter.pattern())
        .fetch_all(pool)
        .await?;
    Ok(TenantCounts { cells })
}

/// Page `page` (from 1; 0 is taken as 1) of the tenants that pass `filter`,
/// `per_page` rows a page (1 to [`MAX_PER_PAGE`]).
pub async fn search_tenants(
    pool: &PgPool,
    filter: &TenantFilter,
    page: u32,
    per_page: u32,
) -> Result<TenantPage, ProvisionError> {
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    let page = page.max(1);
    let counts = tenant_counts(pool, filter).await?;
    let total = counts.matching(filter);
    let offset = i64::from(page - 1) * i64::from(per_page);
    let rows = if offset >= total {
        Vec::new()
    } else {
        sqlx::query_as(PAGE_SQL)
            .bind(filter.pattern())
            .bind(filter.state)
            .bind(filter.lifecycle.map(Lifecycle::as_str))
            .bind(i64::from(per_page))
            .bind(offset)
            .fetch_all(pool)
            .await?
    };
    Ok(TenantPage {
        rows,
        page,
        per_page,
        total,
        counts,
    })
}

/// The schema names of the failed tenants that pass `filter`, newest
/// first: what "retry every failed tenant of this list" retries. A filter
/// on another state has none.
pub async fn failed_tenants_matching(
    pool: &PgPool,
    filter: &TenantFilter,
) -> Result<Vec<String>, ProvisionError> {
    if filter.state.is_some_and(|s| s != TenantState::Failed.as_str()) {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(FAILED_SQL)
        .bind(filter.pattern())
        .bind(filter.lifecycle.map(Lifecycle::as_str))
        .fetch_all(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_parts_are_left_out_and_bad_ones_name_their_field() {
        let filter = TenantFilter::parse(Some("  "), Some(""), None).unwrap();
        assert_eq!(filter, TenantFilter::default());
        let filter = TenantFilter::parse(Some(" Νίκος "), Some("failed"), Some("failed")).unwrap();
        assert_eq!(filter.search(), Some("Νίκος"));
        assert_eq!(filter.state(), Some("failed"));
        assert_eq!(filter.lifecycle(), Some(Lifecycle::Failed));
        assert_eq!(
            TenantFilter::parse(None, Some("external"), None).unwrap().state(),
            Some("external")
        );
        assert_eq!(
            TenantFilter::parse(None, Some("done"), None).unwrap_err().field,
            "state"
        );
        assert_eq!(
            TenantFilter::parse(None, None, Some("paused")).unwrap_err().field,
            "lifecycle"
        );
        let long = "x".repeat(MAX_SEARCH_CHARS + 1);
        assert_eq!(
            TenantFilter::parse(Some(&long), None, None).unwrap_err().field,
            "search"
        );
        assert_eq!(
            TenantFilter::parse(Some("a\u{7}"), None, None).unwrap_err().field,
            "search"
        );
    }

    #[test]
    fn the_search_pattern_matches_its_own_wildcards_literally() {
        let filter = TenantFilter::parse(Some(r"50%_a\b"), None, None).unwrap();
        assert_eq!(filter.pattern().unwrap(), r"%50\%\_a\\b%");
    }

    #[test]
    fn counts_add_up_under_each_filter() {
        let counts = TenantCounts {
            cells: vec![
                ("failed".into(), "failed".into(), 3),
                ("ready".into(), "active".into(), 10),
                ("ready".into(), "gone".into(), 2),
                ("external".into(), "active".into(), 4),
            ],
        };
        assert_eq!(counts.total(), 19);
        assert_eq!(counts.in_state("ready"), 12);
        assert_eq!(counts.in_lifecycle(Lifecycle::Active), 14);
        let ready = TenantFilter::parse(None, Some("ready"), None).unwrap();
        assert_eq!(counts.matching(&ready), 12);
        assert_eq!(counts.matching(&ready.with_lifecycle(Some(Lifecycle::Gone))), 2);
        assert_eq!(counts.matching(&TenantFilter::default()), 19);
    }
}
