//! The Llama-family decoder (Llama, Mistral, Qwen2) as a [`StepModel`]: prefill and decode
//! forwards that keep K/V in a paged cache.
//!
//! Per layer: RMSNorm → q/k/v projections → RoPE → write k, v into their cache slots → attention →
//! o projection → residual → RMSNorm → SwiGLU MLP → residual. Prefill attends within each packed
//! prompt with the causal `attention` op (a prompt is always prefilled whole, so everything it
//! attends to is in the batch); decode attends to the cache with `paged_attention`. Only each
//! sequence's last row goes through the LM head.
//!
//! Launches are fused for speed (a decode step at small batch is bound by kernel count): per layer
//! one GEMM for q, k, v over a concatenated weight [(H+2K)·D, C] into f32, one `qkv_rope_cache`
//! (bias, the one rounding, RoPE, cache write), attention, the o GEMM, one `add_rmsnorm` (residual
//! and MLP norm), one GEMM for gate and up over [2F, C], `swiglu_packed`, the down GEMM; the down
//! projection's residual is added by the next layer's `add_rmsnorm` (attention norm, or the final
//! norm after the last layer). Nine launches per layer instead of ~20, same numerics.
//!
//! K/V are kept in the parameters' dtype: bf16 on the GPU in normal use, f32 on the CPU. Nothing in
//! a step reads device memory back: the logits stay on the device for sampling there, so the
//! decode step can be put in a CUDA graph.

use anyhow::Context;
use std::collections::HashMap;
use std::time::Instant;

use kernels::cuda::graph_ops::{copy_u32_prefix, gather_rows_trusted, resolve_tokens, FROM_PREV};
use kernels::cuda::staging::{Readback, Staging};
use kernels::ops::linear::linear_out;
use kernels::ops::paged_attention_qkv::{paged_attention_qkv_fused, QkvInputs};
use kernels::ops::qkv_rope_cache::{qkv_rope_cache_table, RopeTable};
use kernels::ops::sampling::SPEC_HEAD;
use kernels::ops::{
    add_rmsnorm, add_rmsnorm_partials, attention, concat_rows, gather_rows, kv_cache_copy_blocks,
    linear, linear_ksplit, paged_attention, qkv_rope_cache, read_samples, rmsnorm, sample_tokens,
    sample_tokens_into, swiglu_packed, SampleSpec,
};
use kernels::{DType, Device, Tensor};
use model::{LayerParams, ModelConfig, Params};

mod lanes;
use lanes::{lane_split_for, LaneRows};
pub use lanes::{share_sms_requested as lane_sms_shared, LANE_MIN_ROWS, MAX_DECODE_LANES};

use crate::block_manager::BlockCopy;
use crate::profile::Stopwatch;
use crate::step_model::{
    submit_at_once, DecodeBatch, DecodeTimes, PrefillBatch, StepModel, Submitted, NO_PREV,
};

/// Positions the RoPE table covers at most (a token beyond it gets its cos/sin computed by
/// `qkv_rope_cache` itself, with the same values).
const ROPE_TABLE_MAX: usize = 1 << 17;

/// One layer's cache: [P, K, D] each, P = blocks × block size.
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// A layer's projection weights concatenated for fused GEMMs, built once per runner (a rollout)
/// from the learner's current weights. Extra device memory: a second copy of q/k/v and gate/up,
/// (H+2K)·D·C + 2F·C elements per layer; Qwen2.5-0.5B in bf16: 2.1 MB + 17.4 MB per layer,
/// ~470 MB for its 24 layers (~50 MB of it q/k/v), freed with the runner.
struct FusedLayer {
    /// [Wq; Wk; Wv]: [(H+2K)·D, C].
    qkv: Tensor,
    /// [bq; bk; bv]: [(H+2K)·D] when the model has q/k/v biases (Qwen2); a missing one is zeros.
    qkv_bias: Option<Tensor>,
    /// [W_gate; W_up]: [2F, C].
    gate_up: Tensor,
}

impl FusedLayer {
    fn new(lp: &LayerParams) -> anyhow::Result<FusedLayer> {
        let qkv = concat_rows(&[&lp.q, &lp.k, &lp.v])?; // [(H+2K)·D, C]
        let biases = [&lp.q_bias, &lp.k_bias, &lp.v_bias];
        let qkv_bias = if biases.iter().any(|b| b.is_some()) {
            let weights = [&lp.q, &lp.k, &lp.v];
            let zeros: Vec<Option<Tensor>> = biases
                .iter()
                .zip(weights)
                .map(|(b, w)| match b {
                    Some(_) => Ok(None),
                    None => Tensor::zeros(&[w.shape()[0]], w.dtype(), w.device()).map(Some),
                })
                .collect::<Result<_, _>>()?;
            let parts: Vec<&Tensor> = biases
                .iter()
                .zip(&zeros)
                .map(|(b, z)| b.as_ref().or(z.as_ref()).expect("a bias or its zeros"))
                .collect();
            Some(concat_rows(&parts)?) // [(H+2K)·D]
        } else {
            None
        };
        let gate_up = concat_rows(&[&lp.gate, &lp.up])?; // [2F, C]
        Ok(FusedLayer {
            qkv,
            qkv_bias,
            gate_up,
        })
    }
}

