"""Inference engines for the two networks: the same weights run by eager torch or a faster runtime.

`apply_engine(predictor, name)` swaps how the heavy parts run and nothing else (prompts, windows,
merging stay the predictor's):

| engine | prompter | segmentor image encoder | segmentor decoder (prompts -> masks) |
|---|---|---|---|
| `eager` | torch | torch | torch |
| `channels-last` | torch, NHWC weights and inputs | same | torch |
| `bf16` | torch, CPU autocast bfloat16 | same | same |
| `channels-last-bf16` | both of the above | same | bf16 |
| `compile` | `torch.compile` | `torch.compile` | torch |
| `onnxruntime` | ONNX Runtime (optional: `pip install promptnucseg[onnx]`) | same | torch |
| `openvino` | OpenVINO (optional: `pip install promptnucseg[openvino]`) | same | torch |

The decoder runs once per window and prompt batch with a varying number of prompts: small calls
that a runtime's per-call cost would eat, so the exported engines leave it to torch. Exported
graphs take any batch; the prompter's is traced at its 256-px window (a whole-tile prompter,
`prompter_on_windows: false`, runs eagerly). `benchmarks/engine_bench.py` times them and
scores each on the validation images; benchmarks/README.md has the table and the choice.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

# no torch at import: the CLI reads ENGINES for its --engine choices before any model loads
ENGINES = ("eager", "channels-last", "bf16", "channels-last-bf16", "compile", "onnxruntime", "openvino")
PROMPTER_SIZE = 256  # the prompter's windows (prompter_on_windows): the size its graph is exported at
OPTIONAL = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}  # engine: (module, pip extra)


class EngineUnavailable(RuntimeError):
    """The engine needs a package that is not installed."""


def apply_engine(predictor: Any, name: str = "eager", cache_dir: str | Path | None = None) -> Any:
    """`predictor` with its networks run by engine `name` (in place; returned for chaining)."""
    import torch

    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not one of {', '.join(ENGINES)}")
    if name in OPTIONAL:
        module, extra = OPTIONAL[name]
        try:
            __import__(module)
        except ImportError as err:
            raise EngineUnavailable(f"--engine {name} needs {module}, which is not installed. Fix: pip install 'promptnucseg[{extra}]', or use --engine eager") from err
    if name not in ("eager", "compile") and predictor.torch_device.type != "cpu":
        raise ValueError(f"--engine {name} is a CPU engine; on {predictor.device} use eager or compile (CUDA runs with autocast already)")
    prompter, encoder, segmentor = predictor.prompter, predictor.segmentor.image_encoder, predictor.segmentor
    if name in ("channels-last", "channels-last-bf16"):
        for m in (prompter, encoder):
            m.to(memory_format=torch.channels_last)
            _wrap_forward(m, lambda f: lambda x, *a, **k: f(x.contiguous(memory_format=torch.channels_last), *a, **k))
    if name in ("bf16", "channels-last-bf16"):
        for m in (prompter, encoder):
            _wrap_forward(m, _autocast_bf16)
        segmentor.decode = _autocast_bf16(segmentor.decode)
    if name == "compile":
        for m in (prompter, encoder):
            m.forward = torch.compile(m.forward, dynamic=True)
    elif name in OPTIONAL:
        with tempfile.TemporaryDirectory(prefix="pns-engine-") as tmp:  # the runtimes hold the graphs once loaded
            folder = Path(cache_dir or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            _export_prompter(prompter, folder / "prompter.onnx")
            fine = _export_encoder(encoder, segmentor.crop_size, folder / "encoder.onnx")
            run_p = _runtime(name, folder / "prompter.onnx")
            run_e = _runtime(name, folder / "encoder.onnx")
        # the graph is traced at the window size (sizes become constants in it); any other size runs eagerly
        _wrap_forward(prompter, lambda f: lambda x: _prompter_output(run_p(x), x, prompter.config.anchor_step) if tuple(x.shape[-2:]) == (PROMPTER_SIZE, PROMPTER_SIZE) else f(x))
        _wrap_forward(encoder, lambda f: lambda x: _encoder_output(run_e(x), fine))
    predictor.engine = name
    return predictor


def _wrap_forward(module: Any, make: Callable[[Callable], Callable]) -> None:
    module.forward = make(module.forward)


def _autocast_bf16(f: Callable) -> Callable:
    import torch

    def run(*a: Any, **k: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _float(f(*a, **k))

    return run


def _float(out: Any) -> Any:
    """bf16 outputs back to float32, so what follows the network is unchanged."""
    import torch

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_float(o) for o in out)
    if hasattr(out, "__dataclass_fields__"):
        return type(out)(**{k: _float(getattr(out, k)) for k in out.__dataclass_fields__})
    return out


def _export(module: Any, example: Any, path: Path, outputs: list[str]) -> None:
    import torch

    axes = {0: "batch"}
    out_axes = {n: {0: "batch"} for n in outputs}
    with torch.no_grad():
        torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=outputs, dynamic_axes={"x": axes, **out_axes},
                          opset_version=17, dynamo=False)


def _export_prompter(prompter: Any, path: Path) -> None:
    """The prompter as a graph of tuples (ONNX has no dataclasses), any batch, at the window size."""
    import torch
    from torch import nn

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prompter = prompter

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            out = self.prompter(x)
            return out.points, out.logits, out.mask_logits

    _export(Graph(), torch.zeros(2, 3, PROMPTER_SIZE, PROMPTER_SIZE), path, ["points", "logits", "mask_logits"])


def _export_encoder(encoder: Any, size: int, path: Path) -> int:
    """The image encoder as a graph of (main, *fine) for any batch; returns how many fine maps."""
    import torch
    from torch import nn

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.encoder(x)
            return (out,) if isinstance(out, torch.Tensor) else (out.main, *out.fine)

    graph = Graph()
    with torch.no_grad():
        n_out = len(graph(torch.zeros(1, 3, size, size)))
    _export(graph, torch.zeros(2, 3, size, size), path, ["main", *(f"fine{i}" for i in range(n_out - 1))])
    return n_out - 1


def _runtime(name: str, path: Path) -> Callable[[Any], list[np.ndarray]]:
    import torch

    threads = torch.get_num_threads()
    if name == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"x": x.detach().float().contiguous().numpy()})
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: Any) -> list[np.ndarray]:
        res = request.infer({0: x.detach().float().contiguous().numpy()})
        return [np.array(res[o]) for o in compiled.outputs]

    return run


def _prompter_output(out: list[np.ndarray], x: Any, anchor_step: int) -> Any:
    import torch

    from .prompter.network import PrompterOutput, anchor_grid

    points, logits, mask = (torch.from_numpy(np.asarray(o)) for o in out)
    return PrompterOutput(points=points, logits=logits, mask_logits=mask, anchors=anchor_grid(x.shape[-2], x.shape[-1], anchor_step))


def _encoder_output(out: list[np.ndarray], fine: int) -> Any:
    import torch

    from .segmentor.high_res import ImageEmbedding

    tensors = [torch.from_numpy(np.asarray(o)) for o in out]
    return tensors[0] if not fine else ImageEmbedding(tensors[0], tuple(tensors[1:]))
