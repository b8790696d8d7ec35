//! End-to-end tests of the Lockstep server, written against the wire contract
//! (`PROTOCOL.md`) rather than the server's implementation.
//!
//! Every test starts its own server (in-process on port 0, or the real binary for the
//! crash tests) with its own temporary database, talks to it as real clients do (WebSocket
//! and plain HTTP over TCP), and asserts behaviour, never timing. Every wait has a timeout
//! and a failure message naming what was awaited.
//!
//! - [`guarantees`]: guarantees 1-8 of the contract, plus the `joined` fields.
//! - [`crash`]: acked messages survive SIGKILL of the server process.
//! - [`bad_input`]: every kind of bad request gets the contract's error, and the
//!   connection stays usable; abuse and oversized frames close it.
//! - [`http`]: the HTTP endpoints.
//! - [`session`]: welcome, application ping/pong, heartbeat, leave, graceful shutdown.
//! - [`checker`]: the checker catches each bug a fault proxy adds, and passes without one.
//! - [`run`]: `lockstep run` exit codes, JSON and HTML reports, a server killed mid-run.
//! - [`loadgen`]: the load generator's faults as the server saw them, resumes, scenario
//!   errors.

mod bad_input;
mod checker;
mod crash;
mod guarantees;
mod http;
mod loadgen;
mod run;
mod session;
mod support;
