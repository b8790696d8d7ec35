//! A model of a correct server and of the load generator's clients, driven by a small
//! generated plan, producing the recording such a run would make. Histories built this way
//! are valid by construction; [`crate::inject`] then breaks exactly one thing.
//!
//! The plan is a list of steps; a step that does not apply (sending to a room the client
//! has not joined...) does nothing, so proptest can shrink a plan by dropping steps and
//! every smaller plan is still a valid run.
//!
//! Model: the server processes every request the moment it is sent and queues its answers
//! and the room's messages on the connection; the client reads its queue only on `Pump`
//! steps (so sends are pipelined and echoes arrive late). A connection that drops loses
//! its queue; the client reconnects at its next step, re-joins each room with `since` and
//! `epoch` and re-sends every un-acked message in order (a dup ack if it was stored).
//! `Reset` moves a room to a new epoch (same history, connections in it closed by the
//! server); `Trim` forgets the oldest seqs of a room (later joins from before are reset).
//! At the end, clients catch up, finish, and one final reader per room reads it from 0.

use std::collections::HashMap;

use lockstep_protocol::record::{CloseCause, Event};
use proptest::prelude::*;

use crate::support::{s, th};

#[derive(Debug, Clone)]
pub enum Step {
    Join {
        c: u8,
        r: u8,
        history: u8,
    },
    Leave {
        c: u8,
        r: u8,
    },
    Send {
        c: u8,
        r: u8,
        limited: bool,
    },
    Pump {
        c: u8,
        n: u8,
    },
    /// Read until a message of room `r` arrives, then send to it (a reply).
    Reply {
        c: u8,
        r: u8,
    },
    Drop {
        c: u8,
        lose_send: bool,
    },
    Reset {
        r: u8,
    },
    Trim {
        r: u8,
        keep: u8,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: u8,
    pub rooms: u8,
    pub steps: Vec<Step>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..4u8, 0..2u8, prop_oneof![3 => Just(0u8), 1 => 1..4u8])
            .prop_map(|(c, r, history)| Step::Join { c, r, history }),
        1 => (0..4u8, 0..2u8).prop_map(|(c, r)| Step::Leave { c, r }),
        6 => (0..4u8, 0..2u8, prop::bool::weighted(0.15))
            .prop_map(|(c, r, limited)| Step::Send { c, r, limited }),
        5 => (0..4u8, 1..6u8).prop_map(|(c, n)| Step::Pump { c, n }),
        2 => (0..4u8, 0..2u8).prop_map(|(c, r)| Step::Reply { c, r }),
        1 => (0..4u8, any::<bool>()).prop_map(|(c, lose_send)| Step::Drop { c, lose_send }),
        1 => (0..2u8).prop_map(|r| Step::Reset { r }),
        1 => (0..2u8, 1..4u8).prop_map(|(r, keep)| Step::Trim { r, keep }),
    ]
}

pub fn plan() -> impl Strategy<Value = Plan> {
    (1..=4u8, 1..=2u8, prop::collection::vec(step(), 0..60)).prop_map(|(clients, rooms, steps)| {
        Plan {
            clients,
            rooms,
            steps,
        }
    })
}

mod model;

use model::{Client, ClientRoom, Frame, Pending, Room, RoomState};

pub struct Sim {
    rooms: Vec<Room>,
    clients: Vec<Client>,
    pub events: Vec<Event<'static>>,
    t: u64,
    ts: u64,
}

