//! The model's moving parts: a correct server (stores, fans out, answers joins) and
//! the clients' side of the wire (what they record as they read their queue).

use std::collections::{HashMap, VecDeque};

use lockstep_protocol::record::{CloseCause, Event};

use super::Sim;
use crate::support::th;

#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    pub(super) id: &'static str,
    pub(super) from: &'static str,
    pub(super) ts: u64,
}

pub(super) struct Room {
    pub(super) name: &'static str,
    pub(super) epoch: &'static str,
    pub(super) epochs: u32,
    pub(super) log: Vec<Stored>,
    pub(super) ids: HashMap<&'static str, u64>,
    pub(super) first: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Frame {
    Joined {
        r: usize,
        head: u64,
        first: u64,
        reset: bool,
        epoch: &'static str,
    },
    Message {
        r: usize,
        seq: u64,
    },
    Ack {
        r: usize,
        id: &'static str,
        seq: u64,
        dup: bool,
    },
    Refused {
        r: usize,
        id: &'static str,
        code: &'static str,
    },
    Left {
        r: usize,
    },
}

pub(super) struct Conn {
    pub(super) number: u32,
    pub(super) queue: VecDeque<Frame>,
    /// Rooms the server delivers to this connection.
    pub(super) member: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoomState {
    Out,
    Pending,
    Joined,
    Leaving,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ClientRoom {
    pub(super) state: RoomState,
    /// Re-join after a reconnect.
    pub(super) wanted: bool,
    pub(super) joined_once: bool,
    pub(super) history: u32,
    pub(super) held_epoch: Option<&'static str>,
    pub(super) held_last: u64,
}

pub(super) struct Pending {
    pub(super) r: usize,
    pub(super) id: &'static str,
    pub(super) intended: u64,
    pub(super) in_flight: bool,
}

pub(super) struct Client {
    pub(super) index: u32,
    pub(super) user: &'static str,
    pub(super) conn: Option<Conn>,
    pub(super) conns: u32,
    pub(super) rooms: Vec<ClientRoom>,
    pub(super) pending: Vec<Pending>,
    pub(super) next_id: u32,
}

impl Sim {
    pub(super) fn now(&mut self) -> u64 {
        self.t += 100;
        self.t
    }

    pub(super) fn rec(&mut self, ev: Event<'static>) {
        self.events.push(ev);
    }

    /// The server stores (or recognises) a send and answers it.
    pub(super) fn server_send(&mut self, c: usize, r: usize, id: &'static str, limited: bool) {
        let conn = self.clients[c].conn.as_mut().expect("connected");
        if !conn.member.contains(&r) {
            // A retry after `leave`: "send only to rooms joined on this connection".
            conn.queue.push_back(Frame::Refused {
                r,
                id,
                code: "not_member",
            });
            return;
        }
        if limited {
            conn.queue.push_back(Frame::Refused {
                r,
                id,
                code: "rate_limited",
            });
            return;
        }
        let room = &mut self.rooms[r];
        if let Some(&seq) = room.ids.get(id) {
            let conn = self.clients[c].conn.as_mut().expect("connected");
            conn.queue.push_back(Frame::Ack {
                r,
                id,
                seq,
                dup: true,
            });
            return;
        }
        self.ts += 1;
        room.log.push(Stored {
            id,
            from: self.clients[c].user,
            ts: 1_700_000_000_000 + self.ts,
        });
        let seq = room.log.len() as u64;
        room.ids.insert(id, seq);
        for cl in &mut self.clients {
            if let Some(conn) = &mut cl.conn
                && conn.member.contains(&r)
            {
                conn.queue.push_back(Frame::Message { r, seq });
            }
        }
        let conn = self.clients[c].conn.as_mut().expect("connected");
        conn.queue.push_back(Frame::Ack {
            r,
            id,
            seq,
            dup: false,
        });
    }

    /// The client sends `join` for room `r`; the server answers at once.
    pub(super) fn join(&mut self, c: usize, r: usize) {
        let cr = self.clients[c].rooms[r];
        let (since, epoch, history) = if cr.joined_once {
            (Some(cr.held_last), cr.held_epoch, None)
        } else {
            (None, None, (cr.history > 0).then_some(cr.history))
        };
        let t_us = self.now();
        let cl = &mut self.clients[c];
        cl.rooms[r].state = RoomState::Pending;
        cl.rooms[r].wanted = true;
        let conn = cl.conn.as_mut().expect("connected");
        let number = conn.number;
        let room = &self.rooms[r];
        let head = room.log.len() as u64;
        let first = room.first;
        let reset = epoch.is_some_and(|e| e != room.epoch)
            || since.is_some_and(|s| s + 1 < first || s > head);
        let start = if reset {
            first
        } else if let Some(s) = since {
            s + 1
        } else if let Some(n) = history {
            first.max((head + 1).saturating_sub(u64::from(n)))
        } else {
            head + 1
        };
        conn.queue.push_back(Frame::Joined {
            r,
            head,
            first,
            reset,
            epoch: room.epoch,
        });
        for seq in start..=head {
            conn.queue.push_back(Frame::Message { r, seq });
        }
        conn.member.push(r);
        let index = cl.index;
        self.rec(Event::JoinSent {
            t_us,
            client: index,
            conn: number,
            room: room.name,
            since,
            epoch,
            history,
        });
    }

    pub(super) fn transmit(&mut self, c: usize, i: usize, limited: bool) {
        let t_us = self.now();
        let cl = &mut self.clients[c];
        let p = &mut cl.pending[i];
        p.in_flight = true;
        let (r, id, intended) = (p.r, p.id, p.intended);
        let number = cl.conn.as_ref().expect("connected").number;
        let index = cl.index;
        self.rec(Event::Send {
            t_us,
            client: index,
            conn: number,
            room: self.rooms[r].name,
            id,
            text_hash: th(id),
            intended_us: intended,
        });
        self.server_send(c, r, id, limited);
    }

    pub(super) fn connect(&mut self, c: usize) {
        let t_us = self.now();
        let cl = &mut self.clients[c];
        cl.conns += 1;
        cl.conn = Some(Conn {
            number: cl.conns,
            queue: VecDeque::new(),
            member: Vec::new(),
        });
        for p in &mut cl.pending {
            p.in_flight = false;
        }
        let (index, number) = (cl.index, cl.conns);
        self.rec(Event::Connected {
            t_us,
            client: index,
            conn: number,
        });
        for r in 0..self.rooms.len() {
            if self.clients[c].rooms[r].wanted {
                self.join(c, r);
            }
        }
    }

    pub(super) fn ensure_connected(&mut self, c: usize) {
        if self.clients[c].conn.is_none() {
            self.connect(c);
        }
    }

    /// The connection ends: the server forgets it, the client keeps what it wants.
    pub(super) fn close(&mut self, c: usize, cause: CloseCause, code: Option<u16>) {
        let t_us = self.now();
        let cl = &mut self.clients[c];
        let Some(conn) = cl.conn.take() else {
            return;
        };
        for cr in &mut cl.rooms {
            match cr.state {
                RoomState::Leaving => {
                    cr.state = RoomState::Out;
                    cr.wanted = false;
                }
                RoomState::Pending | RoomState::Joined => cr.state = RoomState::Out,
                RoomState::Out => {}
            }
        }
        let index = cl.index;
        self.rec(Event::Closed {
            t_us,
            client: index,
            conn: conn.number,
            cause,
            code,
        });
    }

    /// The client reads one frame; false when its queue is empty.
    pub(super) fn read_one(&mut self, c: usize) -> bool {
        let Some(conn) = self.clients[c].conn.as_mut() else {
            return false;
        };
        let Some(frame) = conn.queue.pop_front() else {
            return false;
        };
        let number = conn.number;
        let t_us = self.now();
        let index = self.clients[c].index;
        match frame {
            Frame::Joined {
                r,
                head,
                first,
                reset,
                epoch,
            } => {
                self.rec(Event::Joined {
                    t_us,
                    client: index,
                    conn: number,
                    room: self.rooms[r].name,
                    epoch,
                    head,
                    first,
                    reset,
                });
                let cr = &mut self.clients[c].rooms[r];
                let epoch_changed = cr.held_epoch.is_some_and(|e| e != epoch);
                if reset || epoch_changed {
                    cr.held_last = first.saturating_sub(1);
                } else if !cr.joined_once {
                    cr.held_last = head
                        .saturating_sub(u64::from(cr.history))
                        .max(first.saturating_sub(1));
                }
                cr.held_epoch = Some(epoch);
                cr.joined_once = true;
                cr.state = RoomState::Joined;
                // Re-send what is un-acked for this room, in order.
                for i in 0..self.clients[c].pending.len() {
                    let p = &self.clients[c].pending[i];
                    if p.r == r && !p.in_flight {
                        self.transmit(c, i, false);
                    }
                }
            }
            Frame::Message { r, seq } => {
                let m = self.rooms[r].log[seq as usize - 1];
                self.rec(Event::Message {
                    t_us,
                    client: index,
                    conn: number,
                    room: self.rooms[r].name,
                    seq,
                    id: m.id,
                    from: m.from,
                    text_hash: th(m.id),
                    ts: m.ts,
                });
                let cr = &mut self.clients[c].rooms[r];
                cr.held_last = cr.held_last.max(seq);
            }
            Frame::Ack { r, id, seq, dup } => {
                self.rec(Event::Ack {
                    t_us,
                    client: index,
                    conn: number,
                    room: self.rooms[r].name,
                    id,
                    seq,
                    ts: self.rooms[r].log[seq as usize - 1].ts,
                    dup,
                });
                self.clients[c].pending.retain(|p| p.id != id);
            }
            Frame::Refused { r, id, code } => {
                self.rec(Event::Error {
                    t_us,
                    client: index,
                    conn: number,
                    code,
                    id: Some(id),
                    room: Some(self.rooms[r].name),
                });
                if let Some(i) = self.clients[c].pending.iter().position(|p| p.id == id) {
                    if code == "rate_limited" {
                        self.transmit(c, i, false);
                    } else {
                        // Never taken: the client gives the message up.
                        self.clients[c].pending.remove(i);
                    }
                }
            }
            Frame::Left { r } => {
                self.rec(Event::Left {
                    t_us,
                    client: index,
                    conn: number,
                    room: self.rooms[r].name,
                });
                let cr = &mut self.clients[c].rooms[r];
                cr.state = RoomState::Out;
                cr.wanted = false;
            }
        }
        true
    }
}
