"""Generate SigLIP 2 checkpoints with random weights, in the exact Hugging Face layout.

For tests and for trying the interface offline. Their outputs are meaningless: every checkpoint written
here carries a marker file that makes the engine and the UI label it as untrained.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .loading import TEST_MODEL_MARKER

# Multilingual seed text for the small BPE vocabulary (the real models use Gemma's 256k vocabulary).
_CORPUS = [
    "a photo of a cat", "a photo of a dog", "a red car parked on the street at night", "a bowl of fruit",
    "une photo d'un chat sur le canapé", "ein foto von einem hund im park", "una foto de un perro en la playa",
    "фотография кошки на диване", "一只猫坐在沙发上", "犬の写真、公園で", "고양이 사진", "صورة قطة على الأريكة",
    "תמונה של חתול", "बिल्ली की तस्वीर", "γάτα στον καναπέ", "ภาพแมวบนโซฟา", "kedi fotoğrafı", "zdjęcie kota",
]


@dataclass(frozen=True)
class TestModelSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int | None  # None: the generated tokenizer's size


SIZES = {
    "tiny": TestModelSize(hidden=64, layers=2, heads=2, intermediate=128, vocab_size=None),
    "small": TestModelSize(hidden=192, layers=4, heads=3, intermediate=768, vocab_size=None),
    # The real B/16 configuration: 768 wide, 12 layers, 256k vocabulary (about 375M parameters).
    "base": TestModelSize(hidden=768, layers=12, heads=12, intermediate=3072, vocab_size=256_000),
    # L/16 and So400m (both towers as released; for the GPU benchmarks: 880M and 1.1B parameters)
    "large": TestModelSize(hidden=1024, layers=24, heads=16, intermediate=4096, vocab_size=256_000),
    "so400m": TestModelSize(hidden=1152, layers=27, heads=16, intermediate=4304, vocab_size=256_000),
}


def build_tokenizer(vocab_size: int = 1024):
    """A Gemma-style BPE (byte fallback, '▁' for spaces, <pad>=0 <eos>=1 <bos>=2 <unk>=3), deterministic."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    return tokenizer


def _model_config(arch: str, size: TestModelSize, vocab_size: int, image_size: int, patch_size: int, max_patches: int):
    from transformers import Siglip2Config, SiglipConfig

    text = dict(vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.intermediate,
                num_hidden_layers=size.layers, num_attention_heads=size.heads, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=2, eos_token_id=1)
    vision = dict(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                  num_attention_heads=size.heads, patch_size=patch_size)
    if arch == "fixed":
        return SiglipConfig(text_config=text, vision_config={**vision, "image_size": image_size})
    return Siglip2Config(text_config=text, vision_config={**vision, "num_patches": max_patches})


@dataclass(frozen=True)
class Recipe:
    """What a checkpoint's files say about feeding and scoring it."""

    patch_size: int
    image_size: int  # fixed-resolution models
    max_patches: int  # NaFlex models
    resample: int  # PIL: 2 bilinear, 3 bicubic
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    learned_score: bool  # random learned t and b instead of the initial log 10 and -10


RECIPES = {
    # the released checkpoints' values (and the paper's initial t and b)
    "reference": Recipe(16, 224, 256, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), learned_score=False),
    # a value unlike the reference everywhere the engine reads one, so that none can be hard-coded unseen
    "odd": Recipe(14, 210, 196, 3, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                  learned_score=True),
}


def _processor_config(arch: str, image_size: int, patch_size: int, max_patches: int,
                      recipe: Recipe = RECIPES["reference"]) -> dict:
    """Flat preprocessor_config.json as the Hub checkpoints ship it."""
    common = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(recipe.image_mean),
              "image_std": list(recipe.image_std), "rescale_factor": 1 / 255, "resample": recipe.resample}
    if arch == "fixed":
        return {**common, "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
                "size": {"height": image_size, "width": image_size}}
    return {**common, "image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
            "patch_size": patch_size, "max_num_patches": max_patches}


def make_test_model(
    out_dir: str | Path,
    arch: str = "naflex",
    size: str = "tiny",
    seed: int = 0,
    image_size: int | None = None,
    patch_size: int | None = None,
    max_patches: int | None = None,
    recipe: str = "reference",
    device: str = "cpu",
) -> Path:
    """Write a random-weight checkpoint (config, safetensors, tokenizer, processor) to `out_dir`. `recipe`:
    "reference" (the released checkpoints' preprocessing, t = log 10, b = -10) or "odd" (other values
    everywhere, see RECIPES); image_size, patch_size and max_patches override the recipe's. `device`: where
    the random weights are drawn ("cuda" makes the large sizes' minute a second; the values differ by device)."""
    from transformers import AutoModel, GemmaTokenizer

    if arch not in ("fixed", "naflex"):
        raise ValueError("arch must be 'fixed' or 'naflex'")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}")
    spec = SIZES[size]
    chosen = RECIPES[recipe]
    patch_size = patch_size or chosen.patch_size
    image_size = image_size or chosen.image_size
    max_patches = max_patches or chosen.max_patches
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    backend = build_tokenizer()
    vocab_size = spec.vocab_size or backend.get_vocab_size()
    config = _model_config(arch, spec, vocab_size, image_size, patch_size, max_patches)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModel.from_config(config)
    with torch.no_grad():  # transformers zeroes these; use the paper's initial values or "learned" ones
        if chosen.learned_score:
            generator = torch.Generator().manual_seed(seed)
            model.logit_scale.fill_(math.log(5 + 15 * float(torch.rand(1, generator=generator))))
            model.logit_bias.fill_(-12 + 9 * float(torch.rand(1, generator=generator)))
        else:
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    model.save_pretrained(out, safe_serialization=True)

    GemmaTokenizer(tokenizer_object=backend).save_pretrained(out)
    (out / "processor_config.json").unlink(missing_ok=True)
    processor = _processor_config(arch, image_size, patch_size, max_patches, chosen)
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    marker = {"random_weights": True, "arch": arch, "size": size, "seed": seed, "recipe": recipe, "drawn_on": device,
              "note": "Generated by SigLIP 2 Studio for tests. Untrained: its outputs mean nothing."}
    (out / TEST_MODEL_MARKER).write_text(json.dumps(marker, indent=2))
    return out
