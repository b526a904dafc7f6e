//! Continuous batching (ORCA): every step, finished sequences have left, running sequences each get
//! one decode slot, and waiting prompts join while the step's token budget and the KV pool allow.
//! When the pool runs dry, the youngest running sequence is preempted: its blocks are freed and it
//! goes back to the front of the queue to be recomputed (prompt + what it generated) later. Nothing
//! here fails for lack of memory.
//!
//! Overlapped decoding (`RolloutConfig::overlap`): the rollout loop schedules and submits step t+1
//! before it has read step t's tokens. A sequence then has a token "in flight" (sampled on the
//! device, not yet appended here): step t+1 decodes it at the next position, in a slot reserved
//! for it (the block manager counts slots, not known tokens), with the draw of that position, and
//! the model takes the token from step t's output row (`DecodeBatch::from_prev`). Stops are seen
//! one step late: a sequence that emitted a stop token at step t also ran in step t+1, whose
//! token is discarded ([`Scheduler::receive`]); its blocks are freed when the stop is seen (the
//! device runs its steps in order, so a later step reusing them writes after step t+1). Length
//! limits are known ahead: a sequence whose in-flight token is its last is not scheduled again.
//! Preemption needs a sequence's every token (it is recomputed from them), so the loop applies
//! the in-flight step first whenever a step may preempt ([`Scheduler::must_drain`]).

use std::collections::VecDeque;

use crate::block_manager::{BlockCopy, BlockManager, SeqId, SeqMap};
use crate::request::FinishReason;
use crate::sampling::{draw, SamplingParams};
use crate::step_model::{DecodeBatch, PrefillBatch, NO_PREV};

/// Limits of one engine step.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    /// Tokens (prefill tokens + one per decoding sequence) one step may process. A single prompt
    /// longer than this still runs, alone.
    pub max_batch_tokens: usize,
    /// Sequences decoding at once.
    pub max_running: usize,
    /// Longest sequence the model supports.
    pub max_context: usize,
}

/// One sample being generated.
pub struct Seq {
    pub id: SeqId,
    pub request: usize,
    pub sample: usize,
    pub prompt_len: usize,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// Random key of this sample (`sampling::sample_key`); its t-th token uses `draw(key, t)`.
    pub key: u64,
    pub finish: Option<FinishReason>,
    /// Tokens sampled by submitted decode steps and not appended yet (0 in the serial loop; at
    /// most 1 when a step is scheduled, 2 between submitting a step and applying the one before).
    pub in_flight: usize,
    /// This sequence's row in the last decode step it was submitted in.
    pub row: u32,
}

impl Seq {
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Sequences that enter together with one prefill of their common tokens: the n samples of a
/// fresh prompt, or one preempted sequence to recompute.
struct Group {
    seqs: Vec<SeqId>,
}

/// What to run this step.
#[derive(Default)]
pub struct StepPlan {
    pub copies: Vec<BlockCopy>,
    pub prefill: PrefillBatch,
    /// For each prefilled sequence (row of the prefill logits), the samples that draw from it.
    pub prefill_groups: Vec<Vec<SeqId>>,
    pub decode: DecodeBatch,
    /// Row i of the decode logits belongs to this sequence.
    pub decode_seqs: Vec<SeqId>,
    /// Sequences that finished during scheduling (cache full); already freed.
    pub finished: Vec<SeqId>,
    pub preempted: usize,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.prefill_groups.is_empty() && self.decode_seqs.is_empty()
    }
}

pub struct Scheduler {
    limits: SchedulerLimits,
    pub blocks: BlockManager,
    pub seqs: SeqMap<Seq>,
    params: Vec<SamplingParams>,
    waiting: VecDeque<Group>,
    /// Decoding sequences, oldest first (ids grow with arrival, so this stays sorted by id).
    running: Vec<SeqId>,
    next_id: SeqId,
}

impl Scheduler {
    pub fn new(limits: SchedulerLimits, blocks: BlockManager) -> Scheduler {
        Scheduler {
            limits,
            blocks,
            seqs: SeqMap::default(),
            params: Vec::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
        }
    }

