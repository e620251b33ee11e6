# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.nuclei.pseudo_masks: the psm_infer run (bad files skipped, missing or mismatched checkpoints)."""

import json

import pytest
import torch

from bundle.errors import root_cause  # MONAI wraps errors raised inside ``$@runner.run()`` in RuntimeError
from bundle.networks import Res2Net


def test_psm_infer_skips_bad_files_and_reports(root, synthetic_dir, tmp_path, infer_workflow):
    import shutil

    folder = tmp_path / "tiles"
    folder.mkdir()
    for p in sorted((synthetic_dir / "images").glob("*.png"))[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "zero.png").write_bytes(b"")
    (folder / "tiny.png").write_bytes((synthetic_dir / "images" / "tile_00.png").read_bytes()[:100])
    import numpy as np

    from bundle.io import write_image

    for name, grey in (("white", 255), ("black", 0), ("grey", 200)):  # issue 33, item 10: no tissue, no mask
        write_image(folder / f"{name}.png", np.full((128, 128, 3), grey, np.uint8))
    net = Res2Net("cpu", base_channels=16)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    wf = infer_workflow(root, folder, tmp_path, tmp_path / "model.pt", output_dir=str(tmp_path / "o"))
    wf.run()
    # clustering and files on two threads beside the network (the GPU setting): the same files, rows and skips
    infer_workflow(root, folder, tmp_path, tmp_path / "model.pt", output_dir=str(tmp_path / "o2"),
                   **{"runner#workers": 2}).run()
    for sub in ("masks", "psm", "overlays"):
        for f in (tmp_path / "o" / sub).iterdir():
            assert f.read_bytes() == (tmp_path / "o2" / sub / f.name).read_bytes()
    drop = lambda d: {k: v for k, v in d.items() if not k.endswith("_s") and k not in ("seconds",)}  # noqa: E731
    assert drop(json.loads((tmp_path / "o2" / "summary.json").read_text())) == \
        drop(json.loads((tmp_path / "o" / "summary.json").read_text()))
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_images"] == 2 and s["n_skipped"] == 5
    assert any("zero.png" in m and "empty" in m for m in s["skipped"])
    assert sum("blank tile" in m for m in s["skipped"]) == 3
    assert sorted(p.name for p in (tmp_path / "o" / "masks").iterdir()) == sorted(
        p.name for p in sorted((synthetic_dir / "images").glob("*.png"))[:2])  # blank tiles get no training mask
    assert not list((tmp_path / "o").rglob("*.part*"))


def test_missing_and_mismatched_checkpoint(root, synthetic_dir, tmp_path, infer_workflow):
    wf = infer_workflow(root, synthetic_dir / "images", tmp_path, tmp_path / "nope.pt", output_dir=str(tmp_path / "o"))
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "nope.pt: checkpoint not found" in str(err) and "\n" not in str(err)
    torch.save(Res2Net("cpu", base_channels=8).state_dict(), tmp_path / "other.pt")
    wf = infer_workflow(root, synthetic_dir / "images", tmp_path, tmp_path / "other.pt", output_dir=str(tmp_path / "o"))
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, ValueError) and "other.pt: checkpoint does not match" in str(err)
    assert not (tmp_path / "o").exists()
