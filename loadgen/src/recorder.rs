//! The recorder: every event every client sees or does, streamed to a file and/or to an
//! in-process consumer (the checker, for `lockstep run`), in bounded memory.
//!
//! Clients encode events into one of a few shards (a client always uses the same shard,
//! so its events stay in order); a full shard's block goes over a bounded channel to one
//! writer thread, which compresses it to the file and hands it to the live consumer. If
//! the writer falls behind and the channel is full, the block is dropped and counted:
//! the file then ends with a `Lost` event and a non-zero trailer count, and the checker
//! will call the run `unknown` — it never passes a history it did not see.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use lockstep_protocol::record::{Encoder, Event, FileWriter, Header, Trailer};
use parking_lot::Mutex;

/// Encoder shards; clients are spread over them by index.
const SHARDS: usize = 32;
/// Blocks waiting for the writer. At 64 KiB each this bounds the recorder's memory to
/// about 16 MiB plus the shards' open blocks (2 MiB).
const QUEUE_BLOCKS: usize = 256;

struct Shard {
    enc: Encoder,
    events: u64,
}

enum Msg {
    Block {
        raw: Vec<u8>,
        events: u64,
    },
    /// No more blocks; `lost` events were dropped along the way.
    End {
        lost: u64,
    },
}

/// What an in-process consumer of a recording (the checker, in `lockstep run`) gets, in
/// order: the header, raw blocks, then the end marker's counts.
#[derive(Debug)]
pub enum Live {
    Header(Box<Header>),
    Block(Vec<u8>),
    End(Trailer),
}

/// Where recorded blocks go.
pub struct Sinks {
    /// A `.lsr` file.
    pub file: Option<File>,
    /// Raw blocks for an in-process checker. Sent with back-pressure from the writer
    /// thread (the writer waits; clients do not).
    pub live: Option<SyncSender<Live>>,
}

pub struct Recorder {
    start: Instant,
    shards: Vec<Mutex<Shard>>,
    /// Taken (closed) by `finish`.
    tx: Mutex<Option<SyncSender<Msg>>>,
    events: AtomicU64,
    lost: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<io::Result<Trailer>>>>,
}

impl Recorder {
    /// Starts the writer thread. `start` is `t_us = 0`.
    pub fn start(header: &Header, start: Instant, sinks: Sinks) -> io::Result<Recorder> {
        let (tx, rx) = sync_channel(QUEUE_BLOCKS);
        let file = match sinks.file {
            Some(f) => Some(FileWriter::new(
                BufWriter::with_capacity(1 << 20, f),
                header,
                true,
            )?),
            None => None,
        };
        let live = sinks.live;
        if let Some(l) = &live {
            let _ = l.send(Live::Header(Box::new(header.clone())));
        }
        let writer = std::thread::Builder::new()
            .name("lockstep-load-recorder".into())
            .spawn(move || write_loop(rx, file, live))?;
        Ok(Recorder {
            start,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        enc: Encoder::new(),
                        events: 0,
                    })
                })
                .collect(),
            tx: Mutex::new(Some(tx)),
            events: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Opens `path` for writing a recording.
    pub fn create_file(path: &Path) -> io::Result<File> {
        File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records one event of client `client` (`u32::MAX` for run-level events).
    pub fn record(&self, client: u32, ev: &Event<'_>) {
        let mut shard = self.shards[client as usize % SHARDS].lock();
        shard.events += 1;
        if shard.enc.push(ev) {
            let raw = shard.enc.take();
            let events = std::mem::take(&mut shard.events);
            drop(shard);
            self.ship(raw, events);
        }
    }

    fn ship(&self, raw: Vec<u8>, events: u64) {
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => match tx.try_send(Msg::Block { raw, events }) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if sent {
            self.events.fetch_add(events, Relaxed);
        } else {
            self.lost.fetch_add(events, Relaxed);
        }
    }

    /// Records `events` events of client `client` already encoded in `raw` (a client
    /// batches what one read brought, and takes the shard's lock once).
    pub fn record_encoded(&self, client: u32, raw: &[u8], events: u64) {
        if events == 0 {
            return;
        }
        let mut shard = self.shards[client as usize % SHARDS].lock();
        shard.events += events;
        if shard.enc.push_encoded(raw) {
            let raw = shard.enc.take();
            let events = std::mem::take(&mut shard.events);
            drop(shard);
            self.ship(raw, events);
        }
    }

    /// Events recorded so far, and events lost.
    pub fn counts(&self) -> (u64, u64) {
        (self.events.load(Relaxed), self.lost.load(Relaxed))
    }

    /// Flushes every shard, records the loss count if any, writes the end marker and
    /// waits for the writer. Blocks; call from a blocking context.
    pub fn finish(&self) -> io::Result<Trailer> {
        let Some(tx) = self.tx.lock().take() else {
            return Err(io::Error::other("the recorder was already finished"));
        };
        for shard in &self.shards {
            let mut s = shard.lock();
            if !s.enc.is_empty() {
                let raw = s.enc.take();
                let events = std::mem::take(&mut s.events);
                drop(s);
                // The last blocks wait for room rather than being lost.
                if tx.send(Msg::Block { raw, events }).is_ok() {
                    self.events.fetch_add(events, Relaxed);
                }
            }
        }
        let lost = self.lost.load(Relaxed);
        if lost > 0 {
            let mut enc = Encoder::new();
            enc.push(&Event::Lost { count: lost });
            let _ = tx.send(Msg::Block {
                raw: enc.take(),
                events: 1,
            });
        }
        let _ = tx.send(Msg::End { lost });
        drop(tx);
        let handle = self.writer.lock().take();
        match handle {
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("the recorder's writer thread panicked"))?,
            None => Err(io::Error::other("the recorder was already finished")),
        }
    }
}

fn write_loop(
    rx: Receiver<Msg>,
    mut file: Option<FileWriter<BufWriter<File>>>,
    live: Option<SyncSender<Live>>,
) -> io::Result<Trailer> {
    let mut events = 0;
    let mut lost = 0;
    let mut live = live;
    for msg in rx {
        match msg {
            Msg::Block { raw, events: n } => {
                events += n;
                if let Some(f) = file.as_mut() {
                    f.write_block(&raw, n)?;
                }
                if let Some(l) = &live
                    && l.send(Live::Block(raw)).is_err()
                {
                    // The consumer went away; keep writing the file.
                    live = None;
                }
            }
            Msg::End { lost: n } => {
                lost = n;
                break;
            }
        }
    }
    if let Some(mut f) = file {
        f.add_lost(lost);
        f.finish()?;
    }
    let trailer = Trailer { events, lost };
    if let Some(l) = &live {
        let _ = l.send(Live::End(trailer));
    }
    Ok(trailer)
}
