//! Round trip, corruption and atomicity tests of the .qins container.

use std::fs;
use std::path::{Path, PathBuf};

use super::format::{FORMAT_VERSION, PREAMBLE_LEN, Preamble, TensorData, TensorEntry};
use super::*;
use crate::codec::{EncodeOptions, Granularity, encode_matrix};
use crate::model::ModelConfig;
use crate::rng::SplitMix64;
use crate::weights::Weight;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = SplitMix64::new(std::process::id() as u64 ^ tag.len() as u64).next_u64();
        let dir = std::env::temp_dir().join(format!("qins-container-{tag}-{n:x}"));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tiny_config() -> ModelConfig {
    ModelConfig::from_hf_json(&serde_json::json!({
        "model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 40,
        "max_position_embeddings": 64, "tie_word_embeddings": true,
    }))
    .unwrap()
}

fn header() -> ModelHeader {
    ModelHeader {
        name: "test".into(),
        config: tiny_config(),
        tokenizer_json: "{}".into(),
        chat_template: Some("{{ messages }}".into()),
        extra_stop_tokens: vec![],
        generation: GenerationDefaults::default(),
        source: SourceInfo::default(),
        encode_options: EncodeOptions::default(),
        compression: Compression::None,
        quality: None,
        created_by: "test".into(),
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.next_normal() as f32 * 0.05).collect()
}

/// Writes a file with one per-row and one per-tensor QINS matrix and a vector.
fn write_sample(path: &Path, compression: Compression) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = random(40 * 16, 1);
    let b = random(7 * 13, 2); // odd sizes: sign rows are byte-padded
    let norm = random(16, 3);
    let per_tensor = EncodeOptions {
        granularity: Granularity::PerTensor,
        ..Default::default()
    };
    let mut w = ContainerWriter::create(path, compression).unwrap();
    w.add_qins(
        "a",
        &encode_matrix(&a, 40, 16, &EncodeOptions::default()).unwrap(),
    )
    .unwrap();
    w.add_qins("b", &encode_matrix(&b, 7, 13, &per_tensor).unwrap())
        .unwrap();
    w.add_f32("norm", &[16], &norm).unwrap();
    w.finish(&header()).unwrap();
    (a, b, norm)
}

#[test]
fn round_trip_uncompressed_and_compressed() {
    let dir = TempDir::new("roundtrip");
    for compression in [Compression::None, Compression::Zstd] {
        let path = dir.path(&format!("{compression:?}.qins"));
        let (a, b, norm) = write_sample(&path, compression);
        let file = QinsFile::open(&path).unwrap();
        assert_eq!(file.header, header());
        let weights = file.load().unwrap();
        let expected_a = encode_matrix(&a, 40, 16, &EncodeOptions::default()).unwrap();
        let got_a = weights.qins("a", 40, 16).unwrap();
        assert_eq!(got_a.codes(), &expected_a.codes[..]);
        assert_eq!(got_a.signs(), &expected_a.signs[..]);
        assert_eq!(got_a.decode(), expected_a.decode());
        let got_b = weights.qins("b", 7, 13).unwrap();
        assert_eq!(got_b.ranges().len(), 1, "per-tensor range survives");
        assert_eq!(got_b.decode().len(), b.len());
        assert_eq!(weights.vector("norm", 16).unwrap(), &norm[..]);
        // Uncompressed sections are used in place; compressed ones are decoded.
        let Some(Weight::Qins(m)) = weights.get("a") else {
            panic!("a is not QINS")
        };
        assert_eq!(m.is_mapped(), compression == Compression::None);
        if compression == Compression::None {
            assert_eq!(
                m.codes().as_ptr() as usize % 64,
                0,
                "mapped codes are 64-byte aligned"
            );
        }
        let sections: Vec<_> = file.index.iter().flat_map(|e| e.sections()).collect();
        assert!(
            sections.iter().all(|(_, s)| s.offset % 64 == 0),
            "sections are 64-byte aligned"
        );
    }
}

#[test]
fn resident_bytes_count_codes_signs_and_other() {
    let dir = TempDir::new("bytes");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let bytes = QinsFile::open(&path)
        .unwrap()
        .load()
        .unwrap()
        .resident_bytes();
    assert_eq!(bytes.codes, 40 * 16 + 7 * 13);
    assert_eq!(bytes.signs, 40 * 2 + 7 * 2);
    // Per range: its bounds (2 x f32) and decode factors (4 x f64).
    assert_eq!(bytes.other, (40 + 1) * (8 + 32) + 16 * 4);
    assert_eq!(bytes.parameters, 40 * 16 + 7 * 13 + 16);
}

fn expect_error(path: &Path) -> ContainerError {
    match QinsFile::open(path).and_then(|f| f.load().map(|_| ())) {
        Ok(()) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    }
}

