//! Every event of the wire protocol as typed Rust.
//!
//! Events are JSON objects tagged by `"type"`. Serialization derives the tag
//! (`#[serde(tag = "type")]`); deserialization goes through [`crate::codec`], which reads
//! the tag first and then decodes the one matching struct, so errors name the event and
//! the field ("send: missing field `id`") and no intermediate buffering is needed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{Epoch, MessageId, RoomName, UserName};

/// A room sequence number. Seqs start at 1; 0 means "nothing yet".
pub type Seq = u64;

// ---------------------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------------------

/// An event a client sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent {
    Join(JoinReq),
    Leave(LeaveReq),
    Send(SendReq),
    Typing(TypingReq),
    Read(ReadReq),
    History(HistoryReq),
    Ping(PingReq),
}

impl ClientEvent {
    /// The `type` tag of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientEvent::Join(_) => "join",
            ClientEvent::Leave(_) => "leave",
            ClientEvent::Send(_) => "send",
            ClientEvent::Typing(_) => "typing",
            ClientEvent::Read(_) => "read",
            ClientEvent::History(_) => "history",
            ClientEvent::Ping(_) => "ping",
        }
    }
}

/// `join`: subscribe this connection to a room, optionally resuming or replaying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinReq {
    pub room: RoomName,
    /// The last seq the client holds; the server replays `since + 1 ..= head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Seq>,
    /// With no `since`: also replay the last `history` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    /// The epoch the client's `since` belongs to; a different epoch means `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
}

/// `leave`: unsubscribe this connection from a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaveReq {
    pub room: RoomName,
}

/// `send`: publish a message. `id` is the idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendReq {
    pub room: RoomName,
    pub id: MessageId,
    pub text: String,
}

/// `typing`: tell the other members this user is (not) typing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypingReq {
    pub room: RoomName,
    pub active: bool,
}

/// `read`: mark the room read up to `seq` for this user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadReq {
    pub room: RoomName,
    pub seq: Seq,
}

/// `history`: ask for stored messages with seq below `before` (or up to the head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReq {
    pub room: RoomName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `ping`: an application-level ping; `t` is echoed in the `pong`.
///
/// `t` absent is `None`; `"t": null` is `Some(Value::Null)` and is echoed as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReq {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub t: Option<Value>,
}

/// A field that is present is `Some`, even when it is JSON `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------------------

/// An event the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Welcome(Welcome),
    Joined(Joined),
    Message(Message),
    Ack(Ack),
    Typing(Typing),
    Read(Read),
    Presence(Presence),
    Left(Left),
    History(History),
    Error(ErrorEvent),
    Pong(Pong),
}

impl ServerEvent {
    /// The `type` tag of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEvent::Welcome(_) => "welcome",
            ServerEvent::Joined(_) => "joined",
            ServerEvent::Message(_) => "message",
            ServerEvent::Ack(_) => "ack",
            ServerEvent::Typing(_) => "typing",
            ServerEvent::Read(_) => "read",
            ServerEvent::Presence(_) => "presence",
            ServerEvent::Left(_) => "left",
            ServerEvent::History(_) => "history",
            ServerEvent::Error(_) => "error",
            ServerEvent::Pong(_) => "pong",
        }
    }
}

/// `welcome`: first event on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub user: UserName,
    pub conn: String,
    pub node: String,
    pub heartbeat_ms: u64,
    pub max_text_bytes: u64,
}

/// `joined`: answer to `join`; replayed messages follow it, then live ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub room: RoomName,
    pub epoch: Epoch,
    /// Highest seq in the room when the join took effect (0 for an empty room).
    pub head: Seq,
    /// Lowest seq still retained.
    pub first: Seq,
    /// Up to 100 distinct online users; the joining user is always listed.
    pub members: Vec<UserName>,
    /// How many distinct users are online in the room.
    pub member_count: u64,
    /// The client must drop what it holds for this room; replay starts at `first`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

