"""The OpenVINO int8 CPU path (`dtype="int8-openvino"`): both towers' transformer encoders compiled by
OpenVINO with int8 weights and int8 activations, quantized statically by NNCF.

Unlike torch's dynamic int8 (engine.model.quantize), which measures each batch's activations as it runs,
the activation scales here are fixed once, from calibration data run through the model at load time: the
project's example photos (with mirrored and cropped variants) and its multilingual labels in a prompt. That
is what lets OpenVINO keep whole blocks in int8 on CPUs with int8 dot-product instructions (AVX-512 VNNI,
AVX-VNNI, AMX), and also why it needs its own check on a real checkpoint, whose activations have outliers
that generated weights do not (`python bench/encode.py --model DIR_OR_HUB_ID --arch naflex`).

What stays in torch and fp32, as in the torch int8 path: the patch embedding and position grids, the
pooling head, the text head and the final LayerNorms. Views that need the encoder's own layers (layer
attention) are not available on this path: OpenVINO compiles them into one graph.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutput

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from .loading import LoadedModel

OPENVINO_INT8 = "int8-openvino"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
CALIBRATION_PHOTOS = ASSETS / "examples"
CALIBRATION_LABELS = ASSETS / "labels"
CALIBRATION_PROMPT = "a photo of {}."
MASKED = -1e9  # additive attention mask for padding keys (finite: no NaN for fully padded rows)
CACHE_VERSION = "1"  # bump when what is cached (graph inputs, quantization settings) changes
log = logging.getLogger(__name__)


def openvino_available() -> bool:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def key_mask(attention_mask: torch.Tensor | None, embeds: torch.Tensor) -> np.ndarray:
    """(batch, 1, 1, tokens) float32 additive mask for the keys, from whatever mask transformers passes its
    encoder: None, a (batch, 1, queries, keys) bool or additive mask (a bidirectional mask: every row alike)."""
    batch, tokens = embeds.shape[:2]
    if attention_mask is None:
        return np.zeros((batch, 1, 1, tokens), dtype=np.float32)
    rows = attention_mask[:, :, :1, :] if attention_mask.dim() == 4 else attention_mask[:, None, None, :]
    if rows.dtype == torch.bool:
        additive = torch.where(rows, 0.0, MASKED)
    else:
        additive = rows.float().clamp(min=MASKED)
    return np.ascontiguousarray(additive.expand(batch, 1, 1, tokens).float().cpu().numpy())


class _Traced(torch.nn.Module):
    """A tower's encoder with plain tensor inputs, for conversion."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


class OpenVinoEncoder(torch.nn.Module):
    """Stands in for a tower's `encoder`: (batch, tokens, width) embeddings and transformers' mask in,
    `BaseModelOutput` out, computed by a compiled OpenVINO model (one infer request per call: thread-safe)."""

    def __init__(self, compiled, packed_weights: tuple[int, int]):
        super().__init__()
        self.compiled = compiled
        self.packed_weights = packed_weights  # (values, bytes) of the weights OpenVINO holds

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        request = self.compiled.create_infer_request()
        embeds = np.ascontiguousarray(inputs_embeds.detach().float().cpu().numpy())
        request.infer([embeds, key_mask(attention_mask, inputs_embeds)])
        hidden = torch.from_numpy(request.get_output_tensor(0).data.copy())
        return BaseModelOutput(last_hidden_state=hidden.to(inputs_embeds.dtype))


def _captured_inputs(encoder: torch.nn.Module, run: Callable[[], object]) -> list[list[np.ndarray]]:
    """The [embeddings, key mask] each call of `encoder` receives while `run()` runs the model."""
    feeds = []

    def capture(module, args, kwargs):
        embeds = kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else args[0]
        feeds.append([embeds.detach().float().cpu().numpy().copy(), key_mask(kwargs.get("attention_mask"), embeds)])

    handle = encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return feeds


