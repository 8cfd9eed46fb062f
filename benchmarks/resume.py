"""Resume speed: an unchanged catalog run twice into the same output root, in one process.

The second run must generate and score nothing new (it reuses cache/) and be ≥ 10× faster than
the first on the tiny model. Every run goes through the real produce-dataset flow; Prefect's
start-up is paid once per configuration, outside the timing. The process is warmed up first (one
untimed run loads the model and imports everything), so first runs are timed warm: the
conservative ratio. Each pair (first run, second run) uses a fresh output root; medians over
``--repeat`` pairs are reported for two configurations:

- ``vstar produce``: as the CLI runs, against Prefect's ephemeral API (no global concurrency
  limit, no flow-run heartbeats: nothing outlives the process to use them);
- ``server``: as a worker runs a deployment, against a Prefect server (here a temporary one):
  the global concurrency limit vstar-gpu and Prefect's default 180 s heartbeats. Videos waiting
  for a slot poll the server (Retry-After with jitter), and Prefect joins the heartbeat thread at
  its next one-second tick when a flow run ends, so no flow run takes less than about a second.

    python benchmarks/resume.py [--catalog catalogs/demo.yaml] [--steps 4] [--repeat 3] [--pause 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="catalogs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between runs, outside the timing")
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
    from vstar_cli import local_flow_settings
    from vstar_data.schemas import read_table
    from vstar_model.backbones import tiny_model_path

    tiny_model_path()  # built once, outside the timing
    roots = iter(str(home / f"out{i}") for i in range(1000))

    def produce(root: str) -> tuple[float, str]:
        # Separate invocations in practice: let the previous run's events settle first, or
        # Prefect's SQLite database is busy and the next flow run's creation is retried (~2 s).
        time.sleep(args.pause)
        start = time.perf_counter()
        run_dir = produce_dataset(catalog=args.catalog, output_root=root, model=ModelSettings(steps=args.steps),
                                  evaluation=EvaluationSettings(metric="pixel_cosine"))
        return time.perf_counter() - start, run_dir

    def video_hashes(run_dir: str) -> list[str]:
        return sorted(row["video_sha256"] for row in read_table(f"{run_dir}/samples.parquet").to_pylist())

    def measure(name: str) -> None:
        produce(next(roots))  # warm-up: model load, imports, Prefect's own first calls
        firsts, seconds, same = [], [], True
        for _ in range(args.repeat):
            root = next(roots)
            (first, run_a), (second, run_b) = produce(root), produce(root)
            firsts.append(first)
            seconds.append(second)
            same &= video_hashes(run_a) == video_hashes(run_b)
        first, second = statistics.median(firsts), statistics.median(seconds)
        print(f"{name:14s} first run {first:5.2f} s  second run {second:5.2f} s  same videos: {same}  "
              f"speedup {first / second:4.1f}x (target >= 10x)", flush=True)

    print(f"catalog={args.catalog} steps={args.steps} repeat={args.repeat}")
    os.environ.pop("PREFECT_API_URL", None)
    with local_flow_settings():
        measure("vstar produce")
    with prefect_test_harness(server_startup_timeout=120):
        measure("server")

if __name__ == "__main__":
    main()
