//! How `provision` prints: one JSON document on stdout with `--json`
//! (errors included), readable text otherwise.

use chrono::{DateTime, Utc};
use provision_shared::status::{HistoryEntry, TenantListEntry, TenantStatus};
use serde::Serialize;

use crate::exit_codes::CliError;

/// Prints `value` as the single JSON document of this run.
pub(crate) fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("serializable"));
}

/// Prints an error: `{"error": {...}}` on stdout with `--json`, a line on
/// stderr otherwise.
pub(crate) fn print_error(error: &CliError, json: bool) {
    if json {
        print_json(&serde_json::json!({
            "error": {"code": error.code, "message": error.message, "field": error.field}
        }));
    } else {
        eprintln!("error: {}", error.message);
    }
}

fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// One history entry as a line (used by `status` and by `--wait`).
pub(crate) fn history_line(entry: &HistoryEntry) -> String {
    let mut line = format!(
        "{}  {:<17} {:<18} attempt {:<2} by {}",
        time(&entry.at),
        entry.step,
        entry.lifecycle_state.as_deref().unwrap_or(&entry.state),
        entry.attempt,
        entry.actor
    );
    if let Some(detail) = &entry.detail {
        line.push_str(&format!("  ({detail})"));
    }
    if let Some(error) = &entry.error {
        line.push_str(&format!("\n      error: {error}"));
    }
    line
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn count(value: Option<i64>) -> String {
    value.map_or_else(|| "- (tables not created yet)".to_owned(), |n| n.to_string())
}

/// `provision status` as text.
pub(crate) fn print_status(status: &TenantStatus) {
    if status.made_by == "public" {
        println!("The public tenant (schema public) — {}", status.name);
    } else {
        println!("Tenant {} — {}", status.schema_name, status.name);
    }
    let made = match status.made_by.as_str() {
        "provision" => "provision",
        "platform" => "the platform (by hand, the Django admin or Client.save())",
        _ => "the platform (its public schema, shared by every tenant)",
    };
    println!("  made by     {made}");
    if status.gone && status.lifecycle == "gone" {
        println!(
            "  gone        its tenants_client row was deleted by the platform; its history is kept below"
        );
    }
    print_lifecycle(status);
    let mut state = status.state.clone();
    if let Some(step) = &status.failed_step {
        state.push_str(&format!(" at step {step} (attempt {})", status.attempt));
    }
    println!("  state       {state}");
    if let Some(error) = &status.last_error {
        println!("  last error  {error}");
    }
    if status.domains.is_empty() {
        println!(
            "  domains     none (`provision fix-domain --schema-name {}` adds one)",
            status.schema_name
        );
    }
    for (i, d) in status.domains.iter().enumerate() {
        let label = if i == 0 { "domains" } else { "" };
        let primary = if d.is_primary { " (primary)" } else { "" };
        println!("  {label:<11} {}{primary}", d.domain);
    }
    println!("  active      {}", yes_no(status.is_active));
    let trial = match (status.on_trial, status.paid_until, status.days_remaining) {
        (on_trial, Some(paid_until), Some(days)) => format!(
            "{}, {days} days remaining (paid until {paid_until})",
            if on_trial == Some(true) {
                "on trial"
            } else {
                "paid"
            }
        ),
        _ => "-".to_owned(),
    };
    println!("  trial       {trial}");
    println!("  buildings   {}", count(status.buildings));
    println!("  users       {}", count(status.users));
    if let Some(demo) = &status.demo_data {
        println!("  demo data   {demo}");
    }
    match &status.migration {
        Some(_) if !status.schema_exists => println!(
            "  migrations  - (the schema does not exist{})",
            if status.lifecycle == "deleted" {
                ": the tenant is deleted"
            } else {
                "; `provision check` says how to fix it"
            }
        ),
        Some(m) if m.pending.is_empty() => println!(
            "  migrations  {} of {} (tenant migration set {}), up to date",
            m.applied, m.latest, m.set_version
        ),
        Some(m) => {
            println!(
                "  migrations  {} of {} (tenant migration set {}); lacks {}",
                m.applied,
                m.latest,
                m.set_version,
                m.pending.join(", ")
            );
            if !status.schema_exists {
                println!("              the schema does not exist (`provision check` says how to fix it)");
            }
        }
        None => println!(
            "  migrations  - (the public schema holds the shared apps' tables; \
             `provision migrate --shared` applies this project's own)"
        ),
    }
    if let Some(job) = &status.job_id {
        println!("  last job    {job}");
    }
    if !status.history.is_empty() {
        println!("History (oldest first)");
        for entry in &status.history {
            println!("  {}", history_line(entry));
        }
    }
}

/// The lifecycle line, and what the lifecycle row says of it.
fn print_lifecycle(status: &TenantStatus) {
    let mut line = status.lifecycle.clone();
    if let Some(d) = &status.lifecycle_detail {
        let by = format!("by {} at {}", d.changed_by, time(&d.changed_at));
        match status.lifecycle.as_str() {
            "suspended" => line.push_str(&format!(
                " ({}, {by})",
                d.reason.as_deref().unwrap_or("no reason given")
            )),
            "deletion_scheduled" => line.push_str(&format!(
                ": due {} ({}, {by})",
                d.delete_after.as_ref().map_or_else(|| "-".into(), time),
                if d.with_backup == Some(false) {
                    "without a backup"
                } else {
                    "with a backup"
                }
            )),
            "deleted" => line.push_str(&format!(
                " at {}",
                d.deleted_at.as_ref().map_or_else(|| "-".into(), time)
            )),
            "deletion_failed" | "restore_failed" | "deleting" | "restoring" => {
                line.push_str(&format!(" (step state {}, {by})", d.state));
                if let Some(step) = &d.failed_step {
                    line.push_str(&format!("; failed at {step}"));
                }
            }
            _ => {}
        }
    }
    println!("  lifecycle   {line}");
    if let Some(d) = &status.lifecycle_detail {
        if let Some(path) = &d.backup_path {
            let label = match status.lifecycle.as_str() {
                "deleted" | "deleting" | "deletion_failed" | "restoring" | "restore_failed" => "backup",
                _ => "last backup",
            };
            println!(
                "  {label:<11} {path} ({} bytes, sha256 {})",
                d.backup_bytes.map_or_else(|| "?".into(), |b| b.to_string()),
                d.backup_sha256.as_deref().unwrap_or("not verified yet")
            );
        }
        if let (Some(error), true) = (&d.last_error, d.failed_step.is_some()) {
            println!("  error       {error}");
        }
    }
}

/// `provision list` as aligned columns.
pub(crate) fn print_list(entries: &[TenantListEntry]) {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.schema_name.clone(),
                e.name.clone(),
                e.state.clone(),
                e.lifecycle.clone(),
                e.primary_domain.clone().unwrap_or_else(|| "-".into()),
                e.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    let header = [
        "SCHEMA",
        "NAME",
        "STATE",
        "LIFECYCLE",
        "PRIMARY DOMAIN",
        "UPDATED (UTC)",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        println!("(no tenants)");
    }
}
