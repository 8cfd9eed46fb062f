"""Resume speed: an unchanged catalog run twice into the same output root, in one process.

The second run must generate and score nothing new (it reuses cache/) and be ≥ 10× faster than
the first on the tiny model. Both runs go through the real produce-dataset flow against one
Prefect API (a temporary test harness), so Prefect's start-up is paid once, outside the timing.

    python benchmarks/resume.py [--catalog catalogs/demo.yaml] [--frames 16] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="catalogs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vstar-resume-"))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("VSTAR_CACHE_DIR", str(home / "cache"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    import vstar_model  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    from flows.produce import produce_dataset
    from tasks.evaluate import EvaluationSettings
    from tasks.jobs import ModelSettings
    from vstar_data.schemas import read_table
    from vstar_model.backbones import tiny_model_path

    tiny_model_path()  # built once, outside the timing
    root = str(home / "out")
    kwargs = dict(catalog=args.catalog, output_root=root, model=ModelSettings(steps=args.steps),
                  evaluation=EvaluationSettings(metric="pixel_cosine"))
    with prefect_test_harness(server_startup_timeout=120):
        times, runs = [], []
        for _ in range(2):
            start = time.perf_counter()
            runs.append(produce_dataset(**kwargs))
            times.append(time.perf_counter() - start)
    hashes = [sorted(r["video_sha256"] for r in read_table(f"{run}/samples.parquet").to_pylist()) for run in runs]
    print(f"catalog={args.catalog} steps={args.steps} videos={len(hashes[0])}")
    print(f"first run  {times[0]:.2f} s (generates)")
    print(f"second run {times[1]:.2f} s (reuses)   same video hashes: {hashes[0] == hashes[1]}")
    print(f"speedup {times[0] / times[1]:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
