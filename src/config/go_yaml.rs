//! The starting design's configuration file: the Go xiaozhi server's `config.yaml`, read as it
//! is. The keys that have a meaning here (`database.*`, `minio.*`, `conversation.*`) are mapped
//! to our settings; every other key is collected as ignored and listed once at start-up, never
//! an error. The file sits where our TOML would: below the environment, above the defaults.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Yaml};
use figment::value::{Dict, Num, Value};

use super::{ConfigError, MYSQL_HINT};

/// Go server key → our setting key.
const MAPPED: &[(&str, &str)] = &[
    ("database.host", "database.host"),
    ("database.port", "database.port"),
    ("database.username", "database.user"),
    ("database.password", "database.password"),
    ("database.database", "database.name"),
    ("database.ssl_mode", "database.ssl_mode"),
    ("minio.endpoint", "storage.endpoint"),
    ("minio.access_key_id", "storage.access_key"),
    ("minio.secret_access_key", "storage.secret_key"),
    ("minio.use_ssl", "storage.use_ssl"),
    ("minio.bucket_audio", "storage.bucket"),
    ("minio.region", "storage.region"),
    ("conversation.postgres.message_retention_days", "database.message_retention_days"),
];

/// What the file says, in our terms.
#[derive(Debug, Default)]
pub(super) struct GoConfig {
    /// (our dotted key, value) pairs, merged over the defaults.
    pub values: Vec<(&'static str, Value)>,
    /// Keys of the file we do not use (dotted paths), and notes on values we cannot honour.
    pub ignored: Vec<String>,
}

/// Reads the Go server's YAML file.
pub(super) fn read(path: &Path) -> Result<GoConfig, ConfigError> {
    let dict: Dict = Figment::from(Yaml::file_exact(path))
        .extract()
        .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
    let mut leaves = Vec::new();
    flatten("", Value::from(dict), &mut leaves);
    let mut out = GoConfig::default();
    for (key, value) in leaves {
        if let Some((_, ours)) = MAPPED.iter().find(|(go, _)| *go == key) {
            // Only typed settings get their quotes taken off: a password "0123" stays a string.
            let typed =
                matches!(*ours, "database.port" | "storage.use_ssl" | "database.message_retention_days");
            out.values.push((ours, if typed { lenient(value) } else { value }));
            continue;
        }
        match key.as_str() {
            "database.type" => {
                let kind = value.as_str().unwrap_or_default().trim().to_ascii_lowercase();
                match kind.as_str() {
                    "mysql" | "mariadb" => {
                        return Err(ConfigError::Invalid {
                            setting: "database.kind",
                            env: "DB_TYPE",
                            reason: format!("database.type {kind:?} in {}: {MYSQL_HINT}", path.display()),
                        });
                    }
                    _ => out.values.push(("database.kind", Value::from(kind))),
                }
            }
            // Conversations always go to the configured database; the Redis history is
            // brought over once with `import redis`.
            "conversation.storage_type" => {
                if value.as_str().is_some_and(|s| s.trim().eq_ignore_ascii_case("redis")) {
                    out.ignored.push(
                        "conversation.storage_type = redis (conversations are kept in the database; \
                         bring the Redis history over with `xiaozhi-gateway import redis`)"
                            .into(),
                    );
                }
            }
            // Clips are always kept (through the upload outbox); there is no switch to turn off.
            "conversation.postgres.enable_audio_storage" => {
                if matches!(lenient(value), Value::Bool(_, false)) {
                    out.ignored.push(
                        "conversation.postgres.enable_audio_storage = false (this gateway always keeps clips)"
                            .into(),
                    );
                }
            }
            _ => out.ignored.push(key),
        }
    }
    Ok(out)
}

/// Dotted paths of every leaf (a list counts as one leaf).
fn flatten(prefix: &str, value: Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Dict(_, dict) if !dict.is_empty() => {
            for (k, v) in dict {
                let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_owned(), other)),
    }
}

/// The Go server quotes numbers and booleans (`port: "5432"`): give them their type back.
fn lenient(value: Value) -> Value {
    match &value {
        Value::String(_, s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<u64>() {
                Value::Num(figment::value::Tag::Default, Num::U64(n))
            } else if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
                Value::from(t.eq_ignore_ascii_case("true"))
            } else {
                value
            }
        }
        _ => value,
    }
}
