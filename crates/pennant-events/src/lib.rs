//! Pennant's analytics-event front door: LaunchDarkly's event endpoints ([`router`]), typed parsing of event
//! batches ([`model`], the contract with `pennant-insights`), and the durable queue between the front door and the
//! processors ([`queue`]).

pub mod http;
pub mod model;
pub mod queue;

pub use http::{EventsConfig, EventsState, EventsStats, browser_cors, router};
pub use model::{
    ContextEvent, Counter, CustomEvent, DiagnosticEvent, Event, FeatureEvent, FlagSummary, MigrationEvaluation,
    MigrationOpEvent, ParseError, ParsedBatch, SummaryEvent, parse_batch, parse_diagnostic,
};
pub use queue::{
    EmbeddedConfig, EmbeddedQueue, Enqueued, JetStreamConfig, JetStreamQueue, NewBatch, Queue, QueueError, QueuedBatch,
    move_queued_batches,
};
