"""The throughput table of `throughput.py` on an accelerator, at realistic batch sizes.

    python benchmarks/throughput_gpu.py                  # one GPU (or TPU host), unchanged
    python benchmarks/throughput_gpu.py --steps 50 --batch_resnet 512

The same code and rows as `benchmarks/throughput.py` (see its docstring), without the fake
CPU devices, with batch 1024 for the MLP pair and 256 for resnet32x4 -> resnet8x4, 20 timed
steps, and a 4096x4096 matmul for the peak. Where the device reports allocator statistics
(GPU), the memory column adds the measured peak. With several devices the jit and pmap
rows use all of them. Writes `benchmarks/results/throughput_<platform>.{md,json}`.
"""

import os
import sys

sys.argv.append("--no_fake_devices")  # before throughput.py reads it at import
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402

if __name__ == "__main__":
    throughput.main(defaults={"batch_mlp": 1024, "batch_resnet": 256, "steps": 20})
