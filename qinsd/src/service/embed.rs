//! `Embed`: the request's inputs checked and mapped onto the scheduler's
//! [`run_embed`](crate::scheduler::Scheduler::run_embed), in a generation
//! slot like a chat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use qins_proto::v1::{EmbedInput as ProtoInput, EmbedReply, EmbedRequest, Embedding};
use tonic::Status;

use super::status;
use crate::scheduler::{EmbedInput, Scheduler};

pub async fn embed(
    scheduler: &Arc<Scheduler>,
    request: EmbedRequest,
) -> Result<EmbedReply, Status> {
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| embed_input(index, input))
        .collect::<Result<Vec<_>, Status>>()?;
    if inputs.is_empty() {
        return Err(status::invalid("inputs is empty: send at least one input"));
    }
    let slot = scheduler
        .acquire_slot()
        .await
        .map_err(status::from_scheduler)?;
    let cancel = Arc::new(AtomicBool::new(false));
    // The client going away drops this future: the pass stops.
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let scheduler = Arc::clone(scheduler);
    let truncate = request.truncate;
    let embedded =
        tokio::task::spawn_blocking(move || scheduler.run_embed(&slot, &inputs, truncate, cancel))
            .await
            .map_err(status::join_error)?
            .map_err(status::from_scheduler)?;
    Ok(EmbedReply {
        embeddings: embedded
            .vectors
            .into_iter()
            .map(|values| Embedding { values })
            .collect(),
        prompt_tokens: u32::try_from(embedded.prompt_tokens).unwrap_or(u32::MAX),
        model: embedded.model,
        dimensions: u32::try_from(embedded.dimensions).unwrap_or(u32::MAX),
    })
}

fn embed_input(index: usize, input: ProtoInput) -> Result<EmbedInput, Status> {
    match (input.text.is_empty(), input.tokens.is_empty()) {
        (false, true) => Ok(EmbedInput::Text(input.text)),
        (true, false) => Ok(EmbedInput::Tokens(input.tokens)),
        (false, false) => Err(status::invalid(format!(
            "inputs[{index}] sets both text and tokens: set one"
        ))),
        (true, true) => Err(status::invalid(format!(
            "inputs[{index}] is empty: set text or tokens"
        ))),
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
