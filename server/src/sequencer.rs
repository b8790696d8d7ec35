//! The sequencer: the only place a room's seq grows.
//!
//! One OS thread owns the store's write connection. Connections submit operations over a
//! bounded channel; the thread takes everything waiting (up to `commit_batch_max`), gives
//! each new message the room's next seq, writes the lot in one transaction (group
//! commit), and only after the commit returned:
//!
//! 1. appends the new messages' frames to their rooms' rings and wakes the members,
//! 2. queues each sender's `ack` (guarantee 6: ack means stored),
//! 3. broadcasts stored read marks.
//!
//! Guarantees this gives: seqs are consecutive from 1 with no reuse and no skip (a failed
//! commit assigns nothing: tentative seqs live in a per-batch table that is thrown away);
//! one connection's sends to a room are sequenced in the order they were read, because
//! they travel one FIFO channel to one thread (guarantee 7); a `send` with a stored
//! (room, id) is answered with the original seq and `dup: true` and delivered to nobody
//! (guarantee 5), including when the original is in the same batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use lockstep_protocol::{
    Ack, ErrorCode, ErrorEvent, MessageId, MessageRef, Read, Seq, UserName, event_frame,
};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::outbox::{Class, Outbox};
use crate::room::Room;
use crate::store::{Inserted, RoomId, StoreError, StoreWriter};

/// Work for the sequencer.
pub enum Op {
    Send {
        room: Arc<Room>,
        id: MessageId,
        from: UserName,
        text: String,
        outbox: Arc<Outbox>,
        /// When the connection read the send, for the send→ack latency histogram.
        read_at: Instant,
    },
    ReadMark {
        room: Arc<Room>,
        user: UserName,
        seq: Seq,
        outbox: Arc<Outbox>,
    },
    /// Finish the current batch and exit (sent once every connection is gone).
    Stop,
}

/// Submits operations to the sequencer thread.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Op>,
}

impl Sequencer {
    /// Starts the sequencer thread over `store`.
    pub fn start(
        store: Box<dyn StoreWriter>,
        queue_max: usize,
        batch_max: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue_max);
        let handle = std::thread::Builder::new()
            .name("lockstep-sequencer".into())
            .spawn(move || run(store, rx, batch_max, metrics))
            .expect("spawning the sequencer thread");
        (Self { tx }, handle)
    }

    /// Queues an operation, waiting while the queue is full (back-pressure to the
    /// submitting connection, which stops reading its socket meanwhile).
    /// Fails only once the sequencer has stopped.
    pub async fn submit(&self, op: Op) -> Result<(), Op> {
        self.tx.send(op).await.map_err(|e| e.0)
    }

    /// True once the thread has exited (after `stop`, or if it died).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Operations waiting now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Asks the thread to finish and exit once the queue ahead of this is processed.
    pub async fn stop(&self) {
        let _ = self.tx.send(Op::Stop).await;
    }
}

fn run(
    mut store: Box<dyn StoreWriter>,
    mut rx: mpsc::Receiver<Op>,
    batch_max: usize,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut stop = false;
    while !stop {
        match rx.blocking_recv() {
            None | Some(Op::Stop) => break,
            Some(op) => batch.push(op),
        }
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(Op::Stop) => {
                    stop = true;
                    break;
                }
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        metrics.sequencer_queue.store(rx.len() as u64, Relaxed);
        commit_batch(store.as_mut(), &mut batch, &metrics);
        batch.clear();
    }
    tracing::debug!("sequencer stopped");
}

/// Per-room state for one batch: the next tentative seq and what to publish.
struct RoomBatch {
    room: Arc<Room>,
    rid: Option<RoomId>,
    new_rid: bool,
    next: Seq,
    frames: Vec<(Seq, Bytes)>,
}

/// What to do for one op once the batch committed.
enum After {
    Ack {
        outbox: Arc<Outbox>,
        frame: Bytes,
        read_at: Instant,
        dup: bool,
    },
    ReadMark {
        room: Arc<Room>,
        frame: Bytes,
        outbox: Arc<Outbox>,
        user: UserName,
    },
}