/// A model's weights plus, during a rollout, its paged KV cache.
pub struct LlamaRunner<'a> {
    params: &'a Params,
    /// Per layer, the weights of the fused projections.
    fused: Vec<FusedLayer>,
    cfg: &'a ModelConfig,
    device: Device,
    dtype: DType,
    cache: Vec<LayerCache>,
    /// cos/sin of the RoPE angles per position, built with the cache (positions below the
    /// rollout's longest possible context).
    rope: Option<RopeTable>,
    block_size: usize,
    /// Decode-step time per op kind, with `REALIGN_PROFILE=1` (each op then ends with a sync).
    sw: Stopwatch,
    /// Captured decode steps by (bucket, table width, spec columns); they hold the cache's
    /// addresses, so they live only as long as the cache.
    graphs: HashMap<GraphKey, DecodeGraph>,
    /// Decode steps as CUDA graphs (on a GPU, when every row samples on the device).
    use_graphs: bool,
    /// A capture failed: decode op by op from then on.
    graphs_failed: bool,
    /// Decode steps replayed from a captured graph so far.
    graph_replays: usize,
    /// Decode-call times since the last `take_decode_times`.
    times: DecodeTimes,
    /// [R, 2] U32 on the GPU: the samples (token, log-prob bits) of the last queued decode step,
    /// left there by the step itself; the next step's `from_prev` rows read their tokens from it
    /// (`resolve_tokens`). Its address is captured by the graphs: grown (graphs dropped) when a
    /// bucket outgrows it.
    feed: Option<Tensor>,
    /// Pinned buffers the queued steps' samples come back through: step k uses buffer k % 2 (at
    /// most two steps are unread: the one just queued and the one before it).
    readbacks: Vec<Readback>,
    /// Per readback buffer, the step whose samples it receives and that step's rows.
    readback_steps: [Option<(u64, usize)>; 2],
    /// Decode steps queued on the GPU so far.
    queued: u64,
    /// Queue decode steps and feed their tokens on the device (the overlapped loop). Off, a GPU
    /// step's samples are read at once, as before that loop existed, and its graphs hold no feed
    /// nodes.
    overlap: bool,
    /// Paged decode steps run `paged_attention_qkv_fused` (see [`LlamaRunner::use_fused_attention`]).
    fused_attention: bool,
    /// Decode lanes (1 to [`MAX_DECODE_LANES`], see [`LlamaRunner::use_decode_lanes`]).
    lanes: usize,
}

/// How a layer's attention reads K/V.
enum Attend<'b> {
    /// Causal within each packed sequence of the batch.
    Packed { cu_seqlens: &'b Tensor },
    /// From the cache through block tables.
    Paged {
        block_tables: &'b Tensor,
        context_lens: &'b Tensor,
        block_size: usize,
        max_context_len: usize,
        /// The q/k/v epilogue folded into the attention (`paged_attention_qkv_fused`).
        fused: bool,
    },
}

