//! Each method against the NumPy re-implementation of its reference code
//! (`tests/fixtures/methods/make_goldens.py`), in float64, within 1e-6 (relative for values
//! far from zero).

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use spo_methods::ddpo::{PerPromptStats, Ppo};
use spo_methods::mapo::Mapo;
use spo_methods::ratio::ClampedRatio;
use spo_methods::{diffusion_dpo, gradspo, per_sample_mse};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn goldens() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/methods/goldens.json"
    );
    let text = std::fs::read_to_string(path).expect("the committed goldens");
    serde_json::from_str(&text).expect("goldens.json is JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

fn tensor(v: &Value, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(floats(v), shape, &Device::Cpu)
}

fn vector(v: &Value) -> candle_core::Result<Tensor> {
    let xs = floats(v);
    let n = xs.len();
    Tensor::from_vec(xs, n, &Device::Cpu)
}

fn shape(v: &Value) -> Vec<usize> {
    floats(v).iter().map(|&d| d as usize).collect()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-6 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: {got} vs {want}");
}

fn close_all(got: &Tensor, want: &Value, what: &str) -> candle_core::Result<()> {
    let got = got.flatten_all()?.to_vec1::<f64>()?;
    let want = floats(want);
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        close(*g, *w, &format!("{what}[{i}]"));
    }
    Ok(())
}

#[test]
fn spo_clamped_ratio_loss_matches_the_reference() -> TestResult {
    let g = &goldens()["spo"];
    let loss = ClampedRatio {
        beta: num(&g["beta"]),
        clip_eps: num(&g["clip_eps"]),
    };
    let out = loss.ordered_pairs(&vector(&g["logp"])?, &vector(&g["logp_ref"])?)?;
    close(out.loss.to_scalar::<f64>()?, num(&g["loss"]), "loss");
    close_all(&out.ratio_win, &g["ratio_win"], "ratio_win")?;
    close_all(&out.ratio_lose, &g["ratio_lose"], "ratio_lose")?;
    Ok(())
}

