"""JPEG decoding on the GPU (engine/model/device_decode.py): everything but nvJPEG itself runs here.

nvJPEG needs a CUDA device and torchvision, neither of which this machine has; in its place these tests use
a decoder that does what nvJPEG does (the file's pixels as stored, not yet oriented) with PIL, so the
header checks, orientation, resizing, patch layout, batching and the build's fallback to PIL are all
exercised on the real (small) models. bench/gpu.sh runs the nvJPEG path itself on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.index.build as build_module
from conftest import random_image
from engine.index.build import build_index
from engine.index.store import ImageIndex
from engine.model.device_decode import (DeviceJpeg, device_decoder, device_jpeg, orient, prepare_on_device,
                                        prepare_what_decodes, resize_pixels)
from engine.model.images import open_image
from test_corpus import check, make_corpus


def stored_pixels(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG's stand-in: each JPEG's RGB pixels as stored (no EXIF orientation), (3, H, W) uint8."""
    out = []
    for data in encoded:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            out.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).to(device))
    return out


def refusing(encoded, device):
    raise RuntimeError("nvjpeg: unsupported bitstream")


def jpeg_bytes(image: Image.Image, orientation: int = 1, **options) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=92, exif=exif, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_turns_pixels_as_pil_does(orientation):
    data = jpeg_bytes(random_image(30, 50, seed=orientation), orientation)
    jpeg = device_jpeg(data)
    assert jpeg.orientation == orientation
    turned = orient(stored_pixels([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device("cpu"))[0],
                    orientation)
    expected = np.asarray(open_image(Image.open(io.BytesIO(data))))
    assert jpeg.full_size == expected.shape[:2]
    np.testing.assert_array_equal(turned.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("resample", [2, 3])
@pytest.mark.parametrize("size", [(224, 224), (288, 176), (640, 480)])  # shrink, shrink unevenly, enlarge
def test_resizing_is_within_two_levels_of_pil_and_mostly_equal(resample, size):
    image = random_image(300, 400, seed=3)
    height, width = size
    expected = np.asarray(image.resize((width, height), resample=resample)).astype(int)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
    resized = resize_pixels(pixels, height, width, resample)[0].permute(1, 2, 0).numpy().astype(int)
    assert resized.shape == expected.shape
    assert np.abs(resized - expected).max() <= 2
    assert np.mean(resized != expected) < (0.1 if size == (640, 480) else 0.02)


def pil_header(data: bytes) -> tuple[int, int, int] | None:
    """What PIL reads of a JPEG the device may take: (height, width, EXIF orientation), or None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            return image.height, image.width, int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - anything PIL cannot read stays off the device
        return None


def with_segment(jpeg: bytes, marker: int, payload: bytes, after_frame: bool = False) -> bytes:
    """`jpeg` with one more marker segment, right after its start-of-image marker or after its frame header."""
    at = 2
    if after_frame:
        frame = jpeg.index(b"\xff\xc0")
        at = frame + 2 + int.from_bytes(jpeg[frame + 2:frame + 4], "big")
    return jpeg[:at] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def big_endian_exif(orientation: int) -> bytes:
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + \
        orientation.to_bytes(2, "big") + bytes(2)
    return b"Exif\0\0MM\0*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + bytes(4)


def test_the_header_walk_agrees_with_pil():
    photo = random_image(40, 60, seed=1)
    plain = jpeg_bytes(photo)
    bare = io.BytesIO()
    photo.save(bare, "JPEG")  # no EXIF segment at all
    accepted = [plain, bare.getvalue(), jpeg_bytes(photo.convert("L")), jpeg_bytes(photo, progressive=True),
                *(jpeg_bytes(photo, orientation) for orientation in range(2, 9)),
                with_segment(bare.getvalue(), 0xE1, big_endian_exif(6)),
                with_segment(bare.getvalue(), 0xE1, big_endian_exif(8), after_frame=True), plain + b"\0\0"]
    for data in accepted:
        jpeg = device_jpeg(data)
        assert jpeg is not None and (jpeg.height, jpeg.width, jpeg.orientation) == pil_header(data)
    rng = np.random.default_rng(0)
    header_end = plain.index(b"\xff\xda")
    taken = pil_refused = 0
    for _ in range(400):  # damaged headers: never an exception; where PIL reads one, the same reading
        damaged = bytearray(accepted[rng.integers(len(accepted))])
        for position in rng.integers(2, header_end, size=rng.integers(1, 4)):
            damaged[position] = rng.integers(256)
        jpeg, pil = device_jpeg(bytes(damaged)), pil_header(bytes(damaged))
        if jpeg is not None:
            taken += 1
            pil_refused += pil is None  # damaged tables PIL refuses outright: nvJPEG's own checks decide
            assert pil is None or (jpeg.height, jpeg.width, jpeg.orientation) == pil
    assert taken > 100 and pil_refused < taken / 10


def test_only_jpegs_that_decode_as_pil_does_go_to_the_device():
    photo = random_image(40, 60, seed=1)
    rgb, gray = jpeg_bytes(photo), jpeg_bytes(photo.convert("L"))
    progressive = jpeg_bytes(photo, progressive=True)
    png, cmyk = io.BytesIO(), io.BytesIO()
    photo.save(png, "PNG")
    photo.convert("CMYK").save(cmyk, "JPEG")
    huge = bytearray(rgb)  # the frame header claims 20000 × 20000: Pillow's bomb check must see it
    sof = huge.index(b"\xff\xc0")
    huge[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2
    assert device_jpeg(rgb) == DeviceJpeg(rgb, 40, 60, 1)
    assert device_jpeg(gray) is not None and device_jpeg(progressive) is not None
    assert device_jpeg(rgb + b"\0\0") is not None  # zero padding after the end marker
    xmp = with_segment(rgb, 0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta tiff:Orientation=\"6\"/>")
    assert pil_header(xmp) == (40, 60, 6)  # PIL turns by XMP too: left to PIL
    adobe = with_segment(rgb, 0xEE, b"Adobe\0\x64\0\0\0\0\0")  # colour transform flag 0: not YCbCr
    for refused in (png.getvalue(), cmyk.getvalue(), rgb[: len(rgb) // 2], b"\xff\xd8 not a picture \xff\xd9",
                    bytes(huge), b"", xmp, adobe):
        assert device_jpeg(refused) is None


def test_decoder_only_on_cuda_and_for_filters_it_matches(fixed_model, odd_models, monkeypatch):
    import engine.model.device_decode as device_decode

    def on_the_host(encoded, device):  # as if installed (this machine has no CUDA device to decode onto)
        return stored_pixels(encoded, torch.device("cpu"))

    monkeypatch.setattr(device_decode, "torchvision_decoder", lambda: on_the_host)
    cuda = torch.device("cuda")
    for model in (fixed_model, odd_models["fixed"]):  # bilinear and bicubic
        assert device_decoder(cuda, model.image_preprocessor) is on_the_host
        assert device_decoder(torch.device("cpu"), model.image_preprocessor) is None
    nearest = dataclasses.replace(fixed_model.image_preprocessor, resample=0)
    assert device_decoder(cuda, nearest) is None  # no antialiased nearest filter in torch
    samples = []

    def counting(encoded, device):
        samples.append(len(encoded))
        return on_the_host(encoded, device)

    monkeypatch.setattr(device_decode, "torchvision_decoder", lambda: counting)
    for _ in range(3):  # every index build asks; the sample JPEG is decoded once (nvJPEG took 0.2 s each time)
        assert device_decoder(cuda, fixed_model.image_preprocessor) is counting
    assert samples == [1]
    failures = []

    def failing_for_now(encoded, device):  # e.g. built without nvJPEG, or the GPU's memory full for a while
        failures.append(len(encoded))
        return refusing(encoded, device)

    monkeypatch.setattr(device_decode, "torchvision_decoder", lambda: failing_for_now)
    assert device_decoder(cuda, fixed_model.image_preprocessor) is None
    assert device_decoder(cuda, fixed_model.image_preprocessor) is None
    assert failures == [1, 1]  # tried again at the next build, not given up for the process


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[Path]:
    """JPEGs of several sizes, two of one size (resized together), EXIF-turned ones, grayscale."""
    folder = tmp_path_factory.mktemp("device-photos")
    specs = [((480, 640), 1), ((480, 640), 1), ((300, 200), 6), ((90, 700), 3), ((50, 40), 8), ((700, 500), 1)]
    paths = []
    for number, ((height, width), orientation) in enumerate(specs):
        image = random_image(height, width, seed=40 + number)
        path = folder / f"photo_{number}.jpg"
        path.write_bytes(jpeg_bytes(image.convert("L") if number == 5 else image, orientation))
        paths.append(path)
    # decoded by PIL, after JPEGs in its batch: a batch of device tensors with a numpy array among them
    random_image(120, 90, seed=49).save(folder / "photo_6.png")
    return paths


def test_device_preparation_matches_pil(recipe_model, photo_files):
    preprocessor = recipe_model.image_preprocessor
    jpegs = [device_jpeg(path.read_bytes()) for path in photo_files]
    prepared = prepare_on_device(jpegs, preprocessor, torch.device("cpu"), stored_pixels)
    for path, image in zip(photo_files, prepared):
        expected = preprocessor(open_image(path))
        assert image.grid == expected.grid
        difference = np.abs(image.array.numpy().astype(int) - expected.array.astype(int))
        assert difference.max() <= 2 and np.mean(difference > 0) < 0.1, path.name


def test_device_decoded_index_matches_the_cpu_one(naflex_model, photo_files, tmp_path, monkeypatch):
    folder = photo_files[0].parent
    cpu = build_index(naflex_model, folder, "cpu", tmp_path, device_decode=False)
    monkeypatch.setattr(build_module, "device_decoder", lambda device, preprocessor: stored_pixels)
    device = build_index(naflex_model, folder, "device", tmp_path, batch_size=4)
    assert (device.encoded, device.skipped) == (cpu.encoded, []) == (len(photo_files) + 1, [])
    files = [*photo_files, folder / "photo_6.png"]
    stored = {name: stored_by_path(name, tmp_path, files, naflex_model.embed_dim) for name in ("cpu", "device")}
    cpu_vectors = np.stack([stored["cpu"][path][1] for path in files])
    for row, path in enumerate(files):
        (cpu_size, _), (device_size, device_vector) = stored["cpu"][path], stored["device"][path]
        assert cpu_size == device_size  # (width, height) after orientation
        cosines = cpu_vectors @ device_vector
        assert cosines[row] > 0.999 and np.argmax(cosines) == row, path.name  # its own vector, no other


def stored_by_path(name: str, index_dir: Path, paths: list[Path], dim: int) -> dict:
    """path → ((width, height), vector) as index `name` stored them."""
    with ImageIndex.open(name, index_dir) as index:
        ids = [index.catalog.file_record(str(p)).image_id for p in paths]
        records, vectors = index.catalog.images(ids), index.catalog.embeddings_for(ids, dim)
    return {p: ((records[i].width, records[i].height), v) for p, i, v in zip(paths, ids, vectors)}


def test_a_refused_batch_is_decoded_by_pil_with_its_reasons(naflex_model, tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    expected = make_corpus(folder)
    bogus = bytearray(jpeg_bytes(random_image(60, 80, seed=9)))
    table = bogus.index(b"\xff\xc4")  # a Huffman table with far more than 256 codes: libjpeg stops
    bogus[table + 5:table + 21] = bytes([255] * 16)
    assert device_jpeg(bytes(bogus)) is not None  # its header passes for the device
    (folder / "bogus-table.jpg").write_bytes(bogus)
    expected["bogus-table.jpg"] = "corrupt"
    monkeypatch.setattr(build_module, "device_decoder", lambda device, preprocessor: refusing)
    summary = build_index(naflex_model, folder, "corpus", tmp_path / "indexes", batch_size=4)
    reasons = {Path(path).name: reason for path, reason in summary.skipped}
    images = {name: expected[name] for name in expected if name != "drawing.svg"}
    check({name: reasons.get(name, "ok") for name in images}, images, "index build, device decoding refused")
    assert summary.files == sum(v == "ok" for v in images.values())


class _CopyUnderWay:
    """A CUDA event stand-in: the vectors' copy is never reported done before the build asks for them."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        pass


def test_the_batch_in_flight_is_stored_at_the_end_and_when_cancelled(naflex_model, tmp_path, monkeypatch):
    from engine.model.encode import PendingVectors, start_pixel_batch
    from test_index import make_folder

    def as_on_a_gpu(model, prepared):  # the same vectors, still "on their way" as a GPU's would be
        return PendingVectors(start_pixel_batch(model, prepared).vectors, _CopyUnderWay())

    monkeypatch.setattr(build_module, "start_pixel_batch", as_on_a_gpu)
    make_folder(tmp_path / "photos", count=40)
    whole = build_index(naflex_model, tmp_path / "photos", "whole", tmp_path, batch_size=16)  # 16, 16, then 8
    assert (whole.encoded, whole.images) == (40, 40)

    def cancel_at_file_35(done: int, total: int) -> None:
        if done == 35:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(naflex_model, tmp_path / "photos", "cut", tmp_path, batch_size=32, progress=cancel_at_file_35)
    with ImageIndex.open("cut", tmp_path) as index:
        assert index.info().images == 32  # the first batch was still in flight at the cancel: stored


def test_with_the_device_decoding_three_batches_are_under_way_and_all_are_stored(naflex_model, tmp_path,
                                                                                 monkeypatch):
    """On a GPU one batch is decoded (in a thread of its own) while the one before is encoded and the one
    before that stored: every batch is stored at the end, and at a cancel the one encoded is kept."""
    import threading

    from engine.model.encode import PendingVectors, start_pixel_batch
    from test_index import make_folder

    decoding_threads = set()

    def in_its_thread(encoded, device):
        decoding_threads.add(threading.current_thread().name)
        return stored_pixels(encoded, device)

    def as_on_a_gpu(model, prepared):
        return PendingVectors(start_pixel_batch(model, prepared).vectors, _CopyUnderWay())

    monkeypatch.setattr(build_module, "device_decoder", lambda device, preprocessor: in_its_thread)
    monkeypatch.setattr(build_module, "start_pixel_batch", as_on_a_gpu)
    make_folder(tmp_path / "photos", count=40)
    whole = build_index(naflex_model, tmp_path / "photos", "whole", tmp_path, batch_size=8)
    assert (whole.encoded, whole.images) == (40, 40)
    assert decoding_threads and threading.current_thread().name not in decoding_threads

    def cancel_at_file_35(done: int, total: int) -> None:
        if done == 35:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # batches of 8: 1-24 stored or encoded, 25-32 still decoding
        build_index(naflex_model, tmp_path / "photos", "cut", tmp_path, batch_size=8, progress=cancel_at_file_35)
    with ImageIndex.open("cut", tmp_path) as index:
        assert index.info().images == 24


def test_spatial_shapes_stay_on_the_host(naflex_model):
    """transformers reads each image's shape with .tolist(): on a GPU a device tensor there would wait for all
    queued work once per image, so that no batch would overlap the one before."""
    batch = naflex_model.image_preprocessor.collate(
        [naflex_model.image_preprocessor(random_image(40 + 9 * i, 70, seed=i)) for i in range(3)])
    inputs = batch.model_inputs(torch.device("meta"), torch.bfloat16)
    assert inputs["pixel_values"].device.type == "meta" and inputs["pixel_attention_mask"].device.type == "meta"
    assert inputs["spatial_shapes"].device.type == "cpu"
    assert inputs["spatial_shapes"].tolist() == [[g.rows, g.cols] for g in batch.grids]


def test_a_cpu_build_stores_each_batch_once_it_is_encoded(naflex_model, tmp_path):
    """Nothing to overlap on a CPU (the encode returns when done), so no batch waits for the next one."""
    from engine.index.catalog import Catalog
    from test_index import make_folder

    make_folder(tmp_path / "photos", count=40)
    seen = {}

    def count_stored_at_file_35(done: int, total: int) -> None:
        if done == 35:
            catalog = Catalog(tmp_path / "cpu" / "catalog.sqlite", readonly=True)
            seen["stored"] = catalog.count_images()
            catalog.close()

    build_index(naflex_model, tmp_path / "photos", "cpu", tmp_path, batch_size=32, progress=count_stored_at_file_35)
    assert seen["stored"] == 32


def test_one_bad_jpeg_leaves_the_rest_of_its_batch_on_the_device(naflex_model, photo_files, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in photo_files:
        (folder / path.name).write_bytes(path.read_bytes())
    bogus = bytearray(jpeg_bytes(random_image(60, 80, seed=9)))
    table = bogus.index(b"\xff\xc4")
    bogus[table + 5:table + 21] = bytes([255] * 16)
    (folder / "photo_3b.jpg").write_bytes(bogus)  # its header passes; the stand-in decoder (PIL) refuses it
    on_device = []

    def counting(encoded, device):
        decoded = stored_pixels(encoded, device)
        on_device.extend(decoded)
        return decoded

    monkeypatch.setattr(build_module, "device_decoder", lambda device, preprocessor: counting)
    summary = build_index(naflex_model, folder, "mixed", tmp_path / "indexes", batch_size=8)
    assert [(Path(path).name, "corrupt" in reason) for path, reason in summary.skipped] == [("photo_3b.jpg", True)]
    assert summary.encoded == len(photo_files) and len(on_device) == len(photo_files)


def test_a_decoder_that_refuses_every_file_is_given_up(naflex_model, tmp_path, monkeypatch):
    from test_index import make_folder

    calls = []

    def refusing_all(encoded, device):
        calls.append(len(encoded))
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    make_folder(tmp_path / "photos", count=24)
    monkeypatch.setattr(build_module, "device_decoder", lambda device, preprocessor: refusing_all)
    summary = build_index(naflex_model, tmp_path / "photos", "given-up", tmp_path, batch_size=8)
    assert (summary.encoded, summary.skipped) == (24, [])  # all decoded by PIL
    assert len(calls) == 2 * 8 - 1  # the first batch halved down to single files, then no more tries


def test_no_jpegs_prepare_to_no_images(naflex_model):
    cpu = torch.device("cpu")
    assert prepare_what_decodes([], naflex_model.image_preprocessor, cpu, refusing).images == []