/// `message`: a sequenced chat message. Identical for every recipient of a seq.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub room: RoomName,
    pub seq: Seq,
    pub id: MessageId,
    pub from: UserName,
    pub text: String,
    /// Server wall-clock milliseconds since the Unix epoch, fixed at sequencing.
    pub ts: u64,
}

/// A borrowed `message`, encoded exactly like [`Message`]. The server encodes each message
/// once from the parts it already holds, without cloning them into a `Message`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageRef<'a> {
    pub room: &'a RoomName,
    pub seq: Seq,
    pub id: &'a MessageId,
    pub from: &'a UserName,
    pub text: &'a str,
    pub ts: u64,
}

/// `ack`: the message is stored with this seq. `dup` when it had been stored before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub room: RoomName,
    pub id: MessageId,
    pub seq: Seq,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dup: bool,
}

/// `typing` from another member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Typing {
    pub room: RoomName,
    pub user: UserName,
    pub active: bool,
}

/// `read`: a member's read mark moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Read {
    pub room: RoomName,
    pub user: UserName,
    pub seq: Seq,
}

/// Whether a user came online or went offline in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// `presence`: a user's first connection joined or last one left the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub room: RoomName,
    pub user: UserName,
    pub status: PresenceStatus,
}

/// `left`: answer to `leave`; nothing more of the room follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Left {
    pub room: RoomName,
}

/// `history`: answer to a `history` request, messages in ascending seq.
///
/// Each element of `messages` is a complete `message` event (with `"type":"message"`), so
/// a client can hand it to the same code that handles live messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub room: RoomName,
    #[serde(serialize_with = "messages_tagged")]
    pub messages: Vec<Message>,
    pub first: Seq,
}

/// The error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownRoom,
    NotMember,
    Forbidden,
    TooLong,
    RateLimited,
    Overloaded,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownRoom,
        ErrorCode::NotMember,
        ErrorCode::Forbidden,
        ErrorCode::TooLong,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error`: a request was refused. Never closes the connection by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub code: ErrorCode,
    pub message: String,
    /// The `id` of the `send` this answers, as the client wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Extension: the room the refused request named, when it named a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomName>,
}

impl ErrorEvent {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
            retry_after_ms: None,
            room: None,
        }
    }
}

/// `pong`: answer to `ping`, echoing `t` (absent when the ping had none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub t: Option<Value>,
}

/// Serializes a body with its `"type"` tag first, as the tagged enums do.
#[derive(Serialize)]
pub(crate) struct WithType<'a, T> {
    #[serde(rename = "type")]
    pub(crate) ty: &'static str,
    #[serde(flatten)]
    pub(crate) body: &'a T,
}

pub(crate) fn messages_tagged<S: serde::Serializer>(
    v: &[Message],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|m| WithType {
        ty: "message",
        body: m,
    }))
}

/// HTTP answers (`GET /rooms/{room}/...`).
pub mod http {
    use super::*;

    /// `GET /rooms/{room}/messages?after=S&limit=N`: messages with seq > S, ascending.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct MessagesPage {
        pub room: RoomName,
        pub epoch: Epoch,
        pub first: Seq,
        pub head: Seq,
        #[serde(serialize_with = "messages_tagged")]
        pub messages: Vec<Message>,
    }

    /// `GET /rooms/{room}/presence`: every distinct online user.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct PresenceList {
        pub room: RoomName,
        pub users: Vec<UserName>,
    }

    /// The body of every HTTP error answer.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct HttpError {
        pub error: ErrorCode,
        pub message: String,
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// WebSocket close codes the server uses, with their meaning in this protocol.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down: reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol violation at the WebSocket layer (bad framing).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Policy: abuse, or the token expired.
    pub const POLICY: u16 = 1008;
    /// A frame or message larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub const INTERNAL: u16 = 1011;
    /// Service restart.
    pub const RESTART: u16 = 1012;
    /// Slow consumer that could not be caught up: resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4000;
}
