//! The client end of a WebSocket, hand-framed like the server's (see
//! `lockstep_protocol::ws`): a handshake over a raw `TcpStream`, masked frames out, and
//! in-place decoding in. No per-frame allocation on the receive path.

use std::io;
use std::net::SocketAddr;

use base64::Engine as _;
use lockstep_protocol::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest HTTP response head accepted during the handshake.
const HANDSHAKE_BYTES_MAX: usize = 16 * 1024;

/// Why a WebSocket connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("handshake with {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("handshake with {addr}: server answered {status}")]
    Refused { addr: SocketAddr, status: String },
    #[error("handshake with {addr}: {why}")]
    Bad { addr: SocketAddr, why: &'static str },
}

/// Opens a TCP connection and performs the WebSocket handshake for `path` (path and
/// query, e.g. `/ws?user=alice`). Returns the stream and any bytes the server sent after
/// its handshake response (they belong to the first frames).
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(TcpStream, Vec<u8>), ConnectError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    let _ = stream.set_nodelay(true);
    let leftover = handshake(&mut stream, addr, host, path).await?;
    Ok((stream, leftover))
}

/// Performs the client handshake on an open stream.
pub async fn handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Vec<u8>, ConnectError> {
    let io_err = |source| ConnectError::Io { addr, source };
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.map_err(io_err)?;
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > HANDSHAKE_BYTES_MAX {
            return Err(ConnectError::Bad {
                addr,
                why: "response head too long",
            });
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(ConnectError::Bad {
                addr,
                why: "connection closed during the handshake",
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(ConnectError::Refused { addr, status });
    }
    let want = ws::accept_key(key.as_bytes());
    let ok = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
        })
    });
    if !ok {
        return Err(ConnectError::Bad {
            addr,
            why: "wrong or missing Sec-WebSocket-Accept",
        });
    }
    Ok(buf[end..].to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Closes a connection with a close handshake: our close frame, then whatever the server
/// still sends up to its close frame (at most `wait`), then the socket. The server sees a
/// clean close, not a reset from unread bytes.
pub async fn close_gracefully(mut stream: TcpStream, wait: std::time::Duration) {
    let mut out = Vec::new();
    control_frame(&mut out, ws::OP_CLOSE, &1000u16.to_be_bytes());
    let _ = tokio::time::timeout(wait, async {
        stream.write_all(&out).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut dec = ws::Decoder::new(ws::Role::Client, 16 * 1024 * 1024);
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            pending.extend_from_slice(&buf[..n]);
            let mut pos = 0;
            loop {
                match dec.decode(&mut pending[pos..]) {
                    Ok(ws::Decoded::Frame(ws::Frame::Close { .. }, _)) | Err(_) => return Ok(()),
                    Ok(ws::Decoded::Frame(_, k)) | Ok(ws::Decoded::Fragment(k)) => pos += k,
                    Ok(ws::Decoded::NeedMore(_)) => break,
                }
            }
            pending.drain(..pos);
        }
    })
    .await;
}

/// Appends a masked text frame (clients must mask, RFC 6455 §5.3).
pub fn text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    ws::append_frame(out, ws::OP_TEXT, payload, Some(rand::random()));
}

/// Appends a masked frame whose payload `write` produces in place.
pub fn text_frame_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    ws::append_frame_with(out, ws::OP_TEXT, Some(rand::random()), write);
}

/// Appends a masked control frame (pong, close).
pub fn control_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    ws::append_frame(out, opcode, payload, Some(rand::random()));
}
