//! The Lockstep wire protocol (version 1): every event as typed Rust, name validation,
//! JSON decode/encode with precise errors, and the WebSocket framing both ends use.
//!
//! The contract is `PROTOCOL.md`; `docs/protocol.md` in this repository explains it.

pub mod codec;
pub mod event;
pub mod limits;
pub mod names;
pub mod record;
pub mod ws;

pub use codec::{
    DecodeError, Rejected, Tagged, decode_client, decode_server, encode, encode_event_into,
    encode_into, event_frame,
};
pub use event::*;
pub use names::{Epoch, MessageId, NameError, RoomName, UserName};
