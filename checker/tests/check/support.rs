//! Test helpers: interned strings (so histories can be `Event<'static>`), a builder for tiny
//! hand-written histories, and running the checker over a list of events.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use lockstep_checker::{Checker, Report};
use lockstep_protocol::record::{CloseCause, Event, Header, Trailer, text_hash};

/// A `&'static str` for `s`, allocated once per distinct string (test histories reuse a
/// small set of names, so this stays small).
pub fn s(x: &str) -> &'static str {
    static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = SET.get_or_init(Default::default).lock().unwrap();
    if let Some(v) = set.get(x) {
        return v;
    }
    let v: &'static str = Box::leak(x.to_owned().into_boxed_str());
    set.insert(v);
    v
}

/// Runs the checker over `events` with a complete end marker.
pub fn check(events: &[Event<'_>]) -> Report {
    check_with(&Header::default(), events)
}

pub fn check_with(header: &Header, events: &[Event<'_>]) -> Report {
    let mut c = Checker::new(header);
    for e in events {
        c.observe(e);
    }
    c.finish(Some(Trailer {
        events: events.len() as u64,
        lost: 0,
    }))
}

/// A text hash for a message id: every test message's text is its id.
pub fn th(id: &str) -> u64 {
    text_hash(id)
}

/// Builds a history event by event; time advances by 1 ms per event.
#[derive(Default)]
pub struct H {
    pub ev: Vec<Event<'static>>,
    t: u64,
}

impl H {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn t(&mut self) -> u64 {
        self.t += 1000;
        self.t
    }

    pub fn client(&mut self, client: u32, user: &str) -> &mut Self {
        self.ev.push(Event::Client {
            client,
            user: s(user),
        });
        self
    }

    pub fn connect(&mut self, client: u32, conn: u32) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Connected { t_us, client, conn });
        self
    }

    /// `join` (optionally with since) answered by `joined` in epoch `e1`, first 1.
    pub fn join(
        &mut self,
        client: u32,
        conn: u32,
        room: &str,
        since: Option<u64>,
        head: u64,
    ) -> &mut Self {
        self.join_full(client, conn, room, since, None, "e1", head, 1, false)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn join_full(
        &mut self,
        client: u32,
        conn: u32,
        room: &str,
        since: Option<u64>,
        history: Option<u32>,
        epoch: &str,
        head: u64,
        first: u64,
        reset: bool,
    ) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::JoinSent {
            t_us,
            client,
            conn,
            room: s(room),
            since,
            epoch: None,
            history,
        });
        let t_us = self.t();
        self.ev.push(Event::Joined {
            t_us,
            client,
            conn,
            room: s(room),
            epoch: s(epoch),
            head,
            first,
            reset,
        });
        self
    }

    pub fn send(&mut self, client: u32, conn: u32, room: &str, id: &str) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Send {
            t_us,
            client,
            conn,
            room: s(room),
            id: s(id),
            text_hash: th(id),
            intended_us: t_us,
        });
        self
    }

    pub fn ack(
        &mut self,
        client: u32,
        conn: u32,
        room: &str,
        id: &str,
        seq: u64,
        dup: bool,
    ) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Ack {
            t_us,
            client,
            conn,
            room: s(room),
            id: s(id),
            seq,
            ts: 1_000 + seq,
            dup,
        });
        self
    }

    pub fn error(&mut self, client: u32, conn: u32, room: &str, id: &str, code: &str) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Error {
            t_us,
            client,
            conn,
            code: s(code),
            id: Some(s(id)),
            room: Some(s(room)),
        });
        self
    }

    /// A delivery of `id` from `from` at `seq`, text = id, ts = 1000 + seq.
    pub fn msg(
        &mut self,
        client: u32,
        conn: u32,
        room: &str,
        seq: u64,
        id: &str,
        from: &str,
    ) -> &mut Self {
        self.msg_full(client, conn, room, seq, id, from, th(id), 1_000 + seq)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn msg_full(
        &mut self,
        client: u32,
        conn: u32,
        room: &str,
        seq: u64,
        id: &str,
        from: &str,
        text_hash: u64,
        ts: u64,
    ) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Message {
            t_us,
            client,
            conn,
            room: s(room),
            seq,
            id: s(id),
            from: s(from),
            text_hash,
            ts,
        });
        self
    }

    pub fn leave(&mut self, client: u32, conn: u32, room: &str) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::LeaveSent {
            t_us,
            client,
            conn,
            room: s(room),
        });
        let t_us = self.t();
        self.ev.push(Event::Left {
            t_us,
            client,
            conn,
            room: s(room),
        });
        self
    }

    pub fn close(&mut self, client: u32, conn: u32) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Closed {
            t_us,
            client,
            conn,
            cause: CloseCause::Lost,
            code: None,
        });
        self
    }

    pub fn finished(&mut self, client: u32) -> &mut Self {
        let t_us = self.t();
        self.ev.push(Event::Finished { t_us, client });
        self
    }

    pub fn check(&self) -> Report {
        check(&self.ev)
    }
}
