//! The one way this project makes SQL text at run time: a [`Script`] of
//! static SQL, quoted literals, validated identifiers, reviewed migration
//! SQL and typed markers, sent to PostgreSQL as one message (the simple
//! query protocol). A provisioning, or a schema's migration, then costs one
//! round trip instead of one per statement.
//!
//! Nothing else builds SQL text: every other statement is a `&'static str`
//! with bind parameters. A value can only enter a script through
//! [`Script::text`] (or the number and boolean methods), an identifier only
//! through [`Ident`], which is validated and quoted when it is made.
//!
//! A script reports values through [`Marker`]s: a marker is a `SELECT` whose
//! single column carries a name made of a random tag and the marker's
//! position, so the rows of migration SQL in the same message can never be
//! taken for it. A script holds its own `BEGIN`/`COMMIT`: when a statement
//! fails, the server skips the rest of the message, what committed before
//! it stays, and [`BuiltScript::run`] rolls back the open transaction. The
//! markers reached before the error are still reported.

use std::fmt::Write as _;
use std::marker::PhantomData;

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row};

use crate::error::InvalidInput;
use crate::validate;

/// A quoted SQL identifier, validated when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    name: String,
}

impl Ident {
    /// A tenant schema: the contract's rule for schema names
    /// ([`validate::schema_name`]).
    pub fn tenant_schema(name: &str) -> Result<Self, InvalidInput> {
        validate::schema_name(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// A tenant schema that may have been made by the platform:
    /// django-tenants' rule ([`validate::existing_schema_name`]), `public`
    /// included.
    pub fn existing_schema(name: &str) -> Result<Self, InvalidInput> {
        validate::existing_schema_name(name)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// A table or column as the catalog names it, made by Django: lower-case
    /// letters, digits and `_`, starting with a letter or `_`.
    pub fn catalog_name(name: &str) -> Result<Self, InvalidInput> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(InvalidInput {
                field: "column",
                rule: format!("{name:?} is not a column name of lower-case letters, digits and _"),
            });
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// A database, as the operator named it in `DATABASE_URL`: 1 to 63
    /// bytes, no NUL.
    pub fn database(name: &str) -> Result<Self, InvalidInput> {
        if name.is_empty() || name.len() > 63 || name.contains('\0') {
            return Err(InvalidInput {
                field: "database_url",
                rule: "the database name must be 1 to 63 bytes without NUL".into(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
        })
    }

    /// The name, unquoted.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn write_quoted(&self, out: &mut String) {
        out.push('"');
        for c in self.name.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// SQL text that was reviewed where it came from rather than built here: a
/// migration file compiled into the binary, or a tenant migration of the
/// platform's, read from its own Django by `import-migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedSql(String);

impl ReviewedSql {
    /// `text` as reviewed SQL. Only the migration sets make these.
    pub(crate) fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A value a script reports: the marker statement at its position, whose
/// single column decodes as `T`.
#[derive(Debug)]
pub struct Marker<T> {
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Marker<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Marker<T> {}

/// Statements for one message, built from typed pieces.
#[derive(Debug)]
pub struct Script {
    text: String,
    tag: String,
    markers: usize,
    error: Option<InvalidInput>,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// An empty script with a tag of its own for its markers.
    pub fn new() -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self {
            text: String::new(),
            tag: format!("pvm{:016x}_", u64::from_le_bytes(bytes)),
            markers: 0,
            error: None,
        }
    }

    /// Static SQL.
    pub fn sql(&mut self, text: &'static str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// `value` as a string literal: `it's` → `'it''s'`. A backslash makes it
    /// an `E''` literal with the backslash doubled, so it means the same
    /// whatever `standard_conforming_strings` says. NUL, which no PostgreSQL
    /// text can hold and which would end the message early, is refused when
    /// the script is finished.
    pub fn text(&mut self, value: &str) -> &mut Self {
        if value.contains('\0') {
            self.error.get_or_insert(InvalidInput {
                field: "value",
                rule: "must not contain the NUL character".into(),
            });
            return self;
        }
        if value.contains('\\') {
            self.text.push('E');
        }
        self.text.push('\'');
        for c in value.chars() {
            match c {
                '\'' => self.text.push_str("''"),
                '\\' => self.text.push_str("\\\\"),
                c => self.text.push(c),
            }
        }
        self.text.push('\'');
        self
    }

    /// `value` as a literal, or `NULL`.
    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.sql("NULL"),
        }
    }

    /// A number.
    pub fn int(&mut self, value: i64) -> &mut Self {
        write!(self.text, "{value}").expect("writing to a String");
        self
    }

    /// `true` or `false`.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.sql(if value { "true" } else { "false" })
    }

    /// A quoted identifier.
    pub fn ident(&mut self, ident: &Ident) -> &mut Self {
        ident.write_quoted(&mut self.text);
        self
    }

    /// Reviewed SQL, ended by a newline and a semicolon, so a text that ends
    /// in a `--` comment cannot swallow what follows.
    pub fn reviewed(&mut self, sql: &ReviewedSql) -> &mut Self {
        self.text.push_str(sql.0.trim_end());
        self.text.push_str("\n;\n");
        self
    }

    /// `items`, each written by `write`, with `separator` between them.
    pub fn join<I>(
        &mut self,
        items: I,
        separator: &'static str,
        mut write: impl FnMut(&mut Self, I::Item),
    ) -> &mut Self
    where
        I: IntoIterator,
    {
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.sql(separator);
            }
            write(self, item);
        }
        self
    }

    /// A marker: `SELECT <expression> AS <marker>;`, the expression written
    /// by `expression`. Its value is read from the output by position.
    pub fn marker<T>(&mut self, expression: impl FnOnce(&mut Self)) -> Marker<T> {
        self.sql("SELECT ");
        expression(self);
        let index = self.markers;
        self.markers += 1;
        writeln!(self.text, " AS \"{}{index}\";", self.tag).expect("writing to a String");
        Marker {
            index,
            _type: PhantomData,
        }
    }

    /// A marker with more columns after its own: `SELECT <expression> AS
    /// <marker>, <columns>;`. The whole row is read with
    /// [`ScriptOutput::row`].
    pub fn marker_with_columns<T>(
        &mut self,
        expression: impl FnOnce(&mut Self),
        columns: impl FnOnce(&mut Self),
    ) -> Marker<T> {
        self.sql("SELECT ");
        expression(self);
        let index = self.markers;
        self.markers += 1;
        write!(self.text, " AS \"{}{index}\", ", self.tag).expect("writing to a String");
        columns(self);
        self.sql(";\n");
        Marker {
            index,
            _type: PhantomData,
        }
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The script, ready to send, or the first value that could not go in.
    pub fn finish(self) -> Result<BuiltScript, InvalidInput> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(BuiltScript {
                text: self.text,
                tag: self.tag,
                markers: self.markers,
            }),
        }
    }
}

/// A finished script.
#[derive(Debug)]
pub struct BuiltScript {
    text: String,
    tag: String,
    markers: usize,
}

/// What a script reported: the row of each marker it reached.
#[derive(Debug)]
pub struct ScriptOutput {
    rows: Vec<Option<PgRow>>,
}

impl ScriptOutput {
    /// Whether the script got as far as `marker`.
    pub fn reached<T>(&self, marker: Marker<T>) -> bool {
        self.rows.get(marker.index).is_some_and(Option::is_some)
    }

    /// The whole row of `marker`, `None` if the script stopped before it.
    pub fn row<T>(&self, marker: Marker<T>) -> Option<&PgRow> {
        self.rows.get(marker.index)?.as_ref()
    }

    /// The value of `marker`, `None` if the script stopped before it.
    pub fn get<T>(&self, marker: Marker<T>) -> Option<Result<T, sqlx::Error>>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let row = self.rows.get(marker.index)?.as_ref()?;
        Some(row.try_get::<T, _>(0))
    }
}

/// A script that failed part-way: the markers it reached, and the error.
#[derive(Debug)]
pub struct ScriptFailure {
    /// Markers reached before the failing statement.
    pub output: ScriptOutput,
    /// What the server (or the connection) said.
    pub error: sqlx::Error,
}

impl BuiltScript {
    /// The SQL text, for tests and the benchmark's lower bound.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Sends the script as one message and collects its markers. On an
    /// error, rolls back the transaction the failing statement was in
    /// (statements committed before it stay committed).
    pub async fn run(self, conn: &mut PgConnection) -> Result<ScriptOutput, ScriptFailure> {
        let mut output = ScriptOutput {
            rows: (0..self.markers).map(|_| None).collect(),
        };
        let error = {
            let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(self.text)).fetch(&mut *conn);
            loop {
                match stream.try_next().await {
                    Ok(Some(row)) => {
                        let index = row
                            .columns()
                            .first()
                            .and_then(|c| sqlx::Column::name(c).strip_prefix(self.tag.as_str()))
                            .and_then(|k| k.parse::<usize>().ok());
                        if let Some(slot) = index.and_then(|k| output.rows.get_mut(k)) {
                            *slot = Some(row);
                        }
                    }
                    Ok(None) => return Ok(output),
                    Err(error) => break error,
                }
            }
        };
        // The server left the session in the failed transaction: end it. If
        // the connection itself is gone, this fails too, and the pool's
        // check before its next use discards it.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        Err(ScriptFailure { output, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(build: impl FnOnce(&mut Script)) -> String {
        let mut script = Script::new();
        build(&mut script);
        script.finish().expect("valid").text
    }

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(
            text_of(|s| {
                s.text("theo");
            }),
            "'theo'"
        );
        assert_eq!(
            text_of(|s| {
                s.text("it's");
            }),
            "'it''s'"
        );
        assert_eq!(
            text_of(|s| {
                s.text("Κτίριο");
            }),
            "'Κτίριο'"
        );
        assert_eq!(
            text_of(|s| {
                s.text(r"a\'b");
            }),
            r"E'a\\''b'"
        );
        let mut script = Script::new();
        script.text("a\0b");
        assert_eq!(script.finish().unwrap_err().field, "value");
    }

    #[test]
    fn identifiers_are_validated_and_quoted() {
        let theo = Ident::tenant_schema("theo").unwrap();
        assert_eq!(
            text_of(|s| {
                s.ident(&theo);
            }),
            "\"theo\""
        );
        assert!(Ident::tenant_schema("theo\"; DROP SCHEMA public; --").is_err());
        let odd = Ident::database("a\"b").unwrap();
        assert_eq!(
            text_of(|s| {
                s.ident(&odd);
            }),
            "\"a\"\"b\""
        );
        assert!(Ident::database("").is_err());
    }

    /// Every `.rs` file of the workspace's crates (tests aside) but this one.
    fn sources() -> Vec<(std::path::PathBuf, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        let mut dirs: Vec<std::path::PathBuf> = ["shared", "queue", "worker", "enqueue-cli", "bench"]
            .iter()
            .map(|c| root.join(c).join("src"))
            .collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("source folder").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("shared/src/sql.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("source file");
                    found.push((path, text));
                }
            }
        }
        found
    }

    #[test]
    fn no_other_source_file_makes_sql_text() {
        let sources = sources();
        assert!(sources.len() > 20, "the sources were not found");
        for (path, text) in sources {
            assert!(
                !text.contains("AssertSqlSafe"),
                "{}: SQL text made outside sql.rs",
                path.display()
            );
            for (i, _) in text.match_indices("raw_sql(") {
                assert!(
                    text[i + "raw_sql(".len()..].starts_with('"'),
                    "{}: raw_sql of text that is not a literal",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn markers_are_named_by_the_script_tag_and_their_position() {
        let mut script = Script::new();
        let first: Marker<i32> = script.marker(|s| {
            s.int(1);
        });
        let second: Marker<String> = script.marker(|s| {
            s.text("x");
        });
        let built = script.finish().unwrap();
        assert_eq!(first.index, 0);
        assert_eq!(second.index, 1);
        assert!(built.text.contains(&format!(" AS \"{}0\";", built.tag)));
        assert!(built.text.contains(&format!(" AS \"{}1\";", built.tag)));
        assert_ne!(Script::new().tag, Script::new().tag);
    }
}
