//! Why a session ends, and what a failed socket read means for it.

use tracing::warn;

use super::close;

/// Why the session loop ended.
#[derive(Debug)]
pub(super) enum End {
    /// The peer dropped the connection (or it failed).
    PeerGone,
    /// The peer sent a Close frame: it is answered with ours (RFC 6455 §5.5.1).
    PeerClosed,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

pub(super) fn read_error(e: axum::Error) -> End {
    let too_big = e
        .into_inner()
        .downcast::<tungstenite::Error>()
        .map(|e| matches!(*e, tungstenite::Error::Capacity(_)))
        .unwrap_or(false);
    if too_big {
        warn!("message over the size limit; closing");
        End::Close(close::TOO_BIG, "message too big")
    } else {
        End::PeerGone
    }
}
