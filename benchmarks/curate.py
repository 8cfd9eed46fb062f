"""Curation over many clips: time and peak memory of reading candidates, selecting and building
the index for ``--clips`` synthetic clips (default 10,000) spread over ``--runs`` runs.

Each synthetic clip has what a real 16-frame run records: samples row, the 7 summaries for each
interval k = 1..15 plus coherence, dynamics slope, flicker and motion (109 metrics rows), and a
``--dim``-dimensional mean frame embedding (every 10th a near-copy of the one before). Selection: two conditions, near-duplicate removal at
cosine 0.95 (keeping the highest coherence), at most 3 clips per prompt. Videos are not written
(curation never reads them). Times are CPU seconds of this process (time.process_time); peak
memory is Python's (tracemalloc) plus Arrow's pool high-water mark, measured in a second pass
(tracemalloc slows Python down, so it is off while timing).

    .venv/bin/python benchmarks/curate.py
    .venv/bin/python benchmarks/curate.py --clips 50000 --runs 50 --dim 1792
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.synthetic_runs import START, Clip, write_run  # noqa: E402
from vstar_data.curate import Ranking, candidates, index_table, parse_condition, select  # noqa: E402
import vstar_model.vsp.captions  # noqa: E402,F401  (torch imported before the clock starts, as in the flow)


def synthetic_runs(root: str, clips: int, runs: int, dim: int) -> list[str]:
    rng = np.random.default_rng(0)
    per_run = clips // runs
    directories = []
    previous = np.zeros(dim)
    for r in range(runs):
        run_clips = []
        for i in range(per_run):
            metrics = {f"{name}@{k}": float(rng.random()) for k in range(1, 16)
                       for name in ("mean", "std", "q05", "q25", "q50", "q75", "q95")}
            metrics.update(coherence=float(rng.random()), dynamics_slope=float(rng.normal(0, 0.003)),
                           temporal_flicker=float(rng.random()), motion_magnitude=float(rng.random() * 5))
            # Every 10th clip nearly repeats the one before it: near-duplicates for dedup to find.
            embedding = previous + rng.normal(scale=0.05, size=dim) if i % 10 == 9 else rng.normal(size=dim)
            previous = embedding
            run_clips.append(Clip(f"entry-{i % (per_run // 4 or 1)}", seed=i, states=["a", "b", "c"],
                                  num_frames=16, metrics=metrics, embedding=(embedding / np.linalg.norm(embedding)).tolist()))
        run_id = f"{(START + timedelta(hours=r)).strftime('%Y%m%dT%H%M%SZ')}-{r:06x}"
        directories.append(write_run(root, run_id, run_clips, created_at=START + timedelta(hours=r),
                                     write_videos=False).run_dir)
    return directories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = f"{folder}/out"
        start = time.perf_counter()
        run_dirs = synthetic_runs(root, args.clips, args.runs, args.dim)
        print(f"wrote {args.runs} synthetic runs of {args.clips // args.runs} clips in {time.perf_counter() - start:.1f} s")

        def curate() -> Iterator[tuple[str, object]]:
            table = candidates(run_dirs)
            yield "read candidates", table
            selected, steps = select(table, [parse_condition("coherence >= 0.2"),
                                             parse_condition("dynamics_slope < 0.004")],
                                     dedup_threshold=0.95, keep_best=Ranking("coherence"), max_per_prompt=3)
            yield "select (2 conditions, dedup, cap)", (selected, steps)
            index = index_table(selected, f"{root}/datasets/bench/20261202T000000Z-cccccc/index.parquet", root)
            yield "build index", index

        timings, results = {}, {}
        clock = time.process_time()
        for name, result in curate():
            timings[name], results[name] = time.process_time() - clock, result
            clock = time.process_time()
        pool = pa.default_memory_pool()
        tracemalloc.start()
        for _ in curate():
            pass
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        table, (_, steps), index = results.values()

        print(f"{table.num_rows} candidates, {len(table.column_names)} columns → {index.num_rows} clips; "
              + ", ".join(f"{s.description.split(' (')[0]}: {s.remaining}" for s in steps[1:]))
        for name, seconds in timings.items():
            print(f"  {name:<36} {seconds:6.2f} s CPU")
        print(f"  {'total':<36} {sum(timings.values()):6.2f} s CPU")
        print(f"  peak memory: Python {python_peak / 2**20:.0f} MiB + Arrow pool {pool.max_memory() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
