//! Who may open a session. Checked before the WebSocket upgrade so a refused device sees an
//! HTTP 401/403 at once instead of waiting for a hello that never comes.
//!
//! Credentials come from headers (`Authorization`, `Device-Id`, `Client-Id`) or, for
//! browsers that cannot set WebSocket headers, from the query string (`authorization`,
//! `device-id`, `client-id`). Tokens are either static (configured) or issued by the OTA
//! endpoint: `base64url(HMAC-SHA256(secret, "client_id|device_id|expiry")).expiry`, bound
//! to the device and client ids. Comparisons are constant-time; tokens are never logged.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;

type HmacSha256 = Hmac<Sha256>;

/// What a client presented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The device's MAC (lower-cased), from `Device-Id` or `device-id`.
    pub device_id: Option<String>,
    /// The client UUID, from `Client-Id` or `client-id`.
    pub client_id: Option<String>,
    /// The bearer token without its `Bearer ` prefix; `None` when empty.
    pub token: Option<String>,
}

impl Credentials {
    /// Reads headers first, then the query string for what the headers lack.
    pub fn from_request(headers: &HeaderMap, query: &HashMap<String, String>) -> Self {
        let header = |name: &str| {
            headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
        };
        let query = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let device_id = header("device-id").or_else(|| query("device-id")).map(str::to_ascii_lowercase);
        let client_id = header("client-id").or_else(|| query("client-id")).and_then(client_id);
        let token = header("authorization").or_else(|| query("authorization")).and_then(bearer);
        Self { device_id, client_id, token }
    }
}

/// A client id as sent, or `None` for what is no id: empty, a placeholder some clients send
/// (`None`, `null`, `undefined`), over 64 characters, or with characters a UUID-like id never
/// has.
pub(crate) fn client_id(raw: &str) -> Option<String> {
    let id = raw.trim();
    let placeholder =
        ["none", "null", "nil", "undefined", "unknown"].iter().any(|p| id.eq_ignore_ascii_case(p));
    let well_formed = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'));
    if placeholder || !well_formed {
        if !id.is_empty() {
            tracing::debug!(client_id = %id.escape_debug(), "client id ignored: not an id");
        }
        return None;
    }
    Some(id.to_owned())
}

/// Strips a `Bearer` prefix; an empty token (`"Bearer"`, `"Bearer "`) is no token.
pub(crate) fn bearer(value: &str) -> Option<String> {
    let token = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    (!token.is_empty()).then(|| token.to_owned())
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token presented")]
    MissingToken,
    #[error("access token not recognised")]
    InvalidToken,
    #[error("access token expired")]
    Expired,
    #[error("access token was issued to another device")]
    WrongDevice,
    #[error("access token was issued to this device under another client id")]
    WrongClient,
}