#[test]
fn wrong_magic_is_refused() {
    let dir = TempDir::new("magic");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let mut bytes = fs::read(&path).unwrap();
    bytes[1] = b'X';
    fs::write(&path, &bytes).unwrap();
    let err = expect_error(&path);
    assert!(matches!(err, ContainerError::NotQins { .. }), "{err}");
    assert!(
        err.to_string().contains("m.qins"),
        "error names the file: {err}"
    );
    fs::write(&path, b"{\"not\": \"a model\"}").unwrap();
    assert!(matches!(
        expect_error(&path),
        ContainerError::NotQins { .. }
    ));
}

#[test]
fn truncation_anywhere_is_refused() {
    let dir = TempDir::new("trunc");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let bytes = fs::read(&path).unwrap();
    for cut in [
        0,
        5,
        8,
        40,
        PREAMBLE_LEN,
        200,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        fs::write(&path, &bytes[..cut]).unwrap();
        let err = expect_error(&path);
        assert!(
            matches!(err, ContainerError::Truncated { .. }),
            "cut at {cut} of {}: {err}",
            bytes.len()
        );
    }
}

#[test]
fn a_truncation_names_the_part_that_does_not_fit() {
    let dir = TempDir::new("trunc-what");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let bytes = fs::read(&path).unwrap();
    let mut seen = Vec::new();
    for cut in [10, PREAMBLE_LEN + 1, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&path, &bytes[..cut]).unwrap();
        if let ContainerError::Truncated { what, .. } = expect_error(&path) {
            seen.push(what);
        }
    }
    assert!(seen.contains(&"preamble"), "{seen:?}");
    assert!(
        seen.iter().any(|w| *w == "header" || *w == "index"),
        "{seen:?}"
    );
}

