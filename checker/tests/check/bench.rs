//! A synthetic recording of a big, healthy run, written straight to disk, and the checker's
//! speed and memory on it. The benchmark is ignored by default:
//!
//! ```text
//! cargo test --release -p lockstep-checker -- --ignored --nocapture
//! ```

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use lockstep_checker::Verdict;
use lockstep_protocol::record::{
    CloseCause, Encoder, Event, FileWriter, Header, RoomGroup, text_hash,
};

/// What a synthetic run looks like.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rooms: u32,
    pub members: u32,
    pub messages_per_room: u32,
    /// Events per block (at most; blocks also close at the encoder's 64 KiB).
    pub block_events: u64,
    pub compress: bool,
}

/// Writes a recording of `shape` to `out`: every client joins its room, then messages go
/// round the rooms (each sent, acked and delivered to every member), then everyone
/// finishes. Returns the writer and the number of deliveries. Streams: memory stays small.
pub fn synth<W: Write>(out: W, shape: Shape) -> io::Result<(W, u64)> {
    let Shape {
        rooms,
        members,
        messages_per_room,
        block_events,
        compress,
    } = shape;
    let header = Header {
        scenario: "synthetic".into(),
        seed: 1,
        writer: "checker bench".into(),
        groups: vec![RoomGroup {
            name: "all".into(),
            room_prefix: "room-".into(),
            rooms,
            members_per_room: members,
        }],
        ..Default::default()
    };
    let mut w = FileWriter::new(out, &header, compress)?;
    let mut enc = Encoder::new();
    let mut in_block = 0u64;
    let mut push = |w: &mut FileWriter<W>, enc: &mut Encoder, ev: &Event<'_>| -> io::Result<()> {
        in_block += 1;
        if enc.push(ev) || in_block >= block_events {
            w.write_block(&enc.take(), in_block)?;
            in_block = 0;
        }
        Ok(())
    };
    let room_names: Vec<String> = (0..rooms).map(|r| format!("room-{r:03}")).collect();
    let users: Vec<String> = (0..rooms * members)
        .map(|c| format!("user-{c:05}"))
        .collect();
    let mut t = 1_000u64;
    for r in 0..rooms {
        for k in 0..members {
            let client = r * members + k;
            let room = &room_names[r as usize];
            push(
                &mut w,
                &mut enc,
                &Event::Client {
                    client,
                    user: &users[client as usize],
                },
            )?;
            push(
                &mut w,
                &mut enc,
                &Event::Connected {
                    t_us: t,
                    client,
                    conn: 1,
                },
            )?;
            push(
                &mut w,
                &mut enc,
                &Event::JoinSent {
                    t_us: t,
                    client,
                    conn: 1,
                    room,
                    since: None,
                    epoch: None,
                    history: None,
                },
            )?;
            push(
                &mut w,
                &mut enc,
                &Event::Joined {
                    t_us: t + 10,
                    client,
                    conn: 1,
                    room,
                    epoch: "e-1",
                    head: 0,
                    first: 1,
                    reset: false,
                },
            )?;
        }
    }
    let mut deliveries = 0u64;
    let mut id = String::new();
    for m in 0..messages_per_room {
        for r in 0..rooms {
            t += 1_000;
            let room = &room_names[r as usize];
            let sender = r * members + m % members;
            id.clear();
            use std::fmt::Write as _;
            let _ = write!(id, "{sender}-{m}");
            let th = text_hash(&id);
            let seq = u64::from(m) + 1;
            let ts = 1_700_000_000_000 + t / 1000;
            push(
                &mut w,
                &mut enc,
                &Event::Send {
                    t_us: t,
                    client: sender,
                    conn: 1,
                    room,
                    id: &id,
                    text_hash: th,
                    intended_us: t - 50,
                },
            )?;
            push(
                &mut w,
                &mut enc,
                &Event::Ack {
                    t_us: t + 300,
                    client: sender,
                    conn: 1,
                    room,
                    id: &id,
                    seq,
                    ts,
                    dup: false,
                },
            )?;
            for k in 0..members {
                let client = r * members + k;
                push(
                    &mut w,
                    &mut enc,
                    &Event::Message {
                        t_us: t + 200 + u64::from(k),
                        client,
                        conn: 1,
                        room,
                        seq,
                        id: &id,
                        from: &users[sender as usize],
                        text_hash: th,
                        ts,
                    },
                )?;
                deliveries += 1;
            }
        }
    }
    t += 1_000_000;
    for client in 0..rooms * members {
        push(&mut w, &mut enc, &Event::Finished { t_us: t, client })?;
        push(
            &mut w,
            &mut enc,
            &Event::Closed {
                t_us: t + 1,
                client,
                conn: 1,
                cause: CloseCause::RunEnd,
                code: None,
            },
        )?;
    }
    if !enc.is_empty() {
        w.write_block(&enc.take(), in_block)?;
    }
    Ok((w.finish()?, deliveries))
}

/// Peak resident memory of this process so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_small_synthetic_run_passes() {
    // Goal: the benchmark's generator makes a valid history (else the benchmark measures
    // the wrong thing).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.lsr");
    let shape = Shape {
        rooms: 3,
        members: 4,
        messages_per_room: 20,
        block_events: 1000,
        compress: true,
    };
    let (_, deliveries) = synth(std::fs::File::create(&path).unwrap(), shape).unwrap();
    let r = lockstep_checker::check_file(&path).unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Pass,
        "{}",
        lockstep_checker::render::text(&r)
    );
    assert_eq!(r.stats.deliveries.total, deliveries);
    assert_eq!(deliveries, 3 * 4 * 20);
    assert_eq!(r.stats.groups[0].deliveries, deliveries);
}

#[test]
#[allow(clippy::print_stdout)]
#[ignore = "benchmark: cargo test --release -p lockstep-checker -- --ignored --nocapture"]
fn check_ten_million_deliveries() {
    // Goal: checking 10 million deliveries takes bounded memory (rooms × messages, not
    // deliveries) and is faster than any run that could produce them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.lsr");
    let shape = Shape {
        rooms: 100,
        members: 100,
        messages_per_room: 1000,
        block_events: u64::MAX,
        compress: true,
    };
    let t0 = Instant::now();
    let file = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let (_, deliveries) = synth(file, shape).unwrap();
    let gen_secs = t0.elapsed().as_secs_f64();
    let rss_after_gen = peak_rss_kib();
    let t1 = Instant::now();
    let report = lockstep_checker::check_file(&path).unwrap();
    let secs = t1.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        lockstep_checker::render::text(&report)
    );
    assert_eq!(report.stats.deliveries.total, deliveries);
    println!(
        "bench: {deliveries} deliveries, {} events, file {:.1} MiB (written in {gen_secs:.1}s)",
        report.run.events_read,
        file_size(&path) as f64 / (1 << 20) as f64
    );
    println!(
        "bench: checked in {secs:.2}s = {:.0} deliveries/s ({:.0} events/s)",
        deliveries as f64 / secs,
        report.run.events_read as f64 / secs
    );
    println!(
        "bench: peak RSS (VmHWM) {} MiB after writing, {} MiB after checking",
        rss_after_gen.map_or(0, |k| k / 1024),
        rss.map_or(0, |k| k / 1024)
    );
}
