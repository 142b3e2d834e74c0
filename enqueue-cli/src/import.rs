//! `provision import-migrations`: the platform's tenant migrations, read
//! from its own Django and stored as the tenant migration set.

use std::process::ExitCode;

use provision_shared::migration_set::import::{ImportReport, export_from_platform, store};
use provision_shared::migration_set::{ExportDocument, MigrationSet};
use serde_json::json;

use crate::ImportArgs;
use crate::commands::{Ctx, actor};
use crate::exit_codes::CliError;
use crate::output::print_json;

pub(crate) async fn import_migrations(ctx: &Ctx, args: ImportArgs) -> Result<ExitCode, CliError> {
    let (document, source) = match (&args.from_file, &args.manage_py) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file).map_err(|e| {
                CliError::invalid("from_file", format!("cannot read {}: {e}", file.display()))
            })?;
            let document: ExportDocument = serde_json::from_str(&text).map_err(|e| {
                CliError::invalid(
                    "from_file",
                    format!("{} is not an export document: {e}", file.display()),
                )
            })?;
            (document, file.display().to_string())
        }
        (None, Some(manage_py)) => {
            let document = export_from_platform(manage_py, &args.python)
                .await
                .map_err(|e| ctx.error(e))?;
            (document, manage_py.display().to_string())
        }
        (None, None) => {
            return Err(CliError::invalid(
                "manage_py",
                "--manage-py names the platform's manage.py",
            ));
        }
    };
    let set = MigrationSet::from_export(&document, 0).map_err(|e| ctx.error(e))?;
    let pool = ctx.pool().await?;
    let report = store(&pool, &set, &source, &actor(), args.dry_run)
        .await
        .map_err(|e| ctx.error(e))?;
    if args.json {
        print_json(&json!({
            "migrations": report.migrations,
            "new": report.new.len(),
            "new_migrations": report.new,
            "python": report.python,
            "version": report.version,
            "checksum": report.checksum,
            "unchanged": report.unchanged,
            "stored": report.stored,
            "dry_run": args.dry_run,
            "django": document.django,
            "django_tenants": document.django_tenants,
        }));
    } else {
        print_report(&report, args.dry_run);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &ImportReport, dry_run: bool) {
    println!(
        "{} migrations in the platform's plan, {} new.",
        report.migrations,
        report.new.len()
    );
    for key in &report.new {
        println!("  new: {key}");
    }
    for python in &report.python {
        println!(
            "  runs Python: {} ({}); a new tenant gets its effect with the rows Django leaves, \
             an existing schema that lacks it is refused by `migrate`",
            python.migration,
            python.operations.join("; ")
        );
    }
    match (report.unchanged, dry_run) {
        (true, _) => println!(
            "Unchanged: tenant migration set {} is this plan already.",
            report.version
        ),
        (false, true) => println!(
            "Dry run: nothing stored; it would be tenant migration set {}.",
            report.version
        ),
        (false, false) => println!(
            "Stored as tenant migration set {}; running workers use it from their next job.",
            report.version
        ),
    }
}
