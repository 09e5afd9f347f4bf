//! A training checkpoint as one atomic unit: a directory `step-NNNNNNNNN/` holding the model's
//! variables (`model.safetensors`), the optimizer's moments (`adamw.safetensors`) and
//! `state.json` (step, RNG position, loss log, the stage's own state, and the SHA-256 of both
//! tensor files).
//!
//! It is written into a hidden `.partial-…` directory of its own (named for this process and
//! moment), every file and the directory fsynced, then renamed into place: a kill at any moment
//! leaves either the previous checkpoint or the new one, never a mix. Older checkpoints (smaller
//! steps) are removed only after the new one is in place. On load the newest checkpoint whose
//! `state.json` parses and whose files match their digests wins; any other is discarded with a
//! warning, so damage costs recomputation, never wrong results.
//!
//! Two writers may share one scratch directory: a holder frozen past its lease's stale period
//! on another machine, resumed while the new holder computes the same key (docs/architecture.md,
//! "Locks on a shared file system"). Neither can harm the other: each writes its own partial
//! directory, a save removes only steps older than its own, and a step both reach is the same
//! checkpoint (a key's computation is reproducible), so the first one in place is kept. A load
//! ‒ the start of an attempt, by the key's current holder ‒ removes partial directories left
//! behind; a frozen writer whose partial directory goes finds out at its next write and fails,
//! as it would at its commit (`LeaseLost`).
//!
//! Floats are stored as their bit patterns ([`exact_f64`]): serde_json's default parser may read
//! a decimal back one bit off, which made a resumed loss log differ from an uninterrupted one.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{At, Result};
use candle_nn::VarMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spo_core::StageError;
use spo_nn::{AdamW, RngState};

const MODEL: &str = "model.safetensors";
const MOMENTS: &str = "adamw.safetensors";
const STATE: &str = "state.json";
/// The prefix of a partial checkpoint's directory (`.partial` alone before writers had their own).
const PARTIAL: &str = ".partial";

/// Everything of a checkpoint but the tensors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State<E> {
    pub step: usize,
    pub rng: RngState,
    losses: Vec<LossAt>,
    /// The stage's own state (e.g. spo's per-round log).
    pub extra: E,
    /// What the training has cost so far (absent in checkpoints written before it was kept).
    #[serde(default)]
    pub cost: Cost,
    /// SHA-256 (hex) of each tensor file, by name.
    files: BTreeMap<String, String>,
}

/// What a training has cost: measured CPU time, carried across kills so that a resumed cell
/// reports the whole training's (less the work redone since the last checkpoint).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    /// CPU seconds up to this checkpoint.
    pub cpu_seconds: ExactF64,
    /// (step, CPU seconds up to it) of each snapshot taken.
    pub snapshots: Vec<(u64, ExactF64)>,
}

/// One entry of the loss log.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct LossAt {
    step: u64,
    #[serde(with = "exact_f64")]
    loss: f64,
}

impl<E> State<E> {
    /// The state at `step` with the loss log `losses` ((step, loss) so far).
    pub fn new(step: usize, rng: RngState, losses: &[(u64, f64)], extra: E) -> Self {
        State {
            step,
            rng,
            losses: losses
                .iter()
                .map(|&(step, loss)| LossAt { step, loss })
                .collect(),
            extra,
            cost: Cost::default(),
            files: BTreeMap::new(),
        }
    }

    /// The loss log: (step, loss) so far.
    pub fn losses(&self) -> Vec<(u64, f64)> {
        self.losses.iter().map(|l| (l.step, l.loss)).collect()
    }
}

/// An `f64` a checkpoint keeps exactly (as its bit pattern), for a stage's own state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ExactF64(#[serde(with = "exact_f64")] pub f64);

/// serde for an `f64` as its bit pattern (a `u64`, which JSON keeps exactly), for
/// `#[serde(with = "exact_f64")]`; [`exact_f64::option`] does the same for `Option<f64>`.
pub mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }

    /// The same for `Option<f64>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(&v.to_bits()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<u64>::deserialize(d).map(|b| b.map(f64::from_bits))
        }
    }
}

