"""Generated-sequence distillation of language models: on-policy GKD and sequence-level KD.

Both are one teacher source, `OnPolicyTeacher`: for some steps it replaces the batch's
corpus sequences by sequences it generates, and scores whatever the student trains on with
the teacher's forward. The student's update (the objective, its `lm_*` terms, the optimizer)
is the plain one; only the inputs, their labels and the teacher's logits differ.

**On-policy GKD** (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes"; the semantics of TRL's `GKDTrainer`,
`trl/experimental/gkd/gkd_trainer.py` and `gkd_config.py`, read at huggingface/trl
f2cd577): with probability `lmbda` a step is on-policy (TRL draws `random.random() <=
lmbda` once per training step, `gkd_trainer.py` line 501; `lmbda` is "the student data
fraction", `gkd_config.py` line 32). The first `prompt_tokens` = P tokens of each corpus
sequence are the prompt, and the CURRENT student samples the other `T - P` tokens (TRL's
`max_new_tokens`, `gkd_config.py` line 38: here the rest of the sequence, so shapes stay
static) at `temperature` with nucleus `top_p` (TRL samples with `do_sample=True, top_k=0,
top_p=1.0` at `temperature`, default 0.9, `gkd_trainer.py` lines 216-222, `gkd_config.py`
line 30). The teacher then scores the whole sequence, and the divergence is taken over the
generated tokens only: the labels are -1 on the prompt and after a sequence's end (TRL:
`new_labels[:, :prompt_length] = -100` and everything after the first EOS masked,
`gkd_trainer.py` lines 465-487), so `CausalLM.term_mask` keeps the positions `P - 1 ..
P + n - 2` (position t predicts token t + 1; n = tokens generated, EOS included). The
divergence itself is the objective's: GKD's generalised JSD is `lm_jsd` with TRL's `beta`
(`beta = 0`: forward KL(teacher || student), `beta = 1`: reverse KL; `gkd_config.py` line
35, `gkd_trainer.py` lines 279-298), Eq. (1) of the paper; `distill.alpha = 0` gives TRL's
pure-JSD loss. Generation is not differentiated: the student's parameters enter it under
`stop_gradient` (the paper's Eq. (2) gradient does not flow through the sampling).

**Sequence-level KD** (Kim & Rush 2016, "Sequence-Level Knowledge Distillation": train on
the teacher's generations, mode-seeking approximation of the teacher's sequence
distribution by its greedy / beam output): `seq_kd = True` makes the steps that are not
on-policy train on the TEACHER's continuation of the same prompts (TRL's `seq_kd`,
`gkd_config.py` line 48, `gkd_trainer.py` lines 515-528: `elif seq_kd` after the on-policy
draw, so `lmbda` keeps its meaning). Kim & Rush's word-level NLL on those sequences is
`distill.alpha = 1` (the task CE of the generated tokens; `temperature = 0` for their
greedy output), and any `lm_*` term adds word-level KD on them ("Seq-KD + Word-KD").

Why seq-KD is a flag of this source and not an offline dataset of teacher generations:
the generation code, the prompt/label/mask convention and the per-step key are the
on-policy ones, so both regimes are one tested path and compose as TRL composes them; a
sampled seq-KD draws fresh teacher samples every step (an offline file would freeze one
sample per prompt); and there is no second artefact to keep in step with the teacher
(which weights, which prompt length, which decoding: the run's config and its teacher's
fingerprint already say it). The price is the teacher's decode on every seq-KD step,
which a greedy seq-KD repeats each epoch; `teacher_continuations` is the same generation
as a plain function, for writing such a dataset once when that cost matters.

Randomness: the step's key is `fold_in(fold_in(state.rng, step), 4)` (`steps.One.policy`);
`fold_in(key, 0)` draws the on-policy coin and `fold_in(key, 1)` the samples, so a resumed
run makes exactly the draws of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from distill_jax.errors import ConfigError
from distill_jax.models import llama
from distill_jax.teachers import OnlineTeacher, StudentPolicy, Teacher


def enabled(section: Any) -> bool:
    """Whether a `distill.on_policy` section (defaults in `config.default_config`) asks for
    generated sequences: `lmbda > 0` or `seq_kd`."""
    return bool(section["lmbda"] > 0 or section["seq_kd"])


def validate_section(section: dict[str, Any], key: str = "distill.on_policy") -> None:
    """Range checks of `distill.on_policy` (those that need no data: `check_fit` does).

    Raises:
        ConfigError: one line naming the key and the allowed values.
    """
    if not 0.0 <= section["lmbda"] <= 1.0:  # NaN fails too
        raise ConfigError(f"{key}.lmbda must be in [0, 1], got {section['lmbda']}")
    if section["prompt_tokens"] < 1:
        raise ConfigError(f"{key}.prompt_tokens must be >= 1, got {section['prompt_tokens']}")
    if not section["temperature"] >= 0.0:
        raise ConfigError(
            f"{key}.temperature must be >= 0 (0: greedy), got {section['temperature']}"
        )
    if not 0.0 < section["top_p"] <= 1.0:
        raise ConfigError(f"{key}.top_p must be in (0, 1], got {section['top_p']}")
    if section["eos_id"] < -1:
        raise ConfigError(f"{key}.eos_id must be a token id or -1 (none), got {section['eos_id']}")


def continue_prompts(
    model: llama.Llama,
    params: Any,
    ids_BT: jax.Array,
    prompt_tokens: int,
    key: jax.Array,
    *,
    temperature: float,
    top_p: float = 1.0,
    eos_id: int = -1,
) -> tuple[jax.Array, jax.Array]:
    """The first `prompt_tokens` tokens of each row continued to the row's length by
    `model` (`llama.generate`: KV cache, `lax.while_loop`), not differentiated.

    Args:
        model, params: the decoder that generates (the student or the teacher).
        ids_BT: token ids `(B, T)`; columns `P..T-1` are replaced.
        prompt_tokens: P, with `1 <= P < T`. The prompts are taken as they are (packed
            corpus rows are full; the padding of a split's last row, if it falls in a
            prompt, is read as tokens).
        key: the sampling key (unused when `temperature == 0`).
        temperature, top_p: as `llama.sample_token`.
        eos_id: the token that ends a sequence (kept), or -1 for none.

    Returns:
        `(ids_BT, labels_BT)`: the prompt followed by the `T - P` generated tokens (id 0
        after a sequence's end), and `CausalLM`'s labels: the generated tokens, -1 on the
        prompt and after the end (EOS itself is a target).
    """
    B, T = ids_BT.shape
    P = prompt_tokens
    prompt_BP = ids_BT[:, :P].astype(jnp.int32)
    tokens_BN, lengths_B = llama.generate(
        model,
        jax.lax.stop_gradient(params),
        prompt_BP,
        jnp.ones_like(prompt_BP),
        max_new_tokens=T - P,
        eos_id=eos_id,
        pad_id=0,
        temperature=temperature,
        top_p=top_p,
        key=key,
    )
    new_BT = jnp.concatenate([prompt_BP, tokens_BN], axis=1)
    generated_BN = jnp.arange(T - P)[None, :] < lengths_B[:, None]
    labels_BT = jnp.concatenate(
        [jnp.full((B, P), -1, jnp.int32), jnp.where(generated_BN, tokens_BN, -1)], axis=1
    )
    return jax.lax.stop_gradient(new_BT), labels_BT


def teacher_continuations(
    teacher: Teacher,
    ids_BT: Any,
    prompt_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int = -1,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Sequence-level KD data (Kim & Rush 2016) as arrays: the teacher's continuations of
    the corpus rows' prompts (greedy by default, their mode-seeking approximation), with
    the labels `CausalLM` trains on (`continue_prompts`). The same generation a
    `seq_kd` step makes, for writing a dataset once."""
    return continue_prompts(
        teacher.model,
        teacher.variables["params"],
        jnp.asarray(ids_BT),
        prompt_tokens,
        jax.random.PRNGKey(seed),
        temperature=temperature,
        top_p=top_p,
        eos_id=eos_id,
    )


@dataclasses.dataclass(eq=False)
class OnPolicyTeacher(OnlineTeacher):
    """The online teacher on corpus, student-generated (with probability `lmbda`) or
    teacher-generated (`seq_kd`) sequences (see the module docstring).

    Attributes:
        teacher: the frozen teacher (a `llama.Llama`: it scores, and for seq-KD generates).
        lmbda: the probability that a step trains on the student's samples.
        prompt_tokens: P, the prompt of each row (`1 <= P < T`).
        temperature, top_p: the generation's sampling (0: greedy).
        seq_kd: the other steps train on the teacher's continuations, not the corpus.
        eos_id: the token that ends a generated sequence, or -1 for none.
    """

    teacher: Teacher
    lmbda: float
    prompt_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seq_kd: bool = False
    eos_id: int = -1

    generates = True  # spec, arrays and logits_fn: the online teacher's

    def on_student(self, key: jax.Array) -> jax.Array:
        """Whether the step of `key` (`StudentPolicy.key`) trains on the student's samples:
        `u < lmbda` for `u ~ U[0, 1)` drawn from `fold_in(key, 0)` (lmbda 0: never, 1:
        always)."""
        return jax.random.uniform(jax.random.fold_in(key, 0)) < self.lmbda

    def __call__(self, frozen, inputs, index, step, *, labels, student: StudentPolicy):
        """`(inputs, outputs)` with `outputs = {"logits": (B, T, V), "features": ...,
        "label": (B, T), "metrics": {"on_policy": 0. or 1.}}`: the teacher on the sequences
        the student trains on, their labels (the batch's own on a corpus step), and whether
        they were the student's samples (logged; its mean over a logging window is the
        fraction of on-policy steps, about `lmbda`)."""
        del index, step  # the draws come from the step's key
        sample_key = jax.random.fold_in(student.key, 1)
        gen = dict(temperature=self.temperature, top_p=self.top_p, eos_id=self.eos_id)
        P = self.prompt_tokens

        def corpus(_):
            return inputs, labels

        def own(model, params):
            def branch(_):
                ids_BT, labels_BT = continue_prompts(model, params, inputs, P, sample_key, **gen)
                return ids_BT.astype(inputs.dtype), labels_BT.astype(labels.dtype)

            return branch

        on_student_branch = own(student.model, student.params)
        off_branch = own(self.teacher.model, frozen["params"]) if self.seq_kd else corpus
        if self.lmbda == 0.0:  # static: never compile the student's generation
            pick = jnp.asarray(False)
            ids_BT, labels_BT = off_branch(None)
        elif self.lmbda == 1.0:
            pick = jnp.asarray(True)
            ids_BT, labels_BT = on_student_branch(None)
        else:
            pick = self.on_student(student.key)
            ids_BT, labels_BT = jax.lax.cond(pick, on_student_branch, off_branch, None)
        logits, features = self.teacher.model.apply(frozen, ids_BT, train=False)
        outputs = jax.lax.stop_gradient({"logits": logits, "features": features})
        metrics = {"on_policy": pick.astype(jnp.float32)}
        return ids_BT, {**outputs, "label": labels_BT, "metrics": metrics}


def check_fit(
    section: Any,
    *,
    role: str,
    info: Any,
    teacher: Teacher | None,
    student_model: Any,
    cache: Any,
    vmapped: bool,
) -> None:
    """Refuses, before anything is written, on-policy / seq-KD settings that the run cannot
    use: data that is not causal-LM, no teacher, a teacher cache (it cannot score new
    sequences), vmapped students, models that cannot generate, a prompt as long as the
    sequences.

    Raises:
        ConfigError: one line naming the key.
    """
    key = "distill.on_policy"
    what = f"{key} (lmbda {section['lmbda']}, seq_kd {section['seq_kd']})"
    if not info.causal_lm:
        raise ConfigError(
            f"{what} generates token sequences; dataset '{info.name}' is not language-model "
            f"data (use news_lm or text_lm:PATH)"
        )
    if role != "student" or teacher is None:
        raise ConfigError(
            f"{what} needs a teacher to score the generated sequences: pass --teacher DIR or "
            f"teacher.model.init_from (and run `distill`, not `train`)"
        )
    if cache:
        raise ConfigError(
            f"{what} scores sequences generated during training, which distill.cache cannot "
            f"hold: use the online teacher (leave distill.cache unset)"
        )
    if vmapped:
        raise ConfigError(f"{what} samples from the one student it trains: leave vmap unset")
    length = int(info.image_shape[0])
    if section["prompt_tokens"] >= length:
        raise ConfigError(
            f"{key}.prompt_tokens = {section['prompt_tokens']} leaves nothing to generate in "
            f"sequences of {length} tokens; choose 1..{length - 1}"
        )
    models = {"teacher.model": teacher.model, f"{role}.model": student_model}
    for name, model in models.items():
        if not isinstance(model, llama.Llama):
            raise ConfigError(
                f"{what} generates with the models, and {name} ({type(model).__name__}) is "
                f"not a decoder with a KV cache: use 'llama'"
            )


def make_source(section: Any, teacher: Teacher) -> OnPolicyTeacher:
    """The source of a checked `distill.on_policy` section."""
    return OnPolicyTeacher(
        teacher,
        lmbda=float(section["lmbda"]),
        prompt_tokens=int(section["prompt_tokens"]),
        temperature=float(section["temperature"]),
        top_p=float(section["top_p"]),
        seq_kd=bool(section["seq_kd"]),
        eos_id=int(section["eos_id"]),
    )


__all__ = [
    "OnPolicyTeacher",
    "check_fit",
    "continue_prompts",
    "enabled",
    "make_source",
    "teacher_continuations",
    "validate_section",
]