impl AuthError {
    /// 401 for missing or unusable credentials, 403 for a valid token used by the wrong device.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::WrongDevice | Self::WrongClient => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Checks credentials and issues device tokens.
pub struct Authenticator {
    enabled: bool,
    /// SHA-256 of each static token, so comparison time does not depend on token lengths.
    static_digests: Vec<[u8; 32]>,
    secret: Option<Vec<u8>>,
    /// Handed out by OTA when there is no secret.
    ota_token: Option<String>,
    ttl_secs: u64,
    allowed_devices: Vec<String>,
    /// Signs vision upload tokens: the configured secret (so any gateway process of a
    /// deployment accepts them), or a random key of this process.
    vision_key: Vec<u8>,
}

/// How long a vision upload token lasts (a session rarely lives longer).
const VISION_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// The "client" part of a vision token's payload, so a device token never passes as one.
const VISION_SCOPE: &str = "vision";

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            enabled: settings.enabled(),
            static_digests: settings
                .tokens
                .iter()
                .chain(&settings.ota_token)
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
            ota_token: settings.ota_token.clone(),
            secret: settings.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            ttl_secs: settings.token_ttl_secs,
            allowed_devices: settings.allowed_devices.iter().map(|d| d.to_ascii_lowercase()).collect(),
            vision_key: match &settings.secret {
                Some(s) => s.as_bytes().to_vec(),
                None => {
                    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
                    [a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat()
                }
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Admits or refuses a connection.
    pub fn check(&self, creds: &Credentials) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(dev) = &creds.device_id
            && self.allowed_devices.iter().any(|d| d == dev)
        {
            return Ok(());
        }
        let token = creds.token.as_deref().ok_or(AuthError::MissingToken)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut static_match = subtle::Choice::from(0);
        for d in &self.static_digests {
            static_match |= d.ct_eq(&digest);
        }
        if bool::from(static_match) {
            return Ok(());
        }
        self.check_signed(token, creds)
    }

    fn check_signed(&self, token: &str, creds: &Credentials) -> Result<(), AuthError> {
        let secret = self.secret.as_deref().ok_or(AuthError::InvalidToken)?;
        let (payload, sig) = token.split_once('.').ok_or(AuthError::InvalidToken)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::InvalidToken)?;
        mac(secret, payload.as_bytes()).verify_slice(&sig).map_err(|_| AuthError::InvalidToken)?;
        // The signature holds, so the payload is ours: now check what it is bound to.
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::InvalidToken)?;
        let payload = String::from_utf8(payload).map_err(|_| AuthError::InvalidToken)?;
        let mut parts = payload.rsplitn(3, '|');
        let expiry: u64 = parts.next().and_then(|e| e.parse().ok()).ok_or(AuthError::InvalidToken)?;
        let device = parts.next().ok_or(AuthError::InvalidToken)?;
        let client = parts.next().ok_or(AuthError::InvalidToken)?;
        if creds.device_id.as_deref() != Some(device) {
            return Err(AuthError::WrongDevice);
        }
        if creds.client_id.as_deref().unwrap_or("") != client {
            return Err(AuthError::WrongClient);
        }
        if expiry < unix_now() {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// The token OTA hands a device: one bound to the device and client ids (with a secret),
    /// the configured OTA token, or `None`.
    pub fn issue(&self, device_id: &str, client_id: &str) -> Option<String> {
        match self.secret.as_deref() {
            Some(secret) => {
                Some(sign(secret, client_id, &device_id.to_ascii_lowercase(), unix_now() + self.ttl_secs))
            }
            None => self.ota_token.clone(),
        }
    }
}

impl Authenticator {
    /// A token for the vision endpoint, bound to one session of one device.
    pub fn issue_vision(&self, device_id: &str, session_id: &str) -> String {
        let bound = format!("{}|{session_id}", device_id.to_ascii_lowercase());
        sign(&self.vision_key, VISION_SCOPE, &bound, unix_now() + VISION_TOKEN_TTL_SECS)
    }

    /// Checks a vision token; returns the device and session it was issued for.
    pub fn check_vision(&self, token: &str) -> Result<(String, String), AuthError> {
        let (payload, sig) = token.split_once('.').ok_or(AuthError::InvalidToken)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| AuthError::InvalidToken)?;
        mac(&self.vision_key, payload.as_bytes()).verify_slice(&sig).map_err(|_| AuthError::InvalidToken)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::InvalidToken)?;
        let payload = String::from_utf8(payload).map_err(|_| AuthError::InvalidToken)?;
        let mut parts = payload.split('|');
        let (Some(VISION_SCOPE), Some(device), Some(session), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::InvalidToken);
        };
        if expiry.parse::<u64>().map_err(|_| AuthError::InvalidToken)? < unix_now() {
            return Err(AuthError::Expired);
        }
        Ok((device.to_owned(), session.to_owned()))
    }
}

