//! Embeds `migrations/public/` into the library, so both binaries carry the
//! exact SQL they apply: a new file is picked up by the next build. (The
//! tenant migration set built in, `migrations/tenant/platform-model.json`,
//! is an `include_str!` of `migration_set`.)

use std::{env, fmt::Write as _, fs, path::Path};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::new();
    println!("cargo:rerun-if-changed={}", root.join("tenant").display());
    for (set, constant) in [("public", "PUBLIC")] {
        let dir = root.join(set);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<(i32, String, String)> = Vec::new();
        for entry in fs::read_dir(&dir).expect("migrations folder") {
            let path = entry.expect("migrations entry").path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(stem) = file.strip_suffix(".sql") else {
                continue;
            };
            let Some((number, name)) = stem.split_once('_') else {
                continue;
            };
            let Ok(version) = number.parse::<i32>() else {
                continue;
            };
            assert!(version > 0, "migration {file}: numbers start at 1");
            files.push((
                version,
                name.to_owned(),
                path.canonicalize().unwrap().display().to_string(),
            ));
        }
        files.sort();
        for pair in files.windows(2) {
            assert_ne!(
                pair[0].0, pair[1].0,
                "two {set} migrations numbered {}",
                pair[0].0
            );
        }
        writeln!(out, "/// The `migrations/{set}/` files, in order.").unwrap();
        writeln!(out, "pub static {constant}_MIGRATIONS: &[EmbeddedMigration] = &[").unwrap();
        for (version, name, path) in &files {
            writeln!(
                out,
                "    EmbeddedMigration {{ version: {version}, name: {name:?}, sql: include_str!({path:?}) }},"
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
        if set != "public" {
            continue;
        }
        let bookkeeping = dir
            .join("bookkeeping.sql")
            .canonicalize()
            .expect("bookkeeping.sql");
        writeln!(out, "/// `migrations/{set}/bookkeeping.sql`.").unwrap();
        writeln!(
            out,
            "pub static {constant}_BOOKKEEPING: &str = include_str!({:?});",
            bookkeeping.display().to_string()
        )
        .unwrap();
    }
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("embedded_migrations.rs");
    fs::write(dest, out).unwrap();
}
