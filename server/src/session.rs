//! What each client event does. The socket loop lives in `connection.rs`; these are the
//! protocol's rules, one method per event.

use std::sync::Arc;
use std::time::Instant;

use lockstep_protocol::event::close_code;
use lockstep_protocol::limits::{
    BAD_FRAMES_PER_WINDOW_MAX, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, JOINED_MEMBERS_LISTED_MAX,
};
use lockstep_protocol::{
    ClientEvent, ErrorCode, ErrorEvent, History, HistoryReq, JoinReq, Joined, LeaveReq, Left,
    Message, Presence, PresenceStatus, ReadReq, Rejected, RoomName, SendReq, Typing, TypingReq,
    event_frame,
};

use crate::connection::{Connection, Exit, Joined as JoinedRoom};
use crate::hub::HubError;
use crate::outbox::Class;
use crate::reads::Priority;
use crate::resume::{JoinAsk, plan_join};
use crate::room::Room;
use crate::sequencer::Op;

impl Connection {
    /// Handles one decoded client event.
    pub(crate) async fn on_event(&mut self, ev: ClientEvent) -> Result<(), Exit> {
        let now = Instant::now();
        let limited = match &ev {
            ClientEvent::Send(_) => self.send_bucket.take(now),
            _ => self.event_bucket.take(now),
        };
        if let Err(wait) = limited {
            let (id, room) = match &ev {
                ClientEvent::Send(s) => (Some(s.id.as_str().to_owned()), Some(s.room.clone())),
                ClientEvent::Join(j) => (None, Some(j.room.clone())),
                ClientEvent::Leave(l) => (None, Some(l.room.clone())),
                ClientEvent::Typing(t) => (None, Some(t.room.clone())),
                ClientEvent::Read(r) => (None, Some(r.room.clone())),
                ClientEvent::History(h) => (None, Some(h.room.clone())),
                ClientEvent::Ping(_) => (None, None),
            };
            self.refuse_for_rate(now, wait, ev.kind(), id, room);
            return Ok(());
        }
        match ev {
            ClientEvent::Join(j) => self.join(j).await,
            ClientEvent::Leave(l) => self.leave(l),
            ClientEvent::Send(s) => self.send(s, now).await,
            ClientEvent::Typing(t) => self.typing(t).await,
            ClientEvent::Read(r) => self.read_mark(r).await,
            ClientEvent::History(h) => self.history(h).await,
            ClientEvent::Ping(p) => {
                self.queue(&lockstep_protocol::Pong { t: p.t });
                Ok(())
            }
        }
    }

