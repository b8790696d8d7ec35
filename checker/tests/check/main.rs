//! The checker's tests, in one binary:
//!
//! - [`fixtures`]: a tiny history per anomaly kind with its exact expected report, and the
//!   verdict rules (allowed, recovered, unconfirmed, unknown, thresholds, renderings).
//! - [`props`]: generated valid histories pass; each injected fault is caught as exactly
//!   its kind.
//! - [`file`]: recordings on disk, truncated and corrupt files.
//! - [`bench`]: 10 million deliveries (ignored by default; run it in release mode).

mod bench;
mod file;
mod fixtures;
mod inject;
mod props;
mod sim;
mod support;
