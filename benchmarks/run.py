"""`python -m benchmarks.run`: throughput and memory of promptnucseg, printed as tables and
written as JSON with the machine they were measured on.

Parts (`--only`, default all): `model` (the model alone on 256-px tiles at batch 1/8/32),
`pipeline` (`segment_slide` on a slide region, in a fresh process), `memory` (the same on a
region and on twice its area: peak RSS must not double), `stitch` (ownership, records and the
exporters alone, at 1x/3x/10x the nucleus count: must grow linearly). `--quick` shrinks every
size for a smoke run. See benchmarks/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    _root = str(Path(__file__).resolve().parents[1])
    sys.path[:] = [_root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    __package__ = "benchmarks"

from .machine import REPO, machine_facts, now_iso, release_free_memory  # noqa: E402

PARTS = ("model", "pipeline", "memory", "stitch")  # the default run
EXTRA_PARTS = ("peers", "engines", "profile", "training")  # slow or needing optional installs: only when asked


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma list of {','.join(PARTS + EXTRA_PARTS)} (default: {','.join(PARTS)}; with --peers alone: peers)")
    p.add_argument("--peers", nargs="?", const="all", help="also run the peers part: ours and other tools' networks on the same images, ratios to ours (optionally a comma list of instanseg,hovernet,cellpose,stardist; a peer not installed is skipped and said so)")
    p.add_argument("--peer-images", type=int, help="peers part: Kumar images (1000x1000 at 0.25 um/px) every peer runs on (default 2; quick: 1, cropped to 512x512)")
    p.add_argument("--peer-venvs", help="peers part: folder of the peers' virtual environments (default benchmarks/.venvs, made by benchmarks/install_peers.sh)")
    p.add_argument("--engines", help="engines part: comma list of models/engines.py ENGINES (default: all; quick: eager,channels-last,bf16)")
    p.add_argument("--engine-tiles", type=int, help="engines part: 256-px tiles timed per round (default 16; quick 2)")
    p.add_argument("--engine-rounds", type=int, help="engines part: interleaved rounds (default 3; quick 1)")
    p.add_argument("--no-validate", action="store_true", help="engines part: skip scoring each engine with `promptnucseg evaluate` on the validation images (quick skips it)")
    p.add_argument("--val-data", help="engines part: dataset folder for the validation PQ (default ../shared/data/kumar/train)")
    p.add_argument("--profile-rois", help="profile part: semicolon list of x,y,w,h regions (default: the 1024x1024 region with the most tissue, then the whole slide; quick: a 256x256 one)")
    p.add_argument("--train-config", default="configs/kumar_light_v2.yaml", help="training part: the experiment config whose networks, data and batch are timed (default: the bundled model's)")
    p.add_argument("--train-steps", type=int, help="training part: steps per variant per round (default 3; quick 1)")
    p.add_argument("--train-rounds", type=int, help="training part: interleaved rounds (default 2; quick 1)")
    p.add_argument("--threads", type=int, help="intra-op threads for the peers and engines parts (default: torch's, the usable cores)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when torch sees one)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a minute or two on CPU")
    p.add_argument("--json", dest="json_out", help="where to write the JSON (default: benchmarks/results/bench-<time>-<device>.json)")
    p.add_argument("--weights", help="model file (default: the bundled model)")
    p.add_argument("--tiles", help="folder of H&E PNGs at 0.25 um/px to cut 256-px tiles from (default: ../shared/data/kumar/train/images; without it, tiles are read from the slide)")
    p.add_argument("--slide", help="slide for pipeline and memory (default: ../shared/data/slides/cmu_small_region.svs, else the sample slide)")
    p.add_argument("--roi", help="x,y,w,h level-0 region for the pipeline part (default: the whole slide less an odd last row; quick: a 128x256 tissue region)")
    p.add_argument("--memory-roi", help="x,y,w,h base region of the memory part; the other has twice its height, or width (default: the slide's top half; quick: 128x128 in tissue)")
    p.add_argument("--batch-sizes", help="model part batch sizes (default 1,8,32; quick 1,8)")
    p.add_argument("--min-tiles", type=int, help="model part: tiles timed per batch size, at least one batch (default 64; quick 1)")
    p.add_argument("--tile-size", type=int, help="pipeline tile size in model px (default 1024; quick 256, so the small regions still make several tiles)")
    p.add_argument("--overlap", type=int, help="pipeline tile overlap in model px (default 128; quick 64)")
    p.add_argument("--batch-size", type=int, default=8, help="pipeline tiles per model call and per part (default 8)")
    p.add_argument("--workers", type=int, default=4, help="pipeline reader threads (default 4)")
    p.add_argument("--stitch-grid", help="stitch part base grid COLSxROWS of 256-px tiles; 3x and 10x multiply the rows (default 30x100: about 66k nuclei at 1x, more than one 65536-row chunk of the zarr and Parquet writers, so their bounded buffers show; quick 4x1)")
    p.add_argument("--stitch-tiles", type=int, help="stitch part: real tiles whose nuclei are replicated (default 8; quick 2)")
    return p


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"error: {what} {text!r} must be positive integers. Fix: e.g. {'1,8,32' if what == '--batch-sizes' else '10x10'}")
    return values


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def show_model(rows: list[dict[str, Any]]) -> None:
    print_table(
        "(a) model alone, 256-px tiles",
        ["batch", "tiles", "nuclei", "seconds", "tiles/s", "nuclei/s", "s/tile", "peak RSS MB", "GPU busy", "CUDA alloc MB"],
        [[r["batch"], r["tiles"], r["nuclei"], r["seconds"], r["tiles_per_second"], r["nuclei_per_second"], r["seconds_per_tile"],
          r["peak_rss_mb"], r["gpu_busy_fraction"], r.get("cuda_max_memory_allocated_mb")] for r in rows],
    )


def _pipeline_row(name: str, r: dict[str, Any]) -> list[Any]:
    return [name, r["roi"], r["tiles"], r["nuclei"], r["tiles_per_second"], r["nuclei_per_second"], r["wall_seconds"], r["process_wall_seconds"],
            r["process_peak_rss_mb"], r["run_peak_rss_mb"], r["run_increment_mb"], r["gpu_busy_fraction"]]


PIPELINE_HEADER = ["run", "roi x,y,w,h", "tiles", "nuclei", "tiles/s", "nuclei/s", "wall s", "process s", "peak RSS MB", "run peak MB", "run adds MB", "GPU busy"]


def show_pipeline(r: dict[str, Any]) -> None:
    print_table(f"(b) full pipeline: {Path(r['slide']).name} on {r['device']}", PIPELINE_HEADER, [_pipeline_row("pipeline", r)])


def show_memory(m: dict[str, Any]) -> None:
    print_table("memory vs slide area (each run in a fresh process)", PIPELINE_HEADER, [_pipeline_row(k, m["runs"][k]) for k in ("area_1x", "area_2x")])
    verdict = "DOUBLES" if m["peak_rss_doubles"] else "does not double"
    print(f"area x{m['area_ratio']}, tiles x{m['tiles_ratio']}, nuclei x{m['nuclei_ratio']}: peak RSS x{m['peak_rss_ratio']}, "
          f"run peak x{m['run_peak_rss_ratio']} ({verdict}); what the run adds over the loaded model x{m['run_increment_ratio']}")


def show_stitch(s: dict[str, Any]) -> None:
    from .stitch_bench import STAGES

    sizes = s["sizes"]
    print_table(
        f"(c) stitch + export alone: nuclei of {s['source_tiles']} real tiles replicated over growing grids; seconds per stage",
        ["size", "grid", "tiles", "nuclei", *STAGES, "total", "peak RSS MB", "RSS growth MB"],
        [[f"{z['multiplier']}x", z["grid"], z["tiles"], z["nuclei"], *(z["seconds"][k] for k in STAGES), z["seconds_total"], z["peak_rss_mb"], z["rss_growth_mb"]] for z in sizes],
    )
    print_table(
        "    microseconds per nucleus",
        ["size", "nuclei", *STAGES, "total"],
        [[f"{z['multiplier']}x", z["nuclei"], *(z["us_per_nucleus"][k] for k in STAGES), z["us_per_nucleus_total"]] for z in sizes],
    )
    g = s["growth"]
    ratios = ", ".join(f"{k} x{v}" for k, v in g["time_ratio"].items())
    print(f"{g['from_to']}: nuclei x{g['nuclei_ratio']}; time {ratios}")
    print(f"RSS growth per size (MB): {g['rss_growth_mb']}; peak RSS per size (MB): {g['peak_rss_mb']}")


def show_peers(r: dict[str, Any]) -> None:
    rows = r["rows"]
    print_table(
        f"peers: the same {r['images']}, each tool at its native um/px and tiling, fresh process each, {r['threads']} threads",
        ["tool", "um/px", "tile", "tiles", "mm2", "seconds", "s/mm2", "mm2/s", "x ours (speed)", "peak RSS MB", "x ours (RSS)", "post-proc timed"],
        [[v["label"], v["mpp"], v["tile"] or "own", v["tiles"], v["tissue_mm2"], v["seconds"], v["seconds_per_mm2"], v["mm2_per_second"], v["speed_vs_ours"],
          v["peak_rss_mb"], v["peak_rss_vs_ours"], "yes" if v["postprocess_timed"] else "no"] for v in rows.values()],
    )
    for name, why in r["skipped"].items():
        print(f"skipped {name}: {why}")
    print(r["note"])


def show_engines(r: dict[str, Any]) -> None:
    print_table(
        f"engines: {r['tiles']} tiles of {r['tile_px']} px x {r['rounds']} interleaved rounds, {r['threads']} threads; validation PQ by `promptnucseg evaluate` on {', '.join(r['validation_images']) or '(not run)'}",
        ["engine", "setup s", "s/tile", "x eager", "nuclei", "val PQ", "PQ - eager", f"within {r['pq_tolerance']}"],
        [[v["engine"], v["setup_seconds"], v["seconds_per_tile"], v["speedup_vs_eager"], v["nuclei"], v.get("validation", {}).get("pq"), v.get("pq_delta"),
          {True: "yes", False: "NO"}.get(v.get("keeps_pq"), "-")] for v in r["rows"].values()],
    )
    for name, why in r["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"fastest {'keeping validation PQ' if r['validated'] else '(PQ not checked)'}: {r['fastest_keeping_pq']}")


def show_profile(r: dict[str, Any]) -> None:
    from .profile_probes import STAGES

    print_table(
        f"pipeline profile: {Path(r['slide']).name}, share of segment_slide's wall time per stage (read, postprocess, stitch run beside the model)",
        ["roi x,y,w,h", "tiles", "nuclei", "wall s", *STAGES, "model busy"],
        [[x["roi"], x["tiles"], x["nuclei"], x["profile"]["wall_seconds"], *(x["profile"]["share_of_wall"][k] for k in STAGES), x["profile"]["model_busy_fraction"]] for x in r["runs"]],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = args.only if args.only is not None else ("" if args.peers else ",".join(PARTS))
    parts = [p.strip() for p in only.split(",") if p.strip()]
    if args.peers and "peers" not in parts:
        parts.append("peers")
    bad = [p for p in parts if p not in PARTS + EXTRA_PARTS]
    if bad or not parts:
        print(f"error: --only {only!r}: unknown part(s) {','.join(bad) or '(none)'}. Fix: choose from {','.join(PARTS + EXTRA_PARTS)}", file=sys.stderr)
        return 2
    quick = args.quick
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes") if args.batch_sizes else ([1, 8] if quick else [1, 8, 32])
    min_tiles = args.min_tiles if args.min_tiles is not None else (1 if quick else 64)
    grid = _ints(args.stitch_grid, "--stitch-grid") if args.stitch_grid else ([4, 1] if quick else [30, 100])
    if len(grid) != 2:
        raise SystemExit(f"error: --stitch-grid {args.stitch_grid!r} must be COLSxROWS. Fix: e.g. 10x10")
    stitch_tiles = args.stitch_tiles or (2 if quick else 8)

    from promptnucseg.models.devices import resolve_device
    from promptnucseg.wsi_pipeline.errors import PipelineInputError
    from promptnucseg.wsi_pipeline.atomic import atomic_write_text

    from . import inputs
    from .pipeline_bench import PipelineOptions, bench_memory, run_child

    try:
        device = str(resolve_device(args.device))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.json_out) if args.json_out else REPO / "benchmarks" / "results" / f"bench-{stamp}-{device.replace(':', '')}{'-quick' if quick else ''}.json"
    result: dict[str, Any] = {
        "benchmark": "promptnucseg", "format_version": 1, "started": now_iso(), "finished": None, "argv": list(sys.argv[1:] if argv is None else argv),
        "quick": quick, "parts_requested": parts, "machine": machine_facts(device), "inputs": {}, "results": {}, "errors": {},
    }
    print(f"promptnucseg benchmark on {result['machine']['device_name']} ({device}), {result['machine']['cpu_usable_cores']} usable cores, "
          f"load {result['machine']['load_average_at_start']}, torch {result['machine']['torch']}")

    def save() -> None:
        atomic_write_text(out, json.dumps(result, indent=1, default=str))

    def attempt(name: str, job: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            value = job()
        except PipelineInputError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            result["errors"][name] = str(err)
            value = None
        except Exception as err:  # one failing part must not hide the others' figures
            traceback.print_exc()
            print(f"error: {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
            result["errors"][name] = f"{type(err).__name__}: {err}"
            value = None
        result.setdefault("part_seconds", {})[name] = round(time.monotonic() - started, 2)
        save()
        return value

    opts = PipelineOptions(device=device, weights=args.weights, tile_size=args.tile_size or (256 if quick else 1024),
                           overlap=args.overlap if args.overlap is not None else (64 if quick else 128),
                           batch_size=args.batch_size, workers=args.workers)

    if "model" in parts or "stitch" in parts:
        def load() -> tuple[Any, list]:
            from promptnucseg.models.interface import load_predictor

            t0 = time.monotonic()
            predictor = load_predictor(args.weights, device=device, batch_size=max(batch_sizes))
            d = predictor.describe()
            result["model"] = {"name": d.get("model"), "weights": d.get("weights"), "weights_sha256": d.get("weights_sha256"), "mpp": predictor.mpp,
                               "device": predictor.device, "load_seconds": round(time.monotonic() - t0, 3)}
            need = max(max(batch_sizes) if "model" in parts else 0, min_tiles if "model" in parts else 0, stitch_tiles if "stitch" in parts else 0)
            tiles, source = inputs.real_tiles(args.tiles, args.slide, need, predictor.mpp)
            result["inputs"]["tiles"] = source
            return predictor, tiles

        loaded = attempt("load", load)
        if loaded is not None:
            predictor, tiles = loaded
            if "model" in parts:
                from .model_bench import bench_model

                rows = attempt("model", lambda: bench_model(predictor, tiles, batch_sizes, min_tiles))
                if rows:
                    result["results"]["model"] = rows
                    show_model(rows)
            if "stitch" in parts:
                from .stitch_bench import bench_stitch, real_nuclei

                def stitch() -> dict[str, Any]:
                    sources = real_nuclei(predictor, tiles[:stitch_tiles])
                    return bench_stitch(sources, grid[0], grid[1], predictor.class_names, predictor.class_colors, predictor.mpp, batch_size=args.batch_size)

                s = attempt("stitch", stitch)
                if s:
                    result["results"]["stitch"] = s
                    show_stitch(s)
            del predictor, tiles, loaded
            release_free_memory()

    if "peers" in parts:
        from .peers import VENVS, bench_peers

        def peers() -> dict[str, Any]:
            import torch

            count = args.peer_images or (1 if quick else 2)
            images, source = inputs.kumar_images(args.tiles, count, crop=512 if quick else None)
            wanted = None if args.peers in (None, "all") else [w.strip() for w in args.peers.split(",") if w.strip()]
            result["inputs"]["peer_images"] = source
            return bench_peers(images, inputs.KUMAR_MPP, source, wanted, args.threads or torch.get_num_threads(), weights=args.weights,
                               venvs=Path(args.peer_venvs) if args.peer_venvs else VENVS)

        pr = attempt("peers", peers)
        if pr:
            result["results"]["peers"] = pr
            show_peers(pr)

    if "engines" in parts:
        from promptnucseg.models.engines import ENGINES

        from .engine_bench import bench_engines

        def engines() -> dict[str, Any]:
            import torch

            names = [e.strip() for e in args.engines.split(",")] if args.engines else (["eager", "channels-last", "bf16"] if quick else list(ENGINES))
            unknown = [e for e in names if e not in ENGINES]
            if unknown:
                raise SystemExit(f"error: --engines {','.join(unknown)}: unknown. Fix: choose from {','.join(ENGINES)}")
            tiles, source = inputs.kumar_tiles(args.tiles, args.engine_tiles or (2 if quick else 16))
            result["inputs"]["engine_tiles"] = source
            data = Path(args.val_data) if args.val_data else inputs.SHARED_DATA / "kumar" / "train"
            return bench_engines(tiles, names, args.engine_rounds or (1 if quick else 3), args.weights, not (quick or args.no_validate), data,
                                 args.threads or torch.get_num_threads(), device)

        er = attempt("engines", engines)
        if er:
            result["results"]["engines"] = er
            show_engines(er)

    if "profile" in parts:
        def profile() -> dict[str, Any]:
            from promptnucseg.wsi_pipeline.slides import parse_roi

            slide = inputs.resolve_slide(args.slide)
            dims = inputs.slide_dimensions(slide)
            if args.profile_rois:
                rois = [parse_roi(r, dims, slide) for r in args.profile_rois.split(";") if r.strip()]
            elif quick:
                rois = [inputs.tissue_region(slide, min(256, dims[0]), min(256, dims[1]))]
            else:
                rois = [inputs.tissue_region(slide, min(1024, dims[0]), min(1024, dims[1])), (0, 0, dims[0], dims[1])]
            popts = PipelineOptions(**{**opts.__dict__, "profile": True})
            runs = []
            for roi in rois:
                r = run_child(slide, roi, popts)
                runs.append({k: r.get(k) for k in ("roi", "tiles", "nuclei", "wall_seconds", "tiles_per_second", "process_peak_rss_mb", "profile", "settings")})
            return {"slide": str(slide), "runs": runs}

        prof = attempt("profile", profile)
        if prof:
            result["results"]["profile"] = prof
            show_profile(prof)

    if "training" in parts:
        from . import train_bench

        def training() -> dict[str, Any]:
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            config = Path(args.train_config)
            return train_bench.bench_training(str(config if config.is_absolute() else REPO / config), args.train_steps or (1 if quick else 3),
                                              args.train_rounds or (1 if quick else 2), device)

        tr = attempt("training", training)
        if tr:
            result["results"]["training"] = tr
            train_bench.show(tr, print_table)

    if "pipeline" in parts or "memory" in parts:
        def regions() -> tuple[Path, tuple, tuple]:
            from promptnucseg.wsi_pipeline.slides import parse_roi

            slide = inputs.resolve_slide(args.slide)
            dims = inputs.slide_dimensions(slide)
            if quick:
                big = inputs.tissue_region(slide, min(128, dims[0]), min(256, dims[1]))
                base = (big[0], big[1], big[2], big[3] // 2)
            else:
                base, big = (0, 0, dims[0], dims[1] // 2), (0, 0, dims[0], 2 * (dims[1] // 2))
            roi = parse_roi(args.roi, dims, slide) if args.roi else big
            memory_base = parse_roi(args.memory_roi, dims, slide) if args.memory_roi else base
            result["inputs"].update({"slide": str(slide), "slide_dimensions": list(dims), "pipeline_roi": inputs.roi_text(roi), "memory_roi": inputs.roi_text(memory_base)})
            return slide, roi, memory_base

        found = attempt("regions", regions)
        if found is not None:
            slide, roi, memory_base = found
            pipe = None
            if "pipeline" in parts:
                pipe = attempt("pipeline", lambda: run_child(slide, roi, opts))
                if pipe:
                    result["results"]["pipeline"] = pipe
                    show_pipeline(pipe)
            if "memory" in parts:
                mem = attempt("memory", lambda: bench_memory(slide, memory_base, opts, reuse=pipe))
                if mem:
                    result["results"]["memory"] = mem
                    show_memory(mem)

    result["finished"] = now_iso()
    save()
    print(f"\nJSON: {out}")
    if result["errors"]:
        print(f"{len(result['errors'])} part(s) failed: {', '.join(result['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
