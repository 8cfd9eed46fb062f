"""Resume speed: an unchanged catalog run twice into the same output root.

The second run must generate and score nothing new (it reuses cache/) and be ≥ 10× faster than
the first on the tiny model. Each run is its own process, as two ``vstar produce`` invocations
are: the first loads the model and generates, the second finds every video in the cache and loads
nothing. Inside each process Prefect's API is reached once before the clock starts (the
ephemeral server's start-up and Prefect's first calls cost both runs the same), then the
produce-dataset flow is timed. The whole process's wall time is printed too: Python imports and
Prefect's start-up dominate it on a model this small. Medians over ``--repeat`` pairs, each pair
into a fresh output root, for two configurations:

- ``vstar produce``: the CLI's configuration, Prefect's ephemeral API in the process (no global
  concurrency limit, no flow-run heartbeats: nothing outlives the process to use them);
- ``server``: as a worker runs a deployment, against a Prefect server (a temporary one here):
  the global concurrency limit vstar-gpu and Prefect's default heartbeats. Videos waiting for a
  slot poll the server (Retry-After with jitter), and Prefect ends a flow run at its heartbeat
  thread's next one-second tick, so no flow run takes less than about a second.

    python benchmarks/resume.py [--catalog catalogs/demo.yaml] [--steps 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(catalog: str, root: str, steps: int) -> None:
    """In a fresh process: reach Prefect's API, then time one produce-dataset run; print JSON."""
    from prefect import flow

    from flows.produce import produce_dataset
    from tasks.evaluate import EvaluationSettings
    from tasks.jobs import ModelSettings
    from vstar_cli import local_flow_settings
    from vstar_data.schemas import read_table

    with local_flow_settings():
        flow(name="warm-up")(lambda: None)()  # starts the ephemeral API (if any) before the clock
        start = time.perf_counter()
        run_dir = produce_dataset(catalog=catalog, output_root=root, model=ModelSettings(steps=steps),
                                  evaluation=EvaluationSettings(metric="pixel_cosine"))
        seconds = time.perf_counter() - start
    hashes = sorted(row["video_sha256"] for row in read_table(f"{run_dir}/samples.parquet").to_pylist())
    print("RESULT " + json.dumps({"flow_seconds": seconds, "hashes": hashes}))


def timed_process(args, root: str, env: dict) -> tuple[float, float, list[str]]:
    """(flow seconds, process wall seconds, video hashes) of one run in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--one-run", root, "--catalog", args.catalog,
                           "--steps", str(args.steps)], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    return result["flow_seconds"], wall, result["hashes"]


def measure(name: str, args, home: Path, env: dict) -> None:
    flows: dict[int, list[float]] = {0: [], 1: []}
    walls: dict[int, list[float]] = {0: [], 1: []}
    same = True
    for repeat in range(args.repeat):
        root = str(home / f"{name.replace(' ', '-')}-{repeat}")
        results = [timed_process(args, root, env) for _ in range(2)]
        for i, (flow_seconds, wall, _) in enumerate(results):
            flows[i].append(flow_seconds)
            walls[i].append(wall)
        same &= results[0][2] == results[1][2]
    first, second = statistics.median(flows[0]), statistics.median(flows[1])
    wall_first, wall_second = statistics.median(walls[0]), statistics.median(walls[1])
    print(f"{name:14s} flow: first {first:5.2f} s  second {second:5.2f} s  speedup {first / second:4.1f}x "
          f"(target >= 10x)  same videos: {same}", flush=True)
    print(f"{'':14s} whole process: first {wall_first:5.1f} s  second {wall_second:5.1f} s  "
          f"speedup {wall_first / wall_second:4.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="catalogs/demo.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one-run", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        return one_run(args.catalog, args.one_run, args.steps)

    home = Path(tempfile.mkdtemp(prefix="vstar-resume-"))
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), "VSTAR_CACHE_DIR": str(home / "cache"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    os.environ.update({key: env[key] for key in ("PREFECT_HOME", "VSTAR_CACHE_DIR")})
    from vstar_model.backbones.loading import builtin_model_path

    builtin_model_path()  # built once, outside the timing (a real model is downloaded once, too)
    print(f"catalog={args.catalog} steps={args.steps} repeat={args.repeat}")
    measure("vstar produce", args, home, env)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        measure("server", args, home, {**env, "PREFECT_API_URL": PREFECT_API_URL.value()})


if __name__ == "__main__":
    main()