    /// Queues `n` samples of `prompt` for request index `request` (requests must be added in
    /// index order, 0, 1, ...); `keys` has one random key per sample. With `share` the samples enter
    /// together and share the prompt's blocks; without, each is prefilled on its own.
    pub fn add_request(
        &mut self,
        prompt: &[u32],
        params: SamplingParams,
        keys: Vec<u64>,
        share: bool,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!prompt.is_empty(), "a request has an empty prompt");
        let request = self.params.len();
        self.params.push(params);
        let mut group = Group { seqs: Vec::new() };
        for (sample, key) in keys.into_iter().enumerate() {
            let id = self.next_id;
            self.next_id += 1;
            self.seqs.insert(
                id,
                Seq {
                    id,
                    request,
                    sample,
                    prompt_len: prompt.len(),
                    tokens: prompt.to_vec(),
                    logprobs: Vec::new(),
                    key,
                    finish: None,
                    in_flight: 0,
                    row: 0,
                },
            );
            group.seqs.push(id);
        }
        if share {
            self.waiting.push_back(group);
        } else {
            for id in group.seqs {
                self.waiting.push_back(Group { seqs: vec![id] });
            }
        }
        Ok(())
    }

    pub fn params(&self, request: usize) -> &SamplingParams {
        &self.params[request]
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        self.blocks.free(id);
        self.seqs.get_mut(&id).unwrap().finish = Some(reason);
    }

    /// Frees the youngest running sequence's blocks and queues it for recompute.
    fn preempt_youngest(&mut self) -> SeqId {
        let victim = self.running.pop().expect("preempt with nothing running");
        assert_eq!(
            self.seqs[&victim].in_flight, 0,
            "preempting a sequence with a token in flight (the loop must drain first)"
        );
        self.blocks.free(victim);
        self.waiting.push_front(Group { seqs: vec![victim] });
        victim
    }

    /// True when `id`'s in-flight token is its last by length (`max_new_tokens` or the context):
    /// it gets no more decode steps, only that token.
    fn awaits_last_token(&self, id: SeqId) -> bool {
        let seq = &self.seqs[&id];
        if seq.in_flight == 0 {
            return false;
        }
        let params = &self.params[seq.request];
        seq.generated() + seq.in_flight >= params.max_new_tokens
            || seq.tokens.len() + seq.in_flight >= self.limits.max_context
    }

    /// True when the next [`Scheduler::schedule`] might preempt (or end a sequence `cache_full`):
    /// the decode slots may need more blocks than are free. The loop then applies the in-flight
    /// step first, so that no sequence has a token in flight. Conservative: a copy-on-write block
    /// is counted for every sharer of a partial block, though the last one writes in place.
    pub fn must_drain(&self) -> bool {
        let free = self.blocks.num_free();
        // Each decode slot takes at most one block.
        if free >= self.running.len() {
            return false;
        }
        let need: usize = self
            .running
            .iter()
            .filter(|&&id| !self.awaits_last_token(id))
            .map(|&id| self.blocks.blocks_to_append(id))
            .sum();
        need > free
    }

    /// Decides the next step: decode slots first (preempting on shortage), then new prompts.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        // 1. One decode slot per running sequence, oldest first, but none for a sequence whose
        // in-flight token is its last.
        let mut decoding: Vec<SeqId> = Vec::with_capacity(self.running.len());
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            if self.awaits_last_token(id) {
                i += 1;
                continue;
            }
            match self.blocks.append_slot(id) {
                Ok(copy) => {
                    plan.copies.extend(copy);
                    decoding.push(id);
                    i += 1;
                }
                Err(_) if self.running.len() > 1 => {
                    // The youngest goes (possibly `id` itself, then the loop ends); it is behind
                    // `i`, so not in `decoding`.
                    self.preempt_youngest();
                    plan.preempted += 1;
                }
                Err(_) => {
                    // Alone and still no room: the pool is smaller than this sequence.
                    assert_eq!(
                        self.seqs[&id].in_flight, 0,
                        "cache_full with a token in flight"
                    );
                    self.running.remove(i);
                    self.finish(id, FinishReason::CacheFull);
                    plan.finished.push(id);
                }
            }
        }
        let mut budget = self.limits.max_batch_tokens.saturating_sub(decoding.len());
        // 2. Admit waiting groups (not while preempting: the pool is under pressure).
        let mut admitted: Vec<Vec<SeqId>> = Vec::new();
        let mut n_running = self.running.len();
        while plan.preempted == 0 {
            let Some(group) = self.waiting.front() else {
                break;
            };
            let lead = group.seqs[0];
            let len = self.seqs[&lead].tokens.len();
            let empty = n_running == 0 && admitted.is_empty();
            let need = self.blocks.blocks_for(len);
            if need > self.blocks.num_blocks() && empty {
                // Can never fit: finish with what it has rather than loop forever.
                let group = self.waiting.pop_front().unwrap();
                for id in group.seqs {
                    self.finish(id, FinishReason::CacheFull);
                    plan.finished.push(id);
                }
                continue;
            }
            let fits_budget = len <= budget || empty;
            let fits_running = n_running + group.seqs.len() <= self.limits.max_running || empty;
            // Keep one block per new sample spare for its first decode step.
            let fits_blocks = need + group.seqs.len() <= self.blocks.num_free()
                || (empty && need <= self.blocks.num_free());
            if !(fits_budget && fits_running && fits_blocks) {
                break;
            }
            let group = self.waiting.pop_front().unwrap();
            self.blocks
                .allocate(lead, len)
                .expect("free blocks were checked");
            for &other in &group.seqs[1..] {
                self.blocks.fork(lead, other);
            }
            budget = budget.saturating_sub(len);
            n_running += group.seqs.len();
            admitted.push(group.seqs);
        }
        // 3. The batches.
        let mut pf = PrefillBatch {
            cu_seqlens: vec![0],
            ..Default::default()
        };
        for group in &admitted {
            let lead = group[0];
            let seq = &self.seqs[&lead];
            for (pos, &t) in seq.tokens.iter().enumerate() {
                pf.tokens.push(t);
                pf.positions.push(pos as u32);
                pf.slots.push(self.blocks.slot(lead, pos));
            }
            pf.cu_seqlens.push(pf.tokens.len() as u32);
        }
        plan.prefill = pf;
        plan.prefill_groups = admitted;
        let max_blocks = decoding
            .iter()
            .map(|&id| self.blocks.table(id).len())
            .max()
            .unwrap_or(0);
        let mut dec = DecodeBatch {
            max_blocks,
            ..Default::default()
        };
        let overlapped = decoding.iter().any(|id| self.seqs[id].in_flight > 0);
        for &id in &decoding {
            let seq = &self.seqs[&id];
            // The newest token: known here, or in flight (one position further, sampled by the
            // previous step's row `seq.row`).
            debug_assert!(seq.in_flight <= 1);
            let pos = seq.tokens.len() - 1 + seq.in_flight;
            if seq.in_flight == 0 {
                dec.tokens.push(seq.tokens[pos]);
                if overlapped {
                    dec.from_prev.push(NO_PREV);
                }
            } else {
                dec.tokens.push(0);
                dec.from_prev.push(seq.row);
            }
            dec.positions.push(pos as u32);
            dec.slots.push(self.blocks.slot(id, pos));
            dec.context_lens.push(pos as u32 + 1);
            let table = self.blocks.table(id);
            dec.block_tables.extend_from_slice(table);
            dec.block_tables
                .extend(std::iter::repeat_n(0, max_blocks - table.len()));
        }
        plan.decode = dec;
        plan.decode_seqs = decoding;
        plan
    }

    /// The decode step of `decode_seqs` (row i = `decode_seqs[i]`) went to the model: each of
    /// them has one more token in flight, sampled in that row.
    pub fn submitted(&mut self, decode_seqs: &[SeqId]) {
        for (row, id) in decode_seqs.iter().enumerate() {
            let seq = self.seqs.get_mut(id).unwrap();
            seq.in_flight += 1;
            seq.row = row as u32;
        }
    }

    /// A decode step's token for `id`: appended as [`Scheduler::append_token`] does, unless the
    /// sequence finished meanwhile (a stop seen one step late), when it is discarded. Returns
    /// whether it was kept.
    pub fn receive(&mut self, id: SeqId, token: u32, logprob: f32) -> bool {
        let seq = self.seqs.get_mut(&id).unwrap();
        assert!(
            seq.in_flight > 0,
            "a token for seq {id} that was not in flight"
        );
        seq.in_flight -= 1;
        if seq.finish.is_some() {
            return false;
        }
        self.append_token(id, token, logprob);
        true
    }

    /// Records a sampled token of `id`; returns true when the sequence finished (its blocks are
    /// then freed).
    pub fn append_token(&mut self, id: SeqId, token: u32, logprob: f32) -> bool {
        let seq = self.seqs.get_mut(&id).unwrap();
        seq.tokens.push(token);
        seq.logprobs.push(logprob);
        let params = &self.params[seq.request];
        let reason = if params.stop_token_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if seq.generated() >= params.max_new_tokens
            || seq.tokens.len() >= self.limits.max_context
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        match reason {
            Some(r) => {
                self.finish(id, r);
                true
            }
            None => false,
        }
    }

    /// After a step: prefilled sequences that did not finish start decoding; finished ones leave.
    pub fn update_running(&mut self, newly_prefilled: &[SeqId]) {
        let seqs = &self.seqs;
        self.running.retain(|id| seqs[id].finish.is_none());
        self.running.extend(
            newly_prefilled
                .iter()
                .copied()
                .filter(|id| seqs[id].finish.is_none()),
        );
        // Preempted sequences come back with their old ids: keep oldest first.
        self.running.sort_unstable();
    }

    /// What drawing the next token of `id` needs: its sampling parameters, the ids banned now (stop
    /// ids before `min_new_tokens`) and its 32-bit draw. The next token's index counts the tokens in
    /// flight, so a draw does not depend on whether the loop overlaps.
    pub fn next_draw(&self, id: SeqId) -> (&SamplingParams, &[u32], u32) {
        let seq = &self.seqs[&id];
        let params = &self.params[seq.request];
        let index = seq.generated() + seq.in_flight;
        let banned: &[u32] = if index < params.min_new_tokens {
            &params.stop_token_ids
        } else {
            &[]
        };
        (params, banned, draw(seq.key, index))
    }

    /// Tokens generated so far and finished-or-not, for the sequence `id`.
    pub fn seq(&self, id: SeqId) -> &Seq {
        &self.seqs[&id]
    }

    pub fn seq_mut(&mut self, id: SeqId) -> &mut Seq {
        self.seqs.get_mut(&id).unwrap()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }
}
