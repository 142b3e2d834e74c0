//! A tenant's backup file: `pg_dump` in its custom format of the tenant's
//! schema and of the staging schema that holds its public rows, checked
//! with `pg_restore -l`, fingerprinted with SHA-256, and read back with
//! `pg_restore`.
//!
//! The tools get the database as a URL without its password on their
//! command line, which other users of the machine can read; the password,
//! if any, goes in their environment (`PGPASSWORD`), which they cannot.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::ProvisionError;

/// Where `pg_dump` and `pg_restore` connect, split for their command line
/// and their environment.
#[derive(Clone)]
pub struct PgTarget {
    /// The URL without its password.
    url: String,
    /// The password, percent-decoded.
    password: Option<String>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PgTarget {
    /// From a `postgres://user:password@host:port/db?params` URL.
    pub fn from_url(url: &str) -> Self {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self {
                url: url.to_owned(),
                password: None,
            };
        };
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            return Self {
                url: url.to_owned(),
                password: None,
            };
        };
        match userinfo.split_once(':') {
            Some((user, password)) => Self {
                url: format!("{scheme}://{user}@{host}{path}"),
                password: Some(percent_decode(password)),
            },
            None => Self {
                url: url.to_owned(),
                password: None,
            },
        }
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.env_remove("PGPASSWORD");
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A tool that ran and said no: permanent when what it read or wrote is at
/// fault, transient when the server could not be reached.
fn tool_failed(tool: &str, stderr: &[u8]) -> ProvisionError {
    let said = String::from_utf8_lossy(stderr).trim().to_owned();
    let unreachable = [
        "could not connect",
        "connection to server",
        "Connection refused",
        "the database system is",
    ]
    .iter()
    .any(|needle| said.contains(needle));
    let message = format!("{tool} failed: {said}");
    if unreachable {
        ProvisionError::BackupUnreachable(message)
    } else {
        ProvisionError::Backup(message)
    }
}

/// A program this needs could not be started (not installed, say).
fn not_started(tool: &str, e: &std::io::Error) -> ProvisionError {
    ProvisionError::Backup(format!(
        "cannot run {tool}: {e} (install PostgreSQL's client programs, version at least the server's)"
    ))
}

/// Writes `schemas` of the database to `file` in `pg_dump`'s custom
/// format. The dump goes to a file of its own beside `file` first, made
/// durable, then renamed over it: `file` is either a whole dump or absent.
pub async fn dump_schemas(target: &PgTarget, schemas: &[&str], file: &Path) -> Result<u64, ProvisionError> {
    let dir = file
        .parent()
        .ok_or_else(|| ProvisionError::Backup(format!("{} has no folder", file.display())))?;
    let partial = partial_path(file);
    // Written by this process first, so an unwritable folder is reported
    // as such rather than in pg_dump's words.
    tokio::fs::write(&partial, b"").await.map_err(|e| {
        ProvisionError::Backup(format!(
            "cannot write in the backup folder {}: {e}",
            dir.display()
        ))
    })?;
    let mut command = target.command("pg_dump");
    command
        .arg("--format=custom")
        .arg("--no-password")
        .arg("--file")
        .arg(&partial);
    for schema in schemas {
        // `--schema` takes a pattern; a validated name has no pattern
        // characters but `_`, which is literal here once quoted.
        command.arg(format!("--schema=\"{schema}\""));
    }
    command.arg("--dbname").arg(&target.url);
    let output = command.output().await.map_err(|e| not_started("pg_dump", &e))?;
    if !output.status.success() {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(tool_failed("pg_dump", &output.stderr));
    }
    let durable = async {
        tokio::fs::File::open(&partial).await?.sync_all().await?;
        tokio::fs::rename(&partial, file).await?;
        tokio::fs::File::open(dir).await?.sync_all().await?;
        tokio::fs::metadata(file).await.map(|m| m.len())
    };
    let bytes = durable
        .await
        .map_err(|e| ProvisionError::Backup(format!("cannot keep the backup {}: {e}", file.display())))?;
    remove_partials(file).await;
    Ok(bytes)
}

/// The name a dump is written under until it is whole: unique, so a dump
/// left running by a worker that was killed cannot write over this one.
fn partial_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.partial-{}", ulid::Ulid::generate()))
}