#[test]
fn d3po_loss_matches_the_reference() -> TestResult {
    let g = &goldens()["d3po"];
    let labels: Vec<(f64, f64)> = g["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| (num(&l[0]), num(&l[1])))
        .collect();
    let loss = ClampedRatio {
        beta: num(&g["beta"]),
        clip_eps: num(&g["clip_eps"]),
    }
    .labelled_pairs(
        &vector(&g["logp_a"])?,
        &vector(&g["logp_b"])?,
        &vector(&g["ref_a"])?,
        &vector(&g["ref_b"])?,
        &labels,
    )?;
    close(loss.to_scalar::<f64>()?, num(&g["loss"]), "loss");
    Ok(())
}

#[test]
fn diffusion_dpo_loss_matches_the_reference() -> TestResult {
    let g = &goldens()["diffusion_dpo"];
    let s = shape(&g["shape"]);
    let target = tensor(&g["target"], &s)?;
    let model = per_sample_mse(&tensor(&g["model_pred"], &s)?, &target)?;
    let reference = per_sample_mse(&tensor(&g["ref_pred"], &s)?, &target)?;
    close_all(&model, &g["model_losses"], "per-sample mse")?;
    let c = s[0] / 2;
    let out = diffusion_dpo::loss(
        &model.narrow(0, 0, c)?,
        &model.narrow(0, c, c)?,
        &reference.narrow(0, 0, c)?,
        &reference.narrow(0, c, c)?,
        num(&g["beta"]),
    )?;
    close(out.loss.to_scalar::<f64>()?, num(&g["loss"]), "loss");
    close(
        out.implicit_accuracy,
        num(&g["implicit_accuracy"]),
        "accuracy",
    );
    Ok(())
}

#[test]
fn mapo_loss_matches_the_reference() -> TestResult {
    let g = &goldens()["mapo"];
    let s = shape(&g["shape"]);
    let losses = per_sample_mse(&tensor(&g["model_pred"], &s)?, &tensor(&g["target"], &s)?)?;
    let c = s[0] / 2;
    let mapo = Mapo {
        beta: num(&g["beta"]),
        snr_value: num(&g["snr_value"]),
        train_timesteps: num(&g["train_timesteps"]),
    };
    assert_eq!(mapo, Mapo::default(), "the goldens use MaPO's defaults");
    let loss = mapo.loss(&losses.narrow(0, 0, c)?, &losses.narrow(0, c, c)?)?;
    close(loss.to_scalar::<f64>()?, num(&g["loss"]), "loss");
    Ok(())
}

#[test]
fn ddpo_ppo_loss_and_per_prompt_advantages_match_the_reference() -> TestResult {
    let g = &goldens()["ddpo"];
    let ppo = Ppo {
        clip_range: num(&g["clip_range"]),
        adv_clip_max: num(&g["adv_clip_max"]),
    };
    assert_eq!(ppo, Ppo::default(), "the goldens use DDPO's defaults");
    let loss = ppo.loss(
        &vector(&g["logp"])?,
        &vector(&g["logp_sampled"])?,
        &vector(&g["advantages"])?,
    )?;
    close(loss.to_scalar::<f64>()?, num(&g["loss"]), "loss");
    let t = &g["tracker"];
    let mut stats = PerPromptStats::new(
        num(&t["buffer_size"]) as usize,
        num(&t["min_count"]) as usize,
    );
    for (b, batch) in t["batches"].as_array().expect("batches").iter().enumerate() {
        let prompts: Vec<&str> = batch["prompts"]
            .as_array()
            .expect("prompts")
            .iter()
            .map(|p| p.as_str().expect("a prompt"))
            .collect();
        let adv = stats.advantages(&prompts, &floats(&batch["rewards"]));
        for (i, (a, w)) in adv.iter().zip(floats(&batch["advantages"])).enumerate() {
            close(*a, w, &format!("batch {b} advantage {i}"));
        }
    }
    Ok(())
}

#[test]
fn gradspo_targets_and_score_match_the_reference() -> TestResult {
    let g = &goldens()["gradspo"];
    let s = shape(&g["shape"]);
    let (tw, tl) = gradspo::targets(
        &tensor(&g["eps_ema"], &s)?,
        &tensor(&g["z_max"], &s)?,
        &tensor(&g["z_min"], &s)?,
        &vector(&g["sqrt_one_minus_alpha_bar"])?,
        num(&g["scale"]),
    )?;
    close_all(&tw, &g["target_win"], "target_win")?;
    close_all(&tl, &g["target_lose"], "target_lose")?;
    let score = gradspo::score(&tensor(&g["eps_theta"], &s)?, &tw)?;
    close_all(&score, &g["score_win"], "score_win")?;
    Ok(())
}

/// A Var of `xs` in f32, as the trainers hold their weights.
fn var(xs: &[f64]) -> candle_core::Result<Var> {
    Var::from_tensor(&Tensor::new(xs, &Device::Cpu)?.to_dtype(DType::F32)?)
}

fn grad(g: &candle_core::backprop::GradStore, v: &Var) -> Vec<f32> {
    g.get(v)
        .expect("the var gets a gradient")
        .to_vec1::<f32>()
        .expect("a vector")
}

#[test]
fn every_loss_records_a_gradient_for_the_policy() -> TestResult {
    let lp = var(&[-1.0, -1.1, -0.9, -1.2])?;
    let lp_ref = Tensor::new(&[-1.02f32, -1.05, -0.95, -1.18], &Device::Cpu)?;
    let spo = ClampedRatio {
        beta: 10.0,
        clip_eps: 0.1,
    };
    let gs = spo
        .ordered_pairs(lp.as_tensor(), &lp_ref)?
        .loss
        .backward()?;
    // the winners' log-probabilities go up, the losers' down
    let g = grad(&gs, &lp);
    assert!(
        g[0] < 0.0 && g[1] < 0.0 && g[2] > 0.0 && g[3] > 0.0,
        "{g:?}"
    );

    // a D3PO tie gives no gradient to its pair
    let a = var(&[-1.0, -1.0])?;
    let b = var(&[-1.1, -0.9])?;
    let r = Tensor::new(&[-1.05f32, -1.02], &Device::Cpu)?;
    let gs = spo
        .labelled_pairs(
            a.as_tensor(),
            b.as_tensor(),
            &r,
            &r,
            &[(1.0, -1.0), (0.0, 0.0)],
        )?
        .backward()?;
    let (ga, gb) = (grad(&gs, &a), grad(&gs, &b));
    assert!(ga[0] < 0.0 && gb[0] > 0.0, "{ga:?} {gb:?}");
    assert_eq!((ga[1], gb[1]), (0.0, 0.0));

    // Diffusion-DPO and MaPO push the winner's error down
    let err = var(&[0.20, 0.30])?;
    let (w, l) = (
        err.as_tensor().narrow(0, 0, 1)?,
        err.as_tensor().narrow(0, 1, 1)?,
    );
    let refs = Tensor::new(&[0.25f32], &Device::Cpu)?;
    let gs = diffusion_dpo::loss(&w, &l, &refs, &refs, 50.0)?
        .loss
        .backward()?;
    let g = grad(&gs, &err);
    assert!(g[0] > 0.0 && g[1] < 0.0, "{g:?}");
    let gs = Mapo::default().loss(&w, &l)?.backward()?;
    assert!(grad(&gs, &err)[0] > 0.0);

    // DDPO: a positive advantage raises its log-probability (inside the clip range)
    let lp = var(&[-1.0, -1.0])?;
    let old = Tensor::new(&[-1.0f32, -1.0], &Device::Cpu)?;
    let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu)?;
    let gs = Ppo::default()
        .loss(lp.as_tensor(), &old, &adv)?
        .backward()?;
    let g = grad(&gs, &lp);
    assert!(g[0] < 0.0 && g[1] > 0.0, "{g:?}");
    Ok(())
}

#[test]
fn spo_and_d3po_agree_on_ordered_pairs_and_start_at_ln_2() -> TestResult {
    let g = &goldens()["spo"];
    let (lp, lp_ref) = (vector(&g["logp"])?, vector(&g["logp_ref"])?);
    let loss = ClampedRatio {
        beta: 10.0,
        clip_eps: 0.1,
    };
    let c = lp.dim(0)? / 2;
    let d3po = loss.labelled_pairs(
        &lp.narrow(0, 0, c)?,
        &lp.narrow(0, c, c)?,
        &lp_ref.narrow(0, 0, c)?,
        &lp_ref.narrow(0, c, c)?,
        &vec![(1.0, -1.0); c],
    )?;
    close(
        d3po.to_scalar::<f64>()?,
        loss.ordered_pairs(&lp, &lp_ref)?.loss.to_scalar::<f64>()?,
        "d3po vs spo",
    );
    let at_init = loss
        .ordered_pairs(&lp_ref, &lp_ref)?
        .loss
        .to_scalar::<f64>()?;
    close(at_init, std::f64::consts::LN_2, "policy = reference");
    Ok(())
}
