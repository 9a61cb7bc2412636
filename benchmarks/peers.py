"""Peers in the same run: our model and other nucleus tools' networks on the same real H&E
images, each in a fresh process, so their times and peak RSS can be put side by side as ratios.

Each peer runs under its own interpreter: `benchmarks/.venvs/<venv>/bin/python` when that
virtual environment exists (`benchmarks/install_peers.sh` makes them; they are gitignored and
nothing of them enters promptnucseg's install), else this interpreter if it can import the
peer's package; otherwise the peer is skipped and the table says why. The child is
`benchmarks/peer_child.py` (what runs for each peer, its native µm/px and tiling are there).
Peak RSS is the kernel's `ru_maxrss` of that child (`os.wait4`), so no process counts another's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .machine import REPO

VENVS = REPO / "benchmarks" / ".venvs"


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    venv: str  # folder under benchmarks/.venvs
    module: str  # what must import for the peer to run


PEERS: tuple[Peer, ...] = (
    Peer("instanseg", "InstanSeg (instanseg-torch)", "peers", "instanseg.utils.models.InstanSeg_UNet"),
    Peer("hovernet", "HoVer-Net (TIAToolbox)", "tiatoolbox", "tiatoolbox.models.architecture.hovernet"),
    Peer("cellpose", "Cellpose 3 U-Net", "cellpose3", "cellpose.resnet_torch"),
    Peer("stardist", "StarDist 2D_versatile_he", "stardist", "stardist.models"),
)


def find_interpreter(peer: Peer, venvs: Path) -> tuple[str | None, str]:
    """(python that can import the peer, where it came from) or (None, why not)."""
    candidates = [venvs / peer.venv / "bin" / "python", Path(sys.executable)]
    tried = []
    for py in candidates:
        if not py.exists():
            tried.append(f"no {py}")
            continue
        probe = subprocess.run([str(py), "-c", f"import {peer.module}"], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if probe.returncode == 0:
            return str(py), str(py)
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        tried.append(f"{py} cannot import {peer.module} ({last[:120]})")
    return None, "not installed: " + "; ".join(tried) + f". Fix: bash benchmarks/install_peers.sh {peer.name}"


def run_peer(python: str, peer: str, images_npz: Path, mpp: float, threads: int, max_tiles: int = 0, weights: str | None = None) -> dict[str, Any]:
    """One peer in a fresh process; its figures plus the kernel's peak RSS for it."""
    with tempfile.TemporaryDirectory(prefix=f"pns-peer-{peer}-") as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "child.log"
        cmd = [python, str(REPO / "benchmarks" / "peer_child.py"), "--peer", peer, "--images", str(images_npz), "--mpp", str(mpp),
               "--result", str(result), "--threads", str(threads), "--max-tiles", str(max_tiles)]
        if weights:
            cmd += ["--weights", weights]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        t0 = time.monotonic()
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not result.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-12:]
            raise RuntimeError(f"peer {peer} ({python}) exited {code}:\n" + "\n".join(tail))
        out = json.loads(result.read_text())
        out["process_seconds"] = round(time.monotonic() - t0, 2)
        out["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
        out["python"] = python
        return out


def bench_peers(images: Sequence[np.ndarray], mpp: float, source: str, wanted: Sequence[str] | None, threads: int, max_tiles: int = 0,
                weights: str | None = None, venvs: Path = VENVS) -> dict[str, Any]:
    """Ours and every peer (or those `wanted`) on `images`; ratios of each to ours."""
    peers = [p for p in PEERS if wanted is None or p.name in wanted]
    unknown = set(wanted or ()) - {p.name for p in PEERS}
    if unknown:
        raise SystemExit(f"error: --peers {','.join(sorted(unknown))}: unknown. Fix: choose from {','.join(p.name for p in PEERS)}")
    rows: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pns-peers-") as tmp:
        npz = Path(tmp) / "images.npz"
        np.savez(npz, *images)
        rows["ours"] = {"label": "promptnucseg (ours)", **run_peer(sys.executable, "ours", npz, mpp, threads, max_tiles, weights)}
        for peer in peers:
            python, why = find_interpreter(peer, venvs)
            if python is None:
                skipped[peer.name] = why
                print(f"peer {peer.name}: skipped, {why}", file=sys.stderr)
                continue
            try:
                rows[peer.name] = {"label": peer.label, **run_peer(python, peer.name, npz, mpp, threads, max_tiles)}
            except RuntimeError as err:
                skipped[peer.name] = f"failed: {err}"
                print(f"peer {peer.name}: failed, {err}", file=sys.stderr)
    ours = rows["ours"]
    for r in rows.values():
        r["speed_vs_ours"] = round(r["mm2_per_second"] / ours["mm2_per_second"], 3)
        r["peak_rss_vs_ours"] = round(r["peak_rss_mb"] / ours["peak_rss_mb"], 3)
    return {"images": source, "image_mpp": mpp, "threads": threads, "rows": rows, "skipped": skipped,
            "note": "random weights: network time only for peers (their post-processing depends on trained outputs); ours includes its prompts and mask merging"}