impl Sim {
    fn step(&mut self, st: &Step) {
        let nc = self.clients.len();
        let nr = self.rooms.len();
        match *st {
            Step::Join { c, r, history } => {
                let (c, r) = (c as usize % nc, r as usize % nr);
                if self.clients[c].rooms[r].state != RoomState::Out {
                    return;
                }
                self.ensure_connected(c);
                if self.clients[c].rooms[r].state != RoomState::Out {
                    return; // the reconnect re-joined it
                }
                if !self.clients[c].rooms[r].joined_once {
                    self.clients[c].rooms[r].history = u32::from(history);
                }
                self.join(c, r);
            }
            Step::Leave { c, r } => {
                let (c, r) = (c as usize % nc, r as usize % nr);
                if self.clients[c].rooms[r].state != RoomState::Joined {
                    return;
                }
                let t_us = self.now();
                let cl = &mut self.clients[c];
                cl.rooms[r].state = RoomState::Leaving;
                let conn = cl.conn.as_mut().expect("joined means connected");
                conn.member.retain(|&m| m != r);
                conn.queue.push_back(Frame::Left { r });
                let (index, number) = (cl.index, conn.number);
                self.rec(Event::LeaveSent {
                    t_us,
                    client: index,
                    conn: number,
                    room: self.rooms[r].name,
                });
            }
            Step::Send { c, r, limited } => {
                let (c, r) = (c as usize % nc, r as usize % nr);
                self.ensure_connected(c);
                if self.clients[c].rooms[r].state != RoomState::Joined {
                    return;
                }
                let cl = &mut self.clients[c];
                cl.next_id += 1;
                let id = s(&format!("c{}-{}", cl.index, cl.next_id));
                let intended = self.t + 50;
                cl.pending.push(Pending {
                    r,
                    id,
                    intended,
                    in_flight: false,
                });
                let i = cl.pending.len() - 1;
                self.transmit(c, i, limited);
            }
            Step::Pump { c, n } => {
                let c = c as usize % nc;
                self.ensure_connected(c);
                for _ in 0..n {
                    if !self.read_one(c) {
                        break;
                    }
                }
            }
            Step::Reply { c, r } => {
                let (c, r) = (c as usize % nc, r as usize % nr);
                self.ensure_connected(c);
                loop {
                    let next = self.clients[c]
                        .conn
                        .as_ref()
                        .and_then(|k| k.queue.front().copied());
                    let Some(f) = next else { break };
                    self.read_one(c);
                    if matches!(f, Frame::Message { r: fr, .. } if fr == r) {
                        break;
                    }
                }
                self.step(&Step::Send {
                    c: c as u8,
                    r: r as u8,
                    limited: false,
                });
            }
            Step::Drop { c, lose_send } => {
                let c = c as usize % nc;
                if self.clients[c].conn.is_none() {
                    return;
                }
                if lose_send
                    && let Some(r) =
                        (0..nr).find(|&r| self.clients[c].rooms[r].state == RoomState::Joined)
                {
                    // Written to a socket that is already dead: never reaches the server.
                    let t_us = self.now();
                    let cl = &mut self.clients[c];
                    cl.next_id += 1;
                    let id = s(&format!("c{}-{}", cl.index, cl.next_id));
                    cl.pending.push(Pending {
                        r,
                        id,
                        intended: t_us,
                        in_flight: true,
                    });
                    let (index, number) = (cl.index, cl.conn.as_ref().expect("connected").number);
                    self.rec(Event::Send {
                        t_us,
                        client: index,
                        conn: number,
                        room: self.rooms[r].name,
                        id,
                        text_hash: th(id),
                        intended_us: t_us,
                    });
                }
                self.close(c, CloseCause::ClientReset, None);
            }
            Step::Reset { r } => {
                let r = r as usize % nr;
                let room = &mut self.rooms[r];
                room.epochs += 1;
                room.epoch = s(&format!("e-{}-{}", room.name, room.epochs));
                for c in 0..nc {
                    let member = self.clients[c]
                        .conn
                        .as_ref()
                        .is_some_and(|conn| conn.member.contains(&r));
                    if member {
                        self.close(c, CloseCause::ServerClose, Some(1012));
                    }
                }
            }
            Step::Trim { r, keep } => {
                let r = r as usize % nr;
                let room = &mut self.rooms[r];
                let head = room.log.len() as u64;
                room.first = room
                    .first
                    .max((head + 1).saturating_sub(u64::from(keep)).max(1));
            }
        }
    }

    /// Runs a plan to the end: catch-up, `Finished`, final readers.
    pub fn run(plan: &Plan) -> Vec<Event<'static>> {
        let mut sim = Sim {
            rooms: (0..plan.rooms)
                .map(|r| {
                    let name = s(&format!("room{r}"));
                    Room {
                        name,
                        epoch: s(&format!("e-{name}-1")),
                        epochs: 1,
                        log: Vec::new(),
                        ids: HashMap::new(),
                        first: 1,
                    }
                })
                .collect(),
            clients: (0..plan.clients)
                .map(|c| Client {
                    index: u32::from(c),
                    user: s(&format!("u{c}")),
                    conn: None,
                    conns: 0,
                    rooms: vec![
                        ClientRoom {
                            state: RoomState::Out,
                            wanted: false,
                            joined_once: false,
                            history: 0,
                            held_epoch: None,
                            held_last: 0,
                        };
                        plan.rooms as usize
                    ],
                    pending: Vec::new(),
                    next_id: 0,
                })
                .collect(),
            events: Vec::new(),
            t: 0,
            ts: 0,
        };
        for c in 0..sim.clients.len() {
            let (client, user) = (sim.clients[c].index, sim.clients[c].user);
            sim.rec(Event::Client { client, user });
        }
        for st in &plan.steps {
            sim.step(st);
        }
        // The quiet period: everyone who wants a room is connected and catches up.
        for c in 0..sim.clients.len() {
            if sim.clients[c].conn.is_none() && sim.clients[c].rooms.iter().any(|r| r.wanted) {
                sim.connect(c);
            }
        }
        loop {
            let mut any = false;
            for c in 0..sim.clients.len() {
                while sim.read_one(c) {
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        for c in 0..sim.clients.len() {
            let t_us = sim.now();
            let client = sim.clients[c].index;
            sim.rec(Event::Finished { t_us, client });
            sim.close(c, CloseCause::RunEnd, None);
        }
        // Final readers: one per room, from 0 to the head.
        for r in 0..sim.rooms.len() {
            let index = plan.clients as u32 + r as u32;
            let user = s(&format!("reader-{}", sim.rooms[r].name));
            sim.rec(Event::Client {
                client: index,
                user,
            });
            sim.clients.push(Client {
                index,
                user,
                conn: None,
                conns: 0,
                rooms: vec![
                    ClientRoom {
                        state: RoomState::Out,
                        wanted: false,
                        joined_once: true,
                        history: 0,
                        held_epoch: None,
                        held_last: 0,
                    };
                    sim.rooms.len()
                ],
                pending: Vec::new(),
                next_id: 0,
            });
            let c = sim.clients.len() - 1;
            sim.connect(c);
            sim.join(c, r);
            while sim.read_one(c) {}
            let t_us = sim.now();
            sim.rec(Event::Finished {
                t_us,
                client: index,
            });
            sim.close(c, CloseCause::RunEnd, None);
        }
        sim.events
    }
}
