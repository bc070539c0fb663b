//! Reporting: what runs wrote, read back and shown. The layer above the protocols, used
//! by the command line; nothing below it renders pages or charts.
//!
//! - [`page`]: one self-contained HTML page for one or more runs (`ftedit report html`).
//! - [`curves`]: runs' curves against the number of edits (`ftedit report plot`).
//! - [`plot`]: line charts as plain SVG, shared by both.
//! - [`merge`]: shards' output folders combined into one report (`ftedit report merge`).

pub mod curves;
pub mod merge;
pub mod page;
pub mod plot;

pub use merge::merge;
