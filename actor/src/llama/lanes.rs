//! Decode lanes: a decode step's rows split into two to four blocks whose layers run side by side
//! on as many streams of the GPU (`CudaDevice::fork_lanes`), then meet again for the LM head and
//! sampling.
//!
//! Why: at Qwen2.5-0.5B shapes a B 256 decode step is a chain of ~200 kernels, each too small to
//! keep the H100 busy to its end (latency-bound GEMMs, a row kernel per norm, one partition of
//! attention per sequence): their sum is the step time, at ~4× the memory floor (docs/rollout.md).
//! Independent row blocks give the GPU more chains to fill each kernel's ramp and tail with.
//! Rows never interact inside the layers (attention reads each row's own sequence), so the blocks
//! compute the same function of each row as the whole step. On the CPU the bits are the same; on a
//! GPU a GEMM of fewer rows may take another cuBLAS algorithm, so the last bits can differ (the
//! GPU tests check completions against the unsplit step and greedy parity with HF).

use kernels::ops::write_rows;
use kernels::{Device, Tensor};

use super::{Attend, LlamaRunner};
use crate::step_model::DecodeBatch;

/// Fewest rows a GPU decode step must have to be split into two lanes: below it a step is short
/// enough that a second chain's launches cost more than they overlap.
pub const LANE_MIN_ROWS: usize = 64;

/// Most lanes a decode step can run in: the device's stream and its side lanes.
pub const MAX_DECODE_LANES: usize = 1 + kernels::cuda::MAX_SIDE_LANES;

/// The row blocks (first row, rows) of a decode step of `rows` rows when `lanes` lanes are asked
/// for, or None to run it whole. On a GPU every lane gets at least [`LANE_MIN_ROWS`] / 2 rows, so
/// a step uses as many of the lanes as that allows (none below [`LANE_MIN_ROWS`] rows); on the
/// CPU, which runs the blocks one after the other (for testing), any row count is split. Block i
/// starts at row i · rows / k for k blocks.
pub(super) fn lane_split_for(
    lanes: usize,
    rows: usize,
    on_gpu: bool,
) -> Option<Vec<(usize, usize)>> {
    let per_lane = if on_gpu { LANE_MIN_ROWS / 2 } else { 1 };
    let k = lanes.min(MAX_DECODE_LANES).min(rows / per_lane);
    (k >= 2).then(|| {
        let start = |i: usize| i * rows / k;
        (0..k)
            .map(|i| (start(i), start(i + 1) - start(i)))
            .collect()
    })
}

/// `REALIGN_LANE_SMS=share`: the GEMMs of a split step plan for an equal share of the SMs each
/// (`Lanes::share_sms`) instead of the whole GPU; an A/B knob until measured (read once).
pub fn share_sms_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_LANE_SMS").as_deref() == Ok("share"))
}

/// One lane's share of a decode step's inputs, on the device.
pub(super) struct LaneRows {
    /// First row of the step that this lane computes.
    pub first: usize,
    /// [R] tokens, positions, slots, context lengths.
    pub tokens: Tensor,
    pub positions: Tensor,
    pub slots: Tensor,
    pub lens: Tensor,
    /// [R, M] block tables.
    pub tables: Tensor,
}

impl LaneRows {
    /// Zeroed inputs for rows [first, first + rows) of a step with block tables M wide.
    pub fn zeros(dev: &Device, first: usize, rows: usize, m: usize) -> anyhow::Result<LaneRows> {
        let u32s = |shape: &[usize]| Tensor::zeros(shape, kernels::DType::U32, dev);
        Ok(LaneRows {
            first,
            tokens: u32s(&[rows])?,
            positions: u32s(&[rows])?,
            slots: u32s(&[rows])?,
            lens: u32s(&[rows])?,
            tables: u32s(&[rows, m])?,
        })
    }

    /// Rows [first, first + rows) of a (resolved) host batch.
    pub fn of_batch(
        dev: &Device,
        batch: &DecodeBatch,
        first: usize,
        rows: usize,
    ) -> anyhow::Result<LaneRows> {
        let r = first..first + rows;
        let u32s = |v: &[u32], shape: &[usize]| Tensor::from_u32(v.to_vec(), shape, dev);
        let m = batch.max_blocks;
        Ok(LaneRows {
            first,
            tokens: u32s(&batch.tokens[r.clone()], &[rows])?,
            positions: u32s(&batch.positions[r.clone()], &[rows])?,
            slots: u32s(&batch.slots[r.clone()], &[rows])?,
            lens: u32s(&batch.context_lens[r], &[rows])?,
            tables: u32s(
                &batch.block_tables[first * m..(first + rows) * m],
                &[rows, m],
            )?,
        })
    }

