"""Plants realistic bugs one at a time in a temporary copy of the project and reports which ones the test
suite catches (`python tests/tools/mutations.py [--only NAME]`). Not part of the CI run: each mutation
runs the relevant test files (about a minute each on 2 cores).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) replacements in the same file


MUTATIONS = [
    Mutation("score: t and b written in as constants", "engine/model/loading.py",
             "return float(self.model.logit_scale.detach().float().exp())", "return 10.0",
             ("tests/test_zeroshot.py",)),
    Mutation("score: bias written in as a constant", "engine/model/loading.py",
             "return float(self.model.logit_bias.detach().float())", "return -10.0", ("tests/test_zeroshot.py",)),
    Mutation("resample: the checkpoint's own ignored", "engine/model/preprocess.py",
             "return image.resize((width, height), resample=Image.Resampling(resample))",
             "return image.resize((width, height), resample=Image.Resampling.BILINEAR)",
             ("tests/test_preprocess.py",)),
    Mutation("mean and std: constants", "engine/model/preprocess.py",
             'image_mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),', "image_mean=(0.5, 0.5, 0.5),",
             ("tests/test_preprocess.py",)),
    Mutation("patch size: a constant", "engine/model/preprocess.py",
             'patch_size=int(config.get("patch_size", patch_size)),', "patch_size=16,",
             ("tests/test_preprocess.py", "tests/test_encode.py")),
    Mutation("allowed roots: an unresolved path", "engine/paths.py",
             "real = Path(text).expanduser().resolve()", "real = Path(text).expanduser().absolute()",
             ("tests/test_hostile.py",)),
    Mutation("allowed roots: a string prefix", "engine/paths.py",
             "return real if any(real == root or root in real.parents for root in self.roots) else None",
             "return real if any(str(real).startswith(str(root)) for root in self.roots) else None",
             ("tests/test_hostile.py",)),
    Mutation("index: the temporary FAISS file left behind on a failed save", "engine/index/vectors.py",
             "        tmp.unlink(missing_ok=True)\n", "", ("tests/test_faults.py",)),
    Mutation("index: a new sequence length mixed in", "engine/index/store.py",
             "opened.check_image_setting(model)", "pass", ("tests/test_faults.py",)),
    Mutation("inspect: the pooling head's MLP left out of the value path", "engine/inspect/head.py",
             "return (attended + head.mlp(head.layernorm(attended))).float().cpu()", "return attended.float().cpu()",
             ("tests/test_inspect.py",)),
    Mutation("inspect: padding patches kept in the maps", "engine/model/features.py",
             "count = grid.num_patches", "count = grid.sequence_length", ("tests/test_inspect.py",)),
    Mutation("inspect: attention without its scale", "engine/inspect/attention.py",
             "(q @ k.T).float() * attention.scale", "(q @ k.T).float()", ("tests/test_inspect.py",)),
    Mutation("text: warnings not grouped", "engine/label/zeroshot.py",
             'warnings += grouped(duplicates, "duplicate label(s) ignored (labels are compared lowercased)")',
             'warnings += [f"{d}: duplicate label ignored" for d in duplicates]', ("tests/test_hostile.py",)),
    Mutation("index: the catalogue batch written without a transaction", "engine/index/catalog.py",
             'cursor.execute("BEGIN IMMEDIATE")', 'cursor.execute("SELECT 1")', ("tests/test_crash.py",),
             also=(('cursor.execute("COMMIT")', 'cursor.execute("SELECT 1")'),
                   ('cursor.execute("ROLLBACK")', 'cursor.execute("SELECT 1")'))),
    Mutation("index: the FAISS file written in place (no temporary file and rename)", "engine/index/vectors.py",
             'tmp = path.with_name(path.name + ".tmp")', "tmp = path", ("tests/test_crash.py",)),
    Mutation("index: a FAISS file that reads but holds other vectors trusted", "engine/index/store.py",
             "if self.index.ntotal != self.catalog.count_images():", "if False:", ("tests/test_crash.py",)),
    Mutation("index: an outgrown IVF keeps its old clusters", "engine/index/store.py",
             "self.index = self._rebuild_from_catalog(plan.factory)",
             "self.index = self._rebuild_from_catalog(plan.factory, trained=self.index)", ("tests/test_index.py",)),
    Mutation("app: /classify serves a softmax over the labels", "app/tab_label.py",
             "zip(shown, result.probabilities[0])}", "zip(shown, result.softmax_over_labels()[0])}",
             ("tests/test_app_values.py",)),
    Mutation("app: the example image's weight ignored", "app/tab_search.py",
             'terms = [QueryTerm(float(weight), "image", image_path)]', 'terms = [QueryTerm(1.0, "image", image_path)]',
             ("tests/test_app_values.py",)),
    Mutation("images: 16-bit pixels clipped instead of rescaled", "engine/model/images.py",
             'top = 65535.0 if image.mode.startswith("I;16") else', 'top = 255.0 if image.mode.startswith("I;16") else',
             ("tests/test_preprocess.py",)),
    Mutation("images: an unreadable file reported as an unspecific read error", "engine/model/images.py",
             'descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))\n    except PermissionError:',
             'descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))\n    except FileNotFoundError:',
             ("tests/test_preprocess.py",)),
    Mutation("ray: a stopped run's shards ignored (their images encoded again)", "engine/index/distributed.py",
             "todo = [state for state in todo if state.path not in in_shards]", "todo = list(todo)",
             ("tests/test_distributed.py",)),
    Mutation("ray: reading as plain tasks again (Ray fuses them into the encoder actors)", "engine/index/distributed.py",
             'map_batches(Reader, batch_size=16, batch_format="numpy", compute=readers, num_cpus=1,\n'
             '                                  fn_constructor_kwargs=',
             'map_batches(read_and_prepare, batch_size=16, batch_format="numpy", num_cpus=1,\n'
             '                                  fn_kwargs=',
             ("tests/test_distributed.py::test_reading_is_a_step_apart_from_the_encoders",)),
    Mutation("ray: its INFO lines and known notices printed on the console again", "engine/index/distributed.py",
             "                handler.setLevel(max(handler.level, logging.WARNING))\n"
             "                if not any(isinstance(f, _RayNotices) for f in handler.filters):\n"
             "                    handler.addFilter(_RayNotices())",
             "                pass",
             ("tests/test_distributed.py::test_killed_ray_build_resumes_without_encoding_again",)),
    Mutation("shards: another model's vectors ingested", "engine/index/shards.py",
             "if theirs.shape != ours.shape or float(theirs @ ours) < 0.995:", "if theirs.shape != ours.shape:",
             ("tests/test_distributed.py",)),
    Mutation("index: read-only opens keep serving the vectors of an older catalogue version", "engine/index/store.py",
             'key = (path, self.meta.get("created_at"), version,', "key = (path, 0, 0,",
             ("tests/test_index.py",)),
    Mutation("lora: adapters on the encoder layers only (embeddings and heads frozen)", "engine/train/trainer.py",
             "target_modules=lora_targets(model.arch)",
             'target_modules=r".*encoder\\.layers\\.\\d+\\.(self_attn\\.(q_proj|k_proj|v_proj|out_proj)|mlp\\.(fc1|fc2))"',
             ("tests/test_train_learning.py",)),
    Mutation("app: result thumbnails copied into Gradio's cache per result again", "app/ui.py",
             "gr.set_static_paths([THUMBNAILS])", "pass", ("tests/test_app.py",)),
    Mutation("app: Gradio's monitoring summary rebuilt after every request", "app/ui.py",
             "    serving.quiet_request_bookkeeping()\n", "", ("tests/test_app.py",)),
    Mutation("app: every component described for each new visitor again", "app/ui.py",
             "    serving.describe_components_lazily()\n", "", ("tests/test_app.py",)),
    Mutation("loading: transformers' warning about its own default config shown again", "engine/model/loading.py",
             'logging.getLogger("transformers.configuration_utils").addFilter(_DefaultTextConfigNoise())', "",
             ("tests/test_models.py",)),
    Mutation("fine-tune: an uploaded zip unpacked in the system's temporary folder", "app/tab_train.py",
             'target = training_data_dir(studio) / f"{path.stem}-{digest}"',
             'target = Path(tempfile.mkdtemp(prefix="studio-train-")) / f"{path.stem}-{digest}"',
             ("tests/test_train_tab.py",)),
    Mutation("int8: the tanh GELU kept in the encoders", "engine/model/quantize.py",
             "            _exact_gelu(tower.encoder)\n", "", ("tests/test_quantize.py",)),
    Mutation("int8: the GELU writes a new buffer", "engine/model/quantize.py",
             "return torch.ops.aten.gelu_(hidden_states)", "return torch.nn.functional.gelu(hidden_states)",
             ("tests/test_quantize.py",)),
    Mutation("int8: q, k and v stacked in the wrong order", "engine/model/quantize.py",
             "    projections = (attention.q_proj, attention.k_proj, attention.v_proj)",
             "    projections = (attention.k_proj, attention.q_proj, attention.v_proj)", ("tests/test_quantize.py",)),
    Mutation("int8: the fused attention ignores the mask", "engine/model/quantize.py",
             "output, weights = attention(self, queries, keys, values, attention_mask,",
             "output, weights = attention(self, queries, keys, values, None,", ("tests/test_quantize.py",)),
    Mutation("int8: q, k and v left as three matmuls", "engine/model/quantize.py",
             "                fuse_query_key_value(layer.self_attn)\n", "                pass\n",
             ("tests/test_quantize.py",)),
    Mutation("layer attention: the keys taken from the values", "engine/model/quantize.py",
             "        queries, keys, _ = attention.projections(hidden_states)",
             "        queries, _, keys = attention.projections(hidden_states)", ("tests/test_inspect.py",)),
    Mutation("chunked loss: a checkpoint's t of shape (1,) breaks its backward", "engine/train/losses.py",
             "scale = logit_scale.exp().reshape(())", "scale = logit_scale.exp()", ("tests/test_train_losses.py",)),
    Mutation("index: a type FAISS cannot build is stored", "engine/index/store.py",
             "            vi.check_factory(factory, model.embed_dim)\n", "", ("tests/test_index.py",)),
    Mutation("index: another type named for an existing index is ignored", "engine/index/store.py",
             "rechosen = bool(chosen) and count > 0 and", "rechosen = False and", ("tests/test_index.py",)),
    Mutation("index: a new type given the old type's tuned search parameters", "engine/index/store.py",
             'if factory == self.meta.get("factory"):  # tuned', 'if True:  # tuned', ("tests/test_index.py",)),
    Mutation("index: a named type remembered before an index was built in it", "engine/index/store.py",
             "            factory_override=None, factory=\"Flat\",", "            factory_override=factory, factory=\"Flat\",",
             ("tests/test_index.py",), also=(("            opened.requested_factory = factory\n",
                                             "            opened._set_meta(factory_override=factory)\n"),)),
    Mutation("int8: pickle cannot find the fused attention classes", "engine/model/quantize.py",
             "    if name.startswith(FUSED_PREFIX):", "    if False:", ("tests/test_quantize.py",)),
    Mutation("load: a sequence length outside 16-4096 accepted", "engine/model/loading.py",
             "        max_num_patches = check_sequence_length(max_num_patches)\n", "", ("tests/test_cli.py",)),
    Mutation("inspect CLI: the second image's PCA colours not written", "engine/cli/inspect.py",
             'arrays = dict(zip(("", "-second"), pca.colours))', 'arrays = {"": pca.colours[0]}',
             ("tests/test_inspect.py",)),
    Mutation("label: two uploads of one name not told apart", "app/tab_label.py",
             "dict(zip(paths, unique_names(names)))", "dict(zip(paths, names))", ("tests/test_app.py",)),
    Mutation("evaluate: top-5 reported where it cannot miss", "engine/train/evaluate.py",
             "for k in (1, 5) if k == 1 or k < len(data.classes)", "for k in (1, 5)",
             ("tests/test_train_checkpoints.py",)),
    Mutation("app: index lists filled once, at start-up", "app/ui.py",
             "        demo.load(lambda: fresh_index_dropdowns(",
             "        (lambda *args, **kwargs: None)(lambda: fresh_index_dropdowns(",
             ("tests/test_browser.py",)),
    Mutation("explore: a new map keeps the previous one's clicked point", "app/tab_explore.py",
             "    event.then(lambda: (None, \"\", None, \"\", gr.update(label=NEAREST_LABEL)), None,",
             "    event.then(lambda: (gr.skip(),) * 5, None,", ("tests/test_browser.py",)),
    Mutation("allocator: a CPU model leaves malloc returning freed memory", "engine/model/loading.py",
             "        keep_freed_memory()\n", "        pass\n", ("tests/test_allocator.py",)),
    Mutation("int8: torch.ao's deprecation notices reach the user's output", "engine/model/quantize.py",
             "    ignore_quantization_notices()\n    with", "    with", ("tests/test_quantize.py",)),
    Mutation("int8-openvino: the tracer's warnings reach the user's output", "engine/model/openvino_int8.py",
             '    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(transformers|engine)\\.")\n',
             "",
             ("tests/test_openvino_int8.py",)),
    Mutation("allocator: a thread's heap given back once empty", "engine/model/allocator.py",
             "TOP_PAD_BYTES = 64 * 1024 * 1024", "TOP_PAD_BYTES = 0", ("tests/test_allocator.py",)),
    Mutation("pixels: NaFlex padding patches standardised instead of zero", "engine/model/preprocess.py",
             "        values = torch.where(mask[..., None].bool(), values, 0.0)", "        values = values",
             ("tests/test_preprocess.py",)),
    Mutation("load_model(compile=True) runs eagerly", "engine/model/loading.py",
             "quantization=quantization, compiled=compile,", "quantization=quantization,",
             ("tests/test_encode.py",)),
    Mutation("device decoding: EXIF orientation 6 and 8 swapped", "engine/model/device_decode.py",
             "return torch.rot90(pixels, -1, (-2, -1))", "return torch.rot90(pixels, 1, (-2, -1))",
             ("tests/test_device_decode.py",)),
    Mutation("device decoding: truncated JPEGs sent to the device", "engine/model/device_decode.py",
             'if not data.startswith(b"\\xff\\xd8") or not data.rstrip(b"\\0").endswith(b"\\xff\\xd9"):',
             'if not data.startswith(b"\\xff\\xd8"):', ("tests/test_device_decode.py",)),
    Mutation("device decoding: one 2-D resize instead of PIL's two rounded passes", "engine/model/device_decode.py",
             "for size in ((values.shape[-2], width), (height, width)):", "for size in ((height, width),):",
             ("tests/test_device_decode.py",)),
    Mutation("device decoding: a refused batch is not retried with PIL", "engine/index/build.py",
             "            if image is None:\n                try:", "            if False:\n                try:",
             ("tests/test_device_decode.py",)),
    Mutation("pipelined build: the batch in flight dropped when a build stops", "engine/index/build.py",
             "            try:\n                self.store_in_flight()\n            except Exception:",
             "            try:\n                pass\n            except Exception:", ("tests/test_device_decode.py",)),
    Mutation("pipelined build: the last batch never stored", "engine/index/build.py",
             "            self._encode(batch)\n        self.store_in_flight()", "            self._encode(batch)",
             ("tests/test_device_decode.py",)),
    Mutation("pipelined build: a CPU's finished batch kept back", "engine/index/build.py",
             "if batch.vectors is None or batch.vectors.done:", "if batch.vectors is None:",
             ("tests/test_device_decode.py",)),
    Mutation("device decoding: a refused batch sent whole to PIL", "engine/model/device_decode.py",
             "    half = len(jpegs) // 2\n", "    return [None] * len(jpegs)\n", ("tests/test_device_decode.py",)),
    Mutation("device decoding: a decoder that refuses everything kept on", "engine/index/build.py",
             "            self.decoder = None\n", "            pass\n", ("tests/test_device_decode.py",)),
    Mutation("int8-openvino: padding keys not masked", "engine/model/openvino_int8.py",
             "request.infer([embeds, key_mask(attention_mask, inputs_embeds)])",
             "request.infer([embeds, key_mask(None, inputs_embeds)])", ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: SmoothQuant fitted to the calibration set", "engine/model/openvino_int8.py",
             "AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)",
             "AdvancedSmoothQuantParameters(convolution=0.95, matmul=0.95)", ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: the cache ignores the calibration images", "engine/model/openvino_int8.py",
             "        digest.update(np.ascontiguousarray(image.array).tobytes())\n", "        pass\n",
             ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: calibrated at the load's sequence length", "engine/model/openvino_int8.py",
             "        preprocessor = preprocessor.with_max_patches(CALIBRATION_PATCHES)\n", "        pass\n",
             ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: a cache write failure fails the load", "engine/model/openvino_int8.py",
             "    except (OSError, RuntimeError) as error:  # OpenVINO reports", "    except ValueError as error:  # OpenVINO reports",
             ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: a family of its own for indexes", "engine/index/store.py",
             'family = lambda precision: "int8" if precision.startswith("int8") else "float"',
             'family = lambda precision: precision if precision.startswith("int8") else "float"',
             ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: 8-bit weights without VNNI (int16 sums saturate)", "engine/model/openvino_int8.py",
             "overflow_fix=nncf.OverflowFix.ENABLE if int8_sums_saturate() else nncf.OverflowFix.FIRST_LAYER",
             "overflow_fix=nncf.OverflowFix.FIRST_LAYER", ("tests/test_openvino_int8.py",)),
    Mutation("int8-openvino: the cache's use not recorded (evicts what is in use first)",
             "engine/model/openvino_int8.py",
             "        os.utime(folder)  # used now", "        pass  # used now", ("tests/test_openvino_int8.py",)),
    Mutation("uploads: a zip's unpacked size not bounded", "app/tab_train.py",
             "    if unpacked > MAX_UNPACKED_BYTES:", "    if False:", ("tests/test_train_tab.py",)),
    Mutation("uploads: a finished run's unpacked zip kept forever", "app/tab_train.py",
             "                shutil.rmtree(unpacked, ignore_errors=True)\n", "                pass\n",
             ("tests/test_train_tab.py",)),
    Mutation("uploads: an interrupted run's data removed", "app/tab_train.py",
             "or unpacked.resolve() in data.parents", "", ("tests/test_train_tab.py",)),
    Mutation("fine-tune: a closed handler's training left running to the end", "app/tab_train.py",
             "        if not finished:", "        if False:", ("tests/test_train_tab.py",)),
    Mutation("models tab: the app's --dtype dropped by its loads", "app/tab_models.py",
             'value=studio.dtype if studio.dtype in DTYPES else "auto"', 'value="auto"', ("tests/test_quantize.py",)),
    Mutation("images: Pillow's warning band of decompression bombs decoded", "engine/model/images.py",
             "            if opened.width * opened.height > MAX_IMAGE_PIXELS:",
             "            if opened.width * opened.height > 2 * MAX_IMAGE_PIXELS:", ("tests/test_corpus.py",)),
    Mutation("build: the batch still decoding at the end of a build dropped", "engine/index/build.py",
             "        if batch is not None:\n            self._encode(batch)\n        self.store_in_flight()",
             "        self.store_in_flight()", ("tests/test_device_decode.py",)),
    Mutation("build: the device decodes on the build's own thread", "engine/index/build.py",
             "            batch.decoding = self.decode_pool.submit(self._decode_on_device, jpegs)",
             "            batch.decoding = Future(); batch.decoding.set_result(self._decode_on_device(jpegs))",
             ("tests/test_device_decode.py",)),
    Mutation("NaFlex: spatial shapes sent to the GPU (a sync per image)", "engine/model/preprocess.py",
             '"spatial_shapes": self.spatial_shapes}', '"spatial_shapes": _to_device(self.spatial_shapes, device)}',
             ("tests/test_device_decode.py",)),
    Mutation("NaFlex: position grids resized once per image again (transformers' loop)", "engine/model/loading.py",
             "    resize_positions_once_per_grid(model)\n", "", ("tests/test_encode.py",)),
    Mutation("search: four result columns however narrow the window", "app/ui.py",
             "#search-gallery .grid-container { grid-template-columns", "#search-gallery .unused { grid-template-columns",
             ("tests/test_browser.py",)),
    Mutation("models: the paper's table as wide as its ids (cut off in a narrow window)", "app/tab_models.py",
             'wrap=True, column_widths=["40%", "18%", "14%", "14%", "14%"], ', "", ("tests/test_browser.py",)),
    Mutation("search: a long file name's caption whole (cut at the top of its thumbnail)", "app/tab_search.py",
             "    if len(name) > CAPTION_NAME:", "    if False:", ("tests/test_app.py",)),
    Mutation("map: UMAP's n_jobs warning in the log at every map drawn", "engine/explore/map.py",
             "random_state=seed, n_jobs=1,", "random_state=seed,", ("tests/test_project_export.py",)),
    Mutation("uploads: a second upload of one name written over the first", "engine/index/build.py",
             "if not target.exists() or filecmp.cmp(upload, target, shallow=False):", "if True:",
             ("tests/test_app.py::test_uploads_build_an_index",)),
    Mutation("search: a query image's error names its temporary upload path", "engine/index/search.py",
             'raise QueryError(f"Query image {Path(failure.source).name}: {failure.reason}.")',
             'raise QueryError(f"Query image {failure}")', ("tests/test_app.py::test_build_search_and_explore",)),
    Mutation("labels: commas on one line of several made one label unsaid", "engine/label/zeroshot.py",
             "    if with_commas:", "    if False:", ("tests/test_zeroshot.py",)),
    Mutation("labels: a line of separators kept as a label", "engine/label/zeroshot.py",
             'line.strip(" \\t,")', "line.strip()", ("tests/test_zeroshot.py",)),
    Mutation("search: no result and no reason (path filter or threshold)", "engine/index/search.py",
             "    if not hits and path_contains and", "    if False and path_contains and", ("tests/test_index.py",)),
    Mutation("search: a build's progress drawn over the index list", "app/tab_search.py",
             "concurrency_id=MODEL_QUEUE, show_progress_on=build_notes)", "concurrency_id=MODEL_QUEUE)",
             ("tests/test_app.py::test_long_jobs_show_their_progress_beside_their_button",)),
    Mutation("fine-tune: progress drawn over the chart and the checkpoint field", "app/tab_train.py",
             "concurrency_id=MODEL_QUEUE, show_progress_on=status)", "concurrency_id=MODEL_QUEUE)",
             ("tests/test_app.py::test_long_jobs_show_their_progress_beside_their_button",)),
    Mutation("inside: a picture's label badge over its top-left patches", "app/tab_inside.py",
             "show_label=False, interactive=False", "show_label=True, interactive=False",
             ("tests/test_browser_inside.py",)),
    Mutation("explore: six gallery columns however narrow the box", "app/ui.py",
             "#explore-gallery .grid-container { grid-template-columns", "#explore-gallery .unused { grid-template-columns",
             ("tests/test_browser.py",)),
    Mutation("labels: a cached label set answers with the first call's warnings", "engine/label/zeroshot.py",
             "return replace(cached, warnings=warnings + cached.encode_warnings)", "return cached",
             ("tests/test_zeroshot.py",)),
    Mutation("ray: encoders allowed to hold every CPU (reading never starts)", "engine/index/distributed.py",
             "    if left < 1:", "    if False:",
             ("tests/test_distributed.py::test_cpus_are_shared_so_that_reading_always_has_one",)),
    Mutation("search: every renamed upload listed after a build", "app/tab_search.py",
             "for uploaded, stored in renamed[:RENAMES_SHOWN]]", "for uploaded, stored in renamed]",
             ("tests/test_app.py::test_a_build_lists_its_renamed_uploads_up_to_a_point",)),
    Mutation("label: a new picture beside the last one's scores", "app/tab_label.py",
             "    for change in (image.upload, image.clear):", "    for change in ():", ("tests/test_browser.py",)),
    Mutation("galleries: a name wider than its column reaches out of it", "app/ui.py",
             "text-align: left; overflow-wrap: anywhere; }", "text-align: left; }", ("tests/test_browser.py",)),
]


def run(mutation: Mutation) -> bool:
    """True if the tests fail with the bug planted (the bug is caught)."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "project"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".ci-venv", ".git", "indexes",
                                                                  "test-artifacts", "bench", "__pycache__"))
        target = copy / mutation.path
        source = target.read_text()
        if mutation.old not in source:
            raise SystemExit(f"{mutation.name}: the code to mutate is gone from {mutation.path}; update the list")
        for old, new in ((mutation.old, mutation.new), *mutation.also):
            if old not in source:
                raise SystemExit(f"{mutation.name}: {old!r} is gone from {mutation.path}; update the list")
            source = source.replace(old, new, 1)
        target.write_text(source)
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               *mutation.tests], cwd=copy, capture_output=True, text=True)
        return done.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None, help="run the mutations whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    caught = 0
    for mutation in chosen:
        found = run(mutation)
        caught += found
        print(f"{'caught' if found else 'MISSED'}  {mutation.name}", flush=True)
    print(f"planted {len(chosen)}, caught {caught}, missed {len(chosen) - caught}")
    sys.exit(0 if caught == len(chosen) else 1)


if __name__ == "__main__":
    main()