/// `base64url("client|device|expiry") + "." + base64url(HMAC-SHA256(secret, that payload))`.
fn sign(secret: &[u8], client: &str, device: &str, expiry: u64) -> String {
    let payload = URL_SAFE_NO_PAD.encode(format!("{client}|{device}|{expiry}"));
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn mac(secret: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(dev: &str, client: &str, token: Option<&str>) -> Credentials {
        Credentials {
            device_id: Some(dev.into()),
            client_id: Some(client.into()),
            token: token.map(str::to_owned),
        }
    }

    fn auth(tokens: &[&str], secret: Option<&str>, ttl: u64) -> Authenticator {
        Authenticator::new(&AuthSettings {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            secret: secret.map(str::to_owned),
            token_ttl_secs: ttl,
            allowed_devices: vec!["aa:bb:cc:dd:ee:ff".into()],
            ota_token: None,
        })
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer("Bearer abc"), Some("abc".into()));
        assert_eq!(bearer("bearer  abc "), Some("abc".into()));
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), Some("abc".into()));
    }

    #[test]
    fn headers_win_over_query() {
        let mut h = HeaderMap::new();
        h.insert("Device-Id", "AA:BB:CC:00:11:22".parse().unwrap());
        let q: HashMap<String, String> = [
            ("device-id".to_string(), "ignored".to_string()),
            ("client-id".to_string(), "c1".to_string()),
            ("authorization".to_string(), "Bearer t0k".to_string()),
        ]
        .into();
        let c = Credentials::from_request(&h, &q);
        assert_eq!(c.device_id.as_deref(), Some("aa:bb:cc:00:11:22"));
        assert_eq!(c.client_id.as_deref(), Some("c1"));
        assert_eq!(c.token.as_deref(), Some("t0k"));
    }

    #[test]
    fn static_and_signed_tokens() {
        let a = auth(&["s3cret"], Some("k"), 60);
        assert_eq!(a.check(&creds("01:02", "c", Some("s3cret"))), Ok(()));
        assert_eq!(a.check(&creds("01:02", "c", None)), Err(AuthError::MissingToken));
        assert_eq!(a.check(&creds("01:02", "c", Some("nope"))), Err(AuthError::InvalidToken));
        let forged = sign(b"not-the-key", "c", "01:02", u64::MAX);
        assert_eq!(a.check(&creds("01:02", "c", Some(&forged))), Err(AuthError::InvalidToken));
        assert_eq!(a.check(&creds("aa:bb:cc:dd:ee:ff", "c", None)), Ok(()));
        let t = a.issue("01:02", "c").unwrap();
        assert_eq!(a.check(&creds("01:02", "c", Some(&t))), Ok(()));
        assert_eq!(a.check(&creds("01:03", "c", Some(&t))), Err(AuthError::WrongDevice));
        assert_eq!(a.check(&creds("01:02", "other", Some(&t))), Err(AuthError::WrongClient));
        let expired = auth(&[], Some("k"), 0);
        let old = sign(b"k", "c", "01:02", 1);
        assert_eq!(expired.check(&creds("01:02", "c", Some(&old))), Err(AuthError::Expired));
    }

    #[test]
    fn vision_tokens_are_bound_and_scoped() {
        let a = auth(&[], Some("k"), 60);
        let t = a.issue_vision("AA:BB", "s-1");
        assert_eq!(a.check_vision(&t), Ok(("aa:bb".into(), "s-1".into())));
        // A device token is not a vision token, and another key's token fails.
        let device = a.issue("aa:bb", "c").unwrap();
        assert_eq!(a.check_vision(&device), Err(AuthError::InvalidToken));
        assert_eq!(auth(&[], Some("other"), 60).check_vision(&t), Err(AuthError::InvalidToken));
        let old = sign(b"k", VISION_SCOPE, "aa:bb|s-1", 1);
        assert_eq!(a.check_vision(&old), Err(AuthError::Expired));
        // Without a secret, the process's own key still signs and checks.
        let open = auth(&[], None, 60);
        let t = open.issue_vision("aa:bb", "s-2");
        assert_eq!(open.check_vision(&t), Ok(("aa:bb".into(), "s-2".into())));
        assert_eq!(open.check_vision("garbage"), Err(AuthError::InvalidToken));
    }

    #[test]
    fn disabled_admits_everyone() {
        let a = auth(&[], None, 60);
        assert!(!a.enabled());
        assert_eq!(a.check(&Credentials::default()), Ok(()));
        assert_eq!(a.issue("d", "c"), None);
    }
}