    pub fn rows(&self) -> usize {
        self.tokens.numel()
    }
}

impl LlamaRunner<'_> {
    /// The layers of a decode step given as lanes (row blocks in order, covering the step):
    /// returns the final-normed hidden rows [S,C] of the whole step. On a GPU the first block runs
    /// on the device's stream and each other one on a side lane beside it; on the CPU one after
    /// the other.
    pub(super) fn layers_in_lanes(
        &mut self,
        lanes: &[LaneRows],
        max_context_len: usize,
        in_graph: bool,
    ) -> anyhow::Result<Tensor> {
        let s: usize = lanes.iter().map(LaneRows::rows).sum();
        let c = self.cfg.hidden_size;
        match (&self.device, lanes) {
            (Device::Cuda(cuda), [first, rest @ ..]) if !rest.is_empty() => {
                let cuda = cuda.clone();
                // [S,C], unfilled: the lanes together write every row of it.
                let storage = kernels::Storage::Cuda(cuda.alloc(self.dtype, s * c)?);
                let mut out = Tensor::from_storage(storage, &[s, c], self.device.clone())?;
                let fork = cuda.fork_lanes(rest.len())?;
                if share_sms_requested() {
                    fork.share_sms();
                }
                for (i, lane) in rest.iter().enumerate() {
                    fork.on(i, || -> anyhow::Result<()> {
                        // Everything this allocates is dropped here, on the lane (fork_lanes' rule).
                        let x = self.lane_layers(lane, max_context_len, in_graph)?; // [R,C]
                        Ok(write_rows(&mut out, lane.first, &x)?)
                    })??;
                }
                let x = self.lane_layers(first, max_context_len, in_graph)?; // [R,C]
                write_rows(&mut out, first.first, &x)?;
                fork.join()?;
                Ok(out)
            }
            _ => {
                let mut out = Tensor::zeros(&[s, c], self.dtype, &self.device)?; // [S,C]
                for lane in lanes {
                    let x = self.lane_layers(lane, max_context_len, in_graph)?; // [R,C]
                    write_rows(&mut out, lane.first, &x)?;
                }
                Ok(out)
            }
        }
    }

    /// One lane's layers: its final-normed hidden rows [R,C].
    fn lane_layers(
        &mut self,
        lane: &LaneRows,
        max_context_len: usize,
        in_graph: bool,
    ) -> anyhow::Result<Tensor> {
        let attend = Attend::Paged {
            block_tables: &lane.tables,
            context_lens: &lane.lens,
            block_size: self.block_size,
            max_context_len,
            fused: self.fused_attention,
        };
        self.layers(
            &lane.tokens,
            &lane.positions,
            &lane.slots,
            &attend,
            false,
            in_graph,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_split_only_when_lanes_are_asked_for_and_the_step_is_wide_enough() {
        assert_eq!(lane_split_for(1, 256, true), None);
        assert_eq!(
            lane_split_for(2, 256, true),
            Some(vec![(0, 128), (128, 128)])
        );
        assert_eq!(
            lane_split_for(2, LANE_MIN_ROWS, true),
            Some(vec![
                (0, LANE_MIN_ROWS / 2),
                (LANE_MIN_ROWS / 2, LANE_MIN_ROWS / 2)
            ])
        );
        assert_eq!(lane_split_for(2, LANE_MIN_ROWS - 1, true), None);
        assert_eq!(lane_split_for(2, 3, false), Some(vec![(0, 1), (1, 2)]));
        assert_eq!(lane_split_for(2, 1, false), None);
    }

    #[test]
    fn more_lanes_are_used_as_far_as_each_keeps_half_the_minimum() {
        let four = |rows| lane_split_for(4, rows, true);
        assert_eq!(
            four(256),
            Some(vec![(0, 64), (64, 64), (128, 64), (192, 64)])
        );
        assert_eq!(four(100), Some(vec![(0, 33), (33, 33), (66, 34)]));
        assert_eq!(four(64), Some(vec![(0, 32), (32, 32)]));
        assert_eq!(four(63), None);
        // Never more than the device's stream and its side lanes.
        assert_eq!(
            lane_split_for(9, 1024, true).map(|b| b.len()),
            Some(MAX_DECODE_LANES)
        );
        // Blocks cover the step in order.
        for rows in 2..40 {
            let blocks = lane_split_for(3, rows, false).unwrap();
            assert_eq!(blocks[0].0, 0);
            for w in blocks.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0);
            }
            let last = blocks.last().unwrap();
            assert_eq!(last.0 + last.1, rows);
            assert!(blocks.iter().all(|b| b.1 >= 1));
        }
    }
}