#[test]
fn future_version_is_refused_with_upgrade_hint() {
    let dir = TempDir::new("version");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = expect_error(&path);
    assert!(
        matches!(err, ContainerError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade qins"));
}

/// Flips one byte inside each region of the file and checks it is caught.
#[test]
fn a_flipped_byte_in_any_section_is_caught() {
    let dir = TempDir::new("flip");
    for compression in [Compression::None, Compression::Zstd] {
        let path = dir.path("m.qins");
        write_sample(&path, compression);
        let original = fs::read(&path).unwrap();
        let file = QinsFile::open(&path).unwrap();
        let mut targets: Vec<(String, u64)> = vec![("preamble".into(), 20)];
        let (preamble, _) = Preamble::from_bytes(original[..PREAMBLE_LEN].try_into().unwrap());
        targets.push(("header".into(), preamble.header_offset + 3));
        targets.push(("index".into(), preamble.index_offset + 3));
        for entry in &file.index {
            for (what, section) in entry.sections() {
                targets.push((
                    format!("{}/{what}", entry.name),
                    section.offset + section.stored_len / 2,
                ));
            }
        }
        drop(file);
        for (what, offset) in targets {
            let mut bytes = original.clone();
            bytes[offset as usize] ^= 0x10;
            fs::write(&path, &bytes).unwrap();
            let err = expect_error(&path);
            assert!(
                matches!(err, ContainerError::Corrupt { .. }),
                "{what}: {err}"
            );
        }
    }
}

/// Rewrites the index of a valid file (header and index sit at the end).
fn rewrite_index(path: &Path, edit: impl FnOnce(&mut Vec<TensorEntry>)) {
    let bytes = fs::read(path).unwrap();
    let (mut preamble, _) = Preamble::from_bytes(bytes[..PREAMBLE_LEN].try_into().unwrap());
    let index_start = preamble.index_offset as usize;
    let mut index: Vec<TensorEntry> = serde_json::from_slice(&bytes[index_start..]).unwrap();
    edit(&mut index);
    let new_index = serde_json::to_vec(&index).unwrap();
    preamble.index_len = new_index.len() as u64;
    preamble.index_crc = crc32fast::hash(&new_index);
    let mut out = bytes[..index_start].to_vec();
    out.extend_from_slice(&new_index);
    out[..PREAMBLE_LEN].copy_from_slice(&preamble.to_bytes());
    fs::write(path, out).unwrap();
}

#[test]
fn absurd_shapes_and_sizes_are_refused_before_allocating() {
    let dir = TempDir::new("absurd");
    let path = dir.path("m.qins");
    type Corrupt = Box<dyn Fn(&mut Vec<TensorEntry>)>;
    let cases: Vec<(&str, Corrupt)> = vec![
        (
            "huge shape",
            Box::new(|i| i[0].shape = vec![1 << 40, 1 << 40]),
        ),
        ("zero dim", Box::new(|i| i[0].shape = vec![0, 16])),
        ("shape mismatch", Box::new(|i| i[0].shape = vec![41, 16])),
        ("3-D qins", Box::new(|i| i[0].shape = vec![40, 4, 4])),
        (
            "offset past end",
            Box::new(|i| {
                if let TensorData::Qins { codes, .. } = &mut i[0].data {
                    codes.offset = 1 << 50;
                }
            }),
        ),
        (
            "f32 size mismatch",
            Box::new(|i| {
                if let TensorData::F32 { data } = &mut i[2].data {
                    data.raw_len = 4 << 30;
                }
            }),
        ),
        (
            "compression bomb",
            Box::new(|i| {
                i[0].shape = vec![1 << 20, 1 << 11];
                if let TensorData::Qins { codes, .. } = &mut i[0].data {
                    codes.raw_len = 1 << 31;
                    codes.compression = Compression::Zstd;
                }
            }),
        ),
        ("duplicate name", Box::new(|i| i[1].name = "a".into())),
    ];
    for (what, edit) in cases {
        write_sample(&path, Compression::None);
        rewrite_index(&path, edit);
        let err = expect_error(&path);
        assert!(
            matches!(err, ContainerError::Invalid { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn dropped_writer_leaves_nothing_and_keeps_the_previous_file() {
    let dir = TempDir::new("atomic");
    let path = dir.path("m.qins");
    write_sample(&path, Compression::None);
    let previous = fs::read(&path).unwrap();
    {
        let mut w = ContainerWriter::create(&path, Compression::None).unwrap();
        w.add_f32("x", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(w.temp_path().exists());
        // Dropped without finish: as if the conversion failed half way.
    }
    assert_eq!(fs::read(&path).unwrap(), previous, "output untouched");
    let leftovers: Vec<_> = fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
}

#[test]
fn temp_files_of_dead_writers_are_removed() {
    let dir = TempDir::new("stale");
    // A pid that surely exited: a child we have already waited for.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = dir.path(&format!(".m.qins{}{dead_pid}", writer::TEMP_MARKER));
    let live = dir.path(&format!(
        ".n.qins{}{}",
        writer::TEMP_MARKER,
        std::process::id()
    ));
    let unrelated = dir.path("keep.qins");
    for p in [&stale, &live, &unrelated] {
        fs::write(p, b"x").unwrap();
    }
    let removed = remove_stale_temp_files(&dir.0);
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!stale.exists() && live.exists() && unrelated.exists());
}

/// Rewrites the header JSON of a valid file (the index follows it).
fn rewrite_header(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = fs::read(path).unwrap();
    let (mut preamble, _) = Preamble::from_bytes(bytes[..PREAMBLE_LEN].try_into().unwrap());
    let header_start = preamble.header_offset as usize;
    let header_end = header_start + preamble.header_len as usize;
    let index_start = preamble.index_offset as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[header_start..header_end]).unwrap();
    edit(&mut header);
    let new_header = serde_json::to_vec(&header).unwrap();
    preamble.header_len = new_header.len() as u64;
    preamble.header_crc = crc32fast::hash(&new_header);
    preamble.index_offset = (header_start + new_header.len()) as u64;
    let mut out = bytes[..header_start].to_vec();
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&bytes[index_start..]);
    out[..PREAMBLE_LEN].copy_from_slice(&preamble.to_bytes());
    fs::write(path, out).unwrap();
}

#[test]
fn files_from_before_the_recorded_defaults_still_load() {
    let dir = TempDir::new("old-header");
    let path = dir.path("old.qins");
    write_sample(&path, Compression::None);
    // A header whose defaults lack their origin: the values are kept.
    rewrite_header(&path, |h| {
        h["generation"]["temperature"] = serde_json::json!(0.3);
        h["generation"].as_object_mut().unwrap().remove("origin");
    });
    let file = QinsFile::open(&path).unwrap();
    assert_eq!(file.header.generation.temperature, 0.3);
    assert!(
        file.header.generation.origin.contains("not recorded"),
        "{:?}",
        file.header.generation
    );
    file.load().unwrap();
    // A header without defaults at all: qins' fallback.
    rewrite_header(&path, |h| {
        h.as_object_mut().unwrap().remove("generation");
    });
    let file = QinsFile::open(&path).unwrap();
    assert_eq!(file.header.generation, GenerationDefaults::default());
}

#[test]
fn quality_reports_without_the_clipping_figures_still_load() {
    let summary = crate::codec::ErrorStats::default().summary();
    let mut json = serde_json::to_value(&summary).unwrap();
    let fields = json.as_object_mut().unwrap();
    fields.remove("clipped_fraction");
    fields.remove("max_rel_err_in_range");
    let old: crate::codec::ErrorSummary = serde_json::from_value(json).unwrap();
    assert_eq!(old.clipped_fraction, 0.0);
    assert_eq!(old.max_rel_err_in_range, 0.0);
}
