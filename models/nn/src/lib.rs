//! spo-nn: differentiable building blocks on candle shared by spo-pipe's models.
