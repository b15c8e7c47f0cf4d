//! The vision-capable chat model that answers questions about camera uploads.

use super::llm::{ChatMessage, Llm};
use super::{ProviderConfig, ProviderError};

/// What the model is told about its job.
const VISION_PROMPT: &str = "You see the picture a voice assistant's camera just took. Answer the question about it \
     briefly and concretely, in the language of the question.";

/// A vision-capable chat model.
#[derive(Debug, Clone)]
pub struct VisionModel {
    llm: Llm,
}

impl VisionModel {
    pub fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        Ok(Self { llm: Llm::new(cfg)? })
    }

    /// The model's answer to `question` about the image.
    pub async fn explain(&self, question: &str, mime: &str, image: &[u8]) -> Result<String, ProviderError> {
        let messages =
            vec![ChatMessage::system(VISION_PROMPT), ChatMessage::user_with_image(question, mime, image)];
        self.llm.complete(messages).await
    }
}
