#!/usr/bin/env python3
"""Golden reference logits for qins, computed by Hugging Face transformers.

For each model: qinsd writes (or takes) the source, converts it to .qins,
exports the DECODED weights back to a Hugging Face directory (`qinsd
export-hf`), and transformers runs that directory in float32 with eager
attention. The logits of the last positions of fixed token sequences are
stored beside this script, so the Rust model can be checked against an
independent implementation running exactly the same (QINS-decoded) weights.

Run it through make_golden.sh, which sets up the pinned environment and
builds qinsd.
"""

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM, Phi3ForCausalLM

HERE = Path(__file__).resolve().parent
SEED = 42
SIGNIFICANT_DIGITS = 7

# A fixed user turn; its chat-formatted tokens are cut to each prompt length.
USER_TEXT = (
    "The quick brown fox jumps over the lazy dog, and then the dog asks the fox "
    "what the capital of France is. The fox says it is Paris, of course, and both "
    "of them walk to the river to watch the boats and count the stars at night."
)
# An empty system turn keeps SmolLM2's template from adding its default one.
SMOLLM2_MESSAGES = [
    {"role": "system", "content": ""},
    {"role": "user", "content": "What is the capital of France?"},
]
# `qinsd convert` options beyond the source and output (defaults: per-row ranges).
CONVERT_ARGS = []

MODEL_CLASSES = {"phi3": Phi3ForCausalLM, "llama": LlamaForCausalLM}

# [(prompt name, tokens (None: the whole chat prompt), logit positions kept)]
TINY_CASES = {
    "phi3": [("short", 20, 4), ("long", 48, 4)],  # 20 < 32 = original context < 48
    "llama": [("prompt", 24, 4)],
}
SMOLLM2_CASES = [("prompt", None, 2)]  # ~20 tokens, ending in the assistant header


def main():
    args = parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")

    for arch in args.only or TINY_CASES:
        if arch == "smollm2":
            continue
        hf_dir = work / f"{arch}-tiny-hf"
        run([str(Path(args.qinsd).with_name("qins-fixture")), "tiny", "--arch", arch, "--seed", str(SEED), "--out", str(hf_dir)])
        if args.raw:
            check_raw(arch, hf_dir)
            continue
        messages = [{"role": "user", "content": USER_TEXT}]
        golden = golden_for(args.qinsd, arch, hf_dir, work / f"{arch}-tiny", TINY_CASES[arch], messages)
        golden["seed"] = SEED
        write_golden(HERE / f"{arch}-tiny.json", golden)

    if args.smollm2 and not args.raw and (not args.only or "smollm2" in args.only):
        gguf = Path(args.smollm2).expanduser()
        golden = golden_for(args.qinsd, "llama", gguf, work / "smollm2", SMOLLM2_CASES, SMOLLM2_MESSAGES)
        golden["source_file"] = gguf.name
        write_golden(HERE / "smollm2.json", golden)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qinsd", required=True, help="path of the qinsd binary")
    parser.add_argument("--work", default="~/.cache/qins/golden-work", help="scratch folder for models")
    parser.add_argument("--smollm2", metavar="PATH.gguf", help="also make smollm2.json from this GGUF")
    parser.add_argument("--only", nargs="+", choices=list(TINY_CASES) + ["smollm2"], help="models to make")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="environment check: run transformers on the raw tiny models, write nothing",
    )
    return parser.parse_args()


def run(command, cwd=None):
    where = f"(in {cwd}) " if cwd else ""
    print(f"{where}$", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, cwd=cwd)


def golden_for(qinsd, arch, source, stem, cases, messages):
    """Converts `source`, exports it and computes the logits of every case."""
    qins = stem.with_suffix(".qins")
    exported = stem.parent / f"{stem.name}-export"
    # Run beside the source and name it relatively: the header records the
    # source path, and the file's sha256 should not depend on where it ran.
    run([Path(qinsd).resolve(), "convert", source.name, "-o", qins.resolve(), *CONVERT_ARGS], cwd=source.parent)
    run([qinsd, "export-hf", qins, "--out", exported])
    tokenizer, model = load(arch, exported)
    prompts = []
    for name, length, kept in cases:
        token_ids = prompt_ids(tokenizer, messages, length)
        prompts.append(
            {
                "name": name,
                "token_ids": token_ids,
                "first_logit_position": len(token_ids) - kept,
                "logits": last_logits(model, token_ids, kept),
            }
        )
    return {
        "architecture": arch,
        # The .qins the logits come from (convert run beside the source) and
        # the decoded weights it exports: a changed codec changes both.
        "qins_sha256": sha256(qins),
        "exported_weights_sha256": sha256(*sorted(exported.glob("*.safetensors"))),
        "convert_args": CONVERT_ARGS,
        "vocab_size": model.config.vocab_size,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "attention": "eager",
        "prompts": prompts,
    }


def load(arch, model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = MODEL_CLASSES[arch].from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return tokenizer, model


def prompt_ids(tokenizer, messages, length=None):
    """The chat-formatted prompt, cut (or repeated) to exactly `length` tokens."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in some versions
        ids = ids["input_ids"]
    ids = [int(i) for i in ids]
    if length is None:
        return ids
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


@torch.no_grad()
def last_logits(model, token_ids, kept):
    logits = model(torch.tensor([token_ids])).logits[0, -kept:]
    return [[round_significant(float(x)) for x in row] for row in logits]


def round_significant(x):
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def sha256(*paths):
    """sha256 of the files' bytes, concatenated."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_golden(path, golden):
    path.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    summary = ", ".join(f"{p['name']}: {len(p['token_ids'])} tokens" for p in golden["prompts"])
    print(f"wrote {path} ({path.stat().st_size} bytes; {summary})")


def check_raw(arch, hf_dir):
    """Loads the unconverted tiny model and prints what the golden run would use."""
    tokenizer, model = load(arch, hf_dir)
    for name, length, kept in TINY_CASES[arch]:
        ids = prompt_ids(tokenizer, [{"role": "user", "content": USER_TEXT}], length)
        logits = torch.tensor(last_logits(model, ids, kept))
        probs = logits.softmax(-1)
        print(
            f"{arch} {name}: {length} tokens, logits std {logits.std():.3f}, "
            f"max prob {probs.max(-1).values.tolist()}, decoded {tokenizer.decode(ids)!r}"
        )


if __name__ == "__main__":
    sys.exit(main())
