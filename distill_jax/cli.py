"""The `distill-jax` command line.

    distill-jax run      --config FILE --workdir DIR [--seeds N]
    distill-jax sweep    --config FILE --workdir DIR [--pairs ...] [--methods ...]
    distill-jax train    --config FILE --workdir DIR [--role teacher|student]
    distill-jax distill  --config FILE --workdir DIR --teacher TEACHER_DIR
                         (language-model data: no --teacher takes teacher.model.init_from)
                         [--teacher_cache CACHE_DIR] [--vmap_students N]
    distill-jax cache-teacher --config FILE --teacher TEACHER_DIR --workdir CACHE_DIR
                         [--top_k K] [--views V]
                         (language-model data: top-K log-probabilities per token, K >= 1;
                         no --teacher takes teacher.model.init_from)
    distill-jax compress --config FILE --workdir DIR [--teacher TEACHER_DIR]
    distill-jax capacity --config FILE --workdir DIR [--teacher TEACHER_DIR] [--students ...]
    distill-jax evaluate --workdir DIR [--teacher TEACHER_DIR] [--split test]
                         [--attack pgd,apgd_ce --eps 0.1 [--steps 20] [--restarts 1]]
    distill-jax prune-width --checkpoint smollm2-135m-q4 --data news_lm/len128 --out DIR
                         [--sequences 32] [--layers 0 10 20 29] [--intermediate_size F]
                         [--kv_heads K] [--hidden_size D]
                         (Minitron: depth, then width pruning by activation importance;
                         writes a Hugging Face directory a student loads with init_from)

Multi-process (multi-host) runs: start the same command in every process with
`--coordinator_address HOST:PORT --num_processes P --process_id I` (or none of them on a
cluster that JAX detects: TPU VM slices, SLURM).

Any config key can be overridden with `--config.KEY=VALUE` (e.g.
`--config.student.train.epochs=5`; values are Python literals or bare strings). Errors a
user can cause are reported as one line on stderr with exit code 2 (`--debug` shows the
traceback); they are detected before any training starts. A diverged run (NaN/Inf) exits
with 3, a preempted one (SIGTERM/SIGINT: checkpoint written) with 75.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence

from distill_jax.errors import (
    ConfigError,
    DistillError,
    Preempted,
    UserCodeError,
    no_space_left,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill-jax",
        description="Knowledge distillation in JAX/Flax.",
        epilog="Override any config key with --config.KEY=VALUE.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
        if config_required:
            p.add_argument("--config", help="experiment config file (get_config())")
        p.add_argument("--workdir", required=True, help="directory of the run's outputs")
        p.add_argument("--data_dir", help="TFDS data dir (else $TFDS_DATA_DIR, else cache)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        g = p.add_argument_group("multi-process runs (jax.distributed)")
        g.add_argument("--coordinator_address", help="HOST:PORT of process 0")
        g.add_argument("--num_processes", type=int, help="number of processes")
        g.add_argument("--process_id", type=int, help="this process's rank")
        g.add_argument(
            "--heartbeat_timeout",
            type=int,
            help="seconds after which a silent peer fails the run (JAX default: 100)",
        )
        g.add_argument(
            "--distributed",
            action="store_true",
            help="join a cluster that JAX detects (TPU VM slice, SLURM) without addresses",
        )

    p = sub.add_parser("run", help="teacher, student alone and distilled student, compared")
    common(p)
    p.add_argument("--seeds", type=int, help="student seeds (default: config run.seeds)")
    p.add_argument("--overwrite", action="store_true", help="discard runs of another config")

    p = sub.add_parser("capacity", help="student sizes x (alone, teachers, assistants)")
    common(p)
    p.add_argument("--teacher", help="a finished teacher run (default: train one)")
    p.add_argument("--students", help="comma-separated subset of capacity.students")

    p = sub.add_parser("sweep", help="pair x method x seed grid with a results table")
    common(p)
    p.add_argument("--pairs", help="comma-separated subset of sweep.pairs")
    p.add_argument("--methods", help="comma-separated subset of sweep.methods")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: sweep.seeds)")

    p = sub.add_parser("train", help="train one model alone (e.g. the teacher)")
    common(p)
    p.add_argument("--role", choices=("teacher", "student"), default="teacher")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("distill", help="train the student from a trained teacher")
    common(p)
    p.add_argument("--teacher", help="workdir of a `train` run (else config teacher.workdir)")
    p.add_argument(
        "--teacher_cache", help="a `cache-teacher` directory: read the teacher's outputs"
    )
    p.add_argument("--vmap_students", type=int, help="train N students (seeds) in one vmapped step")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "cache-teacher", help="run the teacher once; store its outputs for offline distilling"
    )
    common(p)
    p.add_argument("--teacher", help="workdir of a `train` run (else config teacher.workdir)")
    p.add_argument(
        "--top_k", type=int, default=0, help="keep the top-k logits (0: all; LM data: k >= 1)"
    )
    p.add_argument("--views", type=int, default=1, help="augmented views per example")
    p.add_argument("--split", default="train", help="which split (default: train)")
    p.add_argument("--seed", type=int, help="augmentation seed of the views (default: seed)")

    p = sub.add_parser(
        "compress", help="distil, prune and quantize the student; accuracy-size table and plot"
    )
    common(p)
    p.add_argument("--teacher", help="workdir of a finished teacher run (else one is trained)")

    p = sub.add_parser("evaluate", help="evaluate a trained run on a split")
    common(p, config_required=False)
    p.add_argument("--teacher", help="also report agreement and KL against this teacher")
    p.add_argument("--split", default="test", choices=("test", "validation", "train"))
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    g = p.add_argument_group("robust accuracy (white-box attacks on the model's inputs)")
    g.add_argument(
        "--attack",
        action="append",
        help="fgsm, pgd, pgd_l2, apgd_ce or apgd_dlr; repeat or comma-separate for several",
    )
    g.add_argument("--eps", type=float, help="perturbation radius in input units (pixels: 0-1)")
    g.add_argument("--steps", type=int, default=20, help="gradient steps (default: 20)")
    g.add_argument("--step_size", type=float, help="PGD's step (default: 2.5 * eps / steps)")
    g.add_argument("--restarts", type=int, default=1, help="random restarts (default: 1)")
    g.add_argument("--attack_seed", type=int, default=0, help="seed of the random starts")
    g.add_argument(
        "--no_random_start", action="store_true", help="start PGD/APGD at the clean input"
    )

    p = sub.add_parser(
        "export",
        help="write a finished run's model as safetensors + model card + StableHLO + predict.py",
    )
    common(p, config_required=False)
    p.add_argument("--out", required=True, help="directory to write (must not exist)")
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    p.add_argument("--member", type=int, help="which student of a vmapped run (0-based)")
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8 kernels + scales (default: for a QAT run of `compress`)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no_eval", action="store_true", help="skip the model card's test metrics")

    p = sub.add_parser(
        "prune-width",
        help="Minitron pruning of a Llama checkpoint (depth, then width by activation "
        "importance) into a Hugging Face directory",
    )
    p.add_argument("--checkpoint", required=True, help="GGUF file, HF directory or known name")
    p.add_argument("--data", required=True, help="calibration data: news_lm/len128, text_lm:PATH")
    p.add_argument("--out", required=True, help="directory to write (absent or empty)")
    p.add_argument("--sequences", type=int, default=32, help="calibration sequences (32)")
    p.add_argument("--split", default="train", help="split they come from (train)")
    p.add_argument("--layers", type=int, nargs="+", help="blocks to keep (depth pruning first)")
    p.add_argument("--intermediate_size", type=int, help="MLP neurons per block to keep")
    p.add_argument("--kv_heads", type=int, help="key/value groups per block to keep")
    p.add_argument("--hidden_size", type=int, help="hidden (embedding) channels to keep")
    p.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (8)")
    p.add_argument("--data_dir", help="TFDS data dir (else $TFDS_DATA_DIR, else cache)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for i, arg in enumerate(argv):
        if arg.startswith("--config."):
            item = arg[len("--config.") :]
            if "=" not in item:
                value = argv[i + 1] if i + 1 < len(argv) else "VALUE"
                raise ConfigError(f"write config overrides as --config.{item}={value} (with '=')")
            overrides.append(item)
        else:
            rest.append(arg)
    return rest, overrides


def _load(args: argparse.Namespace, overrides: list[str]):
    from distill_jax import config as config_lib

    # Flags that stand for config keys become overrides, validated with the rest.
    flags = {
        "data.data_dir": args.data_dir,
        "distill.cache": getattr(args, "teacher_cache", None),
        "vmap.students": getattr(args, "vmap_students", None),
    }
    overrides = [*overrides, *(f"{k}={v!r}" for k, v in flags.items() if v is not None)]
    if args.config is None and not overrides and args.command in ("train", "distill", "run"):
        print(
            f"distill-jax: note: no --config and no --config.KEY=VALUE overrides given; "
            f"{args.command} uses the defaults of distill_jax/config.py",
            file=sys.stderr,
        )
    return config_lib.load_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `distill-jax` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        rest, overrides = _split_overrides(argv)
        args = _parser().parse_args(rest)
        return _dispatch(args, overrides)
    except DistillError as e:
        if debug:
            raise
        if isinstance(e, UserCodeError) and e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=sys.stderr)
        kind = "preempted" if isinstance(e, Preempted) else "error"
        print(f"distill-jax: {kind}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a full disk, reported by Orbax several wrappers deep
        if debug or not no_space_left(e):
            raise
        print(
            "distill-jax: error: no space left on device while writing; free space and run "
            "the same command again: it resumes from the last complete checkpoint",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a traceback
        if debug:
            raise
        print(
            "distill-jax: interrupted (no checkpoint written since the last one)", file=sys.stderr
        )
        return 130


def _dispatch(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.command == "prune-width":
        return _prune_width(args, overrides)
    if args.coordinator_address or args.num_processes or args.process_id is not None:
        args.distributed = True
    if args.distributed:  # before any JAX computation
        from distill_jax.parallel import initialize_distributed

        initialize_distributed(
            args.coordinator_address,
            args.num_processes,
            args.process_id,
            heartbeat_timeout_seconds=args.heartbeat_timeout,
        )
    # Heavy imports after argument parsing, so `--help` and usage errors are instant.
    from distill_jax.train import loop
    from distill_jax.train.inputs import pretrained_teacher

    if args.command in ("evaluate", "export"):
        if overrides:
            raise ConfigError(
                f"{args.command} takes no --config overrides; it uses the run's config"
            )
        if args.command == "export":
            from distill_jax.export import export

            export(
                args.workdir,
                args.out,
                which=args.checkpoint,
                member=args.member,
                int8=args.int8,
                overwrite=args.overwrite,
                evaluate=not args.no_eval,
                data_dir=args.data_dir,
            )
            return 0
        return _evaluate(args)
    config = _load(args, overrides)
    if args.command == "run":
        from distill_jax.pipeline import run

        run(config, args.workdir, seeds=args.seeds, overwrite=args.overwrite)
        return 0
    if args.command == "sweep":
        from distill_jax.sweep import sweep

        split = lambda s: s.split(",") if s else None  # noqa: E731
        sweep(
            config,
            args.workdir,
            pairs=split(args.pairs),
            methods=split(args.methods),
            seeds=args.seeds,
        )
        return 0
    if args.command == "capacity":
        from distill_jax.capacity import capacity

        capacity(
            config,
            args.workdir,
            teacher_dir=args.teacher or config.teacher.workdir,
            students=args.students.split(",") if args.students else None,
        )
        return 0
    if args.command == "compress":
        from distill_jax.compress.chain import compress

        compress(config, args.workdir, teacher_dir=args.teacher or config.teacher.workdir)
        return 0
    if args.command == "cache-teacher":
        return _cache_teacher(args, config)
    if args.command == "train":
        result = loop.fit(
            config, args.workdir, role=args.role, seed=args.seed, overwrite=args.overwrite
        )
    else:  # distill
        teacher_dir = args.teacher or config.teacher.workdir
        teacher = None
        if teacher_dir:
            teacher = loop.load_teacher(teacher_dir, config.teacher.checkpoint)
        elif not config.distill.cache:
            # A language model's teacher may come straight from its pretrained checkpoint
            # (teacher.model.init_from); anything else needs one of the above.
            teacher = pretrained_teacher(config, loop.load_data(config).info)
        compare_to = teacher
        if config.distill.assistants:
            teacher = _assistants(args, config, teacher)
        result = loop.fit(
            config,
            args.workdir,
            role="student",
            seed=args.seed,
            teacher=teacher,
            compare_to=compare_to,
            overwrite=args.overwrite,
        )
    if jax_process_index() != 0:
        return 0
    _print_metrics(result.test)
    test = dict(result.test)
    if result.students:
        from distill_jax.report import students_table

        table = students_table(result.students)
        print(table)
        _write_text(os.path.join(args.workdir, "report.md"), table)
        test["students"] = result.students
    _write_json(os.path.join(args.workdir, "eval.json"), test)
    return 0


def _assistants(args: argparse.Namespace, config, teacher):
    """`distill` with `distill.assistants`: the chain's runs go in `<workdir>/assistants/`
    (the workdir is checked and claimed first); returns the last assistant."""
    from distill_jax.assistants import through_assistants
    from distill_jax.train.workdir import ASSISTANTS_DIR, claim

    if teacher is None:
        raise ConfigError("distill.assistants are distilled from a teacher: --teacher DIR")
    reads = {"--teacher": teacher.identity["workdir"]}
    claim(args.workdir, "train", config, overwrite=args.overwrite, reads=reads)
    root = os.path.join(args.workdir, ASSISTANTS_DIR)
    return through_assistants(config, root, teacher, overwrite=args.overwrite)


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def _cache_teacher(args: argparse.Namespace, config) -> int:
    from distill_jax.train import loop
    from distill_jax.train.inputs import pretrained_teacher
    from distill_jax.train.teacher_cache import check_request, write_cache

    teacher_dir = args.teacher or config.teacher.workdir
    data = loop.load_data(config)
    splits = {
        config.data.train_split: data.train,
        config.data.validation_split: data.validation,
        config.data.test_split: data.test,
    }
    if args.split not in splits:
        raise ConfigError(f"--split {args.split!r} is not one of {', '.join(splits)}")
    split, task = splits[args.split], loop.make_task(config, "student", data)
    check_request(split, args.workdir, args.top_k, args.views, task)  # before a teacher loads
    if teacher_dir:
        teacher = loop.load_teacher(teacher_dir, config.teacher.checkpoint)
    elif data.info.causal_lm and config.teacher.model.get("init_from"):
        teacher = pretrained_teacher(config, data.info)  # e.g. smollm2-135m-q4
    else:
        extra = " or teacher.model.init_from" if data.info.causal_lm else ""
        raise ConfigError(f"cache-teacher needs a teacher: --teacher DIR or teacher.workdir{extra}")
    loop.check_teacher(teacher, split.info)
    started = time.time()
    meta = write_cache(
        teacher,
        split,
        args.workdir,
        split_name=args.split,
        top_k=args.top_k,
        views=args.views,
        task=task,
        seed=config.seed if args.seed is None else args.seed,
        batch_size=config.data.eval_batch_size,
        progress=config.log.progress,
    )
    d, seconds = meta["dataset"], time.time() - started
    if meta.get("causal_lm"):
        tokens = d["num_examples"] * meta["sequence_length"]
        print(
            f"cached the top-{meta['top_k']} log-probabilities of {d['num_examples']} sequences "
            f"x {meta['sequence_length']} tokens of {d['name']}:{d['split']} in {args.workdir} "
            f"({seconds:.0f} s, {tokens / max(seconds, 1e-9):.0f} tokens/s; mean kept mass "
            f"{meta['mean_kept_mass']:.3f})"
        )
        return 0
    kept = f"top-{meta['top_k']}" if meta["top_k"] else "all"
    print(
        f"cached {kept} logits of {d['num_examples']} examples x {meta['views']} view(s) of "
        f"{d['name']}:{d['split']} in {args.workdir} ({seconds:.0f} s)"
    )
    return 0


def _attack_specs(args: argparse.Namespace) -> list:
    """The attacks of `evaluate --attack ... --eps ...`, validated (ConfigError)."""
    from distill_jax.attacks import ATTACKS, parse_attack

    names = [n.strip() for a in args.attack or () for n in a.split(",")]
    if not names:
        if args.eps is not None or args.step_size is not None:
            raise ConfigError(
                f"--eps and --step_size set an attack: add --attack {{{','.join(ATTACKS)}}}"
            )
        return []
    if args.eps is None:
        raise ConfigError(f"--attack {','.join(names)} needs --eps (the perturbation radius)")
    specs = []
    for name in names:
        entry = {
            "name": name,
            "eps": args.eps,
            "steps": args.steps,
            "restarts": args.restarts,
            "seed": args.attack_seed,
            "random_start": not args.no_random_start,
        }
        if args.step_size is not None and name.startswith("pgd"):
            entry["step_size"] = args.step_size
        specs.append(parse_attack(entry, f"--attack {name}"))
    return specs


def _evaluate(args: argparse.Namespace) -> int:
    from distill_jax import config as config_lib
    from distill_jax.attacks import check_inputs, robust_accuracy
    from distill_jax.evaluation import Evaluator, model_summary
    from distill_jax.tasks import task_of
    from distill_jax.train import loop
    from distill_jax.train.inputs import load_run_split

    specs = _attack_specs(args)
    run = loop.load_teacher(args.workdir, args.checkpoint, what="run")  # any run loads alike
    config_path = os.path.join(args.workdir, loop.CONFIG_FILE)
    with open(config_path) as f:
        spec = json.load(f)
    split = load_run_split(spec, args.split, args.data_dir, config_path)
    eval_batch_size = config_lib.from_dict({"data": spec["data"]}).data.eval_batch_size
    teacher = None
    if args.teacher:
        teacher = loop.load_teacher(args.teacher)
        loop.check_teacher(teacher, split.info)
    for spec in specs:
        check_inputs(spec, split.info, f"--attack {spec.name}")
    # Classification, a tag per token (NER) or next-token prediction (perplexity).
    task = task_of(split.info)
    evaluator = Evaluator(run.model, task=task, teacher=teacher, batch_size=eval_batch_size)
    metrics = evaluator(run.variables, split)
    metrics.update(model_summary(run.model, run.variables, split.info.image_shape, task=task))
    metrics["split"] = args.split
    metrics["step"] = run.identity["step"]
    if specs:
        metrics["robust"] = [
            robust_accuracy(run.model.apply, run.variables, split, s, batch_size=eval_batch_size)
            for s in specs
        ]
    _print_metrics(metrics)
    _write_json(os.path.join(args.workdir, f"eval_{args.split}.json"), metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    robust_labels = [f"robust_accuracy[{r['attack']}]" for r in metrics.get("robust", ())]
    width = max(len(k) for k in [*metrics, *robust_labels])
    for k, v in metrics.items():
        if k == "robust":  # one line per attack: its number and its settings
            for r, label in zip(v, robust_labels, strict=True):
                settings = ", ".join(
                    f"{name}={r[name]:.4g}" if isinstance(r[name], float) else f"{name}={r[name]}"
                    for name in r
                    if name not in ("attack", "robust_accuracy", "clean_accuracy", "count")
                )
                print(f"{label:<{width}}  {r['robust_accuracy']:.6g}  ({settings})")
            continue
        print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def _prune_width(args: argparse.Namespace, overrides: list[str]) -> int:
    """`prune-width`: prints the before/after table and the student config."""
    if overrides:
        raise ConfigError("prune-width takes no --config overrides")
    from distill_jax.compress.lm_width import format_table, prune_checkpoint

    report = prune_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        sequences=args.sequences,
        split=args.split,
        layers=args.layers,
        intermediate_size=args.intermediate_size,
        num_kv_heads=args.kv_heads,
        hidden_size=args.hidden_size,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        overwrite=args.overwrite,
    )
    print(format_table(report))
    print(f"student config: {json.dumps(report['student_config'])}")
    print(f"time: {report['timings']['total_s']:.1f} s")
    return 0


def _write_json(path: str, obj: dict) -> None:
    _write_text(path, json.dumps(obj, indent=2))


def _write_text(path: str, text: str) -> None:
    from distill_jax.report import atomic_write

    atomic_write(path, text)


if __name__ == "__main__":
    sys.exit(main())
