//! A `.qins` file made ready to chat: the model on its resident weights, the
//! tokenizer, the chat template, the end tokens and the sampling defaults,
//! all taken from the file's header.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokenizers::Tokenizer;

use super::backend::{Backend, Device};
use super::constraint::{GrammarVocab, OutputFormat};
use super::generate::GenerationRequest;
use super::lookup::LookupMode;
use super::resident::{ModelFileLease, OpenError, ResidentModel};
use super::sampling::SamplingParams;
use super::template::{ChatMessage, ChatTemplate, TemplateError};
use super::{EngineError, LanguageModel};
use qins_core::container::{GenerationDefaults, ModelHeader};
use qins_core::weights::ResidentBytes;
use qins_gpu::GpuError;

#[derive(Debug, thiserror::Error)]
pub enum ChatModelError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path}: cannot put the model on the GPU: {source}")]
    Gpu {
        path: PathBuf,
        #[source]
        source: GpuError,
    },
    #[error("{path}: the model has no chat template; reconvert it from a source that has one")]
    NoTemplate { path: PathBuf },
    #[error("{path}: {source}")]
    Template {
        path: PathBuf,
        #[source]
        source: TemplateError,
    },
}

pub struct ChatModel {
    path: PathBuf,
    header: ModelHeader,
    model: Backend,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_token_ids: Vec<u32>,
    resident: ResidentBytes,
    /// When `open` finished: what `Stats` and `qins ps` report as loaded since.
    loaded_at: SystemTime,
    /// Keeps conversions from replacing the file while the model is loaded.
    _lease: ModelFileLease,
    /// The vocabulary for JSON output, built on the first request for it.
    grammar: Mutex<Option<Arc<GrammarVocab>>>,
}

/// What a chat request asks for beyond its messages; None takes the model's default.
#[derive(Clone, Debug, Default)]
pub struct RequestOptions {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub stop: Vec<String>,
    /// OpenAI's sampling extras; unset is off (models record no default).
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub logit_bias: Vec<(u32, f32)>,
    /// Per-token log probabilities with this many alternatives (at most
    /// [`crate::logprobs::MAX_TOP_LOGPROBS`]); None: none.
    pub logprobs: Option<usize>,
    /// JSON output (grammar-constrained); None: free text.
    pub format: Option<OutputFormat>,
    /// Lookup decoding ([`crate::lookup`]); None: on (it verifies a draft
    /// only when that is expected to pay) unless `seed` is set (see
    /// [`lookup_mode`]).
    pub lookup: Option<bool>,
}

/// What the reply continues: a conversation rendered with the model's chat
/// template, or raw text tokenized as is (a plain completion).
#[derive(Clone, Debug)]
pub enum Prompt {
    Messages(Vec<ChatMessage>),
    Raw(String),
}

impl ChatModel {
    /// Opens and loads `path` on the CPU (memory-mapped: uncompressed codes
    /// are used in place).
    pub fn open(path: &Path) -> Result<Self, ChatModelError> {
        Self::open_on(path, &Device::Cpu)
    }

