//! Recordings on disk: a complete file checks like the same events in memory; a cut file
//! is reported as truncated at the byte where it stops, with the partial report unknown;
//! garbage and corrupt blocks are errors, never a verdict.

use std::io::Cursor;

use lockstep_checker::{CheckError, Checker, Verdict, check_reader};
use lockstep_protocol::record::{BlockEvents, FileReader, FileWriter, Header, RecordError};

use crate::bench::{Shape, synth};

const SMALL: Shape = Shape {
    rooms: 2,
    members: 3,
    messages_per_room: 40,
    block_events: 64,
    compress: true,
};

fn small() -> Vec<u8> {
    synth(Vec::new(), SMALL).unwrap().0
}

/// Byte offsets of every block, and of the end marker.
fn offsets(bytes: &[u8]) -> Vec<u64> {
    let mut r = FileReader::new(bytes).unwrap();
    let mut out = vec![r.offset()];
    while r.next_block().unwrap().is_some() {
        out.push(r.offset());
    }
    out
}

#[test]
fn a_file_checks_like_the_same_events_in_memory() {
    let bytes = small();
    let from_file = check_reader(&bytes[..]).unwrap();
    assert_eq!(from_file.verdict, Verdict::Pass);
    assert!(from_file.run.complete);

    let mut r = FileReader::new(&bytes[..]).unwrap();
    let mut c = Checker::new(r.header());
    while let Some(block) = r.next_block().unwrap() {
        c.observe_block(block).unwrap();
    }
    let in_memory = c.finish(r.trailer());
    assert_eq!(from_file, in_memory);
}

#[test]
fn a_cut_file_is_truncated_at_a_named_byte() {
    // Goal: wherever the file is cut — between blocks, inside one, inside the end marker —
    // the check stops with "truncated at byte N" (N = where the unreadable part starts) and
    // never with a verdict other than unknown.
    let bytes = small();
    let offs = offsets(&bytes);
    assert!(offs.len() > 4, "several blocks");
    let end = *offs.last().unwrap();
    let cuts = [
        (offs[0], offs[0]),
        (offs[1] + 3, offs[1]),
        (offs[2] - 1, offs[1]),
        (end, end),
        (end + 10, end),
        (bytes.len() as u64 - 1, end),
    ];
    for (cut, at) in cuts {
        let err = check_reader(&bytes[..cut as usize]).unwrap_err();
        let msg = err.to_string();
        match err {
            CheckError::Truncated {
                offset, partial, ..
            } => {
                assert_eq!(offset, at, "cut at {cut}: {msg}");
                assert!(msg.contains(&format!("byte {at}")), "{msg}");
                assert_eq!(partial.verdict, Verdict::Unknown);
                assert!(!partial.run.complete);
                assert!(partial.unknown_reasons[0].contains(&format!("byte {at}")));
            }
            other => panic!("cut at {cut}: expected truncation, got {other}"),
        }
    }
    // A cut inside the header is an error too (no partial report is possible).
    assert!(check_reader(&bytes[..20]).is_err());
}

#[test]
fn garbage_is_not_a_recording() {
    let err = check_reader(Cursor::new(b"this is not a recording at all".to_vec())).unwrap_err();
    assert!(
        matches!(err, CheckError::Record(RecordError::BadMagic)),
        "{err}"
    );
}

#[test]
fn an_empty_recording_is_unknown() {
    let bytes = FileWriter::new(Vec::new(), &Header::default(), true)
        .unwrap()
        .finish()
        .unwrap();
    let r = check_reader(&bytes[..]).unwrap();
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.exit_code(), 2);
}

#[test]
fn a_recording_that_lost_events_is_unknown() {
    let bytes = small();
    let mut r = FileReader::new(&bytes[..]).unwrap();
    let mut w = FileWriter::new(Vec::new(), r.header(), false).unwrap();
    while let Some(b) = r.next_block().unwrap() {
        let n = BlockEvents::new(b).count() as u64;
        w.write_block(b, n).unwrap();
    }
    w.add_lost(5);
    let bytes = w.finish().unwrap();
    let report = check_reader(&bytes[..]).unwrap();
    assert_eq!(report.verdict, Verdict::Unknown);
    assert_eq!(report.run.lost_events, 5);
}

#[test]
fn a_corrupt_event_names_its_block() {
    let bytes = small();
    let offs = offsets(&bytes);
    let mut r = FileReader::new(&bytes[..]).unwrap();
    let mut w = FileWriter::new(Vec::new(), r.header(), false).unwrap();
    let mut first = true;
    while let Some(b) = r.next_block().unwrap() {
        let mut b = b.to_vec();
        if !first {
            let n = b.len();
            b[n / 2] = 250; // an unknown tag, or a broken field
            b.truncate(n / 2 + 1);
        }
        first = false;
        w.write_block(&b, 1).unwrap();
    }
    let bytes = w.finish().unwrap();
    let err = check_reader(&bytes[..]).unwrap_err();
    match &err {
        CheckError::Event { block_offset, .. } => {
            // Uncompressed, the second block starts where the first ends.
            assert!(block_offset.is_some_and(|o| o > offs[0]), "{err}");
            assert!(err.to_string().contains("in the block at byte"), "{err}");
        }
        other => panic!("expected a corrupt event, got {other}"),
    }
}
