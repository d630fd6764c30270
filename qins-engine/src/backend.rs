//! The device a model runs on: the CPU kernels ([`Model`]) or the GPU
//! ([`GpuModel`], uploaded from the same loaded [`Model`], so the
//! architectures are described once, in qins-core). [`Backend`] is the one
//! [`LanguageModel`] the daemon's sessions, prefix reuse, cancellation and
//! scheduler run, whichever device holds the weights.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use qins_core::model::{Decoder, KvCache, Model, ModelError, SequenceCache};
use qins_gpu::device::{self, DeviceChoice};
use qins_gpu::shaders::KvType;
use qins_gpu::{GpuCache, GpuContext, GpuError, GpuModel};

use super::{EngineError, LanguageModel};

/// Where models are loaded: settled once at startup (`--device`), used by
/// every load after it.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Gpu {
        context: Arc<GpuContext>,
        /// `--device gpu`: a model that does not fit fails to load rather
        /// than falling back to the CPU (`auto` falls back).
        required: bool,
    },
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("Cpu"),
            Device::Gpu { context, required } => f
                .debug_struct("Gpu")
                .field("adapter", &context.adapter().to_string())
                .field("required", required)
                .finish(),
        }
    }
}

impl Device {
    /// Settles `choice`: `cpu` is the CPU; `gpu` the best adapter, software
    /// ones included, or an error when there is none; `auto` a real GPU,
    /// else the CPU with one log line saying why.
    pub fn open(choice: DeviceChoice) -> Result<Self, GpuError> {
        let opened = match device::open(choice) {
            // A real GPU that `auto` found but could not open: the CPU.
            Err(e) if choice == DeviceChoice::Auto => {
                tracing::info!("the GPU did not open ({e}): running on the CPU");
                return Ok(Device::Cpu);
            }
            other => other?,
        };
        match opened {
            Some(context) => Ok(Device::Gpu {
                context: Arc::new(context),
                required: choice == DeviceChoice::Gpu,
            }),
            None => {
                if choice == DeviceChoice::Auto {
                    tracing::info!(
                        "no usable GPU ({}): running on the CPU",
                        device::no_gpu_reason()
                    );
                }
                Ok(Device::Cpu)
            }
        }
    }

    /// "cpu" or "gpu".
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu { .. } => "gpu",
        }
    }

    pub fn gpu(&self) -> Option<&GpuContext> {
        match self {
            Device::Cpu => None,
            Device::Gpu { context, .. } => Some(context),
        }
    }

    /// Puts a loaded model on this device. The CPU copy is dropped once the
    /// GPU holds it. Under `auto`, a model the GPU refuses (too large a
    /// tensor, no memory) stays on the CPU with a log line.
    pub(crate) fn place(&self, model: Model) -> Result<Backend, GpuError> {
        let Device::Gpu { context, required } = self else {
            return Ok(Backend::Cpu(model));
        };
        let uploaded =
            GpuModel::upload(context.clone(), &model, gpu_cache_type(context)).and_then(|gpu| {
                context.wait()?;
                Ok(gpu)
            });
        match uploaded {
            Ok(gpu) => Ok(Backend::Gpu(gpu)),
            Err(e) if !required => {
                tracing::warn!("the GPU cannot hold this model ({e}): running it on the CPU");
                Ok(Backend::Cpu(model))
            }
            Err(e) => Err(e),
        }
    }
}

/// The one rule for the GPU's K/V cache precision: f16 where the GPU has
/// shader-f16, else f32. The daemon's models and `qinsd bench --device gpu`
/// both take it from here.
pub fn gpu_cache_type(context: &GpuContext) -> KvType {
    if context.has_shader_f16() {
        KvType::F16
    } else {
        KvType::F32
    }
}

/// A model on one device.
#[expect(
    clippy::large_enum_variant,
    reason = "one per loaded model, built once and never moved on a hot path"
)]
pub enum Backend {
    Cpu(Model),
    Gpu(GpuModel),
}

impl Backend {
    /// "cpu" or "gpu".
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Cpu(_) => "cpu",
            Backend::Gpu(_) => "gpu",
        }
    }

    pub fn gpu(&self) -> Option<&GpuModel> {
        match self {
            Backend::Cpu(_) => None,
            Backend::Gpu(model) => Some(model),
        }
    }
}

/// A conversation's K/V cache, where its model runs.
pub enum BackendCache {
    Cpu(KvCache),
    Gpu(GpuCache),
}

