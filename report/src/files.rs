//! A committed cell's files as the report sees them: read back only when their bytes still
//! match the manifest, and sorted into the shapes it draws, by their columns.

use std::path::Path;

use sha2::{Digest, Sha256};
use spo_core::{FileEntry, FileInfo, Manifest};

use crate::columns::{self, Columns};

/// The first column of a training log: one row per step or round.
pub const CURVE_AXES: [&str; 3] = ["step", "round", "epoch"];

/// What the report makes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A PNG, shown as it is.
    Png,
    /// A table with an `image` column of encoded images.
    Images,
    /// A log whose first column is a step, round or epoch (at least one row): one curve per
    /// numeric column.
    Curve,
    /// One row per image (`prompt_index` and `seed` columns): per-image scores.
    PerImage,
    Other,
}

/// The shape of `f`, from its manifest entry alone.
pub fn shape(f: &FileEntry) -> Shape {
    match &f.info {
        Some(FileInfo::Png { .. }) => Shape::Png,
        Some(FileInfo::Parquet { rows, columns }) => {
            let name = |c: &String| c.split(": ").next().unwrap_or_default().to_owned();
            let names: Vec<String> = columns.iter().map(name).collect();
            let has = |n: &str| names.iter().any(|c| c == n);
            if columns
                .iter()
                .any(|c| c == "image: Binary" || c == "image: LargeBinary")
            {
                Shape::Images
            } else if *rows > 0
                && names
                    .first()
                    .is_some_and(|c| CURVE_AXES.contains(&c.as_str()))
            {
                Shape::Curve
            } else if has("prompt_index") && has("seed") {
                Shape::PerImage
            } else {
                Shape::Other
            }
        }
        _ => Shape::Other,
    }
}

/// The files of `m` with shape `s`.
pub fn with_shape(m: &Manifest, s: Shape) -> impl Iterator<Item = &FileEntry> {
    m.files.iter().filter(move |f| shape(f) == s)
}

/// Reads `f` of the cell in `dir`, refusing bytes that no longer match the manifest.
pub fn read_checked(dir: &Path, f: &FileEntry) -> Result<Vec<u8>, String> {
    let path = dir.join(&f.path);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if hex::encode(Sha256::digest(&bytes)) != f.sha256 {
        return Err(format!(
            "{}: its bytes do not match the manifest's digest",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads a Parquet file of the cell in `dir` (checked), at most `limit` rows.
pub fn read_table(
    dir: &Path,
    f: &FileEntry,
    limit: usize,
    skip_bytes: bool,
) -> Result<Columns, String> {
    let bytes = read_checked(dir, f)?;
    columns::read(bytes.into(), limit, skip_bytes)
        .map_err(|e| format!("{}: {e}", dir.join(&f.path).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parquet(rows: u64, cols: &[&str]) -> FileEntry {
        FileEntry {
            path: "t.parquet".into(),
            sha256: String::new(),
            bytes: 0,
            info: Some(FileInfo::Parquet {
                rows,
                columns: cols.iter().map(|c| (*c).to_owned()).collect(),
            }),
        }
    }

    #[test]
    fn files_are_sorted_by_their_columns() {
        assert_eq!(
            shape(&parquet(4, &["prompt: Utf8", "image: Binary"])),
            Shape::Images
        );
        assert_eq!(
            shape(&parquet(9, &["step: UInt64", "loss: Float64"])),
            Shape::Curve
        );
        assert_eq!(
            shape(&parquet(1, &["round: UInt64", "loss: Float64"])),
            Shape::Curve
        );
        assert_eq!(
            shape(&parquet(0, &["round: UInt64", "loss: Float64"])),
            Shape::Other
        );
        assert_eq!(
            shape(&parquet(
                9,
                &["prompt_index: Int64", "seed: Int64", "pickscore: Float64"]
            )),
            Shape::PerImage
        );
        assert_eq!(
            shape(&parquet(9, &["loss: Float64", "step: UInt64"])),
            Shape::Other
        );
    }

    #[test]
    fn bytes_that_changed_since_the_commit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"now").unwrap();
        let f = FileEntry {
            path: "a.png".into(),
            sha256: hex::encode(Sha256::digest(b"then")),
            bytes: 4,
            info: None,
        };
        let e = read_checked(dir.path(), &f).unwrap_err();
        assert!(e.contains("a.png") && e.contains("digest"), "{e}");
    }
}
