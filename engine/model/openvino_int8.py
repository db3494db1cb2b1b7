"""The OpenVINO int8 CPU path (`dtype="int8-openvino"`): both towers' transformer encoders compiled by
OpenVINO with int8 weights and int8 activations, quantized statically by NNCF.

Unlike torch's dynamic int8 (engine.model.quantize), which measures each batch's activations as it runs,
the activation scales here are fixed once, from calibration data run through the model at load time: the
project's example photos (with mirrored and cropped variants) and its multilingual labels and captions. That
is what lets OpenVINO keep whole blocks in int8 on CPUs with int8 dot-product instructions (AVX-512 VNNI,
AVX-VNNI, AMX), and also why it needs its own check on a real checkpoint, whose activations have outliers
that generated weights do not (`python bench/encode.py --model DIR_OR_HUB_ID --arch naflex`).

What stays in torch and fp32, as in the torch int8 path: the patch embedding and position grids, the
pooling head, the text head and the final LayerNorms. Views that need the encoder's own layers (layer
attention) are not available on this path: OpenVINO compiles them into one graph. The layers OpenVINO keeps in
floating point run in the CPU's default inference precision: bf16 on CPUs with AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ModelLoadError
from .quantize import TOWERS, encoder_towers

OPENVINO_INT8 = "int8-openvino"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
CALIBRATION_PHOTOS = ASSETS / "examples"
CALIBRATION_LABELS = ASSETS / "labels"
CALIBRATION_PROMPT = "a photo of {}."
MASKED = -1e9  # additive attention mask for padding keys (finite: no NaN for fully padded rows)
CALIBRATION_PATCHES = 256  # NaFlex: calibrated at one length whatever the load's, so the app and the CLI agree
CACHE_LIMIT_BYTES = 4 * 2**30  # past this, the least recently used kept encoders are removed (B/16: ≈ 170 MB)
SUPPORTED_ATTENTION = ("sdpa", "eager")  # the mask forms key_mask understands
log = logging.getLogger(__name__)
# `loaded` arguments are engine.model.loading.LoadedModel, not imported: loading imports this module


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
        from transformers.modeling_outputs import BaseModelOutput

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
    """The multilingual labels ("lang: a, b, c" lines) in a prompt, and the captions (other lines) as they are."""
    texts = []
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            language, colon, labels = line.partition(":")
            if colon and len(language.strip()) <= 3:
                texts += [CALIBRATION_PROMPT.format(label.strip()) for label in labels.split(",") if label.strip()]
            elif line.strip():
                texts.append(line.strip())
    return texts or [CALIBRATION_PROMPT.format("cat")]


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


def int8_sums_saturate() -> bool:
    """Whether OpenVINO's int8 matmuls on this CPU add pairs of u8 × s8 products in int16, which saturates
    unless the weights keep to 7 bits: x86 without VNNI (AVX2 alone, or AVX-512 without VNNI). With AVX-512
    VNNI, AVX-VNNI or AMX the sums are int32 (NNCF's OverflowFix names SSE, AVX2 and AVX-512 as affected)."""
    try:
        capabilities = torch.cpu.get_capabilities()
    except Exception:  # noqa: BLE001 - unknown CPU: assume the worst, 7-bit weights are still close to exact
        return True
    vnni = any(capabilities.get(name) for name in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return capabilities.get("architecture", "x86_64").startswith(("x86", "i386", "i686")) and not vnni


def _quantization_settings() -> dict:
    """NNCF's settings. SmoothQuant is off: on generated weights it moved the embeddings of photos unlike the
    calibration set to cosine 0.966 of fp32 (0.9997 without it); bias correction is off (0.9997 either way,
    a fifth more calibration time). Where int8 sums saturate every layer's weights keep to 7 bits (NNCF's
    overflow fix; its default fixes the first layer only): on an AVX2 CPU the B/16 image embeddings fell to
    cosine 0.89 of fp32 without it, 0.9995 with it."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    return dict(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.PERFORMANCE,
                advanced_parameters=AdvancedQuantizationParameters(
                    overflow_fix=nncf.OverflowFix.ENABLE if int8_sums_saturate() else nncf.OverflowFix.FIRST_LAYER,
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1),
                    disable_bias_correction=True))


def _cache_key(loaded, prepared: list, ids: np.ndarray) -> str:
    """Changes with the weights and the checkpoint's configs, the calibration inputs (pixels, sequence length,
    tokens), the quantization settings and the versions of what traces and quantizes."""
    import nncf
    import openvino as ov
    import transformers

    digest = hashlib.sha256(" ".join([ov.__version__, nncf.__version__, torch.__version__, transformers.__version__,
                                      repr(_quantization_settings())]).encode())
    for path in sorted(loaded.directory.glob("*.safetensors")) + sorted(loaded.directory.glob("*.json")):
        stat = path.stat()
        digest.update(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}".encode())
    for image in prepared:
        digest.update(np.ascontiguousarray(image.array).tobytes())
    digest.update(ids.tobytes())
    return digest.hexdigest()[:24]


def _quantized_graph(encoder: torch.nn.Module, feeds: list[list[np.ndarray]]):
    """The encoder converted to an OpenVINO graph and quantized to int8 on `feeds`."""
    import nncf
    import openvino as ov

    # tracing warns of Python branches on shapes (the graph's shapes are dynamic) and that torch.jit.trace,
    # which OpenVINO's converter calls, is deprecated: filters for these alone (see ignore_quantization_notices)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(transformers|engine)\.")
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is (deprecated|not supported)",
                            category=DeprecationWarning)
    width = feeds[0][0].shape[-1]
    with torch.no_grad():
        graph = ov.convert_model(_Traced(encoder).eval(), example_input=tuple(torch.from_numpy(f) for f in feeds[0]),
                                 input=[ov.PartialShape([-1, -1, width]), ov.PartialShape([-1, 1, 1, -1])])
    return nncf.quantize(graph, nncf.Dataset(feeds), subset_size=len(feeds), **_quantization_settings())


def _keep(graphs: dict, folder: Path) -> None:
    """Save the graphs into `folder` whole or not at all; a cache that cannot be written costs the next load
    the calibration, nothing else."""
    import openvino as ov

    scratch = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder.parent))
        for name, graph in graphs.items():
            ov.save_model(graph, scratch / f"{name}.xml", compress_to_fp16=False)
        scratch.rename(folder)
    except (OSError, RuntimeError) as error:  # OpenVINO reports a failed write as RuntimeError
        if not folder.exists():  # (else another process kept the same encoders first)
            log.warning("could not keep the int8-openvino encoders in %s: %s", folder, error)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _evict_past_limit(in_use: Path) -> None:
    """Remove the least recently used kept encoders past CACHE_LIMIT_BYTES (never `in_use`). Recency is the
    folders' mtime: set when one is written, and when one is read (`_kept_encoders`)."""
    if not in_use.exists():  # (the cache could not be written)
        return
    try:
        kept = [p for p in in_use.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
        used = 0
        for entry in sorted(kept, key=lambda p: p.stat().st_mtime, reverse=True):
            size = sum(f.stat().st_size for f in entry.iterdir())
            if entry != in_use and used + size > CACHE_LIMIT_BYTES:
                log.info("removing int8-openvino encoders kept in %s (cache past %d bytes)", entry, CACHE_LIMIT_BYTES)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                used += size
    except OSError as error:  # another process evicting at the same time, a read-only cache: not the load's concern
        log.warning("could not tidy the int8-openvino cache in %s: %s", in_use.parent, error)


def _kept_encoders(core, folder: Path) -> dict | None:
    """The encoders an earlier load kept in `folder`, compiled; None when none are kept or they cannot be read
    or compiled (the folder is removed: calibrated again, not fatal)."""
    if not (folder / "text.xml").exists():
        return None
    try:
        os.utime(folder)  # used now: another process tidying the cache leaves it alone from here on
        return _compiled(core, {name: core.read_model(folder / f"{name}.xml") for name in TOWERS})
    except Exception as error:  # noqa: BLE001 - a damaged cache is calibrated again
        log.warning("the int8-openvino encoders kept in %s could not be read (%s); calibrating again", folder, error)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _compiled(core, graphs: dict) -> dict:
    # OpenVINO has its own thread pool: held to torch's thread budget (set per Ray encoder, for one)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    return {name: core.compile_model(graphs[name], "CPU", config) for name in graphs}


def quantize_openvino(loaded, images: list | None = None, texts: list[str] | None = None) -> None:
    """Replace both encoders of `loaded` (a LoadedModel, fp32 on the CPU) by OpenVINO int8 ones calibrated on
    `images` (PIL images; default `calibration_photos()`) and `texts` (default `calibration_texts()`), in place.
    The quantized graphs are kept in `cache_root()`: the next load of the same weights and calibration skips
    the calibration."""
    if not openvino_available():
        raise ModelLoadError("dtype int8-openvino needs OpenVINO and NNCF: pip install -r requirements-openvino.txt "
                             "(or use dtype int8, torch's own int8 path).")
    import nncf
    import openvino as ov

    if int8_sums_saturate():
        log.warning("int8-openvino on an x86 CPU without VNNI: 7-bit weights, and slower than dtype int8 on such a "
                    "CPU (measured on AVX2 EPYCs: 0.90-1.19x plain fp32 against int8's 1.73-2.14x)")
    # NNCF's own set_log_level also lowers every handler on its logger, which a host may share (pytest's do)
    logging.getLogger(nncf.__name__).setLevel(logging.ERROR)
    preprocessor = loaded.image_preprocessor
    if loaded.arch == "naflex":
        preprocessor = preprocessor.with_max_patches(CALIBRATION_PATCHES)
    prepared = [preprocessor(image) for image in (images if images is not None else calibration_photos())]
    ids = loaded.tokenizer(texts if texts is not None else calibration_texts()).input_ids
    core = ov.Core()
    try:
        folder = cache_root() / _cache_key(loaded, prepared, ids)
        compiled = _kept_encoders(core, folder)
        if compiled is None:
            graphs = _calibrated_graphs(loaded, preprocessor, prepared, ids)
            _keep(graphs, folder)
            compiled = _compiled(core, graphs)
        _evict_past_limit(folder)
    except Exception as error:  # OpenVINO's and NNCF's own errors: say what to do instead
        log.exception("int8-openvino failed for %s", loaded.name)
        raise ModelLoadError(f"{loaded.name}: OpenVINO could not quantize or compile the encoders ({error}); "
                             "load it with dtype int8 instead.") from None
    for name, tower in encoder_towers(loaded.model).items():
        tower.encoder = OpenVinoEncoder(compiled[name], _weights_of(tower.encoder))


@torch.inference_mode()
def _calibrated_graphs(loaded, preprocessor, prepared: list, ids: np.ndarray) -> dict:
    """Each tower's encoder quantized on the inputs it receives for the calibration images (prepared by
    `preprocessor`) and texts."""
    log.info("calibrating int8-openvino on %d images and %d texts", len(prepared), len(ids))
    model = loaded.model

    def images():
        for image in prepared:
            model.get_image_features(**preprocessor.collate([image]).model_inputs(loaded.device, loaded.dtype))

    def texts():
        for start in range(0, len(ids), 8):
            model.get_text_features(input_ids=torch.from_numpy(np.ascontiguousarray(ids[start:start + 8])))

    runs = {"vision": images, "text": texts}
    return {name: _quantized_graph(tower.encoder, _captured_inputs(tower.encoder, runs[name]))
            for name, tower in encoder_towers(loaded.model).items()}
