//! The last few events of every connection, kept compactly (interned names, no strings) so
//! an anomaly can show what led up to it at no cost per event beyond a 48-byte copy.

use lockstep_protocol::record::CloseCause;

use super::{Analysis, NONE};
use crate::anomaly::{CONTEXT_EVENTS_MAX, ClientRef, EventBrief};

/// One remembered event. Rooms, epochs, messages and codes are indexes into the analysis.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Recent {
    #[default]
    None,
    Connected {
        t: u64,
    },
    JoinSent {
        t: u64,
        room: u32,
        since: Option<u64>,
        history: Option<u32>,
    },
    Joined {
        t: u64,
        room: u32,
        epoch: u32,
        head: u64,
        first: u64,
        reset: bool,
    },
    Message {
        t: u64,
        room: u32,
        seq: u64,
        msg: u32,
    },
    Send {
        t: u64,
        room: u32,
        msg: u32,
    },
    Ack {
        t: u64,
        room: u32,
        msg: u32,
        seq: u64,
        dup: bool,
    },
    Error {
        t: u64,
        code: u32,
        msg: u32,
    },
    LeaveSent {
        t: u64,
        room: u32,
    },
    Left {
        t: u64,
        room: u32,
    },
    Closed {
        t: u64,
        cause: CloseCause,
        code: Option<u16>,
    },
    Finished {
        t: u64,
    },
}

/// A fixed ring of the last [`CONTEXT_EVENTS_MAX`] events of a connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    buf: [Recent; CONTEXT_EVENTS_MAX],
    next: u8,
    len: u8,
}

impl Ring {
    pub fn push(&mut self, r: Recent) {
        self.buf[self.next as usize] = r;
        self.next = ((self.next as usize + 1) % CONTEXT_EVENTS_MAX) as u8;
        self.len = (self.len + 1).min(CONTEXT_EVENTS_MAX as u8);
    }

    /// Oldest first.
    pub fn snapshot(&self) -> Vec<Recent> {
        let n = self.len as usize;
        let start = (self.next as usize + CONTEXT_EVENTS_MAX - n) % CONTEXT_EVENTS_MAX;
        (0..n)
            .map(|i| self.buf[(start + i) % CONTEXT_EVENTS_MAX])
            .collect()
    }
}

pub(crate) fn cause_name(c: CloseCause) -> &'static str {
    match c {
        CloseCause::ClientClose => "client_close",
        CloseCause::ClientReset => "client_reset",
        CloseCause::ClientSilent => "client_silent",
        CloseCause::ServerClose => "server_close",
        CloseCause::Lost => "lost",
        CloseCause::RunEnd => "run_end",
    }
}

/// A text hash as reports show it.
pub(crate) fn hash_str(h: u64) -> String {
    format!("#{h:016x}")
}

impl Analysis {
    pub(crate) fn room_name(&self, r: u32) -> &str {
        self.rooms.get(r as usize).map_or("?", |r| &r.name)
    }

    pub(crate) fn epoch_name(&self, r: u32, e: u32) -> Option<String> {
        let room = self.rooms.get(r as usize)?;
        room.epochs.get(e as usize).map(|e| e.name.to_string())
    }

    pub(crate) fn msg_id(&self, m: u32) -> &str {
        self.msgs.get(m as usize).map_or("?", |m| &m.id)
    }

    pub(crate) fn user_name(&self, u: u32) -> &str {
        self.users.get(u as usize).map_or("?", |u| u)
    }

    pub(crate) fn client_ref(&self, c: u32) -> Option<ClientRef> {
        let c = self.clients.get(c as usize)?;
        Some(ClientRef {
            index: c.number,
            user: if c.user == NONE {
                "?".into()
            } else {
                self.user_name(c.user).to_owned()
            },
        })
    }

    /// The client index and connection number of a connection.
    pub(crate) fn conn_ref(&self, ci: u32) -> (Option<ClientRef>, Option<u32>) {
        match self.conns.get(ci as usize) {
            Some(c) => (self.client_ref(c.client), Some(c.number)),
            None => (None, None),
        }
    }

    pub(crate) fn render_context(&self, ci: u32, events: &[Recent]) -> Vec<EventBrief> {
        let (client, conn) = match self.conns.get(ci as usize) {
            Some(c) => (self.clients[c.client as usize].number, c.number),
            None => (NONE, 0),
        };
        events
            .iter()
            .filter_map(|r| {
                let (t_us, event, detail) = self.describe(r)?;
                Some(EventBrief {
                    t_us,
                    client,
                    conn,
                    event: event.to_owned(),
                    detail,
                })
            })
            .collect()
    }

    fn describe(&self, r: &Recent) -> Option<(u64, &'static str, String)> {
        Some(match *r {
            Recent::None => return None,
            Recent::Connected { t } => (t, "connected", String::new()),
            Recent::JoinSent {
                t,
                room,
                since,
                history,
            } => {
                let mut d = format!("room={}", self.room_name(room));
                if let Some(s) = since {
                    d += &format!(" since={s}");
                }
                if let Some(h) = history {
                    d += &format!(" history={h}");
                }
                (t, "join", d)
            }
            Recent::Joined {
                t,
                room,
                epoch,
                head,
                first,
                reset,
            } => (
                t,
                "joined",
                format!(
                    "room={} epoch={} head={head} first={first}{}",
                    self.room_name(room),
                    self.epoch_name(room, epoch).unwrap_or_default(),
                    if reset { " reset" } else { "" }
                ),
            ),
            Recent::Message { t, room, seq, msg } => (
                t,
                "message",
                format!(
                    "room={} seq={seq} id={}",
                    self.room_name(room),
                    self.msg_id(msg)
                ),
            ),
            Recent::Send { t, room, msg } => (
                t,
                "send",
                format!("room={} id={}", self.room_name(room), self.msg_id(msg)),
            ),
            Recent::Ack {
                t,
                room,
                msg,
                seq,
                dup,
            } => (
                t,
                "ack",
                format!(
                    "room={} id={} seq={seq}{}",
                    self.room_name(room),
                    self.msg_id(msg),
                    if dup { " dup" } else { "" }
                ),
            ),
            Recent::Error { t, code, msg } => {
                let mut d = format!("code={}", self.codes.get(code as usize).map_or("?", |c| c));
                if msg != NONE {
                    d += &format!(" id={}", self.msg_id(msg));
                }
                (t, "error", d)
            }
            Recent::LeaveSent { t, room } => (t, "leave", format!("room={}", self.room_name(room))),
            Recent::Left { t, room } => (t, "left", format!("room={}", self.room_name(room))),
            Recent::Closed { t, cause, code } => (
                t,
                "closed",
                match code {
                    Some(c) => format!("cause={} code={c}", cause_name(cause)),
                    None => format!("cause={}", cause_name(cause)),
                },
            ),
            Recent::Finished { t } => (t, "finished", String::new()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_events_oldest_first() {
        // Goal: the context shown is the last N events in the order they happened.
        let mut r = Ring::default();
        for t in 0..(CONTEXT_EVENTS_MAX as u64 + 3) {
            r.push(Recent::Finished { t });
        }
        let got: Vec<u64> = r
            .snapshot()
            .iter()
            .map(|e| match e {
                Recent::Finished { t } => *t,
                _ => unreachable!(),
            })
            .collect();
        let want: Vec<u64> = (3..CONTEXT_EVENTS_MAX as u64 + 3).collect();
        assert_eq!(got, want);
    }
}