/// Writes `state` with the tensors of `varmap` and `opt` as `dir`'s newest checkpoint and removes
/// the older ones.
pub fn save<E: Serialize>(
    dir: &Path,
    mut state: State<E>,
    varmap: &VarMap,
    opt: &AdamW,
) -> Result<()> {
    let partial = dir.join(partial_name());
    std::fs::create_dir_all(&partial).map_err(|e| StageError::io(&partial, e))?;
    let model = partial.join(MODEL);
    varmap.save(&model).at(&model)?;
    opt.save(&partial.join(MOMENTS))?;
    for name in [MODEL, MOMENTS] {
        state
            .files
            .insert(name.into(), sync_and_digest(&partial.join(name))?);
    }
    let json = serde_json::to_vec(&state)
        .map_err(|e| StageError::Failed(format!("checkpoint state: {e}")))?;
    let state_path = partial.join(STATE);
    std::fs::write(&state_path, json).map_err(|e| StageError::io(&state_path, e))?;
    sync_and_digest(&state_path)?;
    sync(&partial)?;
    let target = dir.join(format!("step-{:09}", state.step));
    if read_state::<serde::de::IgnoredAny>(&target).is_ok() {
        // This step is in place already (another writer of the same key): it is the same.
        remove_dir(&partial)?;
    } else {
        remove_dir(&target)?;
        std::fs::rename(&partial, &target).map_err(|e| StageError::io(&target, e))?;
    }
    sync(dir)?;
    for (_, older) in checkpoints(dir)?
        .into_iter()
        .filter(|(s, _)| *s < state.step)
    {
        remove_dir(&older)?;
    }
    Ok(())
}

/// A partial directory's name no other writer uses: its process id and the moment, as the
/// store names staging directories (`Store::new_staging`).
fn partial_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{PARTIAL}-{}-{nanos}", std::process::id())
}

/// Restores the newest intact checkpoint in `dir` into `varmap` and `opt` and returns its state;
/// `None` (start from scratch) when there is none. Damaged ones are removed with a warning.
pub fn load<E: DeserializeOwned>(
    dir: &Path,
    varmap: &mut VarMap,
    opt: &mut AdamW,
) -> Result<Option<State<E>>> {
    if dir.join(STATE).exists() {
        tracing::warn!(
            "{}: ignoring a checkpoint in an older format (training starts over)",
            dir.display()
        );
    }
    remove_partials(dir)?;
    let mut found = checkpoints(dir)?;
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, ckpt) in found {
        match read_state::<E>(&ckpt) {
            Ok(state) => {
                varmap.load(ckpt.join(MODEL)).map_err(|e| {
                    StageError::Failed(format!("{}: {e}", ckpt.join(MODEL).display()))
                })?;
                opt.load(&ckpt.join(MOMENTS))?;
                return Ok(Some(state));
            }
            Err(why) => {
                tracing::warn!("{}: discarding a damaged checkpoint: {why}", ckpt.display());
                remove_dir(&ckpt)?;
            }
        }
    }
    Ok(None)
}

/// The state of checkpoint `ckpt`, once every tensor file matches its recorded digest.
fn read_state<E: DeserializeOwned>(ckpt: &Path) -> Result<State<E>, String> {
    let bytes = std::fs::read(ckpt.join(STATE)).map_err(|e| format!("{STATE}: {e}"))?;
    let state: State<E> = serde_json::from_slice(&bytes).map_err(|e| format!("{STATE}: {e}"))?;
    for name in [MODEL, MOMENTS] {
        let want = state
            .files
            .get(name)
            .ok_or_else(|| format!("{STATE} has no digest for {name}"))?;
        let got = std::fs::read(ckpt.join(name))
            .map(|b| hex::encode(Sha256::digest(&b)))
            .map_err(|e| format!("{name}: {e}"))?;
        if &got != want {
            return Err(format!("{name} does not match its digest"));
        }
    }
    Ok(state)
}

