//! Pennant's event processors: queued LaunchDarkly analytics batches become flag-evaluation time series (minute,
//! hour and day counts per flag and variation), each flag's last-evaluated time, the contexts index and stored
//! custom events, counted exactly once over an at-least-once queue.
//!
//! [`convert`] turns one parsed batch into its aggregated contribution; [`processor`] pulls batches from a
//! [`BatchQueue`], coalesces many into one transaction with their idempotence markers, and acknowledges them only
//! after the commit. The storage lives in `pennant-store` (`insights.rs`), the query API in `pennant-api`.

pub mod convert;
pub mod processor;

pub use convert::{ConvertStats, MAX_CLOCK_SKEW_MS, add_events};
pub use processor::{
    BatchQueue, EventQueue, InputBatch, ProcessReport, Processor, ProcessorOptions, QueueError, QueueId,
    spawn_maintenance, spawn_processors,
};
