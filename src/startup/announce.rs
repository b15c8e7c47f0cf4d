//! What start-up says it runs: one log line each for the store, object storage, the brain,
//! authentication and the OTA answer, so an operator reading the first lines of the log knows
//! what this process will do. Secrets never appear: a database URL loses its password, and
//! tokens and keys are only counted.

use tracing::info;

use crate::config::{DatabaseKind, ProviderEntry, Settings, provider_list};
use crate::ota::WS_PATH;

/// Logs the five lines. `brain_given`: the caller supplied its own brain (tests, tools).
pub(super) fn announce(settings: &Settings, brain_given: bool) {
    let (kind, location) = store(settings);
    info!(kind, location = %location, "store");
    let s = &settings.storage;
    match &s.endpoint {
        Some(endpoint) => info!(
            kind = "s3",
            endpoint = %endpoint,
            tls = s.use_ssl,
            bucket = %s.bucket,
            region = %s.region,
            "object storage"
        ),
        None => info!(
            kind = "local directory",
            location = %settings.data_dir.join("objects").join(&s.bucket).display(),
            "object storage"
        ),
    }
    if brain_given {
        info!(kind = "given by the caller", "brain");
    } else if settings.brain.asr_url.is_some() {
        let b = &settings.brain;
        let chain = |urls: &Option<String>, models: &str| {
            provider_list(urls.as_deref(), models, None)
                .unwrap_or_default()
                .iter()
                .map(|ProviderEntry { url, model, .. }| format!("{url} ({model})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let tts = chain(&b.tts_url, &b.tts_model);
        info!(
            kind = "providers",
            asr = %chain(&b.asr_url, &b.asr_model),
            llm = %chain(&b.llm_url, &b.llm_model),
            tts = %if tts.is_empty() { "local synthesizer (espeak-ng)".to_owned() } else { tts },
            "brain"
        );
    } else {
        info!(
            kind = "echo",
            "brain: echo (plays each utterance back; set XIAOZHI_ASR_URL and XIAOZHI_LLM_URL for a conversation)"
        );
    }
    let a = &settings.auth;
    let mode = match (a.tokens.is_empty(), a.secret.is_some()) {
        (true, false) => "off: any device may connect",
        (false, false) => "static tokens",
        (true, true) => "signed tokens issued by OTA",
        (false, true) => "static tokens and signed tokens issued by OTA",
    };
    info!(mode, static_tokens = a.tokens.len(), allowed_devices = a.allowed_devices.len(), "authentication");
    match &settings.public_url {
        Some(url) => info!(url = %url, "OTA gives devices the WebSocket URL"),
        None => info!(
            url = %format!("ws://<Host header>{WS_PATH}"),
            "OTA gives devices the WebSocket URL derived from each request's Host header (set XIAOZHI_PUBLIC_URL to fix it)"
        ),
    }
}

/// The store's kind and where it is, without a password.
fn store(settings: &Settings) -> (&'static str, String) {
    let db = &settings.database;
    match db.url.as_deref() {
        Some(url) if url.starts_with("sqlite:") => ("sqlite", url.to_owned()),
        Some(url) => ("postgres", without_password(url)),
        None => match db.kind {
            DatabaseKind::Sqlite => ("sqlite", settings.data_dir.join("xiaozhi.db").display().to_string()),
            DatabaseKind::Postgres => (
                "postgres",
                format!(
                    "postgres://{}@{}:{}/{} (sslmode {})",
                    db.user, db.host, db.port, db.name, db.ssl_mode
                ),
            ),
        },
    }
}

/// `scheme://user:secret@host/db` as `scheme://user@host/db`.
fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let authority_end = url[start..].find(['/', '?']).map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[start..start + at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..start], &url[start + at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(without_password("postgres://u:p%40ss@h:5/db?x=1"), "postgres://u@h:5/db?x=1");
        assert_eq!(without_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(without_password("postgres://h/db"), "postgres://h/db");
        assert_eq!(without_password("postgresql://u:p@h"), "postgresql://u@h");
    }
}