impl<'a> LlamaRunner<'a> {
    pub fn new(params: &'a Params, cfg: &'a ModelConfig) -> anyhow::Result<LlamaRunner<'a>> {
        params
            .check_against(cfg)
            .context("the weights do not match the model config")?;
        anyhow::ensure!(
            params.lm_head.is_some() || cfg.tie_word_embeddings,
            "the model has no LM head (a score-head model cannot generate)"
        );
        let fused = params
            .layers
            .iter()
            .enumerate()
            .map(|(l, lp)| {
                FusedLayer::new(lp).with_context(|| format!("concatenating layer {l}'s weights"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(LlamaRunner {
            params,
            fused,
            cfg,
            device: params.embed.device().clone(),
            dtype: params.embed.dtype(),
            cache: Vec::new(),
            rope: None,
            block_size: 0,
            sw: Stopwatch::new(),
            graphs: HashMap::new(),
            use_graphs: graphs_env().unwrap_or(false),
            graphs_failed: false,
            graph_replays: 0,
            times: DecodeTimes::default(),
            feed: None,
            readbacks: Vec::new(),
            readback_steps: [None; 2],
            queued: 0,
            overlap: false,
            fused_attention: false,
            lanes: 1,
        })
    }

    /// Turns CUDA-graph decode steps on or off (they are used only on a GPU).
    pub fn use_cuda_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Queues GPU decode steps for the overlapped loop (`RolloutConfig::overlap`): their tokens
    /// feed the next step on the device and their samples come back later. Off (the default),
    /// each GPU step's samples are read at once. Either works with either loop (a step whose
    /// samples are on the host feeds the next one through the host); overlapping needs both on.
    pub fn use_overlap(&mut self, on: bool) {
        self.overlap = on;
    }

    /// Folds each paged decode step's q/k/v epilogue into the attention kernel
    /// (`EngineConfig::fused_attention`); off, the two ops run as before.
    pub fn use_fused_attention(&mut self, on: bool) {
        self.fused_attention = on;
    }

    /// Splits wide decode steps into `lanes` row blocks (`EngineConfig::decode_lanes`, 1 or 2;
    /// llama/lanes.rs) whose layers run side by side on a GPU.
    pub fn use_decode_lanes(&mut self, lanes: usize) {
        self.lanes = lanes;
    }

    /// The row blocks (first row, rows) of a decode step of `rows` rows, or None to run it whole.
    fn lane_split(&self, rows: usize) -> Option<Vec<(usize, usize)>> {
        lane_split_for(self.lanes, rows, self.device.is_cuda())
    }

    fn u32s(&self, v: &[u32]) -> anyhow::Result<Tensor> {
        Ok(Tensor::from_u32(v.to_vec(), &[v.len()], &self.device)?)
    }

    /// Runs every layer over `tokens` at `positions`, writing K/V to `slots`; returns the final
    /// norm's output [N,C] (what the LM head reads).
    /// `profile` times each op kind into the runner's stopwatch (decode steps). `in_graph`: the
    /// work is being recorded into a CUDA graph, so the embedding lookup must not read the ids
    /// back to check them (they were checked before the rollout or sampled below V).
    fn layers(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        slots: &Tensor,
        attend: &Attend,
        profile: bool,
        in_graph: bool,
    ) -> anyhow::Result<Tensor> {
        let mut off = Stopwatch::off();
        let sw = if profile { &mut self.sw } else { &mut off };
        sw.mark(&self.device, "d:inputs");
        let mut x = if in_graph {
            gather_rows_trusted(&self.params.embed, tokens)
        } else {
            gather_rows(&self.params.embed, tokens)
        }
        .context("embedding lookup")?; // [N,C]
        sw.mark(&self.device, "d:embed");
        let eps = self.cfg.rms_norm_eps as f32;
        let layers = &self.params.layers;
        let Some(first) = layers.first() else {
            return Ok(rmsnorm(&x, &self.params.final_norm, eps)?.0);
        };
        let (mut xn, _) = rmsnorm(&x, &first.attn_norm, eps)?; // [N,C]
        sw.mark(&self.device, "d:add_rmsnorm");
        for (l, lp) in layers.iter().enumerate() {
            let next_norm = match layers.get(l + 1) {
                Some(next) => &next.attn_norm,
                None => &self.params.final_norm,
            };
            (x, xn) = layer(
                x,
                &xn,
                lp,
                &self.fused[l],
                next_norm,
                self.cfg,
                &mut self.cache[l],
                self.rope.as_ref(),
                positions,
                slots,
                attend,
                sw,
                &self.device,
            )
            .with_context(|| format!("layer {l}"))?;
        }
        Ok(xn)
    }

    /// LM head of the rows `last` of the final-normed `x` [N,C] -> logits [S,V] on the device.
    /// `profile` charges the decode LM head to the stopwatch.
    fn logits(
        &mut self,
        x: &Tensor,
        last: Option<&[u32]>,
        profile: bool,
    ) -> anyhow::Result<Tensor> {
        let rows = match last {
            Some(idx) => Some(gather_rows(x, &self.u32s(idx)?)?), // [N,C] -> [S,C]
            None => None,
        };
        let xn = rows.as_ref().unwrap_or(x);
        let logits = linear(xn, self.params.lm_head_weight(), None)?; // [S,V]
        if profile {
            self.sw.mark(&self.device, "d:lm_head");
        }
        Ok(logits)
    }
}

/// One layer. `x` [N,C] is the residual stream entering it and `xn` its attention-normed rows;
/// returns (r, next): r [N,C] the layer's output (residual stream) and next = `next_norm`(r), both
/// from one fused `add_rmsnorm` of the down projection's residual and the norm that follows it (the
/// next layer's attention norm, or the final norm after the last layer).
#[allow(clippy::too_many_arguments)]
fn layer(
    x: Tensor,
    xn: &Tensor,
    lp: &LayerParams,
    fl: &FusedLayer,
    next_norm: &Tensor,
    cfg: &ModelConfig,
    cache: &mut LayerCache,
    rope: Option<&RopeTable>,
    positions: &Tensor,
    slots: &Tensor,
    attend: &Attend,
    sw: &mut Stopwatch,
    dev: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let n = x.shape()[0];
    let (h, d) = (cfg.num_attention_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let theta = cfg.rope_theta as f32;
    let scale = 1.0 / (d as f32).sqrt();

    // [N,C] -> [N,(H+2K)·D] f32 accumulators; the bias is added before the one rounding.
    let acc = linear_out(xn, &fl.qkv, None, DType::F32)?;
    sw.mark(dev, "d:qkv_linear");
    let (bias, (kc, vc)) = (fl.qkv_bias.as_ref(), (&mut cache.k, &mut cache.v));
    let att = match attend {
        Attend::Paged {
            block_tables,
            context_lens,
            block_size,
            max_context_len,
            fused: true,
        } => {
            let qkv = QkvInputs {
                acc: &acc,
                bias,
                pos: positions,
                slots,
                heads: h,
                theta,
                table: rope,
            };
            let (bt, cl, bs, max_len) =
                (*block_tables, *context_lens, *block_size, *max_context_len);
            let att = paged_attention_qkv_fused(&qkv, kc, vc, bt, cl, bs, max_len, scale)?;
            drop(acc);
            att
        }
        _ => {
            let qkv = match rope {
                Some(table) => {
                    qkv_rope_cache_table(&acc, bias, positions, slots, kc, vc, h, table)?
                }
                None => qkv_rope_cache(&acc, bias, positions, slots, kc, vc, h, theta)?,
            }; // q [N,H,D], k, v [N,K,D], k, v also in the cache
            drop(acc);
            sw.mark(dev, "d:qkv_rope_cache");
            match attend {
                Attend::Packed { cu_seqlens } => {
                    attention(&qkv.q, &qkv.k, &qkv.v, cu_seqlens, scale)?.0
                }
                Attend::Paged {
                    block_tables,
                    context_lens,
                    block_size,
                    max_context_len,
                    ..
                } => paged_attention(
                    &qkv.q,
                    &cache.k,
                    &cache.v,
                    block_tables,
                    context_lens,
                    *block_size,
                    *max_context_len,
                    scale,
                )?,
            }
        }
    }; // [N,H,D]
    sw.mark(dev, "d:attention");
    let att = att.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let o = linear(&att, &lp.o, None)?; // [N,C]
    sw.mark(dev, "d:o_linear");
    let mid = add_rmsnorm(&x, &o, &lp.mlp_norm, eps)?; // r = x + o, out = mlp_norm(r)
    drop((x, o));
    sw.mark(dev, "d:add_rmsnorm");
    let gu = linear(&mid.out, &fl.gate_up, None)?; // [N,2F]
    sw.mark(dev, "d:gate_up_linear");
    let act = swiglu_packed(&gu)?; // [N,F]
    drop(gu);
    sw.mark(dev, "d:swiglu");
    let out = match down_splits(&act, next_norm) {
        Some(splits) => {
            let parts = linear_ksplit(&act, &lp.down, splits)?; // [S,N,C] f32
            sw.mark(dev, "d:down_linear");
            add_rmsnorm_partials(&mid.r, &parts, next_norm, eps)? // r = mid + Σ parts, next norm
        }
        None => {
            let down = linear(&act, &lp.down, None)?; // [N,C]
            sw.mark(dev, "d:down_linear");
            add_rmsnorm(&mid.r, &down, next_norm, eps)? // r = mid + down, next norm
        }
    };
    sw.mark(dev, "d:add_rmsnorm");
    Ok((out.r, out.out))
}

/// K-splits of the down projection in decode-sized steps on a GPU: it runs as S partial products
/// over slices of F (`linear_ksplit`, one strided-batched cuBLAS call) summed in the residual add +
/// norm that follows (`add_rmsnorm_partials`), instead of cuBLAS's own split-K, whose reduce is a
/// kernel of its own (docs/rollout.md item 11). Default: S = [`DOWN_KSPLIT`] for steps of 64 to
/// 256 rows (measured on an H100, 2026-12-07: B 256 and B 64, docs/benchmarks.md).
/// `REALIGN_DOWN_KSPLIT=S` (read once) forces S for every step of at most 256 rows; `=0` turns the
/// path off. None where it is off or the shapes do not allow it (S must divide F into slices of a
/// multiple of 8; C a multiple of 8 up to 8192).
fn down_splits(act: &Tensor, norm: &Tensor) -> Option<usize> {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("REALIGN_DOWN_KSPLIT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let on_gpu = matches!(act.device(), Device::Cuda(_));
    down_splits_for(
        forced,
        on_gpu,
        act.shape()[0],
        act.shape()[1],
        norm.shape()[0],
    )
}

/// [`down_splits`]'s rule for `rows` × F activations and C outputs, given the forced split
/// count (`REALIGN_DOWN_KSPLIT`, if set) and whether the step runs on a GPU.
fn down_splits_for(
    forced: Option<usize>,
    on_gpu: bool,
    rows: usize,
    f: usize,
    c: usize,
) -> Option<usize> {
    let splits = match forced {
        Some(0) => return None,
        Some(s) => s,
        None if rows >= 64 => DOWN_KSPLIT,
        None => return None,
    };
    let fits = on_gpu
        && rows <= 256
        && f.is_multiple_of(splits)
        && (f / splits).is_multiple_of(8)
        && c.is_multiple_of(8)
        && c <= 8192;
    fits.then_some(splits)
}

/// The default K-splits of [`down_splits`]: 4 (Qwen2.5-0.5B's F 4864 in slices of 1216) measured
/// fastest of 2, 4 and 8 at B 256 on an H100.
const DOWN_KSPLIT: usize = 4;

impl StepModel for LlamaRunner<'_> {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        // Beyond a sliding window we would need windowed attention, which is not implemented.
        let window = self.cfg.sliding_window.unwrap_or(usize::MAX);
        self.cfg.max_position_embeddings.min(window)
    }

    fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.cfg.num_hidden_layers
            * block_size
            * self.cfg.num_key_value_heads
            * self.cfg.head_dim
            * self.dtype.size_in_bytes()
    }

    fn alloc_cache(&mut self, num_blocks: usize, block_size: usize) -> anyhow::Result<()> {
        let shape = [
            num_blocks * block_size,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        ]; // [P,K,D]
        self.graphs.clear();
        self.cache.clear();
        for _ in 0..self.cfg.num_hidden_layers {
            self.cache.push(LayerCache {
                k: Tensor::zeros(&shape, self.dtype, &self.device)?,
                v: Tensor::zeros(&shape, self.dtype, &self.device)?,
            });
        }
        self.block_size = block_size;
        // No context is longer than the pool or the model's window.
        let positions = (num_blocks * block_size)
            .min(self.max_context())
            .clamp(1, ROPE_TABLE_MAX);
        self.rope = Some(
            RopeTable::new(
                positions,
                self.cfg.head_dim,
                self.cfg.rope_theta as f32,
                &self.device,
            )
            .context("building the RoPE table")?,
        );
        Ok(())
    }

    fn free_cache(&mut self) {
        self.graphs.clear();
        self.cache = Vec::new();
        self.rope = None;
        self.feed = None;
        self.readback_steps = [None; 2];
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> anyhow::Result<()> {
        let src: Vec<u32> = copies.iter().map(|c| c.src).collect();
        let dst: Vec<u32> = copies.iter().map(|c| c.dst).collect();
        let (src, dst) = (self.u32s(&src)?, self.u32s(&dst)?);
        for c in &mut self.cache {
            kv_cache_copy_blocks(&mut c.k, &mut c.v, &src, &dst, self.block_size)?;
        }
        Ok(())
    }

    fn prefill(&mut self, batch: &PrefillBatch) -> anyhow::Result<Vec<f32>> {
        Ok(self.prefill_logits(batch)?.to_vec_f32()?)
    }

    fn decode(&mut self, batch: &DecodeBatch) -> anyhow::Result<Vec<f32>> {
        Ok(self.decode_logits(batch)?.to_vec_f32()?)
    }

    fn decode_submit(
        &mut self,
        batch: &DecodeBatch,
        specs: &[SampleSpec],
        prev: Option<&Submitted>,
    ) -> anyhow::Result<Submitted> {
        if !self.device.is_cuda() {
            return submit_at_once(self, batch, specs, prev);
        }
        let s = batch.num_seqs();
        if !self.overlap {
            // The step runs and its samples are read at once (the serial loop's GPU path).
            let prev = match prev {
                Some(Submitted::Ready(v)) => Some(v.as_slice()),
                Some(Submitted::Queued { .. }) => {
                    anyhow::bail!("internal error: a queued decode step without overlap")
                }
                None => None,
            };
            let batch = batch.resolved(prev)?;
            if self.use_graphs && !self.sw.on() && !self.graphs_failed {
                let out = self.submit_graph(&batch, &batch.tokens, specs, None)?;
                return Ok(Submitted::Ready(out.expect("read at once")));
            }
            let logits = self.decode_logits(&batch)?;
            let spec = SampleSpec::pack(specs, logits.device())?;
            let drawn = sample_tokens(&logits, &spec)?;
            let t_wait = Instant::now();
            let out = read_samples(&drawn)?;
            self.times.wait_s += t_wait.elapsed().as_secs_f64();
            return Ok(Submitted::Ready(out));
        }
        // The input tokens: a `from_prev` row's is tagged for `resolve_tokens` when the previous
        // step is queued (its samples are in `feed`), looked up here when they are on the host.
        let tokens: Vec<u32> = match prev {
            Some(&Submitted::Queued { step, rows }) if batch.reads_prev() => {
                anyhow::ensure!(
                    step + 1 == self.queued,
                    "internal error: a decode step reads step {step}, but {} was queued last",
                    self.queued.wrapping_sub(1)
                );
                batch
                    .tokens
                    .iter()
                    .zip(&batch.from_prev)
                    .map(|(&t, &r)| match r {
                        NO_PREV => Ok(t),
                        r if (r as usize) < rows => Ok(FROM_PREV | r),
                        r => anyhow::bail!(
                            "internal error: decode row reads row {r} of a step of {rows}"
                        ),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            Some(Submitted::Ready(v)) => batch.resolved(Some(v))?.tokens.clone(),
            _ => batch.resolved(None)?.tokens.clone(),
        };
        let b = bucket_of(s);
        self.ensure_feed(b)?;
        let step = self.queued;
        let slot = (step % 2) as usize;
        anyhow::ensure!(
            self.readback_steps[slot].is_none(),
            "internal error: decode step {step} queued while step {} is unread",
            step.wrapping_sub(2)
        );
        // [B, 2] samples per buffer (pinned host memory is slow to allocate: done rarely).
        while self.readbacks.len() < 2 {
            self.readbacks
                .push(Readback::new(&self.cuda()?, 2 * b.max(256))?);
        }
        if self.readbacks[slot].capacity() < 2 * b {
            self.readbacks[slot] = Readback::new(&self.cuda()?, 2 * b.next_power_of_two())?;
        }
        // Profiling times each op with a sync, which a graph cannot contain.
        if self.use_graphs && !self.sw.on() && !self.graphs_failed {
            self.submit_graph(batch, &tokens, specs, Some(slot))?;
        } else {
            self.submit_eager(batch, &tokens, specs, slot)?;
        }
        self.readback_steps[slot] = Some((step, s));
        self.queued += 1;
        Ok(Submitted::Queued { step, rows: s })
    }

    fn decode_wait(&mut self, step: Submitted) -> anyhow::Result<Vec<(u32, f32)>> {
        let (step, rows) = match step {
            Submitted::Ready(v) => return Ok(v),
            Submitted::Queued { step, rows } => (step, rows),
        };
        let slot = (step % 2) as usize;
        anyhow::ensure!(
            self.readback_steps[slot] == Some((step, rows)),
            "internal error: decode step {step} is not queued"
        );
        let t_wait = Instant::now();
        let out = self.readbacks[slot].wait();
        self.times.wait_s += t_wait.elapsed().as_secs_f64();
        self.readback_steps[slot] = None;
        let out = out?;
        anyhow::ensure!(
            out.len() >= 2 * rows,
            "internal error: short decode read-back"
        );
        Ok(out[..2 * rows]
            .chunks_exact(2)
            .map(|p| (p[0], f32::from_bits(p[1])))
            .collect())
    }

    fn take_decode_times(&mut self) -> DecodeTimes {
        std::mem::take(&mut self.times)
    }

    fn synchronize(&self) -> anyhow::Result<()> {
        Ok(self.device.synchronize()?)
    }

    fn graph_replays(&self) -> usize {
        self.graph_replays
    }

    fn profile(&self) -> Vec<(&'static str, f64)> {
        self.sw.times.phases.clone()
    }

    fn prefill_logits(&mut self, batch: &PrefillBatch) -> anyhow::Result<Tensor> {
        let tokens = self.u32s(&batch.tokens)?;
        let positions = self.u32s(&batch.positions)?;
        let slots = self.u32s(&batch.slots)?;
        let cu_seqlens = self.u32s(&batch.cu_seqlens)?;
        let x = self.layers(
            &tokens,
            &positions,
            &slots,
            &Attend::Packed {
                cu_seqlens: &cu_seqlens,
            },
            false,
            false,
        )?;
        let last: Vec<u32> = batch.cu_seqlens[1..].iter().map(|&e| e - 1).collect();
        self.logits(&x, Some(&last), false)
    }

    fn decode_logits(&mut self, batch: &DecodeBatch) -> anyhow::Result<Tensor> {
        anyhow::ensure!(
            !batch.reads_prev(),
            "internal error: an unresolved decode batch"
        );
        let s = batch.num_seqs();
        if let Some(blocks) = self.lane_split(s).filter(|_| !self.sw.on()) {
            let lanes = blocks
                .iter()
                .map(|&(first, rows)| LaneRows::of_batch(&self.device, batch, first, rows))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let max_ctx = batch.context_lens.iter().copied().max().unwrap_or(0) as usize;
            let x = self.layers_in_lanes(&lanes, max_ctx, false)?; // [S,C]
            return self.logits(&x, None, false);
        }
        let tokens = self.u32s(&batch.tokens)?;
        self.decode_logits_of(&tokens, batch)
    }
}

impl LlamaRunner<'_> {
    /// The decode forward of `batch` with its input tokens [S] already on the device.
    fn decode_logits_of(&mut self, tokens: &Tensor, batch: &DecodeBatch) -> anyhow::Result<Tensor> {
        let s = batch.num_seqs();
        self.sw.reset();
        let positions = self.u32s(&batch.positions)?;
        let slots = self.u32s(&batch.slots)?;
        let block_tables = Tensor::from_u32(
            batch.block_tables.clone(),
            &[s, batch.max_blocks],
            &self.device,
        )?;
        let context_lens = self.u32s(&batch.context_lens)?;
        let max_context_len = batch.context_lens.iter().copied().max().unwrap_or(0) as usize;
        let attend = Attend::Paged {
            block_tables: &block_tables,
            context_lens: &context_lens,
            block_size: self.block_size,
            max_context_len,
            fused: self.fused_attention,
        };
        let x = self.layers(tokens, &positions, &slots, &attend, true, false)?;
        self.logits(&x, None, true)
    }

    fn cuda(&self) -> anyhow::Result<kernels::cuda::CudaDevice> {
        match &self.device {
            Device::Cuda(d) => Ok(d.clone()),
            Device::Cpu => anyhow::bail!("internal error: a GPU decode path on the CPU"),
        }
    }

    /// Makes `feed` hold at least `rows` rows, keeping what it holds (the last step's samples,
    /// which the next step may read). Growing moves it, so the captured graphs (which hold its
    /// address) are dropped, after the device has finished any that is running.
    fn ensure_feed(&mut self, rows: usize) -> anyhow::Result<()> {
        let have = self.feed.as_ref().map_or(0, |f| f.shape()[0]);
        if have >= rows {
            return Ok(());
        }
        // Powers of two: few regrowths (each one re-captures the graphs).
        let rows = rows.next_power_of_two().max(512);
        let mut feed = Tensor::zeros(&[rows, 2], DType::U32, &self.device)?; // [R,2]
        if let Some(old) = &self.feed {
            copy_u32_prefix(old, &mut feed)?;
            self.device.synchronize()?;
            self.graphs.clear();
        }
        self.feed = Some(feed);
        Ok(())
    }

    /// A decode step op by op on the GPU (graphs off, profiling, or a failed capture), queued:
    /// tokens resolved from `feed`, forward, sampling, samples left in `feed` and copied back
    /// into readback buffer `slot`.
    fn submit_eager(
        &mut self,
        batch: &DecodeBatch,
        tokens: &[u32],
        specs: &[SampleSpec],
        slot: usize,
    ) -> anyhow::Result<()> {
        let mut tokens = self.u32s(tokens)?; // [S]
        resolve_tokens(&mut tokens, self.feed.as_ref().expect("ensure_feed"))?;
        let logits = self.decode_logits_of(&tokens, batch)?; // [S,V]
        let spec = SampleSpec::pack(specs, &self.device)?;
        let out = sample_tokens(&logits, &spec)?; // [S,2]
        copy_u32_prefix(&out, self.feed.as_mut().expect("ensure_feed"))?;
        self.readbacks[slot].fetch(&out)?;
        Ok(())
    }
}

/// `REALIGN_CUDA_GRAPHS=1` / `=0`: decode steps on a GPU run as CUDA graphs, or op by op,
/// whatever the engine config says (docs/rollout.md, "Speed"); unset or any other value: the
/// config decides.
pub fn graphs_env() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("REALIGN_CUDA_GRAPHS").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    })
}

/// Batch sizes a decode graph is captured for: a step of S sequences runs the graph of the
/// smallest bucket ≥ S, padded with idle rows.
fn bucket_of(s: usize) -> usize {
    if s <= 8 {
        8
    } else if s <= 256 {
        s.next_power_of_two()
    } else {
        s.next_multiple_of(128)
    }
}

/// Block-table widths are rounded up to this many blocks, so that a rollout needs few graphs.
const TABLE_ROUND: usize = 32;

/// One captured decode step (forward + sampling) for a bucket, with the fixed device buffers its
/// kernels read and write; each step packs its inputs into `staging`, uploads them in one copy and
/// replays the graph, whose first nodes scatter the upload into the buffers below and take the
/// tagged tokens from the runner's `feed` (the previous step's samples); its last node copies its
/// samples into `feed` for the next step.
struct DecodeGraph {
    graph: Option<kernels::cuda::Graph>,
    /// The step's inputs packed as [tokens S | positions S | slots S | lens S | spec S·cols |
    /// tables S·M] (see [`DecodeGraph::layout`]).
    staging: Staging,
    /// [S] tokens, positions, slots (u32::MAX for idle rows: the cache write skips them).
    tokens: Tensor,
    positions: Tensor,
    slots: Tensor,
    /// [S, M] block tables (idle rows: block 0) and [S] context lengths (idle rows: 1).
    tables: Tensor,
    lens: Tensor,
    /// [S, cols] sampling specs and the [S, 2] sampled (token, log-prob bits).
    spec: Tensor,
    out: Tensor,
    /// With decode lanes: the step's inputs per lane, scattered there instead of into the
    /// whole-step tensors above (which then go unused, except spec and out).
    lanes: Vec<LaneRows>,
}

/// Graph key: (bucket S, table width M, spec columns).
type GraphKey = (usize, usize, usize);

impl DecodeGraph {
    /// `lane_blocks`: the lanes' row blocks (first row, rows) when the step is split.
    fn new(
        dev: &Device,
        cuda: &kernels::cuda::CudaDevice,
        key: GraphKey,
        lane_blocks: Option<Vec<(usize, usize)>>,
    ) -> anyhow::Result<Self> {
        let (b, m, cols) = key;
        let u32s = |shape: &[usize]| Tensor::zeros(shape, DType::U32, dev);
        let lanes = lane_blocks
            .unwrap_or_default()
            .into_iter()
            .map(|(first, rows)| LaneRows::zeros(dev, first, rows, m))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(DecodeGraph {
            lanes,
            graph: None,
            staging: Staging::new(cuda, b * (4 + cols + m))?,
            tokens: u32s(&[b])?,
            positions: u32s(&[b])?,
            slots: u32s(&[b])?,
            lens: u32s(&[b])?,
            spec: u32s(&[b, cols])?,
            tables: u32s(&[b, m])?,
            out: u32s(&[b, 2])?,
        })
    }

    /// Offsets of tokens, positions, slots, lens, spec and tables in the staging buffer.
    fn layout(key: GraphKey) -> [usize; 6] {
        let (b, _, cols) = key;
        [0, b, 2 * b, 3 * b, 4 * b, 4 * b + b * cols]
    }

    /// Packs a step's inputs, padded to the bucket, into the pinned staging buffer: idle rows
    /// decode token 0 at position 0 into no slot, with context length 1 and a greedy spec.
    fn pack(
        &mut self,
        key: GraphKey,
        batch: &DecodeBatch,
        tokens: &[u32],
        specs: &[SampleSpec],
    ) -> anyhow::Result<()> {
        let (b, m, cols) = key;
        let s = batch.num_seqs();
        let [_, o_pos, o_slot, o_len, o_spec, o_tab] = Self::layout(key);
        let buf = self.staging.host_mut()?;
        let pad = |dst: &mut [u32], src: &[u32], fill: u32| {
            dst[..src.len()].copy_from_slice(src);
            dst[src.len()..].fill(fill);
        };
        pad(&mut buf[..o_pos], tokens, 0);
        pad(&mut buf[o_pos..o_slot], &batch.positions, 0);
        pad(&mut buf[o_slot..o_len], &batch.slots, u32::MAX);
        pad(&mut buf[o_len..o_spec], &batch.context_lens, 1);
        for (r, row) in buf[o_spec..o_tab].chunks_exact_mut(cols).enumerate() {
            match specs.get(r) {
                Some(spec) => spec.write_row(row)?,
                None => SampleSpec::greedy(r as u32).write_row(row)?,
            }
        }
        let w = batch.max_blocks;
        for (r, row) in buf[o_tab..].chunks_exact_mut(m).enumerate().take(b) {
            let src = if r < s {
                &batch.block_tables[r * w..(r + 1) * w]
            } else {
                &[][..]
            };
            pad(row, src, 0);
        }
        Ok(())
    }

    /// Queues the device-side scatter of the uploaded buffer into the input tensors (recorded
    /// into the graph as its first nodes).
    fn scatter(&mut self, key: GraphKey) -> anyhow::Result<()> {
        let [o_tok, o_pos, o_slot, o_len, o_spec, o_tab] = Self::layout(key);
        let st = &self.staging;
        if !self.lanes.is_empty() {
            let m = key.1;
            for lane in &mut self.lanes {
                let r = lane.first;
                st.scatter(o_tok + r, &mut lane.tokens)?;
                st.scatter(o_pos + r, &mut lane.positions)?;
                st.scatter(o_slot + r, &mut lane.slots)?;
                st.scatter(o_len + r, &mut lane.lens)?;
                st.scatter(o_tab + r * m, &mut lane.tables)?;
            }
            return st.scatter(o_spec, &mut self.spec).map_err(Into::into);
        }
        st.scatter(o_tok, &mut self.tokens)?;
        st.scatter(o_pos, &mut self.positions)?;
        st.scatter(o_slot, &mut self.slots)?;
        st.scatter(o_len, &mut self.lens)?;
        st.scatter(o_spec, &mut self.spec)?;
        st.scatter(o_tab, &mut self.tables)?;
        Ok(())
    }
}

impl LlamaRunner<'_> {
    /// One decode step with sampling on the GPU as a CUDA graph: packs the batch, padded to its
    /// bucket, into one upload and replays; the first step of a bucket runs eagerly and captures
    /// the graph for the next ones. With a readback `slot` (overlap) the samples are copied back
    /// into that buffer behind the step and None is returned; without, they are read at once.
    fn submit_graph(
        &mut self,
        batch: &DecodeBatch,
        tokens: &[u32],
        specs: &[SampleSpec],
        slot: Option<usize>,
    ) -> anyhow::Result<Option<Vec<(u32, f32)>>> {
        let s = batch.num_seqs();
        let b = bucket_of(s);
        let m = batch.max_blocks.max(1).next_multiple_of(TABLE_ROUND);
        let nb = specs.iter().map(|x| x.banned.len()).max().unwrap_or(0);
        let key: GraphKey = (b, m, SPEC_HEAD + nb);
        let dev = self.device.clone();
        let cuda = self.cuda()?;
        let max_ctx = m * self.block_size;
        let mut g = match self.graphs.remove(&key) {
            Some(g) => g,
            None => DecodeGraph::new(&dev, &cuda, key, self.lane_split(b))?,
        };
        let t_pack = Instant::now();
        let result = g
            .pack(key, batch, tokens, specs)
            .and_then(|_| Ok(g.staging.send()?));
        self.times.pack_s += t_pack.elapsed().as_secs_f64();
        let result = result.and_then(|_| match &g.graph {
            Some(graph) => {
                self.graph_replays += 1;
                let t_launch = Instant::now();
                let launched = graph.launch().map_err(anyhow::Error::from);
                self.times.launch_s += t_launch.elapsed().as_secs_f64();
                launched
            }
            None => {
                // First step of this key: run it (this also loads every kernel), then record the
                // same step on the same buffers for the next ones (recording runs nothing).
                let eager = g
                    .scatter(key)
                    .and_then(|_| self.decode_into(&mut g, max_ctx, false));
                if eager.is_ok() {
                    let captured = cuda.capture(|| {
                        g.scatter(key)
                            .and_then(|_| self.decode_into(&mut g, max_ctx, true))
                            .map_err(|e| kernels::Error::msg(format!("{e:#}")))
                    });
                    match captured {
                        Ok(graph) => g.graph = Some(graph),
                        Err(e) => {
                            tracing::warn!("decode step not captured as a CUDA graph: {e}");
                            self.graphs_failed = true;
                        }
                    }
                }
                eager
            }
        });
        let result = match slot {
            Some(slot) => result
                .and_then(|_| Ok(self.readbacks[slot].fetch(&g.out)?))
                .map(|_| None),
            None => {
                let t_wait = Instant::now();
                let out = result.and_then(|_| Ok(read_samples(&g.out)?));
                self.times.wait_s += t_wait.elapsed().as_secs_f64();
                out.map(|v| Some(v[..s].to_vec()))
            }
        };
        self.graphs.insert(key, g);
        result
    }

    /// The decode step (forward, LM head, sampling) from a graph's buffers into its output.
    fn decode_into(
        &mut self,
        g: &mut DecodeGraph,
        max_context_len: usize,
        in_graph: bool,
    ) -> anyhow::Result<()> {
        let attend = Attend::Paged {
            block_tables: &g.tables,
            context_lens: &g.lens,
            block_size: self.block_size,
            max_context_len,
            fused: self.fused_attention,
        };
        if self.overlap {
            let feed = self.feed.as_ref().expect("ensure_feed");
            if g.lanes.is_empty() {
                resolve_tokens(&mut g.tokens, feed)?; // tagged rows: the previous step's samples
            }
            for lane in &mut g.lanes {
                resolve_tokens(&mut lane.tokens, feed)?;
            }
        }
        // [S,C] the final-normed rows, whole or by lanes.
        let x = if g.lanes.is_empty() {
            self.layers(&g.tokens, &g.positions, &g.slots, &attend, false, in_graph)?
        } else {
            self.layers_in_lanes(&g.lanes, max_context_len, in_graph)?
        };
        let logits = self.logits(&x, None, false)?; // [S,V]
        sample_tokens_into(&logits, &g.spec, &mut g.out)?; // [S,2]
        if self.overlap {
            copy_u32_prefix(&g.out, self.feed.as_mut().expect("ensure_feed"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::down_splits_for;

    #[test]
    fn the_down_projection_splits_only_decode_sized_gpu_steps_that_divide() {
        // Qwen2.5-0.5B: F 4864, C 896. Default: 4 splits from 64 to 256 rows on a GPU.
        let qwen = |forced, gpu, rows| down_splits_for(forced, gpu, rows, 4864, 896);
        assert_eq!(qwen(None, true, 256), Some(4));
        assert_eq!(qwen(None, true, 64), Some(4));
        assert_eq!(qwen(None, true, 63), None); // small steps: unmeasured, off
        assert_eq!(qwen(None, true, 257), None); // prefill-sized
        assert_eq!(qwen(None, false, 256), None); // the CPU path never splits
                                                  // Forced: any step of at most 256 rows; 0 turns it off.
        assert_eq!(qwen(Some(2), true, 8), Some(2));
        assert_eq!(qwen(Some(0), true, 256), None);
        assert_eq!(qwen(Some(2), true, 300), None);
        // S must divide F into slices of a multiple of 8: 4864 / 16 = 304 does, 5 does not divide.
        assert_eq!(qwen(Some(16), true, 128), Some(16));
        assert_eq!(qwen(Some(5), true, 128), None);
        // SmolLM2-135M (F 1536, C 576); C not a multiple of 8 or too wide: off.
        assert_eq!(down_splits_for(None, true, 256, 1536, 576), Some(4));
        assert_eq!(down_splits_for(None, true, 256, 1536, 580), None);
        assert_eq!(down_splits_for(None, true, 256, 1536, 8200), None);
    }
}
