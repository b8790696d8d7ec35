//! Lockstep load generator. (Work in progress: the wire layer and the fan-out benchmark
//! come first; scenarios, faults and recording follow.)

pub mod client;
pub mod mitm;
pub mod parse;
pub mod reader;
pub mod recorder;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod wire;
