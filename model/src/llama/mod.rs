//! The Llama-family decoder (Llama, Mistral, Qwen2) as explicit forward and backward passes over
//! kernels' ops, llm.c style: named saved activations instead of an autograd tape.
//!
//! - `batch`: packed sequences (tokens, cu_seqlens, positions) and next-token targets.
//! - `forward`: embedding → layers → final norm, keeping what the backward needs ([`Keep`]).
//! - `qkv`: the q/k/v projections as one product over their concatenated weights, both ways.
//! - `activations`: the saved tensors, one struct per layer.
//! - `backward`: d(final hidden) → gradients of every decoder parameter (accumulating).
//! - `lm_head`: log-prob of a target and entropy per position (chunked over tokens), and backward.
//! - `score_head`: scalar values for critics / reward models, and backward.
//! - `score`: per-token log-probs and entropies of whole sequences (inference only).
//!
//! A training step for a policy loss reads:
//! ```text
//! let acts = forward(&params, &cfg, &batch, Keep::ForBackward)?;
//! let head = LmHead::new(temperature);
//! let out = head.forward(&params, &acts.hidden, &targets)?;
//! // loss from out.logprobs / out.entropy -> d_logprob, d_entropy
//! let d_hidden = head.backward(&params, &acts.hidden, &targets, &out, &d_lp, Some(&d_ent), &mut grads)?;
//! backward(&params, &cfg, &batch, acts, &d_hidden, &mut grads)?;
//! ```

mod activations;
mod backward;
mod batch;
mod forward;
mod grad_lane;
mod lm_head;
mod qkv;
mod score;
mod score_head;

pub use activations::{Activations, LayerActs};
pub use backward::{backward, backward_with_overlap};
pub use batch::{Batch, NO_TARGET};
pub use forward::{forward, Keep};
pub use grad_lane::{overlap_requested, Overlap};
pub use lm_head::{LmHead, LmHeadOutput, LOGITS_CHUNK_ELEMS};
pub use score::{score_sequences, SeqScores};
pub use score_head::{last_token_scores, values, values_backward};
