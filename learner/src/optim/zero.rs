//! ZeRO-1 by parameter: each of W data-parallel ranks keeps the optimiser state (f32 master and
//! moments) of a share of the parameters, chosen so the shares hold about equal element counts
//! (largest first to the least-loaded rank, as for token balancing). A step is then
//!   1. every rank: s_r = Σ g² over its share ([`super::AdamW::owned_sum_squares`]);
//!   2. all-reduce: ‖g‖ = sqrt(Σ_r s_r), the same global norm everyone clips by;
//!   3. every rank: AdamW on its share ([`super::AdamW::step_with_norm`]);
//!   4. all-gather: each updated parameter is broadcast from its owner.
//!
//! Per-element arithmetic is that of the unsharded step, so the result is bit-identical.

use std::collections::BTreeSet;

use anyhow::Result;
use model::Params;

use crate::batch::balance_by_tokens;

/// The parameter names each of `world` ranks owns.
pub fn shard_by_numel(params: &Params, world: usize) -> Result<Vec<BTreeSet<String>>> {
    let named = params.tensors();
    let sizes: Vec<usize> = named.iter().map(|(_, t)| t.numel()).collect();
    let parts = balance_by_tokens(&sizes, world)?;
    Ok(parts
        .into_iter()
        .map(|p| p.into_iter().map(|i| named[i].0.clone()).collect())
        .collect())
}
