//! The paged KV cache's bookkeeping (vLLM's block manager): which fixed-size blocks of the pool each
//! sequence owns, in order, with reference counts so that the n samples of one prompt share the
//! prompt's blocks.
//!
//! This file only moves block ids around; the K/V memory itself lives with the model
//! (`crate::kv_cache`). A token at position p of a sequence lives in slot
//! `table[p / block_size] * block_size + p % block_size` of the pool.
//!
//! Sharing rules: a fork copies the parent's table and adds a reference to every block. Full blocks
//! are never written again, so sharing them is free. The last block may be partial: the first
//! sequence that writes into a shared partial block gets a fresh private copy (copy on write), and
//! the caller must copy the K/V rows of that block before the model writes into it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Identifies a sequence inside one rollout.
pub type SeqId = u64;

/// A map keyed by sequence id. Ids are small consecutive integers chosen by the scheduler (not
/// by users), so a multiplicative hash is enough; SipHash cost ~10 lookups × S sequences per
/// decode step on the host while the GPU waits.
pub type SeqMap<V> = HashMap<SeqId, V, BuildHasherDefault<SeqIdHasher>>;

/// Fibonacci hashing of a u64 id (the high bits of id × 2^64/φ).
#[derive(Default)]
pub struct SeqIdHasher(u64);

impl Hasher for SeqIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The pool has no free block for the request. Callers preempt or wait; this is never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache has no free block ({needed} needed, {free} free)")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// A block copy the model must perform before this step's K/V writes: copy-on-write of a shared
/// partial block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
}

/// Block tables and reference counts over a pool of `num_blocks` blocks of `block_size` tokens.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    /// Free block ids; popped from the back so recently freed (cache-warm) blocks are reused first.
    free: Vec<u32>,
    /// References per block; 0 for free blocks.
    refs: Vec<u32>,
    /// Each live sequence's blocks in position order, and how many tokens they hold.
    tables: SeqMap<SeqBlocks>,
    peak_used: usize,
}

