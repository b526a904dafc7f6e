//! Optimiser: AdamW with f32 master weights and moments per parameter, global grad-norm clipping,
//! weight-decay masks, LR schedules, checkpointable state.

pub mod adamw;
pub mod schedule;
pub mod zero;

pub use adamw::{decays, AdamW, AdamWConfig, ParamState, PendingStep, StepStats};
pub use schedule::{LrSchedule, ScheduleKind};
pub use zero::shard_by_numel;