/// Removes what dumps of `file` that never finished left behind.
async fn remove_partials(file: &Path) {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// The table of contents of a custom-format dump, as `pg_restore -l`
/// lists it: proof that `pg_restore` can read the file.
pub async fn list_contents(file: &Path) -> Result<String, ProvisionError> {
    let output = tokio::process::Command::new("pg_restore")
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| not_started("pg_restore", &e))?;
    if !output.status.success() {
        return Err(tool_failed("pg_restore --list", &output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether a table of contents holds the schema `schema`.
pub fn holds_schema(contents: &str, schema: &str) -> bool {
    let entry = format!(" SCHEMA - {schema} ");
    entries(contents).any(|l| l.contains(&entry))
}

/// Whether a table of contents holds the data of `schema`.`table`.
pub fn holds_table_data(contents: &str, schema: &str, table: &str) -> bool {
    let entry = format!(" TABLE DATA {schema} {table} ");
    entries(contents).any(|l| l.contains(&entry))
}

fn entries(contents: &str) -> impl Iterator<Item = &str> {
    contents.lines().filter(|l| !l.starts_with(';'))
}

/// Restores a whole dump into the database in one transaction: all of it,
/// or nothing.
pub async fn restore(target: &PgTarget, file: &Path) -> Result<(), ProvisionError> {
    let output = target
        .command("pg_restore")
        .arg("--single-transaction")
        .arg("--exit-on-error")
        .arg("--no-password")
        .arg("--dbname")
        .arg(&target.url)
        .arg(file)
        .output()
        .await
        .map_err(|e| not_started("pg_restore", &e))?;
    if !output.status.success() {
        return Err(tool_failed("pg_restore", &output.stderr));
    }
    Ok(())
}

/// The file's SHA-256 (lower-case hex) and size in bytes.
pub async fn fingerprint(file: &Path) -> Result<(String, u64), ProvisionError> {
    let read = async {
        let mut f = tokio::fs::File::open(file).await?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = f.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            hasher.update(&buffer[..n]);
        }
        Ok::<_, std::io::Error>((hasher.finalize(), bytes))
    };
    let (digest, bytes) = read
        .await
        .map_err(|e| ProvisionError::Backup(format!("cannot read the backup {}: {e}", file.display())))?;
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_for_the_environment() {
        let t = PgTarget::from_url("postgres://app:s%3Acret@db:5432/concierge?sslmode=require");
        assert_eq!(t.url, "postgres://app@db:5432/concierge?sslmode=require");
        assert_eq!(t.password.as_deref(), Some("s:cret"));
        assert!(!format!("{t:?}").contains("cret"));
        let t = PgTarget::from_url("postgres://postgres@127.0.0.1:5432/concierge");
        assert_eq!(t.url, "postgres://postgres@127.0.0.1:5432/concierge");
        assert_eq!(t.password, None);
    }

    #[test]
    fn a_table_of_contents_is_read_by_its_entries() {
        let toc = ";\n; Archive created at 2026-12-01\n;\n\
                   5; 2615 16385 SCHEMA - theo postgres\n\
                   3380; 0 16390 TABLE DATA theo django_migrations postgres\n";
        assert!(holds_schema(toc, "theo"));
        assert!(!holds_schema(toc, "the"));
        assert!(holds_table_data(toc, "theo", "django_migrations"));
        assert!(!holds_table_data(toc, "theo", "tenants_client"));
        assert!(!holds_schema(";  5; 2615 16385 SCHEMA - theo postgres", "theo"));
    }
}
