//! Checks on the packed per-token layout every objective and advantage function reads.
//!
//! Sequences are packed back to back into N token slots; `cu_seqlens[S+1]` holds the offsets
//! (`cu_seqlens[0] = 0`, `cu_seqlens[S] = N`), the same convention the attention kernel uses.
//! Per-token arrays are `[N]`; a mask of 1.0 marks a token that counts (a response token), 0.0 one
//! that does not (prompt, padding).

use anyhow::{bail, Result};

/// Errors unless `cu_seqlens` is a valid offset table for `n` tokens.
pub fn check_cu_seqlens(cu_seqlens: &[usize], n: usize, what: &str) -> Result<()> {
    if cu_seqlens.is_empty() || cu_seqlens[0] != 0 {
        bail!("{what}: cu_seqlens must start with 0, got {cu_seqlens:?}");
    }
    if cu_seqlens.windows(2).any(|w| w[1] < w[0]) {
        bail!("{what}: cu_seqlens must be non-decreasing, got {cu_seqlens:?}");
    }
    let last = *cu_seqlens.last().unwrap_or(&0);
    if last != n {
        bail!("{what}: cu_seqlens ends at {last} but there are {n} tokens");
    }
    Ok(())
}

/// Errors unless `xs` has `n` elements.
pub fn check_len<T>(xs: &[T], n: usize, name: &str, what: &str) -> Result<()> {
    if xs.len() != n {
        bail!("{what}: `{name}` has {} elements, expected {n}", xs.len());
    }
    Ok(())
}

/// The sequences as token ranges.
pub fn seq_ranges(cu_seqlens: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    cu_seqlens.windows(2).map(|w| w[0]..w[1])
}
