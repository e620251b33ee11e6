# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The bundle as a Model Zoo user gets it: shipped weights (models/, large_files.yml), every config parses, and
inference.json runs on an embedded image with the shipped weights from a copy of the bundle in another folder."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ZOO_LIMIT = 25 * 1024 * 1024  # the Model Zoo's largest file


def large_files(root: Path) -> list:
    """``[(path, sha256)]`` of large_files.yml (a plain list of path / url / hash_val / hash_type entries)."""
    text = (root / "large_files.yml").read_text()
    paths = re.findall(r'- path: "([^"]+)"', text)
    hashes = re.findall(r'hash_val: "([0-9a-f]{64})"', text)
    assert len(paths) == len(hashes) == len(re.findall(r'hash_type: "sha256"', text)) > 0
    return list(zip(paths, hashes))


def test_shipped_files_match_large_files_yml(root):
    from scripts.ship_weights import sha256

    entries = large_files(root)
    assert {p for p, _ in entries} == {f"models/{sub}{name}" for sub in ("", "ki67/")
                                       for name in ("model.pt", "model.ts", "model.onnx", "settings.json")}
    for path, digest in entries:
        f = root / path
        assert f.is_file() and f.stat().st_size < ZOO_LIMIT, path
        assert sha256(f) == digest, f"{path}: sha256 differs from large_files.yml"
    for sub in ("", "ki67"):  # both trained at 40x
        assert json.loads((root / "models" / sub / "settings.json").read_text())["mpp"] == 0.25
    if importlib.util.find_spec("onnx") is not None:  # each ONNX export names the weights it holds: used as shipped
        from bundle.backends import _recorded_sha256

        for sub in ("", "ki67"):
            assert _recorded_sha256(root / "models" / sub / "model.onnx") == sha256(root / "models" / sub / "model.pt")


def test_shipped_torchscript_equals_eager_network(root):
    """models/model.ts and models/ki67/model.ts (ckpt_export of inference.json's / ki67_infer.json's network_def)
    give the eager networks' outputs (1e-5) at two input sizes; model.pt loads as a plain state dict into the
    configured network."""
    from monai.bundle import ConfigParser

    from scripts.ship_weights import check_export

    for sub in ("", "ki67"):
        assert check_export(root / "models" / sub / "model.ts", root / "models" / sub / "model.pt") <= 1e-5
    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"bundle_root": str(root), "device": "$torch.device('cpu')"})
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))


def test_shipped_network_contract(root):
    """MONAI's own check of each shipped network against the meta file (input channels, output channels, dtype); the
    Ki-67 network takes RGB and gives 3 classes (the meta file describes the nuclei network, so those two differ)."""
    from monai.bundle import verify_net_in_out

    meta, configs = str(root / "configs" / "metadata.json"), root / "configs"
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(configs / "inference.json"),
                      bundle_root=str(root), n=2, device="cpu")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(configs / "ki67_infer.json"),
                      bundle_root=str(root), n=2, device="cpu",
                      **{"_meta_#network_data_format#inputs#image#num_channels": 3,
                         "_meta_#network_data_format#outputs#pred#num_channels": 3})


def test_every_config_parses(root):
    """Each config (an overlay merged on its base) reads and parses, and every ``_target_`` it names can be found
    (without instantiating anything)."""
    import pydoc

    from monai.bundle import ConfigParser
    from monai.bundle.config_item import ComponentLocator

    from bundle.label_free import OVERLAYS, config_files

    def targets(x):
        if isinstance(x, dict):
            yield from ([x["_target_"]] if isinstance(x.get("_target_"), str) else [])
            for v in x.values():
                yield from targets(v)
        elif isinstance(x, list):
            for v in x:
                yield from targets(v)

    names = sorted(p.name for p in (root / "configs").glob("*.json") if "metadata" not in p.name)
    assert {"train.json", "inference.json", "det_train.json", "ki67_train.json", "ki67_infer.json"} <= set(names)
    for name in names:
        if name in ("profile_paper.json", "gan_profile_paper.json", "multi_gpu_inference.json",
                    "multi_gpu_train.json", "multi_gpu_ssl_train.json", "multi_gpu_gan_train.json"):  # overrides
            base = {"profile_paper.json": "ssl_train.json", "gan_profile_paper.json": "gan_train.json",
                    "multi_gpu_train.json": "det_train.json",
                    "multi_gpu_ssl_train.json": "ssl_train.json",
                    "multi_gpu_gan_train.json": "gan_train.json"}.get(name, "inference.json")
            files = config_files(base, root / "configs") + [str(root / "configs" / name)]
        else:
            files = config_files(name, root / "configs")
        p = ConfigParser()
        p.read_config(files)
        p.parse()
        assert p.get("imports") or name in OVERLAYS or "profile" in name or "multi_gpu" in name, name
        for t in targets(p.config):
            found = pydoc.locate(t) if "." in t else ComponentLocator().get_component_module_name(t)
            assert found, f"{name}: cannot find _target_ {t}"


