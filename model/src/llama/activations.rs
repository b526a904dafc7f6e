//! What the forward keeps for the backward, named tensor by tensor (llm.c style: no tape).
//!
//! Per layer and token this is 4C + 3F + (2H + 2K)·D activation elements plus 2 f32 norm
//! statistics and H f32 log-sum-exps. The SwiGLU product silu(gate)·up (F per token) is kept
//! too: recomputing it in the backward cost a pass over 3F elements per layer (~0.12 ms per
//! layer at Qwen2.5-0.5B shapes, 8k tokens, on the H200) to save F per token.

use kernels::Tensor;

/// Saved tensors of one decoder layer. Shapes use N tokens, C hidden, H/K query/kv heads, D head
/// dim, F MLP width; dtype is the activation dtype unless marked f32.
pub struct LayerActs {
    /// Residual stream entering the layer [N,C] (input of the attention RMSNorm).
    pub x: Tensor,
    /// 1/rms of `x` per token [N] f32.
    pub attn_rstd: Tensor,
    /// Normalised input of the q/k/v projections [N,C].
    pub xn: Tensor,
    /// Queries after rotary [N,H,D].
    pub q: Tensor,
    /// Keys after rotary [N,K,D].
    pub k: Tensor,
    /// Values [N,K,D].
    pub v: Tensor,
    /// Attention output [N,H,D] (input of o_proj, and needed by the attention backward).
    pub att: Tensor,
    /// Log-sum-exp of each query row's scores [N,H] f32.
    pub lse: Tensor,
    /// Residual stream after attention [N,C] (input of the MLP RMSNorm).
    pub x2: Tensor,
    /// 1/rms of `x2` per token [N] f32.
    pub mlp_rstd: Tensor,
    /// Normalised input of gate/up [N,C].
    pub xn2: Tensor,
    /// gate_proj output [N,F].
    pub gate: Tensor,
    /// up_proj output [N,F].
    pub up: Tensor,
    /// silu(gate) · up [N,F] (input of down_proj).
    pub act: Tensor,
}

/// The forward's result: the final hidden states, plus what the backward needs when the forward
/// ran with [`super::Keep::ForBackward`].
pub struct Activations {
    /// Final normalised hidden states [N,C]: the input of the LM head or the score head.
    pub hidden: Tensor,
    /// One entry per layer, in order; empty after an inference-only forward.
    pub layers: Vec<LayerActs>,
    /// Residual stream entering the final norm [N,C]; `None` after an inference-only forward.
    pub final_in: Option<Tensor>,
    /// 1/rms of `final_in` [N] f32.
    pub final_rstd: Tensor,
}

impl Activations {
    /// True when the backward can run from these activations.
    pub fn kept_for_backward(&self) -> bool {
        self.final_in.is_some()
    }

    /// Bytes held by the saved tensors (what a training micro-batch costs beyond the weights).
    pub fn saved_bytes(&self) -> usize {
        let layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.x,
                    &l.attn_rstd,
                    &l.xn,
                    &l.q,
                    &l.k,
                    &l.v,
                    &l.att,
                    &l.lse,
                    &l.x2,
                    &l.mlp_rstd,
                    &l.xn2,
                    &l.gate,
                    &l.up,
                    &l.act,
                ]
                .iter()
                .map(|t| t.size_in_bytes())
                .sum::<usize>()
            })
            .sum();
        layer
            + self.hidden.size_in_bytes()
            + self.final_in.as_ref().map_or(0, Tensor::size_in_bytes)
            + self.final_rstd.size_in_bytes()
    }
}
