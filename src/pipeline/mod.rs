//! The conversation brains: implementations of [`crate::conversation::Pipeline`], the
//! contract a session speaks. A brain answers each finished user turn through the
//! [`crate::conversation::Reply`] it is handed; the session's writer paces the audio and sends
//! `tts stop` after the last frame has played. Dropping the future cancels the turn. Nothing
//! here knows the session.
//!
//! The embedded default is [`echo::EchoPipeline`], which answers with the user's own voice.

pub(crate) mod brain;
pub mod echo;
mod emotion;
pub(crate) mod local_tts;
pub mod providers;
pub(crate) mod sentences;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use crate::conversation::{BoxFuture, Pipeline, PipelineError, Reply, ToolExchange, Turn, TurnInput};

/// The brain the settings describe: the providers' pipeline when ASR and LLM URLs are set,
/// the echo brain otherwise.
pub fn from_settings(
    settings: &crate::config::Settings,
    store: &crate::store::Store,
    metrics: &Arc<crate::telemetry::metrics::Metrics>,
) -> Result<Arc<dyn Pipeline>, providers::ProviderError> {
    let b = &settings.brain;
    let rate = settings.session.downlink_sample_rate;
    if b.asr_url.is_none() || b.llm_url.is_none() {
        return Ok(Arc::new(echo::EchoPipeline::new()));
    }
    let timeout = Duration::from_secs(b.provider_timeout_secs);
    let chain = |urls: &Option<String>, models: &str, keys: &Option<String>| {
        crate::config::provider_list(urls.as_deref(), models, keys.as_deref())
            .map_err(providers::ProviderError::Invalid)
            .map(|list| list.into_iter().map(|p| provider(p, timeout)).collect::<Vec<_>>())
    };
    let config = brain::BrainConfig {
        asr: chain(&b.asr_url, &b.asr_model, &b.asr_api_key)?,
        llm: chain(&b.llm_url, &b.llm_model, &b.llm_api_key)?,
        tts: chain(&b.tts_url, &b.tts_model, &b.tts_api_key)?,
        voice: b.tts_voice.clone(),
        default_prompt: b.system_prompt.clone(),
        memory_messages: b.memory_messages,
        downlink_rate: rate,
        device_tool_timeout: Duration::from_secs(b.device_tool_timeout_secs),
    };
    let urls = |c: &[providers::ProviderConfig]| {
        c.iter().map(|p| p.base_url.as_str()).collect::<Vec<_>>().join(", ")
    };
    tracing::info!(
        asr = %urls(&config.asr),
        llm = %urls(&config.llm),
        tts = %if config.tts.is_empty() { "local".to_owned() } else { urls(&config.tts) },
        "conversation brain on"
    );
    Ok(Arc::new(brain::Brain::new(config, store.clone(), metrics.clone())?))
}

/// The vision model for camera uploads: on with the brain; its own URL, model and key, or the
/// first chat model's.
pub fn vision_from_settings(
    settings: &crate::config::Settings,
) -> Result<Option<providers::vision::VisionModel>, providers::ProviderError> {
    let b = &settings.brain;
    if b.asr_url.is_none() {
        return Ok(None);
    }
    let llm = crate::config::provider_list(b.llm_url.as_deref(), &b.llm_model, b.llm_api_key.as_deref())
        .map_err(providers::ProviderError::Invalid)?;
    let Some(first) = llm.into_iter().next() else { return Ok(None) };
    let entry = crate::config::ProviderEntry {
        api_key: match (&b.vision_url, &b.vision_api_key) {
            (_, Some(key)) => Some(key.clone()),
            (None, None) => first.api_key,
            (Some(_), None) => None,
        },
        url: b.vision_url.clone().unwrap_or(first.url),
        model: b.vision_model.clone().unwrap_or(first.model),
    };
    let cfg = provider(entry, Duration::from_secs(b.provider_timeout_secs));
    providers::vision::VisionModel::new(cfg).map(Some)
}

fn provider(p: crate::config::ProviderEntry, timeout: Duration) -> providers::ProviderConfig {
    let cfg = providers::ProviderConfig::new(p.url, p.model).with_timeout(timeout);
    match p.api_key {
        Some(k) => cfg.with_api_key(k),
        None => cfg,
    }
}
