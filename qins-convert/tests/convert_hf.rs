//! Converts the deterministic tiny phi3 and llama models (Hugging Face
//! layout, f32 and sharded bf16) and checks the .qins files and the errors.

use qins_core::model::Decoder;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use qins_convert::{ConvertError, ConvertOptions};
use qins_core::container::QinsFile;
use qins_core::model::{Architecture, Model};
use qins_core::weights::Weight;
use qins_test_support::tiny::{TinyDtype, TinySpec, write_tiny_model};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qins-hf-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn convert_dir(dir: &Path, output: &Path) -> Result<(), ConvertError> {
    let source = qins_convert::open_source(dir.to_str().unwrap(), &mut |_| {})?;
    qins_convert::convert(
        source.as_ref(),
        output,
        &ConvertOptions::default(),
        &mut |_| {},
        &AtomicBool::new(false),
    )?;
    Ok(())
}

fn check_tiny(spec: TinySpec, tag: &str) {
    let dir = temp_dir(tag);
    let model_dir = dir.join("model");
    write_tiny_model(&model_dir, &spec).unwrap();
    let output = dir.join("tiny.qins");
    convert_dir(&model_dir, &output).unwrap();

    let file = QinsFile::open(&output).unwrap();
    let h = &file.header;
    assert_eq!(h.config.architecture, spec.arch);
    assert!(h.chat_template.is_some(), "chat template carried over");
    assert!(!h.config.eos_token_ids.is_empty());
    let expected = h.config.expected_tensors();
    assert_eq!(file.index.len(), expected.len());
    let quality = h.quality.as_ref().unwrap();
    assert_eq!(quality.model.sign_preservation, 1.0);
    assert!(quality.model.rel_rms_err < 0.02, "{:?}", quality.model);

    // Every matrix decodes close to its source values.
    let source = qins_convert::open_source(model_dir.to_str().unwrap(), &mut |_| {}).unwrap();
    let weights = file.load().unwrap();
    for (name, shape) in &expected {
        let original = source.read_f32(name).unwrap();
        match weights.get(name).unwrap() {
            Weight::Qins(m) => {
                assert_eq!(shape, &vec![m.rows, m.cols]);
                let decoded = m.decode();
                let err: f64 = original
                    .iter()
                    .zip(&decoded)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum();
                let norm: f64 = original.iter().map(|a| f64::from(*a).powi(2)).sum();
                assert!(
                    (err / norm).sqrt() < 0.02,
                    "{name}: relative RMS {}",
                    (err / norm).sqrt()
                );
            }
            Weight::F32(t) => assert_eq!(t.data, original, "{name}: 1-D tensors are exact"),
        }
    }
    // And the model runs on it.
    let model = Model::load(&h.config, weights).unwrap();
    let mut cache = model.new_cache(16);
    let logits = model
        .forward(&[1, 2, 3], &mut cache, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(logits.len(), h.config.vocab_size);
    assert!(logits.iter().all(|v| v.is_finite()));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tiny_phi3_converts() {
    check_tiny(TinySpec::phi3(), "phi3");
}

#[test]
fn tiny_llama_converts() {
    check_tiny(TinySpec::llama(), "llama");
}

#[test]
fn sharded_bf16_models_convert() {
    for (arch, tag) in [
        (Architecture::Phi3, "phi3-bf16"),
        (Architecture::Llama, "llama-bf16"),
    ] {
        let spec = TinySpec {
            sharded: true,
            dtype: TinyDtype::Bf16,
            ..TinySpec::new(arch)
        };
        check_tiny(spec, tag);
    }
}

#[test]
fn conversion_is_deterministic() {
    let dir = temp_dir("determinism");
    write_tiny_model(&dir.join("m"), &TinySpec::phi3()).unwrap();
    // Same file name (it is recorded as the model name), different folders.
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        convert_dir(&dir.join("m"), &dir.join(sub).join("m.qins")).unwrap();
    }
    let read = |sub: &str| std::fs::read(dir.join(sub).join("m.qins")).unwrap();
    let (a, b) = (read("a"), read("b"));
    assert!(a == b, "two conversions of the same model differ");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unsupported_architecture_and_missing_files_are_refused_up_front() {
    let dir = temp_dir("refuse");
    let model_dir = dir.join("m");
    write_tiny_model(&model_dir, &TinySpec::llama()).unwrap();
    let config_path = model_dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("\"llama\"", "\"mamba\"")).unwrap();
    let err = qins_convert::open_source(model_dir.to_str().unwrap(), &mut |_| {})
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("unsupported architecture 'mamba'"),
        "{err}"
    );
    assert!(
        err.to_string().contains("phi3"),
        "lists what is supported: {err}"
    );

    std::fs::write(&config_path, config).unwrap();
    std::fs::remove_file(model_dir.join("tokenizer.json")).unwrap();
    let err = qins_convert::open_source(model_dir.to_str().unwrap(), &mut |_| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let err = qins_convert::open_source("/no/such/model/dir", &mut |_| {})
        .err()
        .unwrap();
    assert!(matches!(err, ConvertError::UnknownSource(_)), "{err}");
    assert!(!dir.join("out.qins").exists());
    let _ = std::fs::remove_dir_all(dir);
}
