"""Loading any SigLIP / SigLIP 2 checkpoint (Hub id or local folder) behind one handle.

`AutoModel` picks `SiglipModel` (fixed resolution) or `Siglip2Model` (NaFlex) from the checkpoint's
config; the text and image recipes are read from the checkpoint's own files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import ModelLoadError
from .allocator import keep_freed_memory
from .preprocess import ImagePreprocessor, check_sequence_length
from .openvino_int8 import OPENVINO_INT8, SUPPORTED_ATTENTION, quantize_openvino
from .positions import resize_positions_once_per_grid
from .quantize import INT8, packed_weights, quantize_int8
from .registry import Checkpoint, find_checkpoint, unknown_id_hint
from .text import TextTokenizer

log = logging.getLogger(__name__)


class _DefaultTextConfigNoise(logging.Filter):
    """Drops transformers' warning about its own default SiglipTextConfig (vocabulary 32000, bos/eos ids
    49406/49407), which it builds and checks each time it prints a SigLIP config while loading one: it says
    nothing about the checkpoint being loaded, yet reads as if it did ("may result in unexpected behavior")."""

    DEFAULTS_MESSAGE = "within the vocabulary (between 0 and 31999), got 4940"

    def filter(self, record: logging.LogRecord) -> bool:
        return self.DEFAULTS_MESSAGE not in record.getMessage()


logging.getLogger("transformers.configuration_utils").addFilter(_DefaultTextConfigNoise())

TEST_MODEL_MARKER = "studio_test_model.json"  # written by engine.testmodel: random weights
CHECKPOINT_FILES = ["*.json", "*.safetensors", "tokenizer.model"]
HUB_PROBE_SECONDS = 4.0


def pick_device(device: str | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless one is named."""
    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on cuda, fp32 elsewhere, unless one is named."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if dtype not in names:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16, int8 or int8-openvino "
                                 "(the last two CPU only)")
        return names[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """One TCP connect to the Hub endpoint, bounded in time (DNS included), no retries."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome: list[bool] = []

    def probe():
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def _offline_message(name: str, why: str) -> str:
    return (
        f"Model {name!r} is not available: {why}.{unknown_id_hint(name)} It is not in the local Hugging Face cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it on a machine with network "
        f"(`hf download {name}`) and pass its folder as the model (for example --model /path/to/{name.split('/')[-1]}), "
        "or try the interface with a generated test model (`python -m engine make-test-model DIR`)."
    )


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local folder holding the checkpoint: the path itself, the Hub cache, or a fresh download."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists() or name_or_path.count("/") > 1:
        raise ModelLoadError(f"{name_or_path}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=CHECKPOINT_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as error:  # malformed ids and the like
        raise ModelLoadError(f"{name_or_path!r} is neither a folder nor a valid Hub model id ({error})") from None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelLoadError(_offline_message(name_or_path, "HF_HUB_OFFLINE is set"))
    if not _hub_reachable():
        raise ModelLoadError(_offline_message(name_or_path, "the Hugging Face Hub cannot be reached"))
    try:
        return Path(snapshot_download(name_or_path, allow_patterns=CHECKPOINT_FILES))
    except Exception as error:
        raise ModelLoadError(f"Downloading {name_or_path!r} failed: {str(error).rstrip('.')}."
                             f"{unknown_id_hint(name_or_path)}") from None


@dataclass(eq=False)  # identity equality: modules keep per-model caches keyed by the model itself
class LoadedModel:
    """A SigLIP 2 model with the recipes to feed it. Built by `load_model`."""

    model: torch.nn.Module
    name: str  # what the user asked for: Hub id or path
    directory: Path
    arch: str  # "fixed" or "naflex"
    device: torch.device
    dtype: torch.dtype
    tokenizer: TextTokenizer
    image_preprocessor: ImagePreprocessor
    untrained: bool  # a generated checkpoint (engine.model.testmodel): random weights, outputs mean nothing
    checkpoint: Checkpoint | None
    # "int8": encoders dynamically quantized by torch (engine.model.quantize); "int8-openvino": compiled by
    # OpenVINO, statically quantized (engine.model.openvino_int8); CPU only
    quantization: str | None = None
    compiled: bool = False  # image encodes run through torch.compile (load_model(compile=True))

    def __post_init__(self) -> None:
        # dynamic NaFlex grids from the start; fixed sizes recompile once, for the batch size, if it changes
        self._compiled_image_features = torch.compile(
            self.model.get_image_features, dynamic=True if self.arch == "naflex" else None) if self.compiled else None

    def image_features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """(n, dim) pooled, unnormalised image embeddings for `ImagePreprocessor` model inputs."""
        return (self._compiled_image_features or self.model.get_image_features)(**inputs).pooler_output

    @property
    def precision(self) -> str:
        """What the embeddings were computed in: "fp32", "bf16", "fp16", "int8" or "int8-openvino" (recorded
        by indexes)."""
        if self.quantization:
            return self.quantization
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_model.head.out_features)

    @property
    def patch_size(self) -> int:
        return self.image_preprocessor.patch_size

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> float:
        return float(self.model.logit_bias.detach().float())

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) + packed_weights(self.model)[0]

    @property
    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) + packed_weights(self.model)[1]

    @property
    def image_setting(self) -> tuple[int, ...]:
        """What an image encode depends on besides the weights: (height, width) fixed, (max_patches,) NaFlex."""
        if self.arch == "fixed":
            return tuple(self.image_preprocessor.image_size)
        return (self.image_preprocessor.max_num_patches,)

    def set_max_patches(self, max_num_patches: int) -> None:
        """NaFlex sequence length for later image encodes (trained: 128, 256, 576, 784, 1024)."""
        self.image_preprocessor = self.image_preprocessor.with_max_patches(check_sequence_length(max_num_patches))


def load_model(
    name_or_path: str,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_num_patches: int | None = None,
    lowercase: str = "ascii",
    attn_implementation: str = "sdpa",
    compile: bool = False,
    calibration_images: list | None = None,
) -> LoadedModel:
    """Load a SigLIP 2 checkpoint by Hub id or local folder (safetensors only, no remote code).

    `dtype`: "int8" is torch's dynamic int8 on the CPU; "int8-openvino" compiles the encoders with OpenVINO,
    int8 calibrated on the example photos (or `calibration_images`, PIL images) — faster on CPUs with VNNI; its
    first load of a checkpoint calibrates (about 40 s for B/16 on 2 cores), later ones read the kept encoders.

    `compile`: run image encodes through torch.compile — a minute or more of compiling on the first batch
    (and once more if the batch size changes); for bulk encoding with fixed-resolution models on a GPU."""
    if max_num_patches is not None:  # before any loading: a wrong value fails at once
        max_num_patches = check_sequence_length(max_num_patches)
    directory = resolve_checkpoint(str(name_or_path))
    config_path = directory / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"{directory}: no config.json, so not a Hugging Face checkpoint folder")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in ("siglip", "siglip2"):
        raise ModelLoadError(f"{name_or_path}: model_type {model_type!r} is not a SigLIP checkpoint")
    if not any(directory.glob("*.safetensors")):
        raise ModelLoadError(f"{name_or_path}: no .safetensors weights (pickled weights are never loaded)")

    from transformers import AutoModel

    quantization = dtype.lower() if isinstance(dtype, str) and dtype.lower() in (INT8, OPENVINO_INT8) else None
    int8 = quantization is not None
    # int8 is a CPU path (its kernels are CPU-only), so "auto" means cpu for it, even beside a GPU
    torch_device = pick_device("cpu" if int8 and device in (None, "auto") else device)
    if int8 and torch_device.type != "cpu":
        raise ModelLoadError(f"dtype {quantization} runs on the CPU only (its quantized kernels have no "
                             f"{torch_device.type} version); load with device cpu, or use bf16 or fp16 on "
                             f"{torch_device.type}.")
    if quantization == OPENVINO_INT8 and compile:
        raise ModelLoadError("dtype int8-openvino compiles the encoders with OpenVINO: it takes neither compile=True "
                             "nor torch.compile; load without --compile.")
    if quantization == OPENVINO_INT8 and attn_implementation not in SUPPORTED_ATTENTION:
        raise ModelLoadError(f"dtype int8-openvino takes attn_implementation {' or '.join(SUPPORTED_ATTENTION)}, "
                             f"not {attn_implementation!r}.")
    torch_dtype = torch.float32 if int8 else pick_dtype(torch_device, dtype)
    try:
        model = AutoModel.from_pretrained(
            str(directory), dtype=torch_dtype, attn_implementation=attn_implementation,
            use_safetensors=True, trust_remote_code=False,
        )
    except Exception as error:
        raise ModelLoadError(f"{name_or_path}: the weights could not be loaded ({error})") from None
    model.to(torch_device).eval()
    resize_positions_once_per_grid(model)
    if torch_device.type == "cpu":
        keep_freed_memory()
    if quantization == INT8:
        quantize_int8(model)

    arch = "naflex" if model_type == "siglip2" else "fixed"
    vision = model.config.vision_config
    preprocessor = ImagePreprocessor.from_checkpoint(directory, arch, vision.patch_size, getattr(vision, "image_size", 224))
    if max_num_patches is not None:
        preprocessor = preprocessor.with_max_patches(max_num_patches)
    loaded = LoadedModel(
        model=model, name=str(name_or_path), directory=directory, arch=arch, device=torch_device,
        dtype=torch_dtype, tokenizer=TextTokenizer.from_checkpoint(directory, lowercase=lowercase),
        image_preprocessor=preprocessor, untrained=(directory / TEST_MODEL_MARKER).exists(),
        checkpoint=find_checkpoint(str(name_or_path)), quantization=quantization, compiled=compile,
    )
    if quantization == OPENVINO_INT8:  # calibrated by running the loaded fp32 model, hence after building it
        quantize_openvino(loaded, calibration_images)
    log.info("loaded %s (%s, %s %s, untrained=%s)", loaded.name, arch, torch_device.type, loaded.precision,
             loaded.untrained)
    return loaded
