//! `Convert`: runs the converter on a blocking thread beside the chats and
//! streams its progress. The output is claimed by the model store's one rule
//! ([`claim_output`]: one conversion per output, never the file a running
//! process has loaded, the overwrite rule) and written atomically by the
//! container writer; dropping the stream cancels the conversion.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use qins_proto::v1::{
    ConvertDone, ConvertEvent, ConvertRequest, ConvertStarted, DownloadProgress, QualityReport,
    TensorProgress, convert_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::{EventStream, QinsService, cancel_when_dropped, status};
use qins_convert::{ConvertEvent as Progress, ConvertOptions, ConvertSummary, SamplingHints};
use qins_core::codec::{DEFAULT_CLIP_QUANTILE, EncodeOptions, Granularity};
use qins_core::container::Compression;

use crate::model_store::output::claim_output;

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
    let overwrite = request.options.as_ref().is_some_and(|o| o.overwrite);
    let claim = claim_output(&output, overwrite).map_err(|e| status::from_output(e, &output))?;
    let (tx, rx) = mpsc::channel(64);
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = cancel_when_dropped(tx.clone(), Arc::clone(&cancel));
    tokio::task::spawn_blocking(move || {
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
        // Released before the last event: a client that hears the
        // conversion is over may start the next one on this output.
        drop(claim);
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
