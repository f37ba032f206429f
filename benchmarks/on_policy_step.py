"""Time of an on-policy / seq-KD train step against the plain online-KD step.

    python benchmarks/on_policy_step.py                       # tiny Llamas, 49,152 vocab
    python benchmarks/on_policy_step.py --length 128 --prompt 32 --batch 4

The library's real step (`train.steps.make_train_step`, jit-compiled, `lm_jsd` with beta
0.5) with the online teacher, and with `on_policy.OnPolicyTeacher` at lmbda 1 (every step
samples T - P tokens from the student), lmbda 0.5 (half the steps, under `lax.cond`) and
seq-KD (the teacher's greedy continuation every step). Prints the median ms per step of
each over `--steps` steps after one compiling step, and the ratio to the online step.
Random-weight models: generation runs all T - P decode steps (no EOS), so the figure is the
worst case of a step.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax.models.llama import Llama
from distill_jax.objective import Objective
from distill_jax.on_policy import OnPolicyTeacher
from distill_jax.tasks import CausalLM
from distill_jax.teachers import OnlineTeacher, Teacher
from distill_jax.train.state import create_train_state
from distill_jax.train.steps import frozen_inputs, make_train_step

TEACHER = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
STUDENT = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    V, T, B, P = args.vocab, args.length, args.batch, args.prompt
    common = dict(vocab_size=V, max_position=max(T, 64))
    teacher_model, student = Llama(**TEACHER, **common), Llama(**STUDENT, **common)
    ids = np.random.default_rng(0).integers(1, V, (B, T)).astype(np.int32)
    variables = teacher_model.init(jax.random.PRNGKey(1), jnp.asarray(ids))
    teacher = Teacher(teacher_model, variables, {})
    losses = {"lm_jsd": {"weight": 1.0, "beta": 0.5}}
    objective = Objective({"alpha": 0.0, "temperature": 1.0, "losses": losses}, task=CausalLM())
    tx = optax.adam(1e-3)
    state = create_train_state(student, tx, (T,), seed=0)
    batch = {"image": ids, "label": ids, "index": np.arange(B, dtype=np.int32)}
    frozen = frozen_inputs(variables)
    sources = {
        "online KD": OnlineTeacher(teacher),
        "on-policy lmbda 1": OnPolicyTeacher(teacher, 1.0, P),
        "on-policy lmbda 0.5": OnPolicyTeacher(teacher, 0.5, P),
        "seq-KD (greedy)": OnPolicyTeacher(teacher, 0.0, P, temperature=0.0, seq_kd=True),
    }
    print(f"B={B} T={T} P={P} V={V}, {jax.devices()[0].platform}; median ms/step")
    base = None
    for name, source in sources.items():
        step = jax.jit(make_train_step(student, tx, objective, teacher=source))
        s, _ = step(state, frozen, batch)
        jax.block_until_ready(s)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            s, m = step(s, frozen, batch)
            jax.block_until_ready((s, m))
            times.append(time.perf_counter() - t0)
        ms = 1e3 * float(np.median(times))
        base = ms if base is None else base
        print(f"  {name:22s} {ms:8.2f}  x{ms / base:5.2f}")


if __name__ == "__main__":
    main()
