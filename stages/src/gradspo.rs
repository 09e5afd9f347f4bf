//! `gradspo`: GradSPO (next-wave B; JoshuaTTJ/GradSPO), SPO with two changes, the row beyond the
//! paper's Table 2. Rollouts use an exponential moving average of the LoRA policy (decay 0.9,
//! updated after every optimizer step), and a transition is scored not by its log-probability
//! but by `−MSE(ε_θ(x_t), ε*)` against a target that moves the rollout policy's prediction toward
//! the winner's sampling noise and away from the loser's (`spo_methods::gradspo`); the clamped
//! ratio loss follows as in SPO. Everything else is the `spo` kind's (`crate::spo`).

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarMap};
use spo_core::{ParamSpec, Params, StageContext, StageError, StageKind};
use spo_nn::named_vars;

use crate::error::Result;
use crate::spo::SpoParams;

spo_core::stage_params! {
    /// The params of `gradspo` besides `spo`'s.
    pub struct GradSpoParams {
        /// decay of the rollout policy's moving average (GradSPO's 0.9)
        ema_decay: f64 = float(0.9).range(0.0, 1.0),
        /// s in ε* = ε_ema ∓ s·√(1 − ᾱ_t)·(z_max − z_min)/2 (GradSPO's `grad_scale` 0.5)
        grad_scale: f64 = float(0.5).range(0.0, 100.0),
    }
}

/// GradSPO's settings, as the `spo` machinery takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradSpo {
    pub ema_decay: f64,
    pub grad_scale: f64,
}

impl GradSpo {
    /// The settings a `gradspo` / `sd-gradspo` cell's params give.
    pub fn from_params(params: &Params) -> Result<Self, StageError> {
        let g = GradSpoParams::from_params(params)?;
        Ok(GradSpo {
            ema_decay: g.ema_decay,
            grad_scale: g.grad_scale,
        })
    }

    /// GradSPO's target is defined for one step per pool: refuses MSPO's `j` > 1, naming it.
    pub fn check_steps_per_pool(j: usize) -> Result<()> {
        if j == 1 {
            return Ok(());
        }
        Err(StageError::param(
            "j",
            format!("GradSPO's target is defined for j = 1 (SPO), not j = {j}"),
        )
        .into())
    }
}

/// The `gradspo` stage kind.
pub struct GradSpoTrain;

impl StageKind for GradSpoTrain {
    fn name(&self) -> &'static str {
        "gradspo"
    }
    fn version(&self) -> u32 {
        // 2: LoRA snapshots for the `curve` kind; the LoRA and logs are unchanged.
        2
    }
    fn summary(&self) -> &'static str {
        "GradSPO: SPO with a moving-average rollout policy and a noise-target score (needs world, clip-pretrain, base-pretrain, train-spm)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = SpoParams::specs();
        p.extend(GradSpoParams::specs());
        p
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let settings = GradSpo::from_params(cx.params())?;
        Ok(crate::spo::train(cx, Some(settings))?)
    }
}

/// The moving average of the LoRA policy: one variable per adapter tensor, kept in the policy's
/// var map under `ema.<name>` so that checkpoints save and restore it with the policy.
pub(crate) struct Ema {
    /// (policy variable, its average)
    pairs: Vec<(Var, Var)>,
    decay: f64,
    /// The policy's values while the average is swapped in.
    saved: Vec<Tensor>,
}

impl Ema {
    /// Adds an average equal to the current policy to `lora_vars` (before a checkpoint is
    /// loaded into it).
    pub fn attach(lora_vars: &VarMap, decay: f64) -> Result<Ema> {
        let mut pairs = Vec::new();
        for (name, var) in named_vars(lora_vars)? {
            let t = var.as_tensor();
            lora_vars.get(
                t.shape(),
                &format!("ema.{name}"),
                Init::Const(0.0),
                DType::F32,
                t.device(),
            )?;
            let data = lora_vars
                .data()
                .lock()
                .map_err(|_| StageError::Failed("var map lock poisoned".into()))?;
            let ema = data
                .get(&format!("ema.{name}"))
                .cloned()
                .ok_or_else(|| StageError::Failed(format!("no average for `{name}`")))?;
            drop(data);
            ema.set(t)?;
            pairs.push((var, ema));
        }
        Ok(Ema {
            pairs,
            decay,
            saved: Vec::new(),
        })
    }

    /// `ema ← decay·ema + (1 − decay)·policy`, after an optimizer step.
    pub fn update(&self) -> Result<()> {
        for (p, e) in &self.pairs {
            let next = (e.as_tensor().affine(self.decay, 0.0)?
                + p.as_tensor().affine(1.0 - self.decay, 0.0)?)?;
            e.set(&next)?;
        }
        Ok(())
    }

    /// Puts the average in the policy's place (for a rollout).
    pub fn swap_in(&mut self) -> Result<()> {
        self.saved = self
            .pairs
            .iter()
            .map(|(p, _)| p.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        for (p, e) in &self.pairs {
            p.set(e.as_tensor())?;
        }
        Ok(())
    }

    /// Puts the policy back.
    pub fn swap_out(&mut self) -> Result<()> {
        for ((p, _), s) in self.pairs.iter().zip(self.saved.drain(..)) {
            p.set(&s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().expect("a vector")
    }

    #[test]
    fn the_average_follows_the_policy_and_swaps_in_and_out() -> Result<()> {
        let vars = VarMap::new();
        vars.get(2, "w", Init::Const(1.0), DType::F32, &Device::Cpu)?;
        let mut ema = Ema::attach(&vars, 0.9)?;
        let (policy, average) = ema.pairs[0].clone();
        assert_eq!(values(&average), [1.0, 1.0], "starts as the policy");
        policy.set(&Tensor::new(&[3f32, -1.0], &Device::Cpu)?)?;
        ema.update()?;
        let a = values(&average);
        assert!(
            (a[0] - 1.2).abs() < 1e-6 && (a[1] - 0.8).abs() < 1e-6,
            "{a:?}"
        );
        ema.swap_in()?;
        assert_eq!(values(&policy), a, "the rollout sees the average");
        ema.swap_out()?;
        assert_eq!(values(&policy), [3.0, -1.0], "and training the policy");
        // the average is saved with the var map, under its own name
        assert!(vars.data().lock().expect("lock").contains_key("ema.w"));
        Ok(())
    }
}
