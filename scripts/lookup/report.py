#!/usr/bin/env python3
"""Markdown tables from bench.sh's raw records (see bench.sh for the runs).

tasks.tsv: engine, task, mode (off|on), round, reply file, and for qins the
summary line `qinsd generate` writes to stderr; llama-lookup's timings are
read from the reply file's .err companion.
verify.tsv: engine (and kernel or build), k, milliseconds per k-token pass
(k = 1: one decode step); verify-smollm2.tsv the same for SmolLM2.

The projection replays each "on" run's verification passes (drafted and
accepted tokens per pass, from the run's trace log) at another model's
costs: see replay().
"""

import argparse
import os
import re
import statistics
import sys
from collections import defaultdict

QINS_SUMMARY = re.compile(
    r"prompt (?P<prompt>\d+) tokens.*?(?P<tokens>\d+) tokens at (?P<tok_s>[\d.]+) tok/s"
    r"(?:.*?lookup: drafted (?P<drafted>\d+) accepted (?P<accepted>\d+))?"
)
LLAMA_ENCODED = re.compile(r"encoded\s+(\d+) tokens")
LLAMA_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+[\d.]+ seconds, speed:\s+([\d.]+) t/s")
LLAMA_DRAFTED = re.compile(r"n_drafted\s+=\s+(\d+)")
LLAMA_ACCEPTED = re.compile(r"n_accept\s+=\s+(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
QINS_PASS = re.compile(r"lookup: verified drafted=(\d+) accepted=(\d+)")


def qins_passes(reply_path):
    """The (drafted, accepted) of each verification pass of a qins run, from
    its trace log (bench.sh logs qins_engine::generate at trace level)."""
    try:
        with open(reply_path + ".err", errors="replace") as f:
            log = ANSI.sub("", f.read())
    except OSError:
        return []
    return [(int(d), int(a)) for d, a in QINS_PASS.findall(log)]


def parse_run(engine, summary, reply_path):
    """A run's figures: prompt tokens, tokens, tok/s, drafted, accepted (None where absent)."""
    if engine == "qins":
        m = QINS_SUMMARY.search(summary)
        if not m:
            return None
        d, a = m.group("drafted"), m.group("accepted")
        return {
            "prompt": int(m.group("prompt")),
            "tokens": int(m.group("tokens")),
            "tok_s": float(m.group("tok_s")),
            "drafted": int(d) if d is not None else None,
            "accepted": int(a) if a is not None else None,
            "passes": qins_passes(reply_path),
        }
    try:
        log = open(reply_path + ".err", errors="replace").read()
    except OSError:
        return None
    decoded = LLAMA_DECODED.search(log)
    if not decoded:
        return None
    grab = lambda rx: int(rx.search(log).group(1)) if rx.search(log) else None
    return {
        "prompt": grab(LLAMA_ENCODED),
        "tokens": int(decoded.group(1)),
        "tok_s": float(decoded.group(2)),
        "drafted": grab(LLAMA_DRAFTED),
        "accepted": grab(LLAMA_ACCEPTED),
    }


def reply_text(path):
    """What the output comparison looks at: the reply (llama-lookup's stdout
    also holds the prompt, the same in both modes)."""
    try:
        return open(path, "rb").read()
    except OSError:
        return None


def load_tasks(path, out):
    runs = defaultdict(list)  # (engine, task, mode) -> [figures + reply]
    if not path or not os.path.exists(path):
        return runs
    for line in open(path):
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 6:
            continue
        engine, task, mode, _round, reply, summary = fields[:6]
        reply_path = os.path.join(out, reply)
        figures = parse_run(engine, summary, reply_path)
        if figures is None:
            continue
        figures["reply"] = reply_text(reply_path)
        runs[(engine, task, mode)].append(figures)
    return runs


def fmt(x, spec=".1f", unit=""):
    return "n/a" if x is None else format(x, spec) + unit


def same_reply(engine, a, b):
    """Whether two greedy replies agree: byte for byte for qins; for
    llama-lookup up to the shorter one, since it stops only after a whole
    verification pass and so can run past -n by the accepted drafts."""
    if a is None or b is None:
        return False
    if engine == "qins":
        return a == b
    shorter, longer = sorted((a.rstrip(), b.rstrip()), key=len)
    return longer.startswith(shorter)


def acceptance(run_list):
    """Accepted / drafted over the runs (greedy runs repeat the same figures)."""
    drafted = sum(r["drafted"] or 0 for r in run_list)
    accepted = sum(r["accepted"] or 0 for r in run_list)
    if not run_list or run_list[0]["drafted"] is None:
        return None, None, None
    n = len(run_list)
    return drafted / n, accepted / n, (accepted / drafted if drafted else None)


def task_table(runs):
    tasks = sorted({t for (_, t, _) in runs})
    rows = []
    header = (
        "| task | prompt tok | engine | tok/s off | tok/s on | speedup | drafted | accepted "
        "| acceptance | identical output | rounds |"
    )
    rows.append(header)
    rows.append("|---" * (header.count("|") - 1) + "|")
    for task in tasks:
        for engine in ("qins", "llama"):
            off, on = runs.get((engine, task, "off"), []), runs.get((engine, task, "on"), [])
            if not off and not on:
                continue
            tok_off = statistics.median(r["tok_s"] for r in off) if off else None
            tok_on = statistics.median(r["tok_s"] for r in on) if on else None
            speedup = tok_on / tok_off if tok_off and tok_on else None
            drafted, accepted, rate = acceptance(on)
            same = None
            if off and on and off[0]["reply"] is not None:
                same = all(same_reply(engine, r["reply"], off[0]["reply"]) for r in on + off)
            prompt = off[0]["prompt"] if off else on[0]["prompt"]
            name = "qins" if engine == "qins" else "llama-lookup"
            rows.append(
                f"| {task} | {fmt(prompt, 'd')} | {name} | {fmt(tok_off)} | {fmt(tok_on)} "
                f"| {fmt(speedup, '.2f', 'x')} | {fmt(drafted, '.0f')} | {fmt(accepted, '.0f')} "
                f"| {fmt(None if rate is None else 100 * rate, '.1f', '%')} "
                f"| {'n/a' if same is None else ('yes' if same else 'NO')} | {len(off)}+{len(on)} |"
            )
    return rows


def load_verify(path):
    costs = defaultdict(dict)  # engine -> k -> ms
    if not path or not os.path.exists(path):
        return costs
    for line in open(path):
        fields = line.rstrip("\n").split("\t")
        if len(fields) == 3:
            costs[fields[0]][int(fields[1])] = float(fields[2])
    return costs


def verify_table(costs):
    ks = sorted({k for per in costs.values() for k in per})
    header = "| engine | " + " | ".join(f"k={k} ms (c)" for k in ks) + " |"
    rows = [header, "|---" * (len(ks) + 1) + "|"]
    for engine, per in costs.items():
        step = per.get(1)
        cells = []
        for k in ks:
            ms = per.get(k)
            c = ms / step if ms is not None and step else None
            cells.append(f"{fmt(ms, '.1f')} ({fmt(c, '.2f')})")
        rows.append(f"| {engine} | " + " | ".join(cells) + " |")
    return rows


def relative_cost(per, step, tokens):
    """c(tokens): a pass of `tokens` tokens in decode steps, linear between
    the measured sizes (1 is the decode step), and on the last slope past
    the largest."""
    sizes = sorted(per)
    points = [(k, per[k] / step) for k in sizes]
    for (k0, c0), (k1, c1) in zip(points, points[1:]):
        if tokens <= k1:
            return c0 + (c1 - c0) * (tokens - k0) / (k1 - k0)
    (k0, c0), (k1, c1) = points[-2], points[-1]
    return c1 + (c1 - c0) * (tokens - k1) / (k1 - k0)


def replay(run, per):
    """The speedup of one "on" run had its passes cost what they cost at
    another model's shape: the run's decode tokens (the first comes from
    the prefill) over the plain steps (each 1) plus each verification pass
    of d drafted tokens at c(d + 1). A pass yields its accepted tokens and
    one more (the replacement, or the token after a fully accepted draft),
    so plain steps = decode tokens - sum(accepted + 1). It keeps the
    drafts the run chose with its own measured costs, and its acceptance."""
    passes = run.get("passes") or []
    step = per.get(1)
    if not passes or not step or len(per) < 2:
        return None
    decode_tokens = run["tokens"] - 1
    plain = max(0, decode_tokens - sum(a + 1 for _, a in passes))
    cost = plain + sum(relative_cost(per, step, d + 1) for d, _ in passes)
    return decode_tokens / cost


def projection_table(costs, runs):
    """Per engine and task: the median over the task's "on" runs of replay()."""
    tasks = sorted({t for (e, t, m) in runs if e == "qins" and m == "on"})
    header = "| costs of | " + " | ".join(tasks) + " |"
    rows = [header, "|---" * (len(tasks) + 1) + "|"]
    for engine, per in costs.items():
        cells = []
        for task in tasks:
            values = [v for v in (replay(r, per) for r in runs.get(("qins", task, "on"), [])) if v]
            cells.append(f"{statistics.median(values):.2f}x" if values else "n/a")
        rows.append(f"| {engine} | " + " | ".join(cells) + " |")
    return rows if len(rows) > 2 else []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks")
    p.add_argument("--verify")
    p.add_argument("--smol-verify")
    p.add_argument("--threads")
    p.add_argument("--max-tokens")
    p.add_argument("--llama-draft")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        "?",
    )
    print(f"\nCPU: {cpu}; {a.threads} threads; greedy, at most {a.max_tokens} tokens; "
          f"llama-lookup drafts up to {a.llama_draft} tokens (off: --spec-draft-n-max 0)\n")
    runs = load_tasks(a.tasks, a.out)
    if runs:
        rows = task_table(runs)
        print("Decode tok/s (medians over rounds), SmolLM2-135M-Instruct Q4_1:\n")
        print("\n".join(rows))
    smol = load_verify(a.smol_verify)
    if smol:
        print("\nSmolLM2 itself, one pass of k tokens at depth 256, ms (c(k)):\n")
        print("\n".join(verify_table(smol)))
    costs = load_verify(a.verify)
    if costs:
        print("\nOne pass of k tokens after the cache depth, ms (c(k) = cost in decode steps; k=1 is the decode step):\n")
        print("\n".join(verify_table(costs)))
    rows = projection_table({**smol, **costs}, runs)
    if rows:
        print("\nProjected speedup: each qins \"on\" run's verification passes (drafted, accepted) "
              "replayed at these costs (plain steps 1, a pass of d drafted tokens c(d + 1); "
              "median over rounds; the SmolLM2 row checks the replay against the measured speedup):\n")
        print("\n".join(rows))
    if not runs and not costs:
        sys.exit("nothing measured")


if __name__ == "__main__":
    main()
