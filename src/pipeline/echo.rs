//! The echo ("parrot") brain, the embedded default: a voice turn is answered with the user's
//! own packets, a text turn with its text as the subtitle, and server-initiated speech with
//! the local synthesizer.

use super::local_tts::LocalTts;
use super::{BoxFuture, Pipeline, PipelineError, Reply, Turn, TurnInput};

#[derive(Debug, Clone)]
pub struct EchoPipeline {
    tts: LocalTts,
}

impl EchoPipeline {
    /// `downlink_rate` is the rate announced in the server hello.
    pub fn new(downlink_rate: u32) -> Self {
        Self { tts: LocalTts::new(downlink_rate, "en") }
    }
}

impl Pipeline for EchoPipeline {
    fn respond<'a>(&'a self, turn: Turn, reply: &'a mut Reply) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(async move {
            match turn.input {
                TurnInput::Voice(utterance) => {
                    let label = format!("(echo, {:.1} s)", utterance.duration.as_secs_f32());
                    reply.transcript(&label).await?;
                    reply.start().await?;
                    reply.sentence(&label).await?;
                    for packet in utterance.packets {
                        reply.audio(packet).await?;
                    }
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
