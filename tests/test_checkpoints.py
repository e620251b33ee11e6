# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.checkpoints: what a checkpoint says about its network and the pixel size it was trained at."""

from pathlib import Path

import pytest
import torch

from bundle.networks import ResUNet34


def test_network_mpp_from_training_settings(root, tmp_path, caplog):
    """Training writes the pixel size beside the weights; inference resizes tiles of another pixel size to it."""
    import json

    from monai.bundle import ConfigParser

    from bundle.checkpoints import trained_mpp
    from bundle.handlers import CheckpointResume
    from bundle.nuclei.runner import NucleiRunner

    net = torch.nn.Conv2d(3, 2, 1)
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.5}).save(None)
    assert json.loads((tmp_path / "m" / "settings.json").read_text()) == {"mpp": 0.5}
    assert trained_mpp(tmp_path / "m" / "model.pt") == 0.5
    with caplog.at_level("WARNING"):
        assert trained_mpp(tmp_path / "old" / "model.pt", 0.5) is None  # written before the option: not resized
        assert trained_mpp(tmp_path / "old" / "model.pt", 0.5, hint="copy its settings") is None
    warned = [r.getMessage() for r in caplog.records if "no settings.json" in r.getMessage()]
    assert len(warned) == 2 and warned[0].endswith("pass --network_mpp 0.25 if it was trained at 40x")
    assert warned[1].endswith("not resized; copy its settings")  # the caller's hint (a Ki-67 teacher's)
    assert trained_mpp(None) is None
    # resuming checks the recorded settings: another mpp is an error, a checkpoint without them gets none written
    with pytest.raises(ValueError, match="trained with mpp 0.5"):
        CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.25}).load(None)
    CheckpointResume(tmp_path / "m", {"network": net}, settings={"mpp": 0.5})._check_settings(tmp_path / "m")
    old = CheckpointResume(tmp_path / "old", {"network": net})
    old.save(None)
    old = CheckpointResume(tmp_path / "old", {"network": net}, settings={"mpp": 0.25})
    old._check_settings(tmp_path / "old" / "last_checkpoint.pt")
    old.save(None)
    assert old.settings is None and not (tmp_path / "old" / "settings.json").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "settings.json").write_text("{not json")
    with pytest.raises(ValueError, match="settings.json"):
        trained_mpp(tmp_path / "bad" / "model.pt")

    p = ConfigParser()
    p.read_config(str(root / "configs" / "inference.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt")})
    assert p.get_parsed_content("network_mpp") == 0.5
    # 20x tiles (size_scale 0.5) and a network trained at 40x: tiles are shown to it twice as large
    from bundle.inferers import TilePredictor

    at = lambda scale, mpp: NucleiRunner(net, [], tmp_path, predictor=TilePredictor(size_scale=scale, network_mpp=mpp))  # noqa: E731
    assert at(0.5, 0.25).resample == 2.0
    assert at(0.5, 0.5).resample == 1.0
    assert NucleiRunner(net, [], tmp_path).resample == 1.0
    assert at(0.25 / 0.2527, 0.25).resample == 1.0  # Aperio 40x
    from bundle.ki67.runner import Ki67Runner

    assert Ki67Runner(net, [], tmp_path, predictor=TilePredictor(size_scale=0.5, network_mpp=0.25)).resample == 2.0
    p = ConfigParser()
    p.read_config(str(root / "configs" / "ki67_infer.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.5, "stain": "he", "network_mpp": 0.25})
    assert p.get_parsed_content("runner").resample == 2.0  # the H&E runner of ki67_infer.json gets the same resizing
    p = ConfigParser()
    p.read_config(str(root / "configs" / "ki67_infer.json"))
    p.update({"ckpt_path": str(tmp_path / "m" / "model.pt"), "mpp": 0.25})
    assert p.get_parsed_content("network_mpp") == 0.5 and p.get_parsed_content("runner").resample == 0.5
    with pytest.raises(ValueError, match="network_mpp"):
        TilePredictor(network_mpp=0)


@pytest.mark.usefixtures("one_thread")
def test_resunet_checkpoint_dims_reads_head(tmp_path):
    from bundle.checkpoints import resunet_checkpoint_dims

    path = tmp_path / "m.pt"
    torch.save(ResUNet34(out_channels=3, base_channels=8).state_dict(), path)
    assert resunet_checkpoint_dims(path) == (3, 8)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a ResUNet-34"):
        resunet_checkpoint_dims(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resunet_checkpoint_dims(tmp_path / "missing.pt")


def test_init_from_copies_what_fits(tmp_path):
    """init_from: matching tensors copied, a stem with fewer input channels gets the shared ones, a head with another
    class count keeps its own initialisation; None changes nothing."""
    import torch

    from bundle.checkpoints import init_from
    from bundle.networks import ResUNet34

    torch.manual_seed(0)
    src = ResUNet34(in_channels=4, out_channels=2, base_channels=8)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    det = ResUNet34(in_channels=3, out_channels=3, base_channels=8)
    before = {k: v.clone() for k, v in det.state_dict().items()}
    init_from(det, tmp_path / "model.pt")
    a, b = src.state_dict(), det.state_dict()
    same = [k for k in b if a[k].shape == b[k].shape]
    assert len(same) > 0.9 * len(b) and all(torch.equal(a[k], b[k]) for k in same)
    stem = [k for k in b if a[k].dim() == 4 and a[k].shape[1] == 4 and b[k].shape[1] == 3]
    assert stem and all(torch.equal(a[k][:, :3], b[k]) for k in stem)
    head = [k for k in b if a[k].shape != b[k].shape and k not in stem]
    assert head and all(torch.equal(before[k], b[k]) for k in head)
    assert init_from(det, None) is det


def test_resume_checkpoint_never_runs_code(tmp_path):
    """A crafted last_checkpoint.pt (a pickle whose loading would run code) is refused with one line naming it; the
    code does not run. Training states written by the bundle itself load (see the resume tests of each workflow)."""
    import pickle

    import torch

    from bundle.handlers import CheckpointResume

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"network": {}, "trainer": Evil()}, tmp_path / "last_checkpoint.pt", pickle_module=pickle)
    net = torch.nn.Linear(2, 2)
    h = CheckpointResume(ckpt_dir=tmp_path, save_dict={"network": net}, resume=True)

    class Engine:
        class state:
            max_epochs = 1

    with pytest.raises(ValueError) as e:
        h.load(Engine())
    assert str(e.value).startswith(str(tmp_path / "last_checkpoint.pt")) and "\n" not in str(e.value)
    assert "as plain data" in str(e.value) and not marker.exists()


def test_a_det_checkpoint_is_refused_where_the_seg_network_is_needed(tmp_path):
    """Issue 33 (minor): det and seg networks have the same shape; the training record names which one it is."""
    import json

    from bundle.checkpoints import check_network_kind

    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "settings.json").write_text(json.dumps({"mpp": 0.25, "network": "det"}))
    with pytest.raises(ValueError, match="model.pt: holds the detection network .* needs the nuclei segmentation"):
        check_network_kind(tmp_path / "det" / "model.pt", "seg")
    check_network_kind(tmp_path / "det" / "model.pt", "det")
    check_network_kind(tmp_path / "none" / "model.pt", "seg")  # no record (older roots): nothing to check
    root = Path(__file__).resolve().parents[1]
    check_network_kind(root / "models" / "model.pt", "seg")  # the shipped weights say what they are
    check_network_kind(root / "models" / "ki67" / "model.pt", "ki67")


