//! Limits fixed by the wire contract (PROTOCOL.md). Server-tunable limits live in the
//! server's config; these are the ones every peer must agree on.

/// Longest room name, in bytes. Longer names are `bad_request`.
pub const ROOM_NAME_BYTES_MAX: usize = 64;
/// Longest user name, in bytes. Longer names are refused at the upgrade.
pub const USER_NAME_BYTES_MAX: usize = 64;
/// Longest client-chosen message id, in bytes.
pub const MESSAGE_ID_BYTES_MAX: usize = 64;
/// Default `max_text_bytes` announced in `welcome`; a `send` whose `text` is longer gets
/// `too_long`. Servers may announce another value.
pub const TEXT_BYTES_MAX_DEFAULT: usize = 4096;
/// Largest `limit` a `history` request or `GET /rooms/{room}/messages` may ask for.
pub const HISTORY_LIMIT_MAX: u32 = 500;
/// `limit` used when a `history` request gives none.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// At most this many names are listed in `joined.members`; `member_count` has the total.
pub const JOINED_MEMBERS_LISTED_MAX: usize = 100;
/// A client that sends more bad frames than this within [`BAD_FRAME_WINDOW_MS`] is
/// closed with 1008.
pub const BAD_FRAMES_PER_WINDOW_MAX: u32 = 100;
/// The window over which bad frames are counted.
pub const BAD_FRAME_WINDOW_MS: u64 = 60_000;
/// Default heartbeat period; a connection silent for 3 periods is closed.
pub const HEARTBEAT_MS_DEFAULT: u64 = 15_000;
/// How many missed heartbeat periods make a connection gone.
pub const HEARTBEAT_MISSES_MAX: u64 = 3;
