//! The contract between the orchestrator and the code that does the work.
//!
//! A [`StageKind`] declares its typed params and a code version, and runs one cell at a time
//! through a [`StageContext`]: it reads its params and its inputs (the committed outputs of the
//! stages it `needs`), writes artifacts into a private staging directory through hashing
//! writers, may checkpoint into a scratch directory that survives a kill, and reports metrics.
//! The orchestrator does the rest: keys, caching, atomic commit, locking, the run index.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::cores::CoreBudget;
use crate::manifest::Manifest;
use crate::param::{ParamError, ParamSpec, Params};

/// A kind of stage (`kind = "..."` in pipeline.toml).
pub trait StageKind: Send + Sync {
    /// The name used as `kind = "..."`.
    fn name(&self) -> &'static str;
    /// The code version: bump it whenever the same params and inputs would give other bytes.
    /// It is part of every key, so a bump reruns every cell of this kind.
    fn version(&self) -> u32;
    /// One line for `spo-pipe kinds` and error messages.
    fn summary(&self) -> &'static str;
    /// The typed params this kind accepts.
    fn params(&self) -> Vec<ParamSpec>;
    /// Whether the pipeline's seeds fan this kind out (one cell per seed).
    fn seeded(&self) -> bool {
        false
    }
    /// A digest of anything outside the store that this cell's output depends on (a script
    /// file, say), so that a change to it changes the key. Called on every plan, so keep it cheap.
    fn external_digest(&self, _params: &Params) -> Result<Option<String>, StageError> {
        Ok(None)
    }
    /// Computes one cell. Everything written through `cx` is committed atomically on `Ok`;
    /// on `Err` (or a kill) nothing is, and the scratch directory is kept for a resume.
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError>;
}

/// Why a stage cell failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error("input `{need}`: {message}")]
    Input { need: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// A checkpoint in the scratch directory cannot be read: the executor moves the scratch
    /// directory into `runs/quarantine/` and runs the cell once more from the start.
    #[error("{}: unreadable checkpoint: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("{0}")]
    Failed(String),
    /// The remote cache could not be used (this stops the run).
    #[error("remote cache: {0}")]
    Remote(crate::remote::RemoteError),
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    /// Wraps any error (a model's, a decoder's) as a stage failure.
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StageError::Other(Box::new(e))
    }
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
    /// A param value the stage cannot take, found while it runs.
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        StageError::Param(crate::param::ParamError {
            name: name.into(),
            message: message.into(),
        })
    }
}

