//! Converts the real SmolLM2-135M-Instruct GGUF (fetched by
//! scripts/fetch-fixtures.sh) and checks the resulting .qins end to end.

use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use qins_convert::{ConvertEvent, ConvertOptions};
use qins_core::codec::{EncodeOptions, Granularity};
use qins_core::container::{Compression, QinsFile};
use qins_core::model::Architecture;
use qins_test_support::paths::{require, smollm2_gguf};

fn convert_smollm2(
    options: &ConvertOptions,
    name: &str,
) -> (std::path::PathBuf, Vec<ConvertEvent>) {
    let gguf = require(smollm2_gguf());
    let dir = std::env::temp_dir().join(format!("qins-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join(name);
    let mut events = Vec::new();
    let source =
        qins_convert::open_source(gguf.to_str().unwrap(), &mut |e| events.push(e)).unwrap();
    qins_convert::convert(
        source.as_ref(),
        &output,
        options,
        &mut |e| events.push(e),
        &AtomicBool::new(false),
    )
    .unwrap();
    (output, events)
}

#[test]
fn smollm2_gguf_converts_to_a_complete_qins_file() {
    let (path, events) = convert_smollm2(&ConvertOptions::default(), "smollm2.qins");
    let file = QinsFile::open(&path).unwrap();
    let h = &file.header;
    assert_eq!(h.config.architecture, Architecture::Llama);
    assert_eq!(
        (
            h.config.hidden_size,
            h.config.num_hidden_layers,
            h.config.vocab_size
        ),
        (576, 30, 49152)
    );
    assert_eq!(
        (h.config.num_attention_heads, h.config.num_key_value_heads),
        (9, 3)
    );
    assert!(
        h.config.tie_word_embeddings,
        "SmolLM2 ties lm_head to the embeddings"
    );
    assert!(
        h.chat_template
            .as_deref()
            .unwrap_or("")
            .contains("<|im_start|>")
    );
    assert!(h.extra_stop_tokens.contains(&"<|im_end|>".to_string()));
    tokenizers::Tokenizer::from_str(&h.tokenizer_json).expect("stored tokenizer loads");

    // 30 layers x 9 tensors + embeddings + final norm, every matrix QINS.
    assert_eq!(file.index.len(), 30 * 9 + 2);
    let weights = file.load().unwrap();
    let bytes = weights.resident_bytes();
    assert_eq!(bytes.parameters, h.config.parameter_count());
    assert_eq!(
        bytes.codes + 576 * 61,
        bytes.parameters,
        "one code per matrix weight"
    );

    let quality = h.quality.as_ref().expect("quality report");
    assert_eq!(quality.tensors.len(), 30 * 7 + 1, "one line per matrix");
    assert_eq!(quality.model.sign_preservation, 1.0);
    assert!(quality.model.rel_rms_err < 0.01, "{:?}", quality.model);
    assert!(quality.model.code_entropy_bits > 6.0 && quality.model.code_entropy_bits < 8.0);

    // Progress: one event per tensor, in order, ending at the total.
    let tensor_events: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ConvertEvent::Tensor { index, count, .. } => Some((*index, *count)),
            _ => None,
        })
        .collect();
    assert_eq!(tensor_events.len(), file.index.len());
    assert!(
        tensor_events
            .iter()
            .enumerate()
            .all(|(i, &(idx, n))| idx == i + 1 && n == file.index.len())
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn entropy_coded_smollm2_is_smaller_and_loads_to_the_same_codes() {
    let per_tensor = ConvertOptions {
        encode: EncodeOptions {
            granularity: Granularity::PerTensor,
            ..Default::default()
        },
        ..Default::default()
    };
    let zstd = ConvertOptions {
        compression: Compression::Zstd,
        ..per_tensor.clone()
    };
    let (raw_path, _) = convert_smollm2(&per_tensor, "raw.qins");
    let (zstd_path, _) = convert_smollm2(&zstd, "zstd.qins");
    let raw_len = std::fs::metadata(&raw_path).unwrap().len();
    let zstd_len = std::fs::metadata(&zstd_path).unwrap().len();
    assert!(zstd_len < raw_len, "{zstd_len} vs {raw_len}");
    let raw = QinsFile::open(&raw_path).unwrap().load().unwrap();
    let packed = QinsFile::open(&zstd_path).unwrap().load().unwrap();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.29.mlp.down_proj.weight",
    ] {
        let (a, b) = (raw.get(name).unwrap(), packed.get(name).unwrap());
        let (qins_core::weights::Weight::Qins(a), qins_core::weights::Weight::Qins(b)) = (a, b)
        else {
            panic!("{name} is not QINS")
        };
        assert_eq!(a.codes(), b.codes(), "{name}: bit-exact codes");
        assert_eq!(a.signs(), b.signs(), "{name}: bit-exact signs");
    }
    let _ = std::fs::remove_file(raw_path);
    let _ = std::fs::remove_file(zstd_path);
}
