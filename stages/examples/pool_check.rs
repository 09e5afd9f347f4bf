//! Does a judge's pick among one SPO pool's candidates predict the detail of the images they
//! lead to? For `N` validation prompts, a chain is sampled as SPO rolls out (DDIM 20, η = 1,
//! CFG 5) to a branch step, four candidates are drawn there and judged as SPO judges them (on
//! their x₀-prediction at the next timestep) by the SPM, the PickScore analogue and the graded
//! oracle; then every candidate is continued to t = 0 as `sample` draws (η = 0) and the final
//! images are judged by the oracles. Prints, per branch timestep and judge, how often its best
//! candidate leads to a better final image than its worst (docs/default-pipeline.md).
//!
//!     cargo run --release --example pool_check -- STORE_DIR ASSETS_DIR WORLD_KEY SPM_KEY PICKSCORE_KEY [N]
//!
//! STORE_DIR holds `runs/`; ASSETS_DIR `text-encoder/` and `base/` cells (for the default
//! pipeline: stages/assets/pretrained); the keys are `spo-pipe show world|spm|pickscore`'s.
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use spo_core::{Input, Manifest};
use spo_diffusion::{
    Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionConfig, UNet2DConditionModel,
};
use spo_nn::SeededRng;
use spo_stages::clip_train::WorldClip;
use spo_stages::inworld::{InWorldClip, device, frozen_vb, json};
use spo_stages::score::pickscores;
use spo_stages::tensors::tensor_to_images;
use spo_stages::worlddata::WorldData;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn input(dir: &Path, stage: &str, kind: &str) -> R<Input> {
    Ok(Input {
        stage: stage.into(),
        kind: kind.into(),
        dir: dir.to_path_buf(),
        manifest: Manifest::read(dir)?,
    })
}

