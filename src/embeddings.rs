//! Search by meaning: an OpenAI-compatible embeddings provider (`POST {url}/embeddings`),
//! the background worker that embeds messages (never on a session's path: it reads what the
//! store writer committed), and the query side used by `GET /api/search?mode=semantic`.
//!
//! The worker embeds the newest messages without an embedding first, in batches, so a
//! backfill of older history serves recent conversations first and resumes wherever it
//! stopped (the database is its progress record). Provider failures back off exponentially
//! up to a minute; a text the provider refuses for good (a 4xx other than 408/429) is marked
//! so that it is neither retried nor matched.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::EmbeddingsSettings;
use crate::store::model::Page;
use crate::store::search::{SearchHit, SearchQuery};
use crate::store::{Store, StoreError};

/// Messages embedded per provider request.
const BATCH: i64 = 32;
/// How often the worker looks for new messages once it has caught up.
const POLL: Duration = Duration::from_secs(2);
/// Longest wait after provider failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why an embedding request failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embeddings provider unreachable: {0}")]
    Transport(String),
    #[error("embeddings provider answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("embeddings provider answered something else than embeddings: {0}")]
    Malformed(String),
}

impl EmbedError {
    /// The provider will never accept this input (as opposed to: try again later).
    fn is_permanent(&self) -> bool {
        matches!(self, EmbedError::Status { status, .. } if (400..500).contains(status) && ![408, 429].contains(status))
    }
}

/// An OpenAI-compatible embeddings endpoint.
#[derive(Clone)]
pub struct EmbeddingsClient {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

impl EmbeddingsClient {
    /// The configured provider, if any.
    pub fn from_settings(s: &EmbeddingsSettings) -> Option<Self> {
        let base = s.url.as_deref()?.trim_end_matches('/');
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .ok()?;
        Some(Self {
            http,
            url: format!("{base}/embeddings"),
            model: s.model.clone(),
            api_key: s.api_key.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// One vector per text, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut req = self.http.post(&self.url).json(&json!({ "model": self.model, "input": texts }));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| EmbedError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| EmbedError::Transport(e.to_string()))?;
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(EmbedError::Status { status, body });
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| EmbedError::Malformed(e.to_string()))?;
        let data = v["data"].as_array().ok_or_else(|| EmbedError::Malformed("no data array".into()))?;
        let mut out = vec![Vec::new(); texts.len()];
        for (pos, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(pos, |i| i as usize);
            let vector: Vec<f32> = item["embedding"]
                .as_array()
                .ok_or_else(|| EmbedError::Malformed("an item without an embedding".into()))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| EmbedError::Malformed("an embedding that is not numbers".into()))?;
            match out.get_mut(index) {
                Some(slot) => *slot = vector,
                None => return Err(EmbedError::Malformed(format!("index {index} out of range"))),
            }
        }
        if out.iter().any(Vec::is_empty) {
            return Err(EmbedError::Malformed(format!(
                "{} embeddings for {} texts",
                data.len(),
                texts.len()
            )));
        }
        Ok(out)
    }
}

/// Why a semantic search failed.
#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    #[error("{0}")]
    Embed(#[from] EmbedError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Messages passing `q`'s filters ranked by meaning against `q.text`.
pub async fn semantic_search(
    store: &Store,
    client: &EmbeddingsClient,
    q: &SearchQuery,
) -> Result<Page<SearchHit>, SemanticError> {
    let vector = client.embed(std::slice::from_ref(&q.text)).await?.remove(0);
    Ok(store.semantic_search(q, &vector, client.model()).await?)
}

/// Starts the background worker when a provider is configured.
pub fn spawn(settings: &EmbeddingsSettings, store: Store, shutdown: CancellationToken) {
    if let Some(client) = EmbeddingsClient::from_settings(settings) {
        tokio::spawn(run(store, client, shutdown));
    }
}

/// Embeds pending messages until `shutdown`.
pub async fn run(store: Store, client: EmbeddingsClient, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let wait = match embed_pending(&store, &client).await {
            Ok(0) => POLL,
            Ok(_) => {
                backoff = Duration::from_millis(500);
                Duration::ZERO
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "embedding messages failed");
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Embeds one batch of pending messages; returns how many were handled.
pub async fn embed_pending(store: &Store, client: &EmbeddingsClient) -> Result<usize, SemanticError> {
    let pending = store.pending_embeddings(client.model(), BATCH).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let texts: Vec<String> = pending.iter().map(|(_, t)| t.clone()).collect();
    let vectors = match client.embed(&texts).await {
        Ok(v) => v,
        Err(e) if e.is_permanent() => {
            // One text spoils the batch: find it, embed the rest, mark it.
            let mut v = Vec::with_capacity(texts.len());
            for t in &texts {
                match client.embed(std::slice::from_ref(t)).await {
                    Ok(mut one) => v.push(one.remove(0)),
                    Err(e) if e.is_permanent() => {
                        tracing::warn!(error = %e, "a message the embeddings provider refuses; skipped for good");
                        v.push(Vec::new());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            v
        }
        Err(e) => return Err(e.into()),
    };
    let items: Vec<_> = pending.into_iter().map(|(id, _)| id).zip(vectors).collect();
    store.save_embeddings(client.model(), &items).await?;
    Ok(items.len())
}