    /// Queues an `error` event.
    pub(crate) fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<String>,
        room: Option<RoomName>,
    ) {
        self.node.metrics.error(code);
        self.queue(&ErrorEvent {
            id,
            room,
            ..ErrorEvent::new(code, message)
        });
    }

    /// Answers a malformed frame (undecodable, binary, invalid value, text too long):
    /// an `error` like any other, but it counts toward the bad-frame limit, past which
    /// the connection is closed with 1008. Requests that are well formed but refused
    /// for the state they find (a second join, a read mark past the head) do not count.
    pub(crate) fn garbage(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<String>,
        room: Option<RoomName>,
    ) {
        self.node
            .metrics
            .bad_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.bad_frames.hit(Instant::now()) > BAD_FRAMES_PER_WINDOW_MAX {
            self.close_with = Some((
                close_code::POLICY,
                format!("more than {BAD_FRAMES_PER_WINDOW_MAX} bad frames in a minute"),
            ));
        }
        self.error(code, message, id, room);
    }

    pub(crate) fn reject_frame(&mut self, rej: Rejected) {
        let room = rej.room.and_then(|r| RoomName::new(r).ok());
        self.garbage(ErrorCode::BadRequest, rej.error.to_string(), rej.id, room);
    }

    pub(crate) fn reject_binary(&mut self) {
        self.garbage(
            ErrorCode::BadRequest,
            "binary frames are not accepted: send one JSON object per text frame",
            None,
            None,
        );
    }

    fn refuse_for_rate(
        &mut self,
        now: Instant,
        wait: std::time::Duration,
        kind: &str,
        id: Option<String>,
        room: Option<RoomName>,
    ) {
        let retry_after_ms = (wait.as_millis() as u64).max(1);
        self.node.metrics.error(ErrorCode::RateLimited);
        let max = self.node.cfg.rate_limited_per_minute_max;
        if self.rate_refusals.hit(now) > max {
            self.close_with = Some((
                close_code::POLICY,
                format!("more than {max} rate-limited events in a minute"),
            ));
        }
        self.queue(&ErrorEvent {
            id,
            room,
            retry_after_ms: Some(retry_after_ms),
            ..ErrorEvent::new(
                ErrorCode::RateLimited,
                format!("{kind} rate limit reached; retry after {retry_after_ms} ms"),
            )
        });
    }

    /// `not_member` when the room exists, `unknown_room` when nobody ever used it.
    async fn not_joined(&mut self, room: &RoomName, what: &str, id: Option<String>) {
        let (code, msg) = match self.node.hub.exists(room).await {
            Ok(true) => (
                ErrorCode::NotMember,
                format!("join room {room} on this connection before {what}"),
            ),
            Ok(false) => (
                ErrorCode::UnknownRoom,
                format!("room {room} does not exist; join it to create it"),
            ),
            Err(e) => (ErrorCode::Internal, format!("looking up room {room}: {e}")),
        };
        self.error(code, msg, id, Some(room.clone()));
    }

    async fn join(&mut self, j: JoinReq) -> Result<(), Exit> {
        if !self.id.rooms.allows(&j.room) {
            self.error(
                ErrorCode::Forbidden,
                format!("your token does not list room {}", j.room),
                None,
                Some(j.room),
            );
            return Ok(());
        }
        if self.joined_index(&j.room).is_some() {
            let msg = format!(
                "already joined to {} on this connection; leave it first",
                j.room
            );
            self.error(ErrorCode::BadRequest, msg, None, Some(j.room));
            return Ok(());
        }
        let max = self.node.cfg.rooms_per_connection_max;
        if self.rooms.len() >= max {
            let msg = format!("this connection is joined to {max} rooms, the most allowed");
            self.error(ErrorCode::BadRequest, msg, None, Some(j.room));
            return Ok(());
        }
        let room = match self.node.hub.open(&j.room, true).await {
            Ok(Some(room)) => room,
            Ok(None) => unreachable!("open with create always yields a room"),
            Err(HubError::Full(n)) => {
                let msg = format!("{n} rooms are active on this server; retry later");
                self.error(ErrorCode::Overloaded, msg, None, Some(j.room));
                return Ok(());
            }
            Err(e @ HubError::Store(_)) => {
                tracing::error!(room = %j.room, error = %e, "loading a room failed");
                self.error(ErrorCode::Internal, e.to_string(), None, Some(j.room));
                return Ok(());
            }
        };
        // Become a member before reading the head: anything published after this point
        // wakes this connection, and everything up to the head read below is covered by
        // the cursor. Nothing falls between the two.
        let (key, came_online) = room.add_member(&self.outbox);
        let (first, head) = (room.first(), room.head());
        let plan = plan_join(
            JoinAsk {
                since: j.since,
                history: j.history,
                epoch: j.epoch.as_ref(),
            },
            &room.epoch,
            first,
            head,
        );
        let (members, member_count) = room.members_listed(&self.id.user, JOINED_MEMBERS_LISTED_MAX);
        self.queue(&Joined {
            room: room.name.clone(),
            epoch: room.epoch.clone(),
            head,
            first,
            members,
            member_count,
            reset: plan.reset,
        });
        if came_online {
            self.presence(&room, PresenceStatus::Online);
        }
        self.rooms.push(JoinedRoom {
            room,
            cursor: plan.cursor,
            key,
        });
        Ok(())
    }

    fn leave(&mut self, l: LeaveReq) -> Result<(), Exit> {
        let Some(i) = self.joined_index(&l.room) else {
            let msg = format!("not joined to {} on this connection", l.room);
            self.error(ErrorCode::NotMember, msg, None, Some(l.room));
            return Ok(());
        };
        let j = self.rooms.remove(i);
        if j.room.remove_member(j.key) {
            self.presence(&j.room, PresenceStatus::Offline);
        }
        self.queue(&Left { room: l.room });
        Ok(())
    }

    /// Leaves every room (the connection is ending).
    pub(crate) fn leave_all(&mut self) {
        for j in std::mem::take(&mut self.rooms) {
            if j.room.remove_member(j.key) {
                self.presence(&j.room, PresenceStatus::Offline);
            }
        }
    }

    /// Tells the room's other connections this user came online or went offline, unless
    /// the room is too big for per-user presence events.
    fn presence(&self, room: &Arc<Room>, status: PresenceStatus) {
        if room.user_count() > self.node.cfg.presence_events_members_max {
            return;
        }
        let frame = event_frame(&Presence {
            room: room.name.clone(),
            user: self.id.user.clone(),
            status,
        });
        let me = self.outbox.conn;
        let dropped = room.broadcast(&frame, Class::Ephemeral, |o| o.conn != me);
        self.node
            .metrics
            .outbox_dropped
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
    }

    async fn send(&mut self, s: SendReq, read_at: Instant) -> Result<(), Exit> {
        let max = self.node.cfg.max_text_bytes;
        if s.text.len() > max {
            let msg = format!("text is {} bytes; max_text_bytes is {max}", s.text.len());
            self.garbage(
                ErrorCode::TooLong,
                msg,
                Some(s.id.as_str().to_owned()),
                Some(s.room),
            );
            return Ok(());
        }
        let Some(i) = self.joined_index(&s.room) else {
            self.not_joined(&s.room, "sending to it", Some(s.id.as_str().to_owned()))
                .await;
            return Ok(());
        };
        let op = Op::Send {
            room: self.rooms[i].room.clone(),
            id: s.id,
            from: self.id.user.clone(),
            text: s.text,
            outbox: self.outbox.clone(),
            read_at,
        };
        self.outbox.inflight_add();
        if let Err(op) = self.node.sequencer.submit(op).await {
            self.outbox.inflight_done();
            if let Op::Send { id, room, .. } = op {
                self.error(
                    ErrorCode::Overloaded,
                    "the server is shutting down and accepts no more sends; reconnect and retry",
                    Some(id.as_str().to_owned()),
                    Some(room.name.clone()),
                );
            }
        }
        Ok(())
    }

    async fn typing(&mut self, t: TypingReq) -> Result<(), Exit> {
        let Some(i) = self.joined_index(&t.room) else {
            self.not_joined(&t.room, "typing in it", None).await;
            return Ok(());
        };
        // Like presence: in very large rooms typing is not fanned out (it is ephemeral,
        // and every keystroke reaching thousands of connections is not worth the bytes).
        if self.rooms[i].room.user_count() > self.node.cfg.presence_events_members_max {
            return Ok(());
        }
        let frame = event_frame(&Typing {
            room: t.room,
            user: self.id.user.clone(),
            active: t.active,
        });
        let me = &self.id.user;
        let dropped = self.rooms[i]
            .room
            .broadcast(&frame, Class::Ephemeral, |o| &o.user != me);
        self.node
            .metrics
            .outbox_dropped
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn read_mark(&mut self, r: ReadReq) -> Result<(), Exit> {
        let Some(i) = self.joined_index(&r.room) else {
            self.not_joined(&r.room, "marking it read", None).await;
            return Ok(());
        };
        let room = self.rooms[i].room.clone();
        let head = room.head();
        if r.seq > head {
            let msg = format!("read seq {} is beyond the room's head {head}", r.seq);
            self.error(ErrorCode::BadRequest, msg, None, Some(r.room));
            return Ok(());
        }
        let op = Op::ReadMark {
            room,
            user: self.id.user.clone(),
            seq: r.seq,
            outbox: self.outbox.clone(),
        };
        if self.node.sequencer.submit(op).await.is_err() {
            self.error(
                ErrorCode::Overloaded,
                "the server is shutting down",
                None,
                Some(r.room),
            );
        }
        Ok(())
    }

    async fn history(&mut self, h: HistoryReq) -> Result<(), Exit> {
        if !self.id.rooms.allows(&h.room) {
            let msg = format!("your token does not list room {}", h.room);
            self.error(ErrorCode::Forbidden, msg, None, Some(h.room));
            return Ok(());
        }
        let limit = h.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
        if limit == 0 || limit > HISTORY_LIMIT_MAX {
            let msg = format!("history limit must be 1..={HISTORY_LIMIT_MAX}, not {limit}");
            self.garbage(ErrorCode::BadRequest, msg, None, Some(h.room));
            return Ok(());
        }
        let room = match self.node.hub.open(&h.room, false).await {
            Ok(Some(room)) => room,
            Ok(None) => {
                let msg = format!("room {} does not exist", h.room);
                self.error(ErrorCode::UnknownRoom, msg, None, Some(h.room));
                return Ok(());
            }
            Err(HubError::Full(n)) => {
                let msg = format!("{n} rooms are active on this server; retry later");
                self.error(ErrorCode::Overloaded, msg, None, Some(h.room));
                return Ok(());
            }
            Err(e) => {
                self.error(ErrorCode::Internal, e.to_string(), None, Some(h.room));
                return Ok(());
            }
        };
        let head = room.head();
        let before = h.before.unwrap_or(u64::MAX).min(head + 1);
        let rows = match room.rid() {
            Some(rid) => {
                let limit = limit as usize;
                match self
                    .node
                    .reads
                    .run(Priority::Bulk, move |r| {
                        r.messages_before(rid, before, limit)
                    })
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        self.error(ErrorCode::Internal, e.to_string(), None, Some(h.room));
                        return Ok(());
                    }
                }
            }
            None => Vec::new(),
        };
        let mut rows = rows;
        crate::store::fit_reply(&mut rows, true);
        let messages = rows
            .into_iter()
            .map(|m| Message {
                room: room.name.clone(),
                seq: m.seq,
                id: m.id,
                from: m.from,
                text: m.text,
                ts: m.ts,
            })
            .collect();
        self.queue(&History {
            room: room.name.clone(),
            messages,
            first: room.first(),
        });
        Ok(())
    }
}