/// A committed upstream cell, as seen by a stage that needs it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The upstream stage's name in pipeline.toml.
    pub stage: String,
    /// The upstream stage's kind.
    pub kind: String,
    /// The committed directory `runs/store/<key>/`; read-only.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Input {
    /// Path of one of the input's files, checked to exist in its manifest.
    pub fn file(&self, rel: &str) -> Result<PathBuf, StageError> {
        if self.manifest.files.iter().any(|f| f.path == rel) {
            Ok(self.dir.join(rel))
        } else {
            Err(StageError::Input {
                need: self.stage.clone(),
                message: format!(
                    "has no file `{rel}` (it has: {})",
                    self.manifest
                        .files
                        .iter()
                        .map(|f| f.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
    /// A metric the upstream cell recorded.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.manifest.metrics.get(name).copied()
    }
}

/// A file digest recorded while the stage wrote it.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What a running stage cell sees of the world.
pub struct StageContext {
    pub(crate) stage: String,
    pub(crate) params: Params,
    pub(crate) seed: Option<u64>,
    pub(crate) inputs: Vec<Input>,
    pub(crate) out_dir: PathBuf,
    pub(crate) scratch_dir: PathBuf,
    /// A handle on the cell's lock (none outside a store).
    pub(crate) lock: Option<File>,
    pub(crate) metrics: std::collections::BTreeMap<String, f64>,
    pub(crate) written: Vec<Written>,
    pub(crate) progress: MultiProgress,
    pub(crate) cores: Arc<CoreBudget>,
}

impl StageContext {
    /// A context outside any store: for using a stage kind as a library and in tests.
    pub fn detached(
        stage: &str,
        params: Params,
        seed: Option<u64>,
        inputs: Vec<Input>,
        out_dir: PathBuf,
        scratch_dir: PathBuf,
    ) -> Self {
        StageContext {
            stage: stage.to_owned(),
            params,
            seed,
            inputs,
            out_dir,
            scratch_dir,
            lock: None,
            metrics: Default::default(),
            written: Vec::new(),
            progress: MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
            cores: Arc::new(CoreBudget::new(1)),
        }
    }
    /// Threads this cell may use now: its fair share of the run's `--jobs` cores, which grows as
    /// the cells beside it finish. Ask again at each step; a stage's results must not depend on
    /// the answer.
    pub fn threads(&self) -> usize {
        self.cores.share()
    }
    /// The stage's name in pipeline.toml.
    pub fn stage(&self) -> &str {
        &self.stage
    }
    pub fn params(&self) -> &Params {
        &self.params
    }
    /// The seed of this cell, for kinds that are [`StageKind::seeded`].
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }
    /// All inputs, in the order of `needs`.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }
    /// The input from the upstream stage named `need`.
    pub fn input(&self, need: &str) -> Result<&Input, StageError> {
        self.inputs
            .iter()
            .find(|i| i.stage == need)
            .ok_or_else(|| StageError::Input {
                need: need.into(),
                message: "is not among this stage's needs".into(),
            })
    }
    /// The one input of kind `kind`; an error if there is none or several.
    pub fn input_of_kind(&self, kind: &str) -> Result<&Input, StageError> {
        self.optional_input_of_kind(kind)?
            .ok_or_else(|| StageError::Input {
                need: kind.into(),
                message: format!(
                    "stage `{}` needs a stage of kind `{kind}`; add one to its `needs`",
                    self.stage
                ),
            })
    }
    /// The input of kind `kind` if the stage has one; an error only if it has several.
    pub fn optional_input_of_kind(&self, kind: &str) -> Result<Option<&Input>, StageError> {
        let mut it = self.inputs.iter().filter(|i| i.kind == kind);
        match (it.next(), it.next()) {
            (Some(a), Some(b)) => Err(StageError::Input {
                need: kind.into(),
                message: format!(
                    "ambiguous: both `{}` and `{}` are of kind `{kind}`",
                    a.stage, b.stage
                ),
            }),
            (first, _) => Ok(first),
        }
    }
    /// The private staging directory; everything here is committed on success.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }
    /// A checkpoint directory tied to this cell's key that survives failures and kills,
    /// so a rerun resumes; it is removed once the cell commits.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }
    /// A new handle on this cell's lock, for a child process to inherit (as its stdin, say):
    /// while any process holds one, no other run computes this key or touches its staging and
    /// scratch directories. `None` outside a store.
    pub fn lock_holder(&self) -> Result<Option<File>, StageError> {
        self.lock
            .as_ref()
            .map(|f| {
                f.try_clone()
                    .map_err(|e| StageError::io(&self.scratch_dir, e))
            })
            .transpose()
    }
    /// Records a scalar metric (it goes into the manifest and the run index).
    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.insert(name.to_owned(), value);
    }
    /// Creates an artifact `rel` (a path relative to the output directory) whose SHA-256 is
    /// computed while it is written. Call [`ArtifactWriter::finish`] when done.
    pub fn create(&mut self, rel: &str) -> Result<ArtifactWriter<'_>, StageError> {
        let path = self.out_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let file = File::create(&path).map_err(|e| StageError::io(&path, e))?;
        Ok(ArtifactWriter {
            cx: self,
            rel: rel.to_owned(),
            path,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }
    /// Moves a file the stage has already written and hashed (say, a verified download in the
    /// scratch directory) into the output as `rel`, without reading it again.
    pub fn adopt(
        &mut self,
        rel: &str,
        src: &Path,
        sha256: &str,
        bytes: u64,
    ) -> Result<(), StageError> {
        let path = self.out_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        std::fs::rename(src, &path).map_err(|e| StageError::io(src, e))?;
        self.written.retain(|w| w.path != rel);
        self.written.push(Written {
            path: rel.to_owned(),
            sha256: sha256.to_owned(),
            bytes,
        });
        Ok(())
    }
    /// Writes a whole artifact at once.
    pub fn write_artifact(&mut self, rel: &str, bytes: &[u8]) -> Result<(), StageError> {
        let mut w = self.create(rel)?;
        w.write_all(bytes).map_err(|e| StageError::io(rel, e))?;
        w.finish()
    }
    /// A progress bar for a long step, drawn under the run's overall bar.
    /// The message shows loss / rate via [`ProgressBar::set_message`].
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        let pb = self.progress.add(ProgressBar::new(len));
        pb.set_style(
            ProgressStyle::with_template(
                "  {prefix:.bold} {bar:30.cyan/blue} {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_prefix(format!("{} {what}", self.stage));
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}

/// A file being written into the staging directory, hashed on the way.
pub struct ArtifactWriter<'a> {
    cx: &'a mut StageContext,
    rel: String,
    path: PathBuf,
    file: io::BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for ArtifactWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ArtifactWriter<'_> {
    /// Flushes, fsyncs and records the file's digest.
    pub fn finish(self) -> Result<(), StageError> {
        let ArtifactWriter {
            cx,
            rel,
            path,
            file,
            hasher,
            bytes,
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| StageError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| StageError::io(&path, e))?;
        cx.written.retain(|w| w.path != rel);
        cx.written.push(Written {
            path: rel,
            sha256: hex::encode(hasher.finalize()),
            bytes,
        });
        Ok(())
    }
}