@pytest.mark.usefixtures("one_thread")
def test_inference_with_shipped_weights_from_a_copy_of_the_bundle(root, tmp_path):
    """The Zoo use: copy the bundle (configs, models) elsewhere, run inference.json from there on an image with no
    training; nuclei come out of the shipped network and match the synthetic ground truth reasonably."""
    from bundle.synthetic import write_synthetic_folder

    copy = tmp_path / "bundle_copy"
    shutil.copytree(root / "configs", copy / "configs")
    for path, _ in large_files(root):
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, copy / path)
    shutil.copy(root / "large_files.yml", copy)
    write_synthetic_folder(tmp_path / "data", n_tiles=2, size=256, seed=3)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(tmp_path / "data" / "datalist.json"), "--output_dir", str(tmp_path / "out"),
           "--tta", "False"]
    r = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["n_images"] == 2 and s["n_nuclei"] > 10
    assert s["pixel_f1"] > 0.7 and s["aji"] > 0.4, s
    assert len(list((tmp_path / "out" / "labels").glob("*.png"))) == 2
    assert not list(copy.glob("eval")) or not any((copy / "eval").iterdir())  # outputs went to --output_dir only
    assert np.isfinite(s["seconds"])


@pytest.mark.usefixtures("one_thread")
def test_ki67_inference_with_shipped_weights_from_a_copy_of_the_bundle(root, tmp_path):
    """ki67_infer.json from a copy of the bundle, shipped Ki-67 weights, a synthetic IHC tile: positive and negative
    cells found near the tile's own cells, no training."""
    from bundle.annotations import read_point_table
    from bundle.io import write_image
    from bundle.ki67.data import synthetic_ihc_tile
    from bundle.metrics import match_points

    copy = tmp_path / "bundle_copy"
    shutil.copytree(root / "configs", copy / "configs")
    for path, _ in large_files(root):
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, copy / path)
    tile, pts, cls = synthetic_ihc_tile(320, n_positive=10, n_negative=12, radius=8, seed=5)
    write_image(tmp_path / "ihc" / "t.png", tile)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/ki67_infer.json",
           "--dataset_dir", str(tmp_path / "ihc"), "--output_dir", str(tmp_path / "out"), "--tta", "False"]
    r = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["n_positive"] > 0 and s["n_negative"] > 0, s
    found = read_point_table(tmp_path / "out" / "points" / "t.csv")["points"]
    i, _ = match_points(found[:, ::-1], np.asarray(pts, float)[:, ::-1], 8)
    assert len(i) >= 0.5 * len(pts), (len(i), len(pts), len(found))


def test_damaged_shipped_weights_give_one_line_with_the_fix(root, tmp_path):
    """A shipped file that is missing, truncated or from another network: one line naming it and how to restore it."""
    from bundle.checkpoints import load_network_weights
    from bundle.networks import ResUNet34

    copy = tmp_path / "bundle_copy"
    (copy / "models").mkdir(parents=True)
    shutil.copy(root / "large_files.yml", copy)
    ckpt = copy / "models" / "model.pt"
    net = ResUNet34(in_channels=4, out_channels=2, base_channels=16)
    cases = {"missing": None, "truncated": (root / "models" / "model.pt").read_bytes()[:4096],
             "another network": ResUNet34(in_channels=4, out_channels=3, base_channels=16)}
    for case, content in cases.items():
        ckpt.unlink(missing_ok=True)
        if isinstance(content, bytes):
            ckpt.write_bytes(content)
        elif content is not None:
            torch.save(content.state_dict(), ckpt)
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            load_network_weights(net, ckpt)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(ckpt)), case
        assert "git checkout -- models/model.pt" in msg, (case, msg)


def test_metadata_verifies_against_the_local_schema(root, tmp_path):
    """``python -m monai.bundle verify_metadata`` with the schema kept in the repo (docs/meta_schema.json; the
    published one cannot be downloaded offline) passes for both meta files, and fails on what the Zoo rejects."""
    from monai.bundle import verify_metadata

    schema = root / "docs" / "meta_schema.json"
    for name in ("metadata.json", "gan_metadata.json"):
        verify_metadata(meta_file=str(root / "configs" / name), filepath=str(schema))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    bad = {"deprecated key": {**meta, "optional_packages_version": {"timm": "0.9"}},
           "version range": {**meta, "required_packages_version": {"scipy": ">=1.10"}},
           "long changelog": {**meta, "changelog": {"0.9.0": "x" * 101}},
           "display name": {**meta, "name": "Label-free cell recognition"},
           "two outputs": {**meta, "network_data_format": {**meta["network_data_format"], "outputs": {
               "pred": meta["network_data_format"]["outputs"]["pred"],
               "aux": meta["network_data_format"]["outputs"]["pred"]}}}}
    for case, content in bad.items():
        f = tmp_path / f"{case.replace(' ', '_')}.json"
        f.write_text(json.dumps(content))
        with pytest.raises(ValueError):
            verify_metadata(meta_file=str(f), filepath=str(schema))


def test_one_version_and_one_set_of_requirements(root):
    """metadata.json, gan_metadata.json, pyproject.toml and bundle.__version__ state the same version; the GAN meta
    file repeats metadata.json's requirements exactly; the changelog's newest entry is the version."""
    import bundle

    meta = json.loads((root / "configs" / "metadata.json").read_text())
    gan = json.loads((root / "configs" / "gan_metadata.json").read_text())
    project = re.search(r'^version = "([^"]+)"$', (root / "pyproject.toml").read_text(), re.M).group(1)
    assert meta["version"] == gan["version"] == project == bundle.__version__
    assert next(iter(meta["changelog"])) == meta["version"]
    for k in ("name", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "changelog"):
        assert gan[k] == meta[k], k