fn commit_batch(store: &mut dyn StoreWriter, batch: &mut [Op], metrics: &Metrics) {
    let started = Instant::now();
    let mut rooms: Vec<RoomBatch> = Vec::new();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut after: Vec<After> = Vec::with_capacity(batch.len());

    let result: Result<(), StoreError> = (|| {
        store.begin()?;
        for op in batch.iter_mut() {
            let (room, ..) = match op {
                Op::Send { room, .. } | Op::ReadMark { room, .. } => (room.clone(),),
                Op::Stop => continue,
            };
            let slot = *index.entry(Arc::as_ptr(&room) as usize).or_insert_with(|| {
                rooms.push(RoomBatch {
                    rid: room.rid(),
                    new_rid: false,
                    next: room.head() + 1,
                    frames: Vec::new(),
                    room: room.clone(),
                });
                rooms.len() - 1
            });
            let rb = &mut rooms[slot];
            let rid = match rb.rid {
                Some(rid) => rid,
                None => {
                    let rid = store.ensure_room(&rb.room.name, &rb.room.epoch)?;
                    rb.rid = Some(rid);
                    rb.new_rid = true;
                    rid
                }
            };
            match op {
                Op::Send {
                    id,
                    from,
                    text,
                    outbox,
                    read_at,
                    ..
                } => {
                    let ts = crate::clock::now_ms();
                    let (seq, ts, dup) =
                        match store.insert_message(rid, rb.next, id, from, text, ts)? {
                            Inserted::New => {
                                let seq = rb.next;
                                rb.next += 1;
                                let frame = event_frame(&MessageRef {
                                    room: &rb.room.name,
                                    seq,
                                    id,
                                    from,
                                    text,
                                    ts,
                                });
                                rb.frames.push((seq, frame));
                                (seq, ts, false)
                            }
                            Inserted::Existing { seq, ts } => (seq, ts, true),
                        };
                    after.push(After::Ack {
                        outbox: outbox.clone(),
                        frame: event_frame(&Ack {
                            room: rb.room.name.clone(),
                            id: id.clone(),
                            seq,
                            ts,
                            dup,
                        }),
                        read_at: *read_at,
                        dup,
                    });
                }
                Op::ReadMark {
                    user, seq, outbox, ..
                } => {
                    let stored = store.raise_read_mark(rid, user, *seq)?;
                    after.push(After::ReadMark {
                        outbox: outbox.clone(),
                        user: user.clone(),
                        room: rb.room.clone(),
                        frame: event_frame(&Read {
                            room: rb.room.name.clone(),
                            user: user.clone(),
                            seq: stored,
                        }),
                    });
                }
                Op::Stop => {}
            }
        }
        store.commit()
    })();

    metrics
        .commit_latency
        .observe_us(started.elapsed().as_micros() as u64);
    metrics.commits.fetch_add(1, Relaxed);
    metrics.commit_ops.fetch_add(batch.len() as u64, Relaxed);

    if let Err(e) = result {
        store.rollback();
        metrics.commit_failures.fetch_add(1, Relaxed);
        tracing::error!(error = %e, ops = batch.len(), "group commit failed; answering its sends with internal");
        fail_batch(batch, &e, metrics);
        return;
    }

    // Durable from here on. Publish messages first, so that by the time a sender sees
    // its ack the message is visible to every join, history request and catch-up.
    let mut sequenced = 0;
    for rb in rooms {
        if rb.new_rid
            && let Some(rid) = rb.rid
        {
            rb.room.set_rid(rid);
        }
        sequenced += rb.frames.len() as u64;
        rb.room.publish(rb.frames);
    }
    metrics.messages_sequenced.fetch_add(sequenced, Relaxed);
    let mut later_marks: HashMap<(usize, UserName), usize> = HashMap::new();
    for (i, a) in after.iter().enumerate() {
        if let After::ReadMark { room, user, .. } = a {
            later_marks.insert((crate::outbox::room_key(room), user.clone()), i);
        }
    }
    for (i, a) in after.into_iter().enumerate() {
        match a {
            After::Ack {
                outbox,
                frame,
                read_at,
                dup,
            } => {
                if dup {
                    metrics.sends_duplicate.fetch_add(1, Relaxed);
                }
                outbox.push(frame, Class::Essential, 0);
                outbox.inflight_done();
                metrics
                    .ack_latency
                    .observe_us(read_at.elapsed().as_micros() as u64);
            }
            After::ReadMark {
                room,
                frame,
                outbox,
                user,
            } => {
                // Only the last mark of a user in a room within this batch matters.
                let superseded = later_marks
                    .get(&(crate::outbox::room_key(&room), user.clone()))
                    .is_some_and(|&last| last != i);
                metrics.read_marks.fetch_add(1, Relaxed);
                if !superseded {
                    // The member fan-out runs on the submitting connection's task, not
                    // on this thread, which commits for every room.
                    outbox.push_fanout(room, frame, outbox.user_key);
                }
            }
        }
    }
}

/// Answers every op of a failed batch with `internal`; nothing of it was stored.
fn fail_batch(batch: &mut [Op], err: &StoreError, metrics: &Metrics) {
    for op in batch.iter() {
        let (outbox, id, room) = match op {
            Op::Send {
                outbox, id, room, ..
            } => (outbox, Some(id.as_str().to_owned()), room),
            Op::ReadMark { outbox, room, .. } => (outbox, None, room),
            Op::Stop => continue,
        };
        let is_send = id.is_some();
        let ev = ErrorEvent {
            id,
            room: Some(room.name.clone()),
            ..ErrorEvent::new(
                ErrorCode::Internal,
                format!("storage failed; nothing was stored, retrying is safe: {err}"),
            )
        };
        metrics.error(ErrorCode::Internal);
        outbox.push(event_frame(&ev), Class::Essential, 0);
        if is_send {
            outbox.inflight_done();
        }
    }
}
