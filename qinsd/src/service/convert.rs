//! `Convert`: runs the converter on a blocking thread beside the chats and
//! streams its progress. The output is written atomically by the container
//! writer; dropping the stream cancels the conversion.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use qins_proto::v1::{
    ConvertDone, ConvertEvent, ConvertRequest, ConvertStarted, DownloadProgress, QualityReport,
    TensorProgress, convert_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::models::same_file;
use super::{EventStream, QinsService, cancel_when_dropped, status};
use qins_convert::{ConvertEvent as Progress, ConvertOptions, ConvertSummary, SamplingHints};
use qins_core::codec::{DEFAULT_CLIP_QUANTILE, EncodeOptions, Granularity};
use qins_core::container::Compression;

pub async fn convert(
    service: &QinsService,
    request: ConvertRequest,
) -> Result<Response<EventStream<ConvertEvent>>, Status> {
    if request.source.trim().is_empty() {
        return Err(status::invalid(
            "source is empty: give a GGUF file, a Hugging Face directory or a Hub id",
        ));
    }
    let options = options(&request)?;
    let output = output_path(service, &request);
    check_output(
        service,
        &output,
        request.options.as_ref().is_some_and(|o| o.overwrite),
    )?;
    let claim = OutputClaim::take(&service.converting, &output)?;
    let (tx, rx) = mpsc::channel(64);
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = cancel_when_dropped(tx.clone(), Arc::clone(&cancel));
    tokio::task::spawn_blocking(move || {
        let _claim = claim;
        let send = |event: convert_event::Event| {
            let _ = tx.blocking_send(Ok(ConvertEvent { event: Some(event) }));
        };
        let mut on_progress = |event: Progress| send(progress(event));
        let result =
            qins_convert::open_source(&request.source, &mut on_progress).and_then(|source| {
                qins_convert::convert(
                    source.as_ref(),
                    &output,
                    &options,
                    &mut on_progress,
                    &cancel,
                )
            });
        match result {
            Ok(summary) => {
                tracing::info!(
                    source = request.source,
                    output = %summary.output.display(),
                    seconds = summary.elapsed.as_secs_f64(),
                    "converted"
                );
                send(convert_event::Event::Done(done(&summary)));
            }
            Err(error) => {
                tracing::warn!(source = request.source, %error, "conversion failed");
                let _ = tx.blocking_send(Err(status::from_convert(&error, &output)));
            }
        }
        watcher.abort();
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

fn options(request: &ConvertRequest) -> Result<ConvertOptions, Status> {
    let o = request.options.clone().unwrap_or_default();
    let granularity = match o.granularity.as_str() {
        "" => Granularity::default(),
        other => other
            .parse::<Granularity>()
            .map_err(|e| status::invalid(format!("granularity: {e}")))?,
    };
    let encode = EncodeOptions {
        granularity,
        clip_quantile: o.clip.unwrap_or(DEFAULT_CLIP_QUANTILE),
        prune_below: o.prune_below,
    };
    encode
        .validate()
        .map_err(|e| status::invalid(format!("conversion options: {e}")))?;
    let defaults = SamplingHints {
        temperature: o.temperature,
        top_p: o.top_p,
        ..SamplingHints::default()
    };
    defaults
        .check()
        .map_err(|e| status::invalid(format!("conversion options: {e}")))?;
    Ok(ConvertOptions {
        encode,
        compression: if o.compress {
            Compression::Zstd
        } else {
            Compression::None
        },
        defaults,
        ..ConvertOptions::default()
    })
}

/// The request's output, else the default path in the models directory
/// ([`qins_convert::default_output_path`]).
fn output_path(service: &QinsService, request: &ConvertRequest) -> PathBuf {
    if request.output.is_empty() {
        qins_convert::default_output_path(&request.source, &service.scheduler.config().models_dir)
    } else {
        PathBuf::from(&request.output)
    }
}

/// Never replace the loaded model's file; anything else follows the one
/// overwrite rule ([`qins_convert::prepare_output`]).
fn check_output(service: &QinsService, output: &Path, overwrite: bool) -> Result<(), Status> {
    if let Some(model) = service.scheduler.model()
        && same_file(model.path(), output)
    {
        return Err(status::output_taken(format!(
            "{} is the loaded model; convert to another path, or `qins unload` first",
            output.display()
        )));
    }
    qins_convert::prepare_output(output, overwrite).map_err(|e| status::from_convert(&e, output))
}

/// Marks an output path as being written; released on drop.
struct OutputClaim {
    claims: Arc<std::sync::Mutex<Vec<PathBuf>>>,
    path: PathBuf,
}

impl OutputClaim {
    fn take(claims: &Arc<std::sync::Mutex<Vec<PathBuf>>>, path: &Path) -> Result<Self, Status> {
        let mut list = claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if list.iter().any(|p| p == path) {
            return Err(status::output_taken(format!(
                "a conversion to {} is already running",
                path.display()
            )));
        }
        list.push(path.to_path_buf());
        Ok(Self {
            claims: Arc::clone(claims),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for OutputClaim {
    fn drop(&mut self) {
        let mut list = self
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.retain(|p| p != &self.path);
    }
}

fn progress(event: Progress) -> convert_event::Event {
    match event {
        Progress::Download { file, bytes, total } => {
            convert_event::Event::Download(DownloadProgress { file, bytes, total })
        }
        Progress::Started {
            tensors,
            parameters,
        } => convert_event::Event::Started(ConvertStarted {
            tensors: tensors as u32,
            parameters,
        }),
        Progress::Tensor {
            index,
            count,
            name,
            parameters_done,
            bytes_written,
        } => convert_event::Event::Tensor(TensorProgress {
            index: index as u32,
            count: count as u32,
            name,
            parameters_done,
            bytes_written,
        }),
    }
}

fn done(summary: &ConvertSummary) -> ConvertDone {
    ConvertDone {
        output: summary.output.display().to_string(),
        file_bytes: summary.file_bytes,
        parameters: summary.parameters,
        seconds: summary.elapsed.as_secs_f64(),
        quality: summary.header.quality.as_ref().map(|q| {
            let m = &q.model;
            QualityReport {
                weights: m.weights,
                mean_rel_err: m.mean_rel_err,
                max_rel_err: m.max_rel_err,
                rel_rms_err: m.rel_rms_err,
                sign_preservation: m.sign_preservation,
                zero_fraction: m.zero_fraction,
                code_entropy_bits: m.code_entropy_bits,
                max_rel_err_in_range: m.max_rel_err_in_range,
                clipped_fraction: m.clipped_fraction,
            }
        }),
        defaults: Some(super::generation_defaults(&summary.header.generation)),
    }
}
