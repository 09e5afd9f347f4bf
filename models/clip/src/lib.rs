//! spo-clip: CLIP towers, the step-aware preference model and the scorers.
