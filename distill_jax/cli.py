"""The `distill-jax` command line.

    distill-jax run      --config FILE --workdir DIR [--seeds N]
    distill-jax sweep    --config FILE --workdir DIR [--pairs ...] [--methods ...]
    distill-jax train    --config FILE --workdir DIR [--role teacher|student]
    distill-jax distill  --config FILE --workdir DIR --teacher TEACHER_DIR
    distill-jax evaluate --workdir DIR [--teacher TEACHER_DIR] [--split test]

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
from collections.abc import Sequence

from distill_jax.errors import ConfigError, DistillError, Preempted


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

    p = sub.add_parser("run", help="teacher, student alone and distilled student, compared")
    common(p)
    p.add_argument("--seeds", type=int, help="student seeds (default: config run.seeds)")
    p.add_argument("--overwrite", action="store_true", help="discard runs of another config")

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
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("evaluate", help="evaluate a trained run on a split")
    common(p, config_required=False)
    p.add_argument("--teacher", help="also report agreement and KL against this teacher")
    p.add_argument("--split", default="test", choices=("test", "validation", "train"))
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best"))
    return parser


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            overrides.append(arg[len("--config.") :])
        else:
            rest.append(arg)
    return rest, overrides


def _load(args: argparse.Namespace, overrides: list[str]):
    from distill_jax import config as config_lib

    if args.data_dir:
        overrides = [*overrides, f"data.data_dir={args.data_dir!r}"]
    return config_lib.load_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `distill-jax` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    try:
        return _dispatch(args, overrides)
    except DistillError as e:
        if args.debug:
            raise
        kind = "preempted" if isinstance(e, Preempted) else "error"
        print(f"distill-jax: {kind}: {e}", file=sys.stderr)
        return e.exit_code


def _dispatch(args: argparse.Namespace, overrides: list[str]) -> int:
    # Heavy imports after argument parsing, so `--help` and usage errors are instant.
    from distill_jax.train import loop

    if args.command == "evaluate":
        if overrides:
            raise ConfigError("evaluate takes no --config overrides; it uses the run's config")
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
    if args.command == "train":
        result = loop.fit(
            config, args.workdir, role=args.role, seed=args.seed, overwrite=args.overwrite
        )
    else:  # distill
        teacher_dir = args.teacher or config.teacher.workdir
        if not teacher_dir:
            raise ConfigError("distill needs a teacher: --teacher DIR or teacher.workdir")
        teacher = loop.load_teacher(teacher_dir, config.teacher.checkpoint)
        result = loop.fit(
            config,
            args.workdir,
            role="student",
            seed=args.seed,
            teacher=teacher,
            overwrite=args.overwrite,
        )
    _print_metrics(result.test)
    _write_json(os.path.join(args.workdir, "eval.json"), result.test)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from distill_jax import config as config_lib
    from distill_jax import data as data_lib
    from distill_jax.evaluation import Evaluator, model_summary
    from distill_jax.train import loop

    run = loop.load_teacher(args.workdir, args.checkpoint, what="run")  # any run loads alike
    with open(os.path.join(args.workdir, loop.CONFIG_FILE)) as f:
        spec = json.load(f)
    data_cfg = dict(spec["data"], data_dir=args.data_dir or spec["data"].get("data_dir"))
    data_cfg = config_lib.from_dict({"data": data_cfg}).data
    split = data_lib.load_split(
        data_cfg.name, data_cfg[f"{args.split}_split"], data_cfg.data_dir, data_cfg.download
    )
    teacher = None
    if args.teacher:
        teacher = loop.load_teacher(args.teacher)
        loop.check_teacher(teacher, split.info)
    evaluator = Evaluator(run.model, teacher=teacher, batch_size=data_cfg.eval_batch_size)
    metrics = evaluator(run.variables, split)
    metrics.update(model_summary(run.model, run.variables, split.info.image_shape))
    metrics["split"] = args.split
    metrics["step"] = run.identity["step"]
    _print_metrics(metrics)
    _write_json(os.path.join(args.workdir, f"eval_{args.split}.json"), metrics)
    return 0


def _print_metrics(metrics: dict) -> None:
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
