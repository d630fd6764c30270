//! What every conversion source provides: the model's metadata up front and
//! its tensors one at a time, as f32 under Hugging Face names.

use super::defaults::StatedDefaults;
use qins_core::container::SourceInfo;
use qins_core::model::ModelConfig;

use super::ConvertError;

/// A tensor the source can deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    /// Hugging Face name (`model.layers.0.self_attn.o_proj.weight`).
    pub name: String,
    pub shape: Vec<usize>,
}

/// Everything about a source model except its tensor data.
#[derive(Clone, Debug)]
pub struct SourceModel {
    pub config: ModelConfig,
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    /// Sampling defaults the source states (its own file first, then its
    /// model card); conversion options come before them.
    pub stated_defaults: Vec<StatedDefaults>,
    pub info: SourceInfo,
    pub tensors: Vec<SourceTensor>,
}

/// A model that can be read tensor by tensor with bounded memory.
pub trait TensorSource: Send + Sync {
    fn model(&self) -> &SourceModel;

    /// Reads one tensor, converted to f32, in row-major order.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ConvertError>;
}

/// Tokens that end an assistant turn in common chat templates; the engine
/// stops on them besides the config's eos ids.
pub fn stop_tokens_of_template(template: Option<&str>) -> Vec<String> {
    let Some(template) = template else {
        return Vec::new();
    };
    [
        "<|end|>",
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "</s>",
    ]
    .into_iter()
    .filter(|t| template.contains(t))
    .map(String::from)
    .collect()
}
