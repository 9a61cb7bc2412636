"""The fastest CPU engine: every engine of `models/engines.py` on the same real tiles, timed in
interleaved rounds (engine order rotated each round, so a load change on a shared machine falls
on all of them alike), and each scored by `promptnucseg evaluate` on the validation images.

An engine is *kept* when its validation PQ is within `PQ_TOLERANCE` of eager's; the fastest kept
one is the recommendation. Engines whose package is missing are skipped with the reason.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .machine import REPO

PQ_TOLERANCE = 0.005
VAL_CONFIG = REPO / "configs" / "kumar_light_v2.yaml"  # data.val_names: the held-out Kumar images of the validation table


def val_names() -> list[str]:
    import yaml

    return list(yaml.safe_load(VAL_CONFIG.read_text())["data"]["val_names"])


def evaluate(engine: str, data: Path, names: Sequence[str], weights: str | None, threads: int, device: str = "cpu") -> dict[str, Any]:
    """`promptnucseg evaluate` with `--engine` on `names`: the repo's own command, in its own process."""
    import os

    with tempfile.TemporaryDirectory(prefix="pns-eval-") as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, "-m", "promptnucseg", "evaluate", "--data", str(data), "--images", ",".join(names), "--device", device, "--engine", engine, "--json", str(out)]
        if weights:
            cmd += ["--weights", weights]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"evaluate --engine {engine} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        report = json.loads(out.read_text())
    mean = report.get("mean", report)
    return {"pq": mean.get("pq"), "aji": mean.get("aji"), "dice": mean.get("dice"), "seconds": round(time.monotonic() - t0, 1)}


def bench_engines(tiles: Sequence[np.ndarray], engines: Sequence[str], rounds: int, weights: str | None, validate: bool, data: Path | None,
                  threads: int, device: str = "cpu") -> dict[str, Any]:
    import torch

    from promptnucseg.models.engines import EngineUnavailable, apply_engine
    from promptnucseg.models.interface import load_predictor

    torch.set_num_threads(threads)
    ready: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in engines:
        t0 = time.monotonic()
        try:
            predictor = apply_engine(load_predictor(weights, device=device), name)
            predictor.predict([tiles[0]])  # warm-up (compile compiles here)
        except EngineUnavailable as err:
            skipped[name] = str(err)
            continue
        except Exception as err:  # an engine that cannot run this model is a finding, not a crash
            skipped[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            continue
        ready[name] = predictor
        rows[name] = {"engine": name, "setup_seconds": round(time.monotonic() - t0, 2), "seconds": 0.0, "nuclei": 0}
    names = list(ready)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)] if names else []
        for name in order:
            p, row = ready[name], rows[name]
            t0 = time.perf_counter()
            found = [p.predict([t])[0] for t in tiles]  # one tile per call, as the pipeline calls it (returns numpy: device work done)
            row["seconds"] += time.perf_counter() - t0
            row["nuclei"] = sum(len(f) for f in found)  # the same every round
    n = len(tiles) * rounds
    base = rows.get("eager")
    for row in rows.values():
        row["seconds"] = round(row["seconds"], 3)
        row["seconds_per_tile"] = round(row["seconds"] / n, 4)
        row["speedup_vs_eager"] = round(base["seconds"] / row["seconds"], 3) if base else None
    if validate and data is not None:
        wanted = val_names()
        for name, row in rows.items():
            try:
                row["validation"] = evaluate(name, data, wanted, weights, threads, device)
            except RuntimeError as err:
                row["validation"] = {"error": str(err)}
        ref = rows.get("eager", {}).get("validation", {}).get("pq")
        for row in rows.values():
            pq = row["validation"].get("pq")
            row["pq_delta"] = None if ref is None or pq is None else round(pq - ref, 4)
            row["keeps_pq"] = row["pq_delta"] is not None and abs(row["pq_delta"]) <= PQ_TOLERANCE
    kept = [r for r in rows.values() if r.get("keeps_pq", not validate)]
    best = min(kept, key=lambda r: r["seconds"])["engine"] if kept else None
    return {"device": device, "tiles": len(tiles), "tile_px": int(tiles[0].shape[0]), "rounds": rounds, "threads": threads, "rows": rows, "skipped": skipped,
            "validation_images": val_names() if validate else [], "pq_tolerance": PQ_TOLERANCE, "fastest_keeping_pq": best, "validated": bool(validate and data)}