def calibration_photos(folder: Path = CALIBRATION_PHOTOS) -> list:
    """The example photos, each also mirrored and cropped to its centre and to a corner (PIL images)."""
    from PIL import ImageOps

    from .images import open_image

    photos = [open_image(p) for p in sorted(folder.glob("*.jpg"))]
    if not photos:
        raise ModelLoadError(f"int8-openvino needs calibration photos; none found in {folder}. Pass "
                             "calibration_images to load_model, or use dtype int8.")
    variants = []
    for photo in photos:
        w, h = photo.size
        variants += [photo, ImageOps.mirror(photo), photo.crop((w // 5, h // 5, w - w // 5, h - h // 5)),
                     photo.crop((0, 0, w // 2, h // 2))]
    return variants


def calibration_texts(folder: Path = CALIBRATION_LABELS) -> list[str]:
    """The multilingual labels (one "lang: a, b, c" line each), in a prompt."""
    labels = []
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            labels += [label.strip() for label in line.partition(":")[2].split(",") if label.strip()]
    return [CALIBRATION_PROMPT.format(label) for label in labels] or [CALIBRATION_PROMPT.format("cat")]


def _weights_of(encoder: torch.nn.Module) -> tuple[int, int]:
    """(values, bytes) once quantized: Linear weights in int8, everything else (biases, norms) in fp32."""
    values = size = 0
    for name, parameter in encoder.named_parameters():
        int8 = name.endswith(".weight") and parameter.dim() == 2
        values += parameter.numel()
        size += parameter.numel() * (1 if int8 else 4)
    return values, size


def cache_root() -> Path:
    """Where quantized encoders are kept between loads: $STUDIO_CACHE, else ~/.cache/siglip2-studio."""
    return Path(os.environ.get("STUDIO_CACHE") or Path.home() / ".cache" / "siglip2-studio") / "openvino"


def _cache_key(loaded: "LoadedModel", prepared: list, ids: np.ndarray) -> str:
    """Changes with the weights, the calibration inputs (pixels, sequence length, tokens) and the versions."""
    import nncf
    import openvino as ov

    digest = hashlib.sha256(f"{CACHE_VERSION} {ov.__version__} {nncf.__version__}".encode())
    for path in sorted(loaded.directory.glob("*.safetensors")) + [loaded.directory / "config.json"]:
        stat = path.stat()
        digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}".encode())
    for image in prepared:
        digest.update(np.ascontiguousarray(image.array).tobytes())
    digest.update(ids.tobytes())
    return digest.hexdigest()[:24]


def _quantized_graph(encoder: torch.nn.Module, feeds: list[list[np.ndarray]]):
    """The encoder converted to an OpenVINO graph and quantized to int8 on `feeds`.

    SmoothQuant is off: on generated weights it moved the embeddings of photos unlike the calibration set to
    cosine 0.966 of fp32 (0.9997 without it); bias correction is off (0.9997 either way, 20 % of the time)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    width = feeds[0][0].shape[-1]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracing warnings about Python branches on shapes: shapes are dynamic
        graph = ov.convert_model(_Traced(encoder).eval(), example_input=tuple(torch.from_numpy(f) for f in feeds[0]),
                                 input=[ov.PartialShape([-1, -1, width]), ov.PartialShape([-1, 1, 1, -1])])
    settings = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1), disable_bias_correction=True)
    return nncf.quantize(graph, nncf.Dataset(feeds), subset_size=len(feeds), model_type=nncf.ModelType.TRANSFORMER,
                         preset=nncf.QuantizationPreset.PERFORMANCE, advanced_parameters=settings)


def _save_atomically(graphs: dict, folder: Path) -> None:
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder.parent))
    try:
        for name, graph in graphs.items():
            ov.save_model(graph, scratch / f"{name}.xml", compress_to_fp16=False)
        scratch.rename(folder)
    except OSError as error:  # a full or read-only disk costs the next load the calibration, nothing else
        if not folder.exists():  # (else another process kept the same encoders first)
            log.warning("could not keep the int8-openvino encoders in %s: %s", folder, error)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def quantize_openvino(loaded: "LoadedModel", images: list | None = None, texts: list[str] | None = None) -> None:
    """Replace both encoders of `loaded` (fp32, CPU) by OpenVINO int8 ones calibrated on `images` (PIL images;
    default `calibration_photos()`) and `texts` (default `calibration_texts()`), in place. The quantized graphs
    are kept in `cache_root()`, so the next load of the same weights and calibration skips the calibration."""
    if not openvino_available():
        raise ModelLoadError("dtype int8-openvino needs OpenVINO and NNCF: pip install openvino nncf "
                             "(or use dtype int8, torch's own int8 path).")
    import nncf
    import openvino as ov

    from .encode import embed_pixel_batch, embed_token_batch

    # NNCF's own set_log_level also lowers every handler on its logger, which a host may share (pytest's do)
    logging.getLogger(nncf.__name__).setLevel(logging.ERROR)
    model = loaded.model
    towers = {"vision": model.vision_model, "text": model.text_model}
    prepared = [loaded.image_preprocessor(image) for image in (images if images is not None else calibration_photos())]
    ids = loaded.tokenizer(texts if texts is not None else calibration_texts()).input_ids
    folder = cache_root() / _cache_key(loaded, prepared, ids)
    core = ov.Core()
    try:
        graphs = _kept_graphs(core, folder, towers)
        if graphs is None:
            log.info("calibrating int8-openvino on %d images and %d texts", len(prepared), len(ids))
            runs = {"vision": lambda: [embed_pixel_batch(loaded, [p]) for p in prepared],
                    "text": lambda: [embed_token_batch(loaded, ids[i:i + 8]) for i in range(0, len(ids), 8)]}
            graphs = {name: _quantized_graph(tower.encoder, _captured_inputs(tower.encoder, runs[name]))
                      for name, tower in towers.items()}
            _save_atomically(graphs, folder)
        compiled = {name: core.compile_model(graphs[name], "CPU", {"PERFORMANCE_HINT": "LATENCY"}) for name in towers}
    except Exception as error:  # OpenVINO's and NNCF's own errors: say what to do instead
        log.exception("int8-openvino failed for %s", loaded.name)
        raise ModelLoadError(f"{loaded.name}: OpenVINO could not quantize or compile the encoders ({error}); "
                             "load it with dtype int8 instead.") from None
    for name, tower in towers.items():
        tower.encoder = OpenVinoEncoder(compiled[name], _weights_of(tower.encoder))


def _kept_graphs(core, folder: Path, towers: dict) -> dict | None:
    """The quantized graphs kept in `folder` by an earlier load, or None (none kept, or unreadable)."""
    if not (folder / "text.xml").exists():
        return None
    try:
        return {name: core.read_model(folder / f"{name}.xml") for name in towers}
    except Exception as error:  # noqa: BLE001 - a damaged cache is calibrated again, not fatal
        log.warning("the int8-openvino encoders kept in %s could not be read (%s); calibrating again", folder, error)
        shutil.rmtree(folder, ignore_errors=True)
        return None
