//! Packed per-token arrays of prompt+response sequences, in the next-token layout of `lm.rs`:
//! position t carries the log-prob / value / advantage of token t+1, so the response tokens
//! `p..L` of a sequence with a prompt of p tokens sit at positions `p-1..L-1`.

use std::ops::Range;

/// `mask[N]` (1.0 on the positions that predict response tokens) and `cu_seqlens[S+1]`.
pub fn response_mask(lens: &[usize], prompt_lens: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let mut mask = Vec::with_capacity(lens.iter().sum());
    let mut cu = vec![0];
    for (&l, &p) in lens.iter().zip(prompt_lens) {
        for t in 0..l {
            mask.push(if t + 1 >= p && t + 1 < l { 1.0 } else { 0.0 });
        }
        cu.push(cu.last().unwrap() + l);
    }
    (mask, cu)
}

/// The token range of sequences `seqs` in a packed array, and their local `cu_seqlens`.
pub fn slice(cu: &[usize], seqs: Range<usize>) -> (Range<usize>, Vec<usize>) {
    let (a, b) = (cu[seqs.start], cu[seqs.end]);
    let local = cu[seqs.start..=seqs.end].iter().map(|&c| c - a).collect();
    (a..b, local)
}

/// Gathers the given sequences of a packed array into a new packed array.
pub fn gather<T: Copy>(x: &[T], cu: &[usize], seqs: &[usize]) -> Vec<T> {
    let mut out = Vec::new();
    for &s in seqs {
        out.extend_from_slice(&x[cu[s]..cu[s + 1]]);
    }
    out
}

/// `cu_seqlens` of the given sequences once gathered.
pub fn gather_cu(cu: &[usize], seqs: &[usize]) -> Vec<usize> {
    let mut out = vec![0];
    for &s in seqs {
        out.push(out.last().unwrap() + cu[s + 1] - cu[s]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_marks_positions_that_predict_the_response() {
        // prompt [a b] response [c d]: positions 1 (predicts c) and 2 (predicts d).
        let (mask, cu) = response_mask(&[4, 3], &[2, 3]);
        assert_eq!(mask, [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(cu, [0, 4, 7]);
        let (r, local) = slice(&cu, 1..2);
        assert_eq!((r, local), (4..7, vec![0, 3]));
        assert_eq!(
            gather(&[1, 2, 3, 4, 5, 6, 7], &cu, &[1, 0]),
            [5, 6, 7, 1, 2, 3, 4]
        );
        assert_eq!(gather_cu(&cu, &[1, 0]), [0, 3, 7]);
    }
}
