//! Lockstep load generator. (Work in progress: the wire layer and the fan-out benchmark
//! come first; scenarios, faults and recording follow.)

pub mod wire;