#[derive(Debug, Clone, Default)]
struct SeqBlocks {
    blocks: Vec<u32>,
    num_tokens: usize,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockManager {
        assert!(block_size > 0, "block_size must be positive");
        BlockManager {
            block_size,
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            tables: SeqMap::default(),
            peak_used: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Most blocks in use at once since creation.
    pub fn peak_used(&self) -> usize {
        self.peak_used
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.tables.contains_key(&seq)
    }

    /// The blocks of `seq` in position order (empty for an unknown sequence).
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], |t| &t.blocks)
    }

    /// Tokens `seq` holds slots for.
    pub fn num_tokens(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |t| t.num_tokens)
    }

    /// References to `block` (0 when free).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    /// Pool slot of position `pos` of `seq`. Panics if the sequence holds no slot there (a bug of
    /// the caller, not a user error).
    pub fn slot(&self, seq: SeqId, pos: usize) -> u32 {
        let t = &self.tables[&seq];
        assert!(pos < t.num_tokens, "slot {pos} of seq {seq} not allocated");
        t.blocks[pos / self.block_size] * self.block_size as u32 + (pos % self.block_size) as u32
    }

    fn take_block(&mut self) -> u32 {
        let b = self
            .free
            .pop()
            .expect("take_block called without a free block");
        debug_assert_eq!(self.refs[b as usize], 0);
        self.refs[b as usize] = 1;
        self.peak_used = self.peak_used.max(self.num_used());
        b
    }

    fn release_block(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "double free of block {b}");
        *r -= 1;
        if *r == 0 {
            self.free.push(b);
        }
    }

    /// Gives a new sequence slots for its first `num_tokens` tokens (its prompt).
    pub fn allocate(&mut self, seq: SeqId, num_tokens: usize) -> Result<(), OutOfBlocks> {
        assert!(
            !self.tables.contains_key(&seq),
            "seq {seq} already allocated"
        );
        let needed = self.blocks_for(num_tokens);
        if needed > self.free.len() {
            return Err(OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let blocks = (0..needed).map(|_| self.take_block()).collect();
        self.tables.insert(seq, SeqBlocks { blocks, num_tokens });
        Ok(())
    }

    /// Makes `child` share every block of `parent` (prefix sharing of one prompt's samples).
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        assert!(
            !self.tables.contains_key(&child),
            "seq {child} already allocated"
        );
        let t = self.tables[&parent].clone();
        for &b in &t.blocks {
            self.refs[b as usize] += 1;
        }
        self.tables.insert(child, t);
    }

    /// Blocks that appending one token to `seq` would take from the pool (0 or 1).
    pub fn blocks_to_append(&self, seq: SeqId) -> usize {
        let t = &self.tables[&seq];
        let offset = t.num_tokens % self.block_size;
        // A full last block (or none) needs a new one; a shared partial one is copied on write.
        let last_shared = offset != 0 && self.refs[*t.blocks.last().unwrap() as usize] > 1;
        usize::from(offset == 0 || last_shared)
    }

    /// Reserves the slot of one more token of `seq`. Returns the copy the model must do first when
    /// the write lands in a shared partial block. On `OutOfBlocks` nothing changed.
    pub fn append_slot(&mut self, seq: SeqId) -> Result<Option<BlockCopy>, OutOfBlocks> {
        let needed = self.blocks_to_append(seq);
        if needed > self.free.len() {
            return Err(OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let offset = self.tables[&seq].num_tokens % self.block_size;
        let mut copy = None;
        if offset == 0 {
            let b = self.take_block();
            self.tables.get_mut(&seq).unwrap().blocks.push(b);
        } else if needed == 1 {
            let dst = self.take_block();
            let t = self.tables.get_mut(&seq).unwrap();
            let src = std::mem::replace(t.blocks.last_mut().unwrap(), dst);
            self.release_block(src);
            copy = Some(BlockCopy { src, dst });
        }
        self.tables.get_mut(&seq).unwrap().num_tokens += 1;
        Ok(copy)
    }

    /// Returns every block of `seq` (its references) to the pool. Unknown sequences are ignored.
    pub fn free(&mut self, seq: SeqId) {
        if let Some(t) = self.tables.remove(&seq) {
            for b in t.blocks {
                self.release_block(b);
            }
        }
    }

    /// Frees every sequence (end of a rollout).
    pub fn free_all(&mut self) {
        let seqs: Vec<SeqId> = self.tables.keys().copied().collect();
        for s in seqs {
            self.free(s);
        }
        debug_assert_eq!(self.num_free(), self.num_blocks());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_append_free_round_trip() {
        let mut bm = BlockManager::new(4, 4);
        bm.allocate(1, 5).unwrap(); // 2 blocks
        assert_eq!(bm.table(1).len(), 2);
        assert_eq!(bm.num_free(), 2);
        for _ in 0..3 {
            assert_eq!(bm.append_slot(1).unwrap(), None); // fills block 2 to 8 tokens
        }
        assert_eq!(bm.table(1).len(), 2);
        bm.append_slot(1).unwrap(); // token 9 opens block 3
        assert_eq!(bm.table(1).len(), 3);
        assert_eq!(bm.num_tokens(1), 9);
        // slots follow the table
        let t = bm.table(1).to_vec();
        assert_eq!(bm.slot(1, 8), t[2] * 4);
        assert_eq!(bm.slot(1, 5), t[1] * 4 + 1);
        bm.free(1);
        assert_eq!(bm.num_free(), 4);
        assert_eq!(bm.peak_used(), 3);
    }

    #[test]
    fn out_of_blocks_changes_nothing() {
        let mut bm = BlockManager::new(2, 2);
        assert_eq!(bm.allocate(1, 5), Err(OutOfBlocks { needed: 3, free: 2 }));
        assert!(!bm.contains(1));
        bm.allocate(1, 4).unwrap();
        assert_eq!(bm.append_slot(1), Err(OutOfBlocks { needed: 1, free: 0 }));
        assert_eq!(bm.num_tokens(1), 4);
    }

    #[test]
    fn fork_shares_full_blocks_and_copies_partial_on_write() {
        let mut bm = BlockManager::new(8, 4);
        bm.allocate(0, 6).unwrap(); // one full block + one partial (2 of 4)
        bm.fork(0, 1);
        bm.fork(0, 2);
        let (full, partial) = (bm.table(0)[0], bm.table(0)[1]);
        assert_eq!(bm.ref_count(full), 3);
        assert_eq!(bm.ref_count(partial), 3);
        assert_eq!(bm.num_used(), 2);

        // The first two writers into the shared partial block get private copies.
        let c1 = bm.append_slot(1).unwrap().expect("copy on write");
        assert_eq!(c1.src, partial);
        assert_ne!(c1.dst, partial);
        let c2 = bm.append_slot(2).unwrap().expect("copy on write");
        assert_eq!(c2.src, partial);
        // The last holder writes in place.
        assert_eq!(bm.ref_count(partial), 1);
        assert_eq!(bm.append_slot(0).unwrap(), None);
        assert_eq!(bm.table(0)[1], partial);
        // The full block stays shared.
        assert_eq!(bm.table(1)[0], full);
        assert_eq!(bm.ref_count(full), 3);
        assert_eq!(bm.num_used(), 4);

        bm.free(1);
        assert_eq!(bm.ref_count(full), 2);
        bm.free_all();
        assert_eq!(bm.num_free(), 8);
        assert_eq!(bm.ref_count(full), 0);
        assert_eq!(bm.peak_used(), 4);
    }

    #[test]
    fn fork_at_block_boundary_needs_no_copy() {
        let mut bm = BlockManager::new(4, 4);
        bm.allocate(0, 4).unwrap();
        bm.fork(0, 1);
        assert_eq!(bm.append_slot(1).unwrap(), None);
        assert_eq!(bm.append_slot(0).unwrap(), None);
        assert_ne!(bm.table(0)[1], bm.table(1)[1]);
        assert_eq!(bm.table(0)[0], bm.table(1)[0]);
    }
}
