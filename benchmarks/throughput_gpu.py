"""The throughput tables of `throughput.py` and of the LM distillation step on an
accelerator, at realistic batch sizes.

    python benchmarks/throughput_gpu.py                  # one GPU (or TPU host): both tables
    python benchmarks/throughput_gpu.py --steps 50 --batch_resnet 512
    python benchmarks/throughput_gpu.py --lm_only        # the LM step alone
    python benchmarks/throughput_gpu.py --lm_only --tiny # a CPU check of the LM section

Image table: the same code and rows as `benchmarks/throughput.py` (see its docstring),
without the fake CPU devices, with batch 1024 for the MLP pair and 256 for resnet32x4 ->
resnet8x4, 20 timed steps, and a 4096x4096 matmul for the peak. Where the device reports
allocator statistics (GPU), the memory column adds the measured peak. With several
devices the jit and pmap rows use all of them. Writes
`benchmarks/results/throughput_<platform>.{md,json}`.

LM table (`lm_throughput.py`, see its docstring): a SmolLM2-135M-shaped Llama teacher
distilling a 4-layer student of its shape with `lm_kl` on random tokens (`--lm_batch`
16 x `--lm_seq_len` 512), bfloat16 compute on accelerators: tokens/s and MFU, with and
without teacher sharding when there are several devices. `--tiny` swaps in tiny models
and batches (seconds on a CPU; `--cpu_devices 8` fakes 8 CPU devices for the sharded
row) and writes nothing. Writes `benchmarks/results/lm_throughput_<platform>.{md,json}`.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _own_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags; the rest goes to `throughput.main`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lm_only", action="store_true", help="only the LM table")
    parser.add_argument("--skip_lm", action="store_true", help="only the image table")
    parser.add_argument("--tiny", action="store_true", help="tiny LM models (CPU check)")
    parser.add_argument("--cpu_devices", type=int, default=0, help="fake N CPU devices")
    parser.add_argument("--lm_batch", type=int, default=None, help="sequences per step")
    parser.add_argument("--lm_seq_len", type=int, default=None)
    parser.add_argument("--lm_student_layers", type=int, default=None)
    parser.add_argument("--lm_steps", type=int, default=None)
    parser.add_argument("--lm_dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument(
        "--lm_weights",
        choices=("auto", "gguf", "random"),
        default="auto",
        help="teacher weights: the SmolLM2 GGUF if installed (auto), required, or random",
    )
    return parser.parse_known_args(argv)


def main() -> None:
    args, rest = _own_args(sys.argv[1:])
    if args.cpu_devices:  # before jax is imported
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        ).strip()
    sys.argv = [sys.argv[0], *rest, "--no_fake_devices"]  # before throughput.py is imported
    sys.path.insert(0, HERE)
    import throughput  # noqa: E402
    from lm_throughput import run_lm  # noqa: E402

    if not args.lm_only:
        throughput.main(
            sys.argv[1:], defaults={"batch_mlp": 1024, "batch_resnet": 256, "steps": 20}
        )
    if args.skip_lm:
        return
    import jax

    on_cpu = jax.devices()[0].platform == "cpu"
    n = 4096 if not on_cpu else 512
    peaks = {dt: throughput.matmul_peak(dt, n) for dt in ("float32", "bfloat16")}
    tiny = args.tiny
    run_lm(
        tiny=tiny,
        batch=args.lm_batch or (8 if tiny else 16),
        seq_len=args.lm_seq_len or (32 if tiny else 512),
        steps=args.lm_steps or (3 if tiny else 20),
        student_layers=args.lm_student_layers or (1 if tiny else 4),
        dtype=args.lm_dtype,
        weights=args.lm_weights,
        out=None if tiny else os.path.join(HERE, "results"),  # a check, not a result
        matmul_peaks=peaks,
    )


if __name__ == "__main__":
    main()
