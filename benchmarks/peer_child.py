"""One peer's network on real tissue, in a process (and usually a virtual environment) of its own.

`python benchmarks/peer_child.py --peer NAME --images IMAGES.npz --mpp 0.25 --result R.json`

Runs under the peer's own interpreter (`benchmarks/.venvs/<venv>/bin/python`, see
`benchmarks/peers.py`), so it imports nothing of promptnucseg except for `--peer ours`: only
numpy, torch (or TensorFlow for StarDist) and the peer's package. Every peer gets the same RGB
images (H&E at `--mpp` µm/px), resampled here, untimed, to the peer's native µm/px, and covered
with the peer's native tile and step, as its own tiled inference would cover them. The weights
are random (none can be fetched here): the network's cost does not depend on them, but its
outputs are noise, so post-processing whose cost depends on what the network found is *not*
timed (``postprocess_timed`` says so per peer). Writes R.json: seconds over the timed tiles,
tiles, tissue mm² covered, the peer's settings.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# name: native µm/px, input tile px, step px (tile less the overlap the peer's tiling keeps),
# batch, what runs; tile None: whole images go in and the peer's own tiling cuts them. Where a peer's tiling pads a tile whose network output is smaller than its
# input (HoVer-Net), the step is the output size.
SPECS: dict[str, dict[str, Any]] = {
    "ours": {"mpp": 0.25, "tile": 1024, "step": 768, "batch": 8, "what": "predictor.predict on 1024-px tiles (prompter + SAM segmentor on 256-px windows, prompts, mask merging): the pipeline's tile, step 768"},
    "instanseg": {"mpp": 0.5, "tile": 256, "step": 224, "batch": 8, "what": "InstanSeg_UNet, brightfield_nuclei layout (layers 32-256, BATCH norm, 2 coords + 2 sigma + 1 seed), 256-px tiles, overlap 32"},
    "hovernet": {"mpp": 0.25, "tile": 256, "step": 164, "batch": 8, "what": "TIAToolbox HoVerNet(mode='fast', num_types=6) (the PanNuke model's architecture): 256-px input, 164-px output"},
    "cellpose": {"mpp": 0.5, "tile": None, "step": None, "batch": 1, "what": "Cellpose 3 U-Net CPnet(nbase 2-32-64-128-256, nout 3, diam_mean 17: the nuclei model) on whole images through cellpose.core.run_net, its own tiling (bsize 224, tile_overlap 0.1, batch 8)"},
    "stardist": {"mpp": 0.5, "tile": 512, "step": 448, "batch": 1, "what": "StarDist2D with the 2D_versatile_he config (U-Net depth 3, 32 filters, 32 rays, grid 2x2), 512-px tiles, overlap 64"},
}


def resample(images: list[np.ndarray], scale: float) -> list[np.ndarray]:
    """Images zoomed by `scale` (<1: smaller), area-averaged; identity at 1."""
    if abs(scale - 1) < 1e-6:
        return images
    from PIL import Image

    out = []
    for im in images:
        h, w = im.shape[:2]
        out.append(np.asarray(Image.fromarray(im).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)))
    return out


def cover(images: list[np.ndarray], tile: int, step: int, clip: bool = False) -> list[np.ndarray]:
    """The tiles a sliding window of `tile` every `step` cuts from each image: padded with white
    at the far edges, as a tiled inference pads its last tiles, or (`clip`, for a model that
    takes any size, as our pipeline's last tiles are) cut short there."""
    tiles = []
    for im in images:
        h, w = im.shape[:2]
        for y in range(0, max(1, math.ceil((h - (tile - step)) / step)) * step, step):
            for x in range(0, max(1, math.ceil((w - (tile - step)) / step)) * step, step):
                crop = im[y : y + tile, x : x + tile]
                if clip:
                    tiles.append(np.ascontiguousarray(crop))
                    continue
                t = np.full((tile, tile, 3), 255, np.uint8)
                t[: crop.shape[0], : crop.shape[1]] = crop
                tiles.append(t)
    return tiles


def batched(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# -- each peer: a function from the list of tiles to a callable that runs one batch ----------


def _torch_runner(net: Any, to_input: Callable[[np.ndarray], Any]) -> Callable[[list[np.ndarray]], Any]:
    import torch

    net.eval()

    def run(batch: list[np.ndarray]) -> Any:
        with torch.inference_mode():
            return net(to_input(np.stack(batch)))

    return run


def _nchw(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0


def build_instanseg() -> Callable[[list[np.ndarray]], Any]:
    from instanseg.utils.model_loader import build_model_from_dict

    net = build_model_from_dict({"model_str": "InstanSeg_UNet", "dim_in": 3, "n_sigma": 2, "dim_coords": 2, "dim_seeds": 1, "layers": (32, 64, 128, 256),
                                 "norm": "BATCH", "dropprob": 0.0, "multihead": False, "cells_and_nuclei": False}, random_seed=0)
    return _torch_runner(net, _nchw)


def build_hovernet() -> Callable[[list[np.ndarray]], Any]:
    import torch
    from tiatoolbox.models.architecture.hovernet import HoVerNet

    net = HoVerNet(num_input_channels=3, num_types=6, mode="fast")
    net.eval()

    def run(batch: list[np.ndarray]) -> Any:
        with torch.inference_mode():  # HoVerNet normalises 0..255 itself (its infer_batch does the same)
            return net(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().contiguous())

    return run


def build_cellpose() -> Callable[[list[np.ndarray]], Any]:
    import torch
    from cellpose import core
    from cellpose.resnet_torch import CPnet

    net = CPnet(nbase=[2, 32, 64, 128, 256], nout=3, sz=3, mkldnn=False, max_pool=True, diam_mean=17.0)
    net.eval()

    def run(batch: list[np.ndarray]) -> Any:
        # the nuclei model's channels: [0, 0] -> grayscale in channel 0, a blank second channel
        gray = [t.mean(axis=2).astype(np.float32) / 255.0 for t in batch]
        with torch.inference_mode():  # one image at a time: run_net tiles it and batches the tiles
            return [core.run_net(net, np.stack([g, np.zeros_like(g)], axis=-1)[None], batch_size=8, augment=False, tile_overlap=0.1, bsize=224) for g in gray]

    return run


def build_stardist() -> Callable[[list[np.ndarray]], Any]:
    from stardist.models import Config2D, StarDist2D

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=3, unet_n_depth=3, unet_n_filter_base=32, net_conv_after_unet=128, use_gpu=False, train_patch_size=(512, 512))
    model = StarDist2D(conf, name=None, basedir=None)

    def run(batch: list[np.ndarray]) -> Any:
        return model.keras_model.predict(np.stack(batch).astype(np.float32) / 255.0, verbose=0)

    return run


def build_ours(weights: str | None, batch: int) -> Callable[[list[np.ndarray]], Any]:
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from promptnucseg.models.interface import load_predictor

    predictor = load_predictor(weights, device="cpu", batch_size=batch)
    return lambda tiles: predictor.predict(list(tiles))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", required=True, choices=sorted(SPECS))
    p.add_argument("--images", required=True, help=".npz of RGB uint8 images (arr_0, arr_1, ...)")
    p.add_argument("--mpp", type=float, required=True, help="µm/px of the images")
    p.add_argument("--result", required=True)
    p.add_argument("--weights", help="ours: model file (default: the bundled model)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the library's default)")
    p.add_argument("--max-tiles", type=int, default=0, help="time at most this many tiles (0: all); the area is scaled to them")
    args = p.parse_args(argv)

    spec = SPECS[args.peer]
    started = time.monotonic()
    if args.threads and args.peer != "stardist":
        import torch

        torch.set_num_threads(args.threads)
    with np.load(args.images) as z:
        images = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    area_mm2 = sum(im.shape[0] * im.shape[1] for im in images) * args.mpp**2 / 1e6
    native = resample(images, args.mpp / spec["mpp"])
    tiles = cover(native, spec["tile"], spec["step"], clip=args.peer == "ours") if spec["tile"] else native  # no tile: the peer tiles each image itself
    n_all = len(tiles)
    if args.max_tiles and n_all > args.max_tiles:
        tiles = tiles[: args.max_tiles]
    build = {"instanseg": build_instanseg, "hovernet": build_hovernet, "cellpose": build_cellpose, "stardist": build_stardist}.get(args.peer)
    run = build() if build is not None else build_ours(args.weights, spec["batch"])
    built = time.monotonic()
    run(tiles[:1])  # warm-up: one-off allocations and kernel choice, untimed
    seconds = 0.0
    for chunk in batched(tiles, spec["batch"]):
        t0 = time.perf_counter()
        run(chunk)
        seconds += time.perf_counter() - t0
    covered = area_mm2 * len(tiles) / n_all  # the share of the images the timed tiles cover
    import resource

    result = {
        "peer": args.peer, **spec, "tiles": len(tiles), "tiles_for_images": n_all, "images": len(images), "image_mpp": args.mpp,
        "tissue_mm2": round(covered, 5), "seconds": round(seconds, 3), "seconds_per_mm2": round(seconds / covered, 2), "mm2_per_second": round(covered / seconds, 5),
        "seconds_per_tile": round(seconds / len(tiles), 4), "build_seconds": round(built - started, 2), "postprocess_timed": args.peer == "ours",
        "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "python": sys.version.split()[0], "library": _version(args.peer),
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


def _version(peer: str) -> dict[str, str]:
    from importlib import metadata

    names = {"ours": ["torch"], "instanseg": ["instanseg-torch", "torch"], "hovernet": ["tiatoolbox", "torch"], "cellpose": ["cellpose", "torch"], "stardist": ["stardist", "tensorflow-cpu", "tensorflow"]}[peer]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
