//! The table, fed events and scans by hand: every rule of ingestion and reconciliation with
//! the case that made it necessary.
mod ingest;
mod reconcile;