def test_time_profile_splits_data_loading_from_the_step(tmp_path):
    """TimeProfile: a loader that sleeps 20 ms per batch and a step of ~1 ms -> most of the time is dataflow, written
    to profile.json; disabled -> nothing attached, no file."""
    import json
    import time

    from ignite.engine import Engine

    from bundle.handlers import TimeProfile

    def slow_batches():
        for i in range(6):
            time.sleep(0.02)
            yield i

    engine = Engine(lambda e, b: time.sleep(0.001))
    TimeProfile(tmp_path / "on").attach(engine)
    engine.run(slow_batches(), max_epochs=1, epoch_length=6)
    s = json.loads((tmp_path / "on" / "profile.json").read_text())
    assert s["iterations"] == 6
    assert s["dataflow"]["fraction"] > 0.6 and s["dataflow"]["per_iteration"] >= 0.015
    assert s["processing"]["per_iteration"] < s["dataflow"]["per_iteration"]
    assert abs(sum(s[k]["fraction"] for k in ("dataflow", "processing", "handlers")) - 1) < 0.01
    off = Engine(lambda e, b: None)
    TimeProfile(tmp_path / "off", enabled=False).attach(off)
    off.run([0, 1], max_epochs=1)
    assert not (tmp_path / "off").exists()


def test_time_profile_with_an_epoch_shorter_or_longer_than_the_loader(tmp_path):
    """The bundle's trainers run ``epoch_length`` steps whatever the loader's length (Ignite's own profiler would
    index past its arrays): 2 epochs x 5 steps over a 3-item list."""
    import json

    from ignite.engine import Engine

    from bundle.handlers import TimeProfile

    engine = Engine(lambda e, b: None)
    TimeProfile(tmp_path).attach(engine)
    engine.run([0, 1, 2], max_epochs=2, epoch_length=5)
    assert json.loads((tmp_path / "profile.json").read_text())["iterations"] == 10
