"""Train-step time of this checkout against an earlier revision, measured in one run.

    python benchmarks/before_after.py --before c07f044            # both pairs
    python benchmarks/before_after.py --before HEAD~3 --pairs mlp --rounds 5

A refactor of the trainer must not slow the step. This script checks out `--before` into
a temporary git worktree and times `benchmarks/throughput.py`'s `time_case` (the library's
real train step, compiled, median of `--steps` steps) for `student only` and `online KD`
on each pair, in fresh processes that alternate between the two trees for `--rounds`
rounds, so that machine noise hits both alike. It prints the median ms/step of each
version, their ratio (after / before; below 1 is faster), and whether the two versions
compile to the same optimized HLO instructions (source metadata and numbering removed):
when they do, any timing difference is the machine's noise, not the code's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"student only": {"mode": "student"}, "online KD": {"mode": "kd"}}
BATCHES = {"mlp": 128, "resnet32x4:resnet8x4": 32}


# Runs in a fresh process with one tree first on sys.path. It times every setting once
# and fingerprints the compiled step (its optimized HLO without source metadata), captured
# by wrapping `Strategy.compile_step`.
_CHILD = """
import hashlib, json, os, re, sys
tree, pair_name, batch, steps, settings = sys.argv[1:6]
sys.path[:0] = [tree, os.path.join(tree, "benchmarks")]
sys.argv = ["throughput", "--no_fake_devices"]
import throughput as t
from distill_jax import parallel

texts = []
compile_step = parallel.Strategy.compile_step


def capture(self, fn):
    step = compile_step(self, fn)

    class Lowered:
        def __init__(self, lowered):
            self.lowered = lowered

        def compile(self):
            compiled = self.lowered.compile()
            texts.append(compiled.as_text())
            return compiled

    class Step:
        def lower(self, *args):
            return Lowered(step.lower(*args))

    return Step()


parallel.Strategy.compile_step = capture


def fingerprint(text):
    body = text[text.index("HloModule"):]
    body = re.sub(r",? ?metadata=\\{[^}]*\\}", "", body)
    body = re.sub(r"\\.[0-9]+", "", body)
    keep = ("ENTRY", "%", " ", "}")
    # Sorted: XLA may print the same computations in another order.
    body = "\\n".join(sorted(x for x in body.splitlines() if x.startswith(keep)))
    return hashlib.sha256(body.encode()).hexdigest()[:12]


pair = t.PAIRS[pair_name]
t.time_case(pair, batch=int(batch), steps=2, mode="student")
out = {}
for label, kw in json.loads(settings).items():
    texts.clear()
    ms = t.time_case(pair, batch=int(batch), steps=int(steps), **kw)["ms_per_step"]
    out[label] = {"ms": ms, "hlo": fingerprint(texts[-1])}
print("RESULT " + json.dumps(out))
"""


def _time_in(tree: str, pair: str, batch: int, steps: int) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": tree}
    args = [tree, pair, str(batch), str(steps), json.dumps(SETTINGS)]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"timing in {tree} failed:\n{proc.stderr[-2000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--pairs", default=",".join(BATCHES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        before = os.path.join(tmp, "before")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", "-q", before, args.before],
            check=True,
        )
        try:
            trees = {"before": before, "after": ROOT}
            times: dict[tuple[str, str, str], list[float]] = {}
            hlo: dict[tuple[str, str, str], set[str]] = {}
            for r in range(args.rounds):
                for pair in args.pairs.split(","):
                    order = ("before", "after") if r % 2 == 0 else ("after", "before")
                    for version in order:
                        got = _time_in(trees[version], pair, BATCHES[pair], args.steps)
                        for label, result in got.items():
                            times.setdefault((pair, label, version), []).append(result["ms"])
                            hlo.setdefault((pair, label, version), set()).add(result["hlo"])
                        print(f"round {r} {pair} {version}: {got}", flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", before])
    print(f"\nms/step, median over {args.rounds} rounds (each the median of {args.steps} steps)")
    print(f"before = {args.before}, after = this checkout\n")
    print("| pair | setting | before | after | after / before | same compiled step |")
    print("|---|---|---:|---:|---:|---|")
    for pair in args.pairs.split(","):
        for label in SETTINGS:
            b = float(np.median(times[(pair, label, "before")]))
            a = float(np.median(times[(pair, label, "after")]))
            same = hlo[(pair, label, "before")] == hlo[(pair, label, "after")]
            same_text = "yes" if same else "no"
            print(f"| {pair} | {label} | {b:.1f} | {a:.1f} | {a / b:.3f} | {same_text} |")


if __name__ == "__main__":
    main()
