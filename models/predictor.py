"""The predictor: an RGB tile in, its nuclei out (prompter -> SAM segmentor -> merge).

Tiles of any size work. Prompter and segmentor both look at the tile through 256-px
windows every 192 px, starting at the tile's corner; the last one reaches past the edge
and is padded with white. The prompter keeps the prompts in each window's share of the
overlaps (point NMS joins the shares), so a nucleus' prompt and mask depend only on the
windows around it: a tile that starts on that grid gives its inner nuclei exactly as one
whole-slide pass would. (The release runs the prompter on the whole image at once:
`prompter_on_windows: false`.) A prompt is decoded
in every window that holds it; masks within 7 px of an inner window edge are dropped,
each prompt keeps its best-scoring mask, box NMS removes double prompts, and masks are
painted in ascending score so a higher score wins overlaps (the release's merge rule).
All of a window's prompts are decoded in one call against its image tokens, once, and each
mask is upsampled only inside its box (`segmentor/window_decode.py`; `boxed_masks=False` is
the reference: `Segmentor.decode`, whole windows).
Given points (`GivenPrompts`: a person's clicks) replace the prompter's, or join them; they
go through the same segmentor, negatives and merge. Windows that a tile's `TileTissue` marks as
glass are run by neither network (counted in `windows`); a person's point there still gets a
window centred on it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torchvision.ops import nms

from .duplicate_prompts import close_prompts, duplicate_prompts, touching_pairs
from .bundled import DEFAULT_WEIGHTS as BUNDLED_WEIGHTS  # noqa: F401  (the name callers know; models/bundled.py owns it)
from .config import ModelConfig, to_dict
from .facts import DEFAULT_WINDOW_BATCH, ModelFacts, Palette
from .plausibility import ranges_for
from .tiles import GivenPrompts, TileNuclei, TileTissue, WindowCounts, span_shares, span_starts
from .prompter import Prompter, select_prompts
from .prompter.postprocess import Prompts, candidate_prompts, concat_prompts, nms_prompts
from .segmentor import Segmentor, assemble_prompts, knn_negatives
from .segmentor.window_decode import MaskCrop, boxed_upsample, full_crops, low_res_masks


@dataclass
class _Candidate:
    prompt: int
    score: float
    crop: MaskCrop  # the window's logits inside the mask's box (window px)
    origin: tuple[int, int]  # window (x0, y0) in tile pixels


class PromptNucSegPredictor:
    """Implements `models.interface.NucleusPredictor` for a prompter + segmentor pair."""

    def __init__(
        self, prompter: Prompter, segmentor: Segmentor, config: ModelConfig, device: str | torch.device = "cpu",
        source: dict[str, Any] | None = None, batch_size: int = DEFAULT_WINDOW_BATCH, boxed_masks: bool = True,
    ) -> None:
        self.config = config
        self.torch_device = torch.device(device)
        self.prompter = prompter.to(self.torch_device).eval()
        self.segmentor = segmentor.to(self.torch_device).eval()
        self.mpp = float(config.mpp)
        self.class_names = tuple(config.class_names)
        self.class_colors = tuple(tuple(int(v) for v in c) for c in config.class_colors)
        self.device = str(self.torch_device)
        self.batch_size = batch_size  # windows per forward pass (whole tiles for the release's whole-tile prompter)
        self.source = dict(source or {})
        self.boxed_masks = boxed_masks  # False: the reference decode (image tokens per prompt, whole-window masks)
        self.windows = WindowCounts()
        if config.inference.window != segmentor.crop_size:  # the config's window is the one the windows are laid with
            raise ValueError(
                f"the model config's inference.window {config.inference.window} is not its segmentor's crop size {segmentor.crop_size}. "
                f"Fix: set inference.window: {segmentor.crop_size} (the segmentor sees windows of its crop size)"
            )

    @property
    def window_grid(self) -> tuple[int, int]:
        """(window, step) of the sliding windows over a tile, in model pixels."""
        window = self.config.inference.window
        return window, window - self.config.inference.window_overlap

    def facts(self) -> ModelFacts:
        icfg = self.config.inference
        window, step = self.window_grid
        return ModelFacts(
            mpp=self.mpp, palette=Palette(self.class_names, self.class_colors), window=window, window_step=step,
            seamless_windows=icfg.prompter_on_windows and not icfg.last_window_flush,
            ranges=ranges_for(), description=self.describe(),
        )

    def describe(self) -> dict[str, Any]:
        # the window batch only when not the default, so the reports of default runs keep their bytes
        batch = {"window_batch": self.batch_size} if self.batch_size != DEFAULT_WINDOW_BATCH else {}
        return {
            "model": self.config.name, "mpp": self.mpp, "class_names": list(self.class_names), "device": self.device, **batch, **self.source,
            "config": to_dict(self.config),
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.torch_device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(self, tiles: Sequence[np.ndarray], prompts: Sequence[GivenPrompts | None] | None = None,
                tissue: Sequence[TileTissue | None] | None = None) -> list[TileNuclei]:
        for t in tiles:
            check_tile(t)
        given = list(prompts) if prompts is not None else [None] * len(tiles)
        where = list(tissue) if tissue is not None else [None] * len(tiles)
        if len(given) != len(tiles) or len(where) != len(tiles):
            raise ValueError(f"{len(given)} prompt sets and {len(where)} tissue maps for {len(tiles)} tiles")
        size = self.segmentor.crop_size
        step = size - self.config.inference.window_overlap
        for t, m in zip(tiles, where):
            n = len(self._window_starts(t.shape[0], size, step)) * len(self._window_starts(t.shape[1], size, step))
            run = n if m is None else len(self._windows(t.shape[:2], m))
            self.windows.run += run
            self.windows.skipped += n - run
        with self._autocast():
            need = [i for i, g in enumerate(given) if g is None or g.mode == "add"]  # tiles the prompter must see
            found = dict(zip(need, self._prompts([tiles[i] for i in need], [where[i] for i in need]))) if need else {}
            merged = [with_given(found.get(i), g, self.prompter.config.nms_distance) for i, g in enumerate(given)]
            return [self._segment(tile, p, n_given, m) for tile, (p, n_given), m in zip(tiles, merged, where)]

    def _windows(self, shape: tuple[int, int], tissue: TileTissue | None) -> list[tuple[int, int]]:
        """The segmentor's window origins (x0, y0) on a tile of `shape`, those with tissue only."""
        size = self.segmentor.crop_size
        step = size - self.config.inference.window_overlap
        h, w = shape
        windows = [(x0, y0) for y0 in self._window_starts(h, size, step) for x0 in self._window_starts(w, size, step)]
        return windows if tissue is None else [(x, y) for x, y in windows if tissue.any_in(x, y, x + size, y + size)]

    # -- prompter ------------------------------------------------------------------------
    def _prompts(self, tiles: Sequence[np.ndarray], tissue: Sequence[TileTissue | None] | None = None) -> list[Prompts]:
        tissue = [None] * len(tiles) if tissue is None else tissue
        cfg = self.prompter.config
        if not self.config.inference.prompter_on_windows:
            return self._whole_tile_prompts(tiles)  # the segmentor's windows still skip glass
        size, step = self.window_grid
        r = cfg.nms_distance
        views: list[tuple[int, int, int, tuple[float, float, float, float]]] = []  # tile, x0, y0, box it keeps
        for i, t in enumerate(tiles):
            h, w = t.shape[:2]
            xs, ys = span_starts(w, size, step), span_starts(h, size, step)
            bx, by = span_shares(xs, size), span_shares(ys, size)
            # a window keeps the prompts in its share of the overlaps, widened by the NMS radius
            # so a nucleus on a share boundary that both windows place a pixel off is not lost
            views += [
                (i, x0, y0, (bx[c] - r, by[k] - r, bx[c + 1] + r, by[k + 1] + r))
                for k, y0 in enumerate(ys) for c, x0 in enumerate(xs)
                if tissue[i] is None or tissue[i].any_in(x0, y0, x0 + size, y0 + size)
            ]
        parts: list[list[Prompts]] = [[] for _ in tiles]
        for chunk in _chunks(views, self.batch_size):
            crops = np.stack([_window(tiles[i], x0, y0, size) for i, x0, y0, _ in chunk])
            res = self.prompter(self.prompter.normalize(torch.from_numpy(crops).permute(0, 3, 1, 2).to(self.torch_device)))
            for j, (i, x0, y0, (ox0, oy0, ox1, oy1)) in enumerate(chunk):
                h, w = tiles[i].shape[:2]
                mask = res.mask_logits[j, 0].float() if cfg.mask_filter else None
                found = candidate_prompts(res.points[j].float(), res.logits[j].float(), mask, (min(size, h - y0), min(size, w - x0)), self.prompter.release)
                px, py = found.points[:, 0] + x0, found.points[:, 1] + y0
                own = (px >= ox0) & (px < ox1) & (py >= oy0) & (py < oy1)
                parts[i].append(Prompts(np.stack([px, py], 1)[own], found.classes[own], found.scores[own]))
        return [nms_prompts(concat_prompts(p), cfg.nms_distance) for p in parts]

    def _whole_tile_prompts(self, tiles: Sequence[np.ndarray]) -> list[Prompts]:
        """The release's way: the prompter sees each tile at once (batched by tile shape)."""
        out: list[Prompts | None] = [None] * len(tiles)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tiles):
            by_shape.setdefault(t.shape[:2], []).append(i)
        cfg = self.prompter.config
        for (h, w), idx in by_shape.items():
            for chunk in _chunks(idx, self.batch_size):
                x = torch.from_numpy(np.stack([tiles[i] for i in chunk])).permute(0, 3, 1, 2).to(self.torch_device)
                res = self.prompter(self.prompter.normalize(x))
                for j, i in enumerate(chunk):
                    mask = res.mask_logits[j, 0, :h, :w].float() if cfg.mask_filter else None
                    out[i] = select_prompts(res.points[j].float(), res.logits[j].float(), mask, (h, w), cfg.nms_distance, self.prompter.release)
        return out  # type: ignore[return-value]

    # -- segmentor -----------------------------------------------------------------------
    def _segment(
        self, tile: np.ndarray, prompts: Prompts, n_given: int = 0, tissue: TileTissue | None = None
    ) -> TileNuclei:
        if len(prompts.points) == 0:
            return TileNuclei()
        icfg = self.config.inference
        size = self.segmentor.crop_size
        h, w = tile.shape[:2]
        k = self.config.segmentor.num_negatives  # the run settings, not those the network was built with
        negatives = knn_negatives(prompts.points, k)
        coords_all, labels_all = assemble_prompts(prompts.points, prompts.points, negatives)
        no_negatives = np.where(np.arange(labels_all.shape[1]) > 0, -1, labels_all).astype(labels_all.dtype)  # negatives masked out
        label_sets = [labels_all, no_negatives] if icfg.decode_without_negatives and k > 0 else [labels_all]
        windows = self._windows((h, w), tissue)
        best: dict[int, _Candidate] = {}
        fallback: dict[int, _Candidate] = {}
        alone: dict[int, _Candidate] = {}  # masks without negatives of prompts that may be duplicates
        dropped: set[int] = set()
        n_mine = len(prompts.points) - n_given  # a person's points (the last n_given) are never duplicates
        dedupe = icfg.duplicate_iou > 0 and k > 0
        close = set(close_prompts(prompts.points[:n_mine], icfg.duplicate_distance).tolist()) if dedupe else set()
        views = DIHEDRAL if icfg.tta else DIHEDRAL[:1]

        def keep(pool: dict[int, _Candidate], cand: _Candidate) -> None:
            if cand.prompt not in pool or cand.score > pool[cand.prompt].score:
                pool[cand.prompt] = cand

        for chunk in _chunks(windows, self.batch_size):
            emb = self._embed(tile, chunk, views)

            def decode(
                j: int, part: list[int], labels_np: np.ndarray, origin: tuple[int, int]
            ) -> tuple[list[MaskCrop], list[float]]:
                return self._decode(emb, len(chunk), j, coords_all[part] - np.array(origin, np.float32), labels_np[part], views)

            for j, (x0, y0) in enumerate(chunk):
                inside = np.flatnonzero(
                    (prompts.points[:, 0] >= x0) & (prompts.points[:, 0] < x0 + size) & (prompts.points[:, 1] >= y0) & (prompts.points[:, 1] < y0 + size)
                )
                inner = (x0 > 0, y0 > 0, x0 + size < w, y0 + size < h)  # left, top, right, bottom edges inside the tile
                cut: dict[int, np.ndarray] = {}  # masks with negatives of the close prompts, this window
                for part, labels_np in ((c, ls) for c in _chunks(list(inside), icfg.prompt_batch) for ls in label_sets):
                    crops, iou = decode(j, part, labels_np, (x0, y0))
                    for n, p in enumerate(part):
                        touching = _touches_inner_edge(crops[n], size, icfg.mask_threshold, inner, icfg.edge_margin)
                        keep(fallback if touching else best, _Candidate(int(p), iou[n], crops[n], (x0, y0)))
                        if p in close:
                            cut[int(p)] = crops[n].paste(size, icfg.mask_threshold)
                # only prompts whose masks touch a close neighbour's can be one nucleus cut in two
                suspects = touching_pairs(cut, prompts.points, (x0, y0), icfg.duplicate_distance) if len(cut) > 1 else []
                if len(suspects) > 1:  # decoded alone, two prompts of one nucleus give one mask holding both points
                    crops, iou = decode(j, suspects, no_negatives, (x0, y0))
                    local = prompts.points[suspects] - np.array([x0, y0], np.float32)
                    masks = np.stack([c.paste(size, icfg.mask_threshold) for c in crops])
                    found = duplicate_prompts(
                        local, np.asarray(iou, np.float32), masks, icfg.duplicate_distance, icfg.duplicate_iou
                    )
                    dropped.update(suspects[i] for i in found)
                    for n in set(found.values()):
                        if not _touches_inner_edge(crops[n], size, icfg.mask_threshold, inner, icfg.edge_margin):
                            keep(alone, _Candidate(suspects[n], iou[n], crops[n], (x0, y0)))
        if icfg.edge_fallback:
            for p, cand in fallback.items():  # a nucleus cut by every window it is in: keep its best try
                best.setdefault(p, cand)
        for p in dropped:
            best.pop(p, None)
        for p, cand in alone.items():  # a kept duplicate's mask without the negative that cut it
            if p not in dropped:
                best[p] = cand
        misses = [p for p in range(n_mine, len(prompts.points)) if p not in best or not _holds(best[p], prompts.points[p], icfg.mask_threshold)]
        if misses:  # a person's point must come back inside its nucleus: try a window centred on it
            best.update(self._centred(tile, prompts, misses, coords_all, labels_all, views))
        return self._merge(best, prompts, (h, w), n_given)

    def _embed(self, tile: np.ndarray, origins: Sequence[tuple[int, int]], views: Sequence[tuple[int, bool]]) -> torch.Tensor:
        """Embeddings of the windows at `origins`, each in every view, view-major (see `_decode`)."""
        size = self.segmentor.crop_size
        crops = torch.from_numpy(np.stack([_window(tile, x0, y0, size) for x0, y0 in origins])).permute(0, 3, 1, 2).to(self.torch_device)
        return self.segmentor.embed(torch.cat([dihedral(crops, *v) for v in views]))

    def _decode(self, emb: torch.Tensor, n_windows: int, j: int, coords: np.ndarray, labels: np.ndarray, views: Sequence[tuple[int, bool]]) -> tuple[list[MaskCrop], list[float]]:
        """Mask logits (one crop per prompt, window px) and IoU of prompts in window j of a
        view-major embedding batch, averaged over the views (test-time augmentation when there
        are several; the boxed path averages before upsampling, which bilinear upsampling commutes with)."""
        size = self.segmentor.crop_size
        lab = torch.from_numpy(labels).to(self.torch_device)
        decode = low_res_masks if self.boxed_masks else type(self.segmentor).decode
        logits = iou = 0.0
        for v, view in enumerate(views):
            e = emb[v * n_windows + j : v * n_windows + j + 1]
            points = torch.from_numpy(dihedral_points(coords, size, *view)).to(self.torch_device)
            lg, sc = decode(self.segmentor, e, points, lab)
            logits, iou = logits + undo_dihedral(lg.float(), *view), iou + sc.float()
        if len(views) > 1:
            logits, iou = logits / len(views), iou / len(views)
        iou_list = iou.cpu().tolist()
        if self.boxed_masks:
            return boxed_upsample(logits, size, self.config.inference.mask_threshold), iou_list
        return full_crops(logits), iou_list

    def _centred(self, tile: np.ndarray, prompts: Prompts, which: list[int], coords_all: np.ndarray, labels_all: np.ndarray, views: Sequence[tuple[int, bool]]) -> dict[int, _Candidate]:
        """Masks of prompts decoded in a window centred on each (kept inside the tile), for the
        ones whose grid window gave no mask holding them; only masks that hold the point count."""
        size = self.segmentor.crop_size
        h, w = tile.shape[:2]
        out: dict[int, _Candidate] = {}
        for chunk in _chunks(which, self.batch_size):
            origins = [
                (int(np.clip(round(float(prompts.points[p, 0])) - size // 2, 0, max(w - size, 0))), int(np.clip(round(float(prompts.points[p, 1])) - size // 2, 0, max(h - size, 0))))
                for p in chunk
            ]
            emb = self._embed(tile, origins, views)
            for j, (p, origin) in enumerate(zip(chunk, origins)):
                crops, iou = self._decode(emb, len(chunk), j, coords_all[[p]] - np.array(origin, np.float32), labels_all[[p]], views)
                cand = _Candidate(p, iou[0], crops[0], origin)
                if _holds(cand, prompts.points[p], self.config.inference.mask_threshold):
                    out[p] = cand
        return out

    def _window_starts(self, length: int, size: int, step: int) -> list[int]:
        starts = span_starts(length, size, step)
        if self.config.inference.last_window_flush and length > size:  # the release's layout
            starts = sorted({*starts[:-1], length - size})
        return starts

    def _merge(self, cands: dict[int, _Candidate], prompts: Prompts, shape: tuple[int, int], n_given: int = 0) -> TileNuclei:
        """Masks of the prompts; box NMS removes the prompter's double prompts (the last
        `n_given` prompts, a person's, are one nucleus each and never removed)."""
        icfg = self.config.inference
        h, w = shape
        order = sorted(cands)
        masks, boxes, scores = [], [], []
        keep_prompt = []
        for p in order:
            c = cands[p]
            x0, y0 = c.origin[0] + c.crop.x, c.origin[1] + c.crop.y
            m = c.crop.above(icfg.mask_threshold)[: max(h - y0, 0), : max(w - x0, 0)]  # drop the padding of small tiles
            m = one_region(m, prompts.points[p] - np.array([x0, y0], np.float32))
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            masks.append(m[by0:by1, bx0:bx1])
            boxes.append((bx0 + x0, by0 + y0, bx1 + x0, by1 + y0))
            scores.append(c.score)
            keep_prompt.append(p)
        if not masks:
            return TileNuclei()
        given = np.asarray(keep_prompt) >= len(prompts.points) - n_given
        auto = np.flatnonzero(~given)
        kept = auto[nms(torch.tensor(boxes, dtype=torch.float32)[auto], torch.tensor(scores, dtype=torch.float32)[auto], icfg.box_nms_iou).numpy()]
        kept = np.sort(np.concatenate([kept, np.flatnonzero(given)]))
        raw = TileNuclei(
            points=prompts.points[[keep_prompt[i] for i in kept]],
            classes=prompts.classes[[keep_prompt[i] for i in kept]],
            class_scores=prompts.scores[[keep_prompt[i] for i in kept]],
            mask_scores=np.asarray(scores, np.float32)[kept],
            boxes=np.asarray(boxes, np.int32)[kept],
            masks=[masks[i] for i in kept],
        )
        return exclusive_masks(raw, shape, icfg.max_covered_fraction, given[kept])


def with_given(found: Prompts | None, given: GivenPrompts | None, radius: float) -> tuple[Prompts, int]:
    """The prompts a tile is segmented with (a person's last) and how many are a person's.

    Given points carry class score 1 (a person said so). In "add" mode a prompter point within
    `radius` (its own NMS radius) of a given point yields to it: the person corrects the model.
    """
    if given is None:
        return found, 0  # type: ignore[return-value]
    mine = Prompts(given.points.copy(), given.classes.copy(), np.ones(len(given.points), np.float32))
    if given.mode == "only" or found is None:
        return mine, len(mine.points)
    if len(found.points) and len(mine.points):
        near, _ = cKDTree(mine.points).query(found.points, k=1, distance_upper_bound=radius)
        keep = ~np.isfinite(near)
        found = Prompts(found.points[keep], found.classes[keep], found.scores[keep])
    return concat_prompts([found, mine]), len(mine.points)


def exclusive_masks(nuclei: TileNuclei, shape: tuple[int, int], max_covered: float = 1.0, given: np.ndarray | None = None) -> TileNuclei:
    """Give each pixel to the highest-scoring mask that claims it; drop nuclei left empty,
    or left with less than `1 - max_covered` of their own mask.

    This is the release's painting rule, applied to the per-nucleus masks so that what a
    caller gets (polygons, label maps) agrees with the painted label map. `given` marks a
    person's nuclei: they win over the prompter's, and a pixel two of them claim goes to the
    nearer point, so each keeps the pixels around its own point.
    """
    inst, _ = nuclei.label_maps(shape)
    if given is not None and given.any():
        _paint_nearest(inst, nuclei, np.flatnonzero(given))
    keep, masks, boxes = [], [], []
    for i in range(len(nuclei)):
        x0, y0, x1, y1 = (int(v) for v in nuclei.boxes[i])
        own = inst[y0:y1, x0:x1] == i + 1
        ys, xs = np.nonzero(own)
        if len(ys) == 0 or len(ys) < (1.0 - max_covered) * np.count_nonzero(nuclei.masks[i]):
            continue
        keep.append(i)
        masks.append(own[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
        boxes.append((x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1))
    out = nuclei.select(np.asarray(keep, np.int64))
    out.masks = masks
    out.boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
    return out


#: the eight flips and quarter turns of a square window, as (quarter turns, mirrored first)
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(images: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """(..., S, S) mirrored left-right if `flip`, then turned `turns` quarter turns (torch.rot90)."""
    out = images.flip(-1) if flip else images
    return torch.rot90(out, turns, dims=(-2, -1)) if turns else out


def undo_dihedral(images: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    out = torch.rot90(images, -turns, dims=(-2, -1)) if turns else images
    return out.flip(-1) if flip else out


def dihedral_points(xy: np.ndarray, size: int, turns: int, flip: bool) -> np.ndarray:
    """Pixel coordinates (..., 2) moved as `dihedral` moves the pixels of a `size` window."""
    x, y = xy[..., 0], xy[..., 1]
    if flip:
        x = size - 1 - x
    for _ in range(turns):  # rot90: the pixel at (row y, col x) goes to (row size-1-x, col y)
        x, y = y, size - 1 - x
    return np.stack([x, y], -1).astype(np.float32)


def _paint_nearest(inst: np.ndarray, nuclei: TileNuclei, which: np.ndarray) -> None:
    """Paint nuclei `which` over `inst`, each contested pixel to the nearest of their points."""
    h, w = inst.shape
    best = np.full(inst.shape, np.inf, np.float32)
    for i in which:
        x0, y0, x1, y1 = (int(v) for v in nuclei.boxes[i])
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        m = nuclei.masks[i][cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        yy, xx = np.mgrid[cy0:cy1, cx0:cx1]
        d = (xx - nuclei.points[i, 0]) ** 2 + (yy - nuclei.points[i, 1]) ** 2
        take = m & (d < best[cy0:cy1, cx0:cx1])
        best[cy0:cy1, cx0:cx1][take] = d[take]
        inst[cy0:cy1, cx0:cx1][take] = i + 1


def one_region(mask: np.ndarray, point: np.ndarray) -> np.ndarray:
    """A nucleus is one connected region: the mask's component under its prompt (else its
    largest), so the mask, its polygon and the painted label map are the same shape."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    x, y = int(round(float(point[0]))), int(round(float(point[1])))
    at = labels[y, x] if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] else 0
    if at == 0:
        at = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return labels == at


def _holds(cand: _Candidate, point: np.ndarray, threshold: float) -> bool:
    """Whether a candidate's mask covers the pixel of `point` (tile px)."""
    x, y = int(round(float(point[0]))) - cand.origin[0], int(round(float(point[1]))) - cand.origin[1]
    return cand.crop.at(x, y) > threshold


def _touches_inner_edge(
    crop: MaskCrop, size: int, threshold: float, inner: tuple[bool, bool, bool, bool], margin: int
) -> bool:
    """Whether a mask has pixels within `margin` px of an inner edge of its `size` window."""
    left, top, right, bottom = inner
    h, w = crop.logits.shape
    if not h or not w:
        return False
    x0, y0 = crop.x, crop.y
    near = (left and x0 < margin) or (top and y0 < margin)
    if not (near or (right and x0 + w > size - margin) or (bottom and y0 + h > size - margin)):
        return False  # the box keeps clear of every inner edge
    m = crop.above(threshold)
    return bool(
        (left and m[:, : max(margin - x0, 0)].any())
        or (right and m[:, max(size - margin - x0, 0) :].any())
        or (top and m[: max(margin - y0, 0), :].any())
        or (bottom and m[max(size - margin - y0, 0) :, :].any())
    )


def _window(tile: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    crop = tile[y0 : y0 + size, x0 : x0 + size]
    if crop.shape[:2] == (size, size):
        return crop
    out = np.full((size, size, 3), 255, np.uint8)  # past the tile's edge: white (glass), as in training
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def _chunks(items: Sequence, n: int) -> list:
    return [items[i : i + n] for i in range(0, len(items), max(n, 1))]


def check_tile(tile: np.ndarray) -> None:
    if not isinstance(tile, np.ndarray) or tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
        desc = f"{tile.dtype} array of shape {tile.shape}" if isinstance(tile, np.ndarray) else type(tile).__name__
        raise ValueError(f"tiles must be uint8 RGB arrays (H, W, 3), got {desc}; convert grayscale/RGBA to RGB first")
    if tile.shape[0] < 1 or tile.shape[1] < 1:
        raise ValueError(f"empty tile of shape {tile.shape}")