impl BackendCache {
    /// Bytes the cache holds (host memory or GPU memory).
    pub fn bytes(&self) -> usize {
        match self {
            BackendCache::Cpu(cache) => cache.bytes(),
            BackendCache::Gpu(cache) => cache.bytes() as usize,
        }
    }
}

impl LanguageModel for Backend {
    type Cache = BackendCache;

    fn vocab_size(&self) -> usize {
        match self {
            Backend::Cpu(model) => LanguageModel::vocab_size(model),
            Backend::Gpu(model) => LanguageModel::vocab_size(model),
        }
    }

    fn new_cache(&self, capacity: usize) -> BackendCache {
        match self {
            Backend::Cpu(model) => BackendCache::Cpu(LanguageModel::new_cache(model, capacity)),
            Backend::Gpu(model) => BackendCache::Gpu(LanguageModel::new_cache(model, capacity)),
        }
    }

    fn cache_len(cache: &BackendCache) -> usize {
        match cache {
            BackendCache::Cpu(cache) => cache.len(),
            BackendCache::Gpu(cache) => cache.len(),
        }
    }

    fn truncate_cache(cache: &mut BackendCache, len: usize) {
        match cache {
            BackendCache::Cpu(cache) => cache.truncate(len),
            BackendCache::Gpu(cache) => cache.truncate(len),
        }
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut BackendCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        match (self, cache) {
            (Backend::Cpu(model), BackendCache::Cpu(cache)) => {
                LanguageModel::forward(model, tokens, cache, cancel)
            }
            (Backend::Gpu(model), BackendCache::Gpu(cache)) => {
                LanguageModel::forward(model, tokens, cache, cancel)
            }
            _ => Err(mismatch()),
        }
    }

    fn decode_step(
        &self,
        token: u32,
        cache: &mut BackendCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        match (self, cache) {
            (Backend::Cpu(model), BackendCache::Cpu(cache)) => {
                LanguageModel::decode_step(model, token, cache, cancel)
            }
            (Backend::Gpu(model), BackendCache::Gpu(cache)) => {
                LanguageModel::decode_step(model, token, cache, cancel)
            }
            _ => Err(mismatch()),
        }
    }

    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut BackendCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        match (self, cache) {
            (Backend::Cpu(model), BackendCache::Cpu(cache)) => {
                LanguageModel::forward_all(model, tokens, cache, cancel)
            }
            (Backend::Gpu(model), BackendCache::Gpu(cache)) => {
                LanguageModel::forward_all(model, tokens, cache, cancel)
            }
            _ => Err(mismatch()),
        }
    }

    fn hidden_states(
        &self,
        sequences: &[&[u32]],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        match self {
            Backend::Cpu(model) => LanguageModel::hidden_states(model, sequences, cancel),
            Backend::Gpu(_) => Err(EngineError::Unsupported(
                "embeddings run on the CPU: the resident model is on the GPU \
                 (start qinsd with --device cpu to serve embeddings)",
            )),
        }
    }
}

/// A cache made by the other device's model: a bug (caches come from
/// `new_cache` of the model that runs them), reported rather than panicking.
fn mismatch() -> EngineError {
    EngineError::Model("a K/V cache of one device was given to a model on the other".into())
}

/// The engine's view of [`GpuModel`]: as on the CPU, concurrent decode
/// steps of different chats share one pass.
impl LanguageModel for GpuModel {
    type Cache = GpuCache;

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn new_cache(&self, capacity: usize) -> GpuCache {
        GpuModel::new_cache(self, capacity)
    }

    fn cache_len(cache: &GpuCache) -> usize {
        cache.len()
    }

    fn truncate_cache(cache: &mut GpuCache, len: usize) {
        cache.truncate(len);
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        Decoder::forward(self, tokens, cache, cancel).map_err(|error| match error {
            GpuError::Model(ModelError::Cancelled) => EngineError::Cancelled,
            other => EngineError::Model(Box::new(other)),
        })
    }

    fn decode_step(
        &self,
        token: u32,
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, EngineError> {
        Decoder::decode_step(self, token, cache, cancel).map_err(|error| match error {
            GpuError::Model(ModelError::Cancelled) => EngineError::Cancelled,
            other => EngineError::Model(Box::new(other)),
        })
    }

    fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let logits =
            Decoder::forward_all(self, tokens, cache, cancel).map_err(|error| match error {
                GpuError::Model(ModelError::Cancelled) => EngineError::Cancelled,
                other => EngineError::Model(Box::new(other)),
            })?;
        Ok(super::qins_model::split_rows(
            logits,
            self.config().vocab_size,
        ))
    }
}
