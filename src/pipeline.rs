//! Finding the pipeline file and the store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use spo_core::config_error::utf8_text;
use spo_core::{Pipeline, Registry, Store};

use crate::UsageError;

/// The default pipeline, embedded so that `spo-pipe run` works anywhere.
pub const EMBEDDED: &str = include_str!("../pipeline.toml");

/// The loaded pipeline with its registry and store.
pub struct Loaded {
    pub pipe: Pipeline,
    pub registry: Registry,
    pub store_dir: PathBuf,
}

impl Loaded {
    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.store_dir)
            .with_context(|| format!("opening the store at {}", self.store_dir.display()))
    }
}

/// Loads `--pipeline`, else ./pipeline.toml, else the embedded default; applies `--set`.
pub fn load(file: Option<&Path>, store: Option<&Path>, sets: &[String]) -> anyhow::Result<Loaded> {
    let registry = Registry::new(spo_stages::kinds());
    let read = |f: &Path| -> anyhow::Result<String> {
        let bytes = std::fs::read(f).map_err(|e| UsageError(format!("{}: {e}", f.display())))?;
        Ok(utf8_text(&f.display().to_string(), bytes)?)
    };
    let (name, text, dir) = match file {
        Some(f) => (
            f.display().to_string(),
            read(f)?,
            f.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None if Path::new("pipeline.toml").is_file() => (
            "pipeline.toml".to_owned(),
            read(Path::new("pipeline.toml"))?,
            PathBuf::new(),
        ),
        None => (
            "<embedded pipeline.toml>".to_owned(),
            EMBEDDED.to_owned(),
            PathBuf::new(),
        ),
    };
    let mut pipe = Pipeline::parse(&name, &text, &registry)?;
    for s in sets {
        pipe.apply_set(s, &registry)?;
    }
    let store_dir = store
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("runs"));
    Ok(Loaded {
        pipe,
        registry,
        store_dir,
    })
}
