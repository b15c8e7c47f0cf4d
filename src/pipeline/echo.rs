//! The echo ("parrot") brain, the embedded default: a voice turn is answered with the user's
//! own packets (announced at their own sample rate, so nothing is re-encoded), a text turn with
//! its text as the subtitle, and server-initiated speech with the local synthesizer.

use super::local_tts::LocalTts;
use super::{BoxFuture, Pipeline, PipelineError, Reply, Turn, TurnInput};

#[derive(Debug, Clone)]
pub struct EchoPipeline {
    /// Speaks server-initiated text, at the rate of the uplink packets the echo plays back.
    tts: LocalTts,
}

impl Default for EchoPipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoPipeline {
    pub fn new() -> Self {
        Self { tts: LocalTts::new(crate::audio::UPLINK_RATE, "en") }
    }
}

impl Pipeline for EchoPipeline {
    /// The echo plays the device's own packets back, so it announces their rate (what the
    /// device's hello declared, 16 kHz for every known client) instead of re-encoding them.
    fn downlink_rate(&self, _configured: u32, uplink: Option<u32>) -> u32 {
        uplink
            .filter(|r| matches!(r, 8_000 | 12_000 | 16_000 | 24_000 | 48_000))
            .unwrap_or(crate::audio::UPLINK_RATE)
    }

    fn respond<'a>(&'a self, turn: Turn, reply: &'a mut Reply) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(async move {
            match turn.input {
                TurnInput::Voice(utterance) => {
                    let label = format!("(echo, {:.1} s)", utterance.duration.as_secs_f32());
                    reply.transcript(&label).await?;
                    reply.start().await?;
                    reply.sentence(&label).await?;
                    reply.audio_all(utterance.packets).await?;
                }
                TurnInput::Text(text) => {
                    reply.transcript(&text).await?;
                    reply.sentence(&text).await?;
                }
                TurnInput::Say(text) => {
                    let speech = self.tts.speak(&text).await.map_err(PipelineError::Failed)?;
                    reply.say(&text, speech).await?;
                }
            }
            Ok(())
        })
    }
}
