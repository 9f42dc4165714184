"""Corrupted bytes (issue 33, section 3): artifacts carry their sha256 from the moment they are written; a file
that does not match or cannot be parsed is named, moved aside, and recomputed, or fails saying what to do.
(The feature cache's parts: tests/test_features.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from PIL import Image

from mmrec_pipeline.compute import Compute
from mmrec_pipeline.features.vq import VQConfig, train_or_load_vq_vae, vq_codes
from mmrec_pipeline.models.popularity import Popularity
from mmrec_pipeline.storage import CorruptFileError, Lake
from mmrec_pipeline.weights import ModelSources

CPU = Compute(device="cpu", batch_size=8)


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x04  # in the tensor bytes, past the safetensors header
    path.write_bytes(bytes(data))


def aside(path: Path) -> list[Path]:
    return list(path.parent.glob(path.name + ".corrupt-*"))


def popularity_checkpoint(folder: Path) -> Path:
    model = Popularity(Popularity.Config())
    model.n_items, model.counts = 50, torch.arange(50, dtype=torch.float32)
    return model.save(folder)


@pytest.mark.parametrize("damage", ["flip a bit in the weights", "truncate the weights", "break config.json"])
def test_a_corrupt_checkpoint_fails_naming_the_file_and_what_to_do(tmp_path, damage):
    folder = popularity_checkpoint(tmp_path / "popularity" / "global")
    assert json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert torch.equal(Popularity.load(folder).counts, torch.arange(50, dtype=torch.float32))
    bad = folder / ("config.json" if "config" in damage else "model.safetensors")
    if damage.startswith("flip"):
        flip_a_bit(bad)
    else:
        bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptFileError) as e:
        Popularity.load(folder)
    message = str(e.value)
    assert str(bad) in message and "re-materialize the 'popularity' asset" in message
    assert not bad.exists() and len(aside(bad)) == 1 and str(aside(bad)[0]) in message
    popularity_checkpoint(folder)  # what re-materializing does
    assert torch.equal(Popularity.load(folder).counts, torch.arange(50, dtype=torch.float32))


def test_a_corrupt_vq_vae_is_retrained_or_names_the_asset_to_rerun(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    paths = []
    for i in range(36):  # MIN_TRAIN_IMAGES: 16 held out, the rest to train on
        path = tmp_path / "img" / f"{i}.png"
        Image.new("RGB", (32, 32), (7 * i, 255 - 7 * i, 90 + i)).save(path)
        paths.append(str(path))
    items = pl.DataFrame({"item_id": [str(i) for i in range(36)], "image_path": paths,
                          "image_sha256": [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]})
    config = VQConfig(image_size=32, channels=(8,), res_blocks=1, codebook_size=16, code_dim=4, steps=3,
                      batch_size=4)
    folder, weights = tmp_path / "vq", tmp_path / "vq" / "model.safetensors"
    assert train_or_load_vq_vae(paths, folder, config, CPU)[2]
    assert json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert not train_or_load_vq_vae(paths, folder, config, CPU)[2]  # intact: reused
    flip_a_bit(weights)
    with caplog.at_level(logging.WARNING, logger="mmrec_pipeline"):
        assert train_or_load_vq_vae(paths, folder, config, CPU)[2]  # the tokenizer asset trains it again
    assert str(weights) in caplog.text and "training the VQ-VAE again" in caplog.text and len(aside(weights)) == 1
    flip_a_bit(weights)
    with pytest.raises(CorruptFileError, match="re-materialize vq_tokenizer") as e:  # vq_codes cannot retrain
        vq_codes(items, ModelSources(), CPU, Lake(tmp_path).feature_cache(), vqvae=folder)
    assert str(weights) in str(e.value) and len(aside(weights)) == 2
    assert train_or_load_vq_vae(paths, folder, config, CPU)[2]  # what re-materializing vq_tokenizer does
    out, s = vq_codes(items, ModelSources(), CPU, Lake(tmp_path).feature_cache(), vqvae=folder)
    assert s["computed"] == 36 and out["vq_codes"].null_count() == 0


def test_the_converted_summarizer_is_checked_converted_again_when_corrupt_and_leaves_no_temp(tmp_path, monkeypatch,
                                                                                             caplog):
    """The conversion itself (transformers de-quantizing the GGUF, ~30 s) is replaced by a writer of two small
    files; what is tested is the folder's handling around it."""
    from mmrec_pipeline.features import summaries

    conversions = []

    def dequantize(gguf, out, fail=False):
        out.mkdir()
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 16)
        conversions.append(out)
        if fail:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(summaries, "_dequantize_gguf", dequantize)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    sources, cache_root = ModelSources(summarizer=str(gguf)), Lake(tmp_path).feature_cache()
    folder = summaries.converted_summarizer_dir(sources, cache_root)
    folder.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):  # a killed conversion's temp folder, and a live one's
        (folder.parent / f".{folder.name}.{pid}.0badc0de.tmp").mkdir()

    assert summaries.summarizer_source(sources, cache_root) == str(folder) and len(conversions) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
    temps = sorted(p.name for p in folder.parent.glob(".*.tmp"))
    assert temps == [f".{folder.name}.{os.getpid()}.0badc0de.tmp"]  # the dead writer's is swept
    summaries.summarizer_source(sources, cache_root)
    assert len(conversions) == 1  # intact: reused

    flip_a_bit(folder / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="mmrec_pipeline"):
        summaries.summarizer_source(sources, cache_root)
    assert len(conversions) == 2 and str(folder / "model.safetensors") in caplog.text
    assert "converting tiny.gguf again" in caplog.text and len(aside(folder)) == 1

    (folder / "config.json").write_text("{")  # broken, and the disk is full when it is converted again
    monkeypatch.setattr(summaries, "_dequantize_gguf", lambda gguf, out: dequantize(gguf, out, fail=True))
    with pytest.raises(OSError, match="No space left"):
        summaries.summarizer_source(sources, cache_root)
    assert not folder.exists() and len(aside(folder)) == 2
    assert sorted(p.name for p in folder.parent.glob(".*.tmp")) == temps  # the failed try left no temp folder


def test_a_broken_fit_report_names_the_file_and_the_asset_to_rerun(tmp_path):
    from mmrec_pipeline.serving import retrain_config

    folder = popularity_checkpoint(tmp_path / "popularity" / "recent")
    (folder / "fit_report.json").write_text('{"best_epoch": ')  # cut short
    with pytest.raises(CorruptFileError, match="re-materialize the 'popularity' asset") as e:
        retrain_config(Popularity, folder)
    assert str(folder / "fit_report.json") in str(e.value) and len(aside(folder / "fit_report.json")) == 1