/// Removes the partial directories in `dir` (kills, and writers that lost the key, left them).
fn remove_partials(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StageError::io(dir, e).into()),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PARTIAL))
        {
            remove_dir(&entry.path())?;
        }
    }
    Ok(())
}

/// The checkpoint directories in `dir` with their steps.
fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))? {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step {
            out.push((step, entry.path()));
        }
    }
    Ok(out)
}

/// fsyncs `path` and returns its SHA-256.
fn sync_and_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    sync(path)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// fsyncs a file or directory.
fn sync(path: &Path) -> Result<()> {
    Ok(File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StageError::io(path, e))?)
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StageError::io(path, e).into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use spo_nn::{AdamWConfig, SeededRng, named_vars, seeded_var_builder};

    /// A one-tensor model and its optimizer.
    fn model() -> (VarMap, AdamW) {
        let vm = VarMap::new();
        seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu)
            .get((3, 4), "w")
            .unwrap();
        let opt = AdamW::new(named_vars(&vm).unwrap(), AdamWConfig::default()).unwrap();
        (vm, opt)
    }

    fn weights(vm: &VarMap) -> Vec<f32> {
        named_vars(vm).unwrap()[0]
            .1
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn set_weights(vm: &VarMap, v: f32) {
        let var = named_vars(vm).unwrap().remove(0).1;
        var.set(&Tensor::full(v, (3, 4), &Device::Cpu).unwrap())
            .unwrap();
    }

    fn state(step: usize, losses: &[(u64, f64)]) -> State<Vec<String>> {
        State::new(
            step,
            SeededRng::new(step as u64).state(),
            losses,
            vec![format!("round {step}")],
        )
    }

    #[test]
    fn losses_and_stage_state_read_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vm, mut opt) = model();
        // losses with all 17 significant digits, where a decimal round trip may slip a bit
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let losses: Vec<(u64, f64)> = (1..=4000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (i, (x >> 11) as f64 / (1u64 << 53) as f64 * 3.0)
            })
            .collect();
        let saved = state(4000, &losses);
        save(dir.path(), saved.clone(), &vm, &opt).unwrap();
        let before = weights(&vm);
        set_weights(&vm, 0.5);
        let loaded: State<Vec<String>> = load(dir.path(), &mut vm, &mut opt).unwrap().unwrap();
        assert_eq!(loaded.step, 4000);
        assert_eq!(loaded.rng, saved.rng);
        assert_eq!(loaded.extra, saved.extra);
        let slipped = losses
            .iter()
            .zip(loaded.losses())
            .filter(|(a, b)| a.1.to_bits() != b.1.to_bits())
            .count();
        assert_eq!(slipped, 0, "losses changed in the last bit");
        assert_eq!(weights(&vm), before, "the weights are restored");
    }

    #[test]
    fn only_the_newest_checkpoint_is_kept_and_a_partial_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vm, mut opt) = model();
        save(dir.path(), state(2, &[(1, 0.5), (2, 0.25)]), &vm, &opt).unwrap();
        let at_two = weights(&vm);
        // a kill while the next checkpoint was being written leaves its partial directory
        std::fs::create_dir_all(dir.path().join(PARTIAL)).unwrap();
        std::fs::write(dir.path().join(PARTIAL).join(STATE), b"{\"step\": 4").unwrap();
        set_weights(&vm, 0.5);
        let loaded: State<Vec<String>> = load(dir.path(), &mut vm, &mut opt).unwrap().unwrap();
        assert_eq!(loaded.step, 2);
        assert_eq!(weights(&vm), at_two);
        save(dir.path(), state(3, &[]), &vm, &opt).unwrap();
        assert_eq!(checkpoints(dir.path()).unwrap().len(), 1);
        assert!(!dir.path().join(PARTIAL).exists());
    }

    /// A holder frozen past its lease and resumed writes into the scratch directory the new
    /// holder of the key is using: it removes nothing of the new holder's, and its own
    /// leftovers are cleared at the next attempt's start.
    #[test]
    fn a_second_writer_of_the_same_key_harms_neither_checkpoints_nor_partials() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vm, mut opt) = model();
        // The new holder is mid-way through writing its next checkpoint...
        let theirs = dir.path().join(format!("{PARTIAL}-other-7-1"));
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join(MODEL), b"half written").unwrap();
        // ... and has step 5 in place.
        set_weights(&vm, 5.0);
        save(dir.path(), state(5, &[(5, 0.5)]), &vm, &opt).unwrap();
        assert!(
            theirs.join(MODEL).exists(),
            "a save leaves others' partials alone"
        );
        // The frozen holder resumes and saves its older step 3, then step 5 again.
        set_weights(&vm, 3.0);
        save(dir.path(), state(3, &[(3, 0.75)]), &vm, &opt).unwrap();
        let mut steps: Vec<usize> = checkpoints(dir.path())
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        steps.sort();
        assert_eq!(steps, vec![3, 5], "the newer step stays");
        set_weights(&vm, -5.0);
        save(dir.path(), state(5, &[(5, 0.5)]), &vm, &opt).unwrap();
        // The next attempt resumes from the newest step, as first written, and clears partials.
        let loaded: State<Vec<String>> = load(dir.path(), &mut vm, &mut opt).unwrap().unwrap();
        assert_eq!(loaded.step, 5);
        assert!(weights(&vm).iter().all(|&w| w == 5.0));
        assert!(!theirs.exists());
        // A later save removes the older step.
        save(dir.path(), state(6, &[]), &vm, &opt).unwrap();
        let steps: Vec<usize> = checkpoints(dir.path())
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, vec![6]);
    }

    /// Damage of every kind to the newest checkpoint: it is discarded (with a warning), and the
    /// previous intact one is used if a kill left one behind, else training starts over.
    #[test]
    fn a_damaged_checkpoint_is_discarded_never_half_used() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 5] = [
            ("flipped weight byte", |c| flip_last_byte(&c.join(MODEL))),
            ("flipped moment byte", |c| flip_last_byte(&c.join(MOMENTS))),
            ("truncated state", |c| truncate(&c.join(STATE))),
            ("garbage state", |c| {
                std::fs::write(c.join(STATE), b"\x00garbage").unwrap()
            }),
            ("missing weights", |c| {
                std::fs::remove_file(c.join(MODEL)).unwrap()
            }),
        ];
        for (what, damage) in damages {
            for keep_previous in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let (mut vm, mut opt) = model();
                save(dir.path(), state(2, &[(1, 0.5), (2, 0.25)]), &vm, &opt).unwrap();
                let previous = dir.path().join("step-000000002");
                let kept = dir.path().join("kept");
                if keep_previous {
                    copy_dir(&previous, &kept);
                }
                let at_two = weights(&vm);
                set_weights(&vm, 0.75);
                save(dir.path(), state(4, &[(3, 0.125)]), &vm, &opt).unwrap();
                if keep_previous {
                    std::fs::rename(&kept, &previous).unwrap();
                }
                damage(&dir.path().join("step-000000004"));
                set_weights(&vm, 0.5);
                let loaded: Option<State<Vec<String>>> =
                    load(dir.path(), &mut vm, &mut opt).unwrap();
                assert!(
                    !dir.path().join("step-000000004").exists(),
                    "{what}: the damaged checkpoint is removed"
                );
                if keep_previous {
                    assert_eq!(loaded.map(|s| s.step), Some(2), "{what}");
                    assert_eq!(weights(&vm), at_two, "{what}");
                } else {
                    assert!(loaded.is_none(), "{what}: starts over");
                    assert_eq!(weights(&vm), vec![0.5; 12], "{what}: nothing was loaded");
                }
            }
        }
    }

    fn flip_last_byte(path: &Path) {
        let mut b = std::fs::read(path).unwrap();
        *b.last_mut().unwrap() ^= 0x40;
        std::fs::write(path, b).unwrap();
    }

    fn truncate(path: &Path) {
        let b = std::fs::read(path).unwrap();
        std::fs::write(path, &b[..b.len() / 2]).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