    /// Opens and loads `path` onto `device` (see [`Device::place`]).
    pub fn open_on(path: &Path, device: &Device) -> Result<Self, ChatModelError> {
        let opened = ResidentModel::open(path)?;
        let tokenizer = opened.tokenizer()?;
        let template = load_template(path, &opened.header, &tokenizer)?;
        let stop_token_ids = stop_token_ids(&opened.header, &tokenizer);
        let model = device
            .place(opened.model)
            .map_err(|source| ChatModelError::Gpu {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            header: opened.header,
            model,
            tokenizer,
            template,
            stop_token_ids,
            resident: opened.resident,
            loaded_at: SystemTime::now(),
            _lease: opened.lease,
            grammar: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &str {
        &self.header.name
    }

    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// The model, on the device it was loaded onto.
    pub fn model(&self) -> &Backend {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn resident_bytes(&self) -> ResidentBytes {
        self.resident
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn defaults(&self) -> &GenerationDefaults {
        &self.header.generation
    }

    /// The ids that end a reply: the config's eos ids and the template's
    /// end-of-turn tokens (Phi-3.5: `<|end|>` 32007, `<|endoftext|>` 32000).
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// The conversation rendered with the model's template, as token ids,
    /// ready for the assistant's reply.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::InvalidRequest(
                "messages is empty: send at least one user message".into(),
            ));
        }
        let text = self.template.render(messages, true)?;
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Raw text as token ids, without the chat template (the tokenizer's
    /// own special tokens, such as a BOS, are added).
    pub fn raw_prompt_tokens(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        if text.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        match encoding.get_ids() {
            [] => Err(EngineError::EmptyPrompt),
            ids => Ok(ids.to_vec()),
        }
    }

    /// A generation request for `messages`, unset options taken from the
    /// model's defaults ([`resolve_options`]), validated
    /// ([`GenerationRequest::validate`]).
    pub fn request(
        &self,
        messages: &[ChatMessage],
        options: &RequestOptions,
    ) -> Result<GenerationRequest, EngineError> {
        self.request_for(&Prompt::Messages(messages.to_vec()), options)
    }

    /// [`Self::request`] for either kind of prompt.
    pub fn request_for(
        &self,
        prompt: &Prompt,
        options: &RequestOptions,
    ) -> Result<GenerationRequest, EngineError> {
        let (sampling, max_tokens) = resolve_options(self.defaults(), options);
        let request = GenerationRequest {
            sampling,
            max_tokens: Some(max_tokens),
            stop: options.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            logprobs: options.logprobs,
            lookup: lookup_mode(options),
            ..GenerationRequest::default()
        };
        // Values first: a bad value is refused before the template runs.
        request.validate()?;
        request.sampling.validate_vocab(self.model.vocab_size())?;
        let prompt_tokens = match prompt {
            Prompt::Messages(messages) => self.prompt_tokens(messages)?,
            Prompt::Raw(text) => self.raw_prompt_tokens(text)?,
        };
        let constraint = match &options.format {
            Some(format) => Some(self.grammar()?.constraint(format)?),
            None => None,
        };
        Ok(GenerationRequest {
            prompt_tokens,
            constraint,
            ..request
        })
    }

    /// The model's vocabulary for grammar-constrained decoding, built once
    /// (a trie over every token; a fraction of a second for 50k tokens).
    fn grammar(&self) -> Result<Arc<GrammarVocab>, EngineError> {
        let mut slot = self.grammar.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(grammar) = slot.as_ref() {
            return Ok(Arc::clone(grammar));
        }
        let grammar = Arc::new(GrammarVocab::new(
            &self.tokenizer,
            self.model.vocab_size(),
            &self.stop_token_ids,
        )?);
        *slot = Some(Arc::clone(&grammar));
        Ok(grammar)
    }
}

/// The one rule for the sampling of a chat: each value the request sets,
/// else the default recorded in the model's file at conversion (see
/// `qins_convert::defaults`). The daemon's chats and `qinsd generate` both
/// come through here (via [`ChatModel::request`], which validates the
/// result). Returns the sampling and the token limit.
pub fn resolve_options(
    defaults: &GenerationDefaults,
    options: &RequestOptions,
) -> (SamplingParams, usize) {
    let sampling = SamplingParams {
        temperature: options.temperature.unwrap_or(defaults.temperature),
        top_p: options.top_p.unwrap_or(defaults.top_p),
        top_k: options.top_k.unwrap_or(defaults.top_k as usize),
        seed: options.seed,
        repetition_penalty: options
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        presence_penalty: options.presence_penalty.unwrap_or(0.0),
        frequency_penalty: options.frequency_penalty.unwrap_or(0.0),
        min_p: options.min_p.unwrap_or(0.0),
        logit_bias: options.logit_bias.clone(),
    };
    let max_tokens = options.max_tokens.unwrap_or(defaults.max_tokens as usize);
    (sampling, max_tokens)
}

/// Whether a request drafts: as it says, else on, except for a request
/// with a seed. A seed asks for the same reply again, and with lookup the
/// positions that are verified (several rows per pass, which the CPU kernels
/// round differently from decode steps) depend on measured timings, so a
/// near-tie could go another way from one run to the next.
pub fn lookup_mode(options: &RequestOptions) -> LookupMode {
    match options.lookup {
        Some(true) => LookupMode::Auto,
        Some(false) => LookupMode::Off,
        None if options.seed.is_some() => LookupMode::Off,
        None => LookupMode::Auto,
    }
}

fn load_template(
    path: &Path,
    header: &ModelHeader,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate, ChatModelError> {
    let source = header
        .chat_template
        .as_deref()
        .ok_or_else(|| ChatModelError::NoTemplate {
            path: path.to_path_buf(),
        })?;
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let bos = token_text(header.config.bos_token_id);
    let eos = token_text(header.config.eos_token_ids.first().copied());
    ChatTemplate::new(source, &bos, &eos).map_err(|source| ChatModelError::Template {
        path: path.to_path_buf(),
        source,
    })
}

fn stop_token_ids(header: &ModelHeader, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = header.config.eos_token_ids.clone();
    for token in &header.extra_stop_tokens {
        if let Some(id) = tokenizer.token_to_id(token)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> GenerationDefaults {
        GenerationDefaults {
            temperature: 0.2,
            top_p: 0.9,
            top_k: 30,
            repetition_penalty: 1.1,
            max_tokens: 64,
            origin: "test".into(),
        }
    }

    #[test]
    fn unset_options_take_the_recorded_defaults() {
        let (sampling, max_tokens) = resolve_options(&recorded(), &RequestOptions::default());
        assert_eq!(sampling.temperature, 0.2);
        assert_eq!(sampling.top_p, 0.9);
        assert_eq!(sampling.top_k, 30);
        assert_eq!(sampling.repetition_penalty, 1.1);
        assert_eq!(sampling.seed, None);
        assert_eq!(max_tokens, 64);
    }

    #[test]
    fn set_options_win_over_the_defaults() {
        let options = RequestOptions {
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(0),
            max_tokens: Some(5),
            seed: Some(3),
            repetition_penalty: Some(1.0),
            stop: Vec::new(),
            presence_penalty: Some(0.5),
            frequency_penalty: Some(-0.5),
            min_p: Some(0.1),
            logit_bias: vec![(3, -100.0)],
            logprobs: Some(2),
            format: None,
            lookup: Some(false),
        };
        let (sampling, max_tokens) = resolve_options(&recorded(), &options);
        assert_eq!(
            (sampling.temperature, sampling.top_p, sampling.top_k),
            (0.0, 1.0, 0)
        );
        assert_eq!((sampling.seed, sampling.repetition_penalty), (Some(3), 1.0));
        assert_eq!(
            (
                sampling.presence_penalty,
                sampling.frequency_penalty,
                sampling.min_p
            ),
            (0.5, -0.5, 0.1)
        );
        assert_eq!(sampling.logit_bias, vec![(3, -100.0)]);
        assert_eq!(max_tokens, 5);
    }

    #[test]
    fn a_seed_turns_lookup_off_unless_the_request_asks_for_it() {
        let mode = |lookup, seed| {
            lookup_mode(&RequestOptions {
                lookup,
                seed,
                ..RequestOptions::default()
            })
        };
        assert_eq!(mode(None, None), LookupMode::Auto);
        assert_eq!(mode(None, Some(7)), LookupMode::Off);
        assert_eq!(mode(Some(true), Some(7)), LookupMode::Auto);
        assert_eq!(mode(Some(false), None), LookupMode::Off);
    }

    /// What [`ChatModel::request`] validates: the resolved values, so a bad
    /// recorded default is refused like a bad request value.
    fn resolved_request(
        defaults: &GenerationDefaults,
        options: &RequestOptions,
    ) -> Result<(), EngineError> {
        let (sampling, max_tokens) = resolve_options(defaults, options);
        GenerationRequest {
            sampling,
            max_tokens: Some(max_tokens),
            stop: options.stop.clone(),
            logprobs: options.logprobs,
            lookup: LookupMode::Off,
            ..GenerationRequest::default()
        }
        .validate()
    }

    #[test]
    fn invalid_values_are_refused_whoever_sets_them() {
        let refused = |defaults: &GenerationDefaults, options: RequestOptions, needle: &str| {
            let error = resolved_request(defaults, &options)
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{error}");
        };
        let request = |edit: fn(&mut RequestOptions)| {
            let mut options = RequestOptions::default();
            edit(&mut options);
            options
        };
        refused(
            &recorded(),
            request(|o| o.max_tokens = Some(0)),
            "max_tokens",
        );
        refused(
            &recorded(),
            request(|o| o.temperature = Some(-1.0)),
            "temperature",
        );
        refused(
            &recorded(),
            request(|o| o.temperature = Some(f32::NAN)),
            "temperature",
        );
        refused(&recorded(), request(|o| o.top_p = Some(0.0)), "top_p");
        refused(&recorded(), request(|o| o.top_p = Some(1.5)), "top_p");
        refused(
            &recorded(),
            request(|o| o.repetition_penalty = Some(0.0)),
            "repetition_penalty",
        );
        refused(
            &recorded(),
            request(|o| o.stop = vec![String::new()]),
            "stop",
        );
        refused(
            &recorded(),
            request(|o| o.presence_penalty = Some(3.0)),
            "presence_penalty",
        );
        refused(&recorded(), request(|o| o.min_p = Some(2.0)), "min_p");
        refused(
            &recorded(),
            request(|o| o.logit_bias = vec![(1, 500.0)]),
            "logit_bias",
        );
        refused(
            &recorded(),
            request(|o| o.logprobs = Some(21)),
            "top_logprobs",
        );
        let bad_default = GenerationDefaults {
            top_p: 0.0,
            ..recorded()
        };
        refused(&bad_default, RequestOptions::default(), "top_p");
        assert!(resolved_request(&recorded(), &RequestOptions::default()).is_ok());
    }
}
