//! The Lockstep checker: reads what every simulated client saw and did (a recording, see
//! [`lockstep_protocol::record`]) and decides whether the guarantees of `PROTOCOL.md`
//! held, explaining every violation with its evidence; it also reports throughput and
//! latency.
//!
//! Pure and synchronous: events in, a [`Report`] out. It knows nothing of the server or
//! the load generator beyond the recording format, so a bug they share cannot hide here.
//!
//! ```no_run
//! let report = lockstep_checker::check_file(std::path::Path::new("run.lsr"))?;
//! println!("{}", lockstep_checker::render::text(&report));
//! std::process::exit(report.exit_code().into());
//! # Ok::<(), lockstep_checker::CheckError>(())
//! ```
//!
//! - [`anomaly`]: the taxonomy, with a worked example per kind.
//! - `analyze`: the streaming analysis (per connection as events come, across clients at
//!   the end).
//! - [`stats`]: throughput and latency.
//! - [`report`]: the result as data (the `--json` schema); [`render`]: text, JSON, JUnit.

mod analyze;
pub mod anomaly;
pub mod html;
pub mod render;
pub mod report;
pub mod stats;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use lockstep_protocol::record::{
    self, BlockEvents, Event, FileReader, Header, RecordError, Trailer,
};

pub use analyze::FaultNote;
pub use anomaly::{Anomaly, AnomalyGroup, AnomalyKind, ClientRef, EventBrief, Witness};
pub use report::{Report, RunInfo, ThresholdResult, Verdict};
pub use stats::Stats;

/// Why a check could not run. (Anomalies are not errors: they are in the [`Report`].)
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Record(RecordError),
    /// A block decoded, but an event in it did not (a corrupt recording).
    #[error("corrupt event {}at offset {at} of its block: {what}", .block_offset.map(|o| format!("in the block at byte {o}, ")).unwrap_or_default())]
    Event {
        block_offset: Option<u64>,
        at: usize,
        what: &'static str,
    },
    /// The recording stops before its end marker. What came before was checked:
    /// `partial` is that report, whose verdict is always `unknown`.
    #[error(
        "recording truncated at byte {offset} ({what}); the {} events before it were checked, \
         verdict unknown",
        .partial.run.events_read
    )]
    Truncated {
        offset: u64,
        what: &'static str,
        partial: Box<Report>,
    },
}

/// A check in progress: feed it events (or whole blocks) in recording order, then
/// [`finish`](Checker::finish).
pub struct Checker {
    header: Header,
    analysis: analyze::Analysis,
}

impl Checker {
    pub fn new(header: &Header) -> Self {
        Checker {
            header: header.clone(),
            analysis: analyze::Analysis::new(header),
        }
    }

    /// Observes every event of one uncompressed block.
    pub fn observe_block(&mut self, raw: &[u8]) -> Result<(), CheckError> {
        for ev in BlockEvents::new(raw) {
            match ev {
                Ok(ev) => self.analysis.observe(&ev),
                Err(e) => {
                    return Err(CheckError::Event {
                        block_offset: None,
                        at: e.at,
                        what: e.what,
                    });
                }
            }
        }
        Ok(())
    }

    /// Observes one event.
    pub fn observe(&mut self, ev: &Event<'_>) {
        self.analysis.observe(ev);
    }

    /// Events observed so far.
    pub fn events(&self) -> u64 {
        self.analysis.events
    }

    /// Makes the judgements that need the whole history and returns the report.
    /// `trailer` is the recording's end marker; `None` means the stream ended without one
    /// (the verdict is then `unknown`).
    pub fn finish(self, trailer: Option<Trailer>) -> Report {
        let findings = self.analysis.finish();
        report::build(&self.header, trailer, findings)
    }
}

/// Checks a recording file.
pub fn check_file(path: &Path) -> Result<Report, CheckError> {
    let file = File::open(path).map_err(|source| CheckError::Open {
        path: path.to_owned(),
        source,
    })?;
    check_reader(BufReader::with_capacity(1 << 20, file))
}

/// Checks a recording read from `input`.
pub fn check_reader<R: Read>(input: R) -> Result<Report, CheckError> {
    let mut reader = FileReader::new(input).map_err(CheckError::Record)?;
    let mut checker = Checker::new(reader.header());
    loop {
        let at = reader.offset();
        match reader.next_block() {
            Ok(Some(raw)) => checker.observe_block(raw).map_err(|e| match e {
                CheckError::Event { at: pos, what, .. } => CheckError::Event {
                    block_offset: Some(at),
                    at: pos,
                    what,
                },
                other => other,
            })?,
            Ok(None) => break,
            Err(RecordError::Truncated { offset, what }) => {
                let mut partial = checker.finish(None);
                if let Some(why) = partial.unknown_reasons.first_mut() {
                    *why = format!(
                        "the recording is truncated at byte {offset} ({what}): its end is missing"
                    );
                }
                return Err(CheckError::Truncated {
                    offset,
                    what,
                    partial: Box::new(partial),
                });
            }
            Err(e) => return Err(CheckError::Record(e)),
        }
    }
    let trailer = reader.trailer();
    Ok(checker.finish(trailer))
}

/// Re-exported so callers need not depend on the protocol crate for the basics.
pub use record::text_hash;