fn main() -> R<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        return Err(
            "usage: pool_check STORE_DIR ASSETS_DIR WORLD_KEY SPM_KEY PICKSCORE_KEY [N]".into(),
        );
    }
    let store = PathBuf::from(&a[1]).join("runs/store");
    let assets = PathBuf::from(&a[2]);
    let (world_k, spm_k, pick_k) = (&a[3], &a[4], &a[5]);
    let n: usize = a.get(6).map(|s| s.parse()).transpose()?.unwrap_or(48);
    let dev = device();
    let world = WorldData::load(&input(&store.join(world_k), "world", "world")?)?;
    let text = InWorldClip::load(
        &input(&assets.join("text-encoder"), "te", "clip-pretrain")?,
        &dev,
    )?;
    let cfgu: UNet2DConditionConfig = json(&assets.join("base/unet_config.json"))?;
    let unet = UNet2DConditionModel::new(
        &cfgu,
        frozen_vb(&assets.join("base/unet.safetensors"), &dev)?,
    )?;
    let (spm, vocab) =
        spo_stages::spm::load(&input(&store.join(spm_k), "spm", "train-spm")?, &dev)?;
    let pick = WorldClip::load(
        &input(&store.join(pick_k), "pickscore", "pickscore-train")?,
        &dev,
    )?;
    let sched = || NoiseSchedule::new(SchedulerConfig::sd15());
    let d1 = Ddim::new(sched()?, 20, 1.0)?;
    let d0 = Ddim::new(sched()?, 20, 0.0)?;
    let ts = d1.timesteps().to_vec();
    let k = 4;
    let prompts: Vec<&spo_stages::worlddata::Prompt> = world.validation.iter().take(n).collect();
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let texts_k: Vec<&str> = (0..k).flat_map(|_| texts.iter().copied()).collect();
    let cond = text.conditioning(&texts, &dev)?;
    let cond_k = text.conditioning(&texts_k, &dev)?;
    let gap_min = 2.0 * 0.3f64.atanh();
    println!(
        "t   | judge     | pools passing | acc(all) | acc(passing) | mean |final detail gap| best-vs-worst"
    );
    for branch in [4usize, 8, 12, 16] {
        let mut rng = SeededRng::new(11 + branch as u64);
        let mut x = rng.normal((n, 3, 32, 32), 0.0, 1.0, DType::F32, &dev)?;
        for &t in &ts[..branch] {
            let eps = cond.guided_eps(&unet, &x, &vec![t; n], 5.0)?;
            let z = rng.normal(x.shape(), 0.0, 1.0, DType::F32, &dev)?;
            x = d1.step(&eps, &vec![t; n], &x, Some(&z))?.0;
        }
        let t = ts[branch];
        let eps = cond.guided_eps(&unet, &x, &vec![t; n], 5.0)?;
        let tr = d1.transition(&eps, &vec![t; n], &x)?;
        let mut cands = Vec::with_capacity(k);
        for _ in 0..k {
            cands.push(tr.sample(&rng.normal(x.shape(), 0.0, 1.0, DType::F32, &dev)?)?);
        }
        let mut c = Tensor::cat(&cands, 0)?;
        // judged as SPO does: the x0-prediction at the next timestep
        let t2 = ts[branch + 1];
        let eps_c = cond_k.guided_eps(&unet, &c, &vec![t2; n * k], 5.0)?;
        let (x0h, _) = d1.predict_x0_and_eps(&eps_c, &vec![t2; n * k], &c)?;
        let x0h = x0h.clamp(-1f32, 1f32)?;
        let ids = vocab.batch(&texts_k, &dev)?;
        let s_spm = spm.score(&x0h, &ids, &vec![t2 as f32; n * k])?;
        let hat = tensor_to_images(&x0h)?;
        let hat_refs: Vec<&image::RgbImage> = hat.iter().collect();
        let s_pick = pickscores(&pick, &hat_refs, &texts_k)?;
        let judge = |ims: &[image::RgbImage]| -> R<Vec<spo_world::Judgement>> {
            let mut out = Vec::with_capacity(ims.len());
            for (i, im) in ims.iter().enumerate() {
                out.push(spo_world::judge(&world.atlas, &prompts[i % n].scene, im)?);
            }
            Ok(out)
        };
        let s_orc: Vec<f64> = judge(&hat)?.iter().map(|j| j.detail.quality).collect();
        // continue every candidate deterministically to t = 0
        for &tt in &ts[branch + 1..] {
            let e = cond_k.guided_eps(&unet, &c, &vec![tt; n * k], 5.0)?;
            c = d0.step(&e, &vec![tt; n * k], &c, None)?.0;
        }
        let fin = tensor_to_images(&c.clamp(-1f32, 1f32)?)?;
        let finals = judge(&fin)?;
        let fdet: Vec<f64> = finals.iter().map(|j| j.detail.quality).collect();
        let falign: Vec<f64> = finals.iter().map(|j| j.alignment.score()).collect();
        for (name, s, thr) in [
            ("spm", &s_spm, gap_min),
            ("pickscore", &s_pick, gap_min),
            ("oracle-x0", &s_orc, 0.0),
        ] {
            let (mut right, mut n_all, mut right_p, mut n_p, mut gap, mut right_a) =
                (0.0, 0, 0.0, 0, 0.0, 0.0);
            for i in 0..n {
                let sc: Vec<f64> = (0..k).map(|c| s[c * n + i]).collect();
                let best = (0..k).max_by(|&a, &b| sc[a].total_cmp(&sc[b])).unwrap_or(0);
                let worst = (0..k).min_by(|&a, &b| sc[a].total_cmp(&sc[b])).unwrap_or(0);
                let (db, dw) = (fdet[best * n + i], fdet[worst * n + i]);
                let ok = if db == dw {
                    0.5
                } else if db > dw {
                    1.0
                } else {
                    0.0
                };
                let (ab, aw) = (falign[best * n + i], falign[worst * n + i]);
                right_a += if ab == aw {
                    0.5
                } else if ab > aw {
                    1.0
                } else {
                    0.0
                };
                right += ok;
                n_all += 1;
                gap += (db - dw).abs();
                if sc[best] - sc[worst] > thr {
                    right_p += ok;
                    n_p += 1;
                }
            }
            println!(
                "{t:3} | {name:9} | {n_p:3}/{n_all} | {:.3} | {:.3} | {:.4} | align acc {:.3}",
                right / n_all as f64,
                right_p / n_p.max(1) as f64,
                gap / n_all as f64,
                right_a / n_all as f64
            );
        }
    }
    Ok(())
}
