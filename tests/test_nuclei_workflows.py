# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""End-to-end runs of det_train -> seg_train -> inference -> evaluate, resume, stage skipping and export, on
synthetic tiles whose pseudo masks are made from their synthetic labels (tiny crops, one or two epochs)."""
import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from bundle.errors import root_cause

FAST = {"epochs": 1, "crop_size": 64, "images_per_batch": 2, "crops_per_image": 2, "base_channels": 8,
        "steps_per_epoch": 2, "val_interval": 1}


@pytest.fixture(scope="module")
def pseudo_root(synthetic_dir, tmp_path_factory):
    """A bundle root whose eval/pseudo_masks/masks holds 0/255 masks for the synthetic tiles."""
    from bundle.annotations import read_instance_label
    from bundle.io import load_datalist, write_image

    root = tmp_path_factory.mktemp("nuclei_run")
    for it in load_datalist(synthetic_dir / "datalist.json"):
        m = read_instance_label(it["label"]) > 0
        name = os.path.basename(it["image"]).rsplit(".", 1)[0] + ".png"
        write_image(root / "eval" / "pseudo_masks" / "masks" / name, (m * 255).astype(np.uint8))
    return root


def workflow(root, config, bundle_root, data, wtype="train", **kw):
    wf = ConfigWorkflow(config_file=str(root / "configs" / config), workflow_type=wtype,
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(bundle_root), dataset_dir=str(data), **kw)
    wf.initialize()
    return wf


def test_det_seg_infer_evaluate_end_to_end(root, synthetic_dir, pseudo_root):
    data = synthetic_dir / "datalist.json"
    det = workflow(root, "det_train.json", pseudo_root, data, **FAST)
    assert det.check_properties() in ([], None)
    det.run()
    det.finalize()
    d = pseudo_root / "models" / "det"
    assert (d / "model.pt").is_file() and (d / "last_checkpoint.pt").is_file() and (d / "best_model.pt").is_file()
    assert len(list((pseudo_root / "eval" / "det_labels").glob("*.npy"))) == 6
    assert list((pseudo_root / "eval" / "det").glob("events.out.tfevents.*"))  # TensorBoard scalars + images

    seg = workflow(root, "seg_train.json", pseudo_root, data, **FAST)
    seg.run()
    seg.finalize()
    assert (pseudo_root / "models" / "seg" / "model.pt").is_file()
    lab = np.load(sorted((pseudo_root / "eval" / "seg_labels").glob("*.npy"))[0])
    assert lab.shape[0] == 2 and set(np.unique(lab[0])) == {0, 1}  # pseudo foreground kept by default
    # the reference's choice (pseudo foreground ignored) rewrites the cached labels instead of reusing them
    workflow(root, "seg_train.json", pseudo_root, data, **{**FAST, "keep_foreground": False}).run()
    lab = np.load(sorted((pseudo_root / "eval" / "seg_labels").glob("*.npy"))[0])
    assert set(np.unique(lab[0])) == {0, 255}
    assert (pseudo_root / "eval" / "seg_labels" / "points").is_dir()

    inf = workflow(root, "inference.json", pseudo_root, data, wtype="infer", base_channels=8, tta=False)
    assert inf.check_properties() in ([], None)
    summary = inf.run()[0]
    assert summary["n_images"] == 6 and "aji" in summary  # the datalist has labels, so it is scored
    out = pseudo_root / "eval" / "nuclei"
    ev = ConfigWorkflow(config_file=str(root / "configs" / "evaluate.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"),
                        bundle_root=str(pseudo_root), dataset_dir=str(synthetic_dir / "labels"))
    ev.initialize()
    res = ev.run()[0]
    assert res["n_images"] == 6
    assert res["mean"]["aji"] == pytest.approx(summary["aji"], abs=1e-6)
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["n_images"] == 6


def test_det_train_resumes(root, synthetic_dir, pseudo_root, tmp_path):
    import shutil

    broot = tmp_path / "r"
    shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
    data = synthetic_dir / "datalist.json"
    workflow(root, "det_train.json", broot, data, **FAST).run()
    ck = torch.load(broot / "models" / "det" / "last_checkpoint.pt", weights_only=False)
    ck["network"]["head.bias"].fill_(77.0)  # a marker: a resumed run starts from it, a fresh run would not
    torch.save(ck, broot / "models" / "det" / "last_checkpoint.pt")
    wf = workflow(root, "det_train.json", broot, data, **{**FAST, "epochs": 2, "learning_rate": 0.0})
    wf.run()
    t = torch.load(broot / "models" / "det" / "last_checkpoint.pt", weights_only=False)
    assert t["trainer"]["iteration"] // t["trainer"]["epoch_length"] == 2
    assert float(t["network"]["head.bias"][0]) == pytest.approx(77.0)


def test_seg_train_needs_detection_checkpoint(root, synthetic_dir, pseudo_root, tmp_path):
    import shutil

    broot = tmp_path / "r2"
    shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
    wf = workflow(root, "seg_train.json", broot, synthetic_dir / "datalist.json", **FAST)
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "det/model.pt: checkpoint not found" in str(err)
    assert "\n" not in str(err)
    # points from the pseudo masks themselves need no detection network
    workflow(root, "seg_train.json", broot, synthetic_dir / "datalist.json", point_source="mask", **FAST).run()
    assert (broot / "models" / "seg" / "model.pt").is_file() and not (broot / "models" / "det").exists()
    labels = broot / "eval" / "seg_labels"
    assert json.loads((labels / "settings.json").read_text())["point_source"] == "mask"
    assert all(len((labels / "points" / f"{p.stem}.csv").read_text().splitlines()) > 1 for p in labels.glob("*.npy"))
    # the CSV holds the label's points: the mask's centroids rounded (as the Voronoi disks are), not truncated
    from bundle.cells import read_points
    from bundle.detection import mask_points
    from bundle.io import read_mask

    stem = next(labels.glob("*.npy")).stem
    want = np.rint(mask_points(read_mask(broot / "eval" / "pseudo_masks" / "masks" / f"{stem}.png"), 1.0))
    np.testing.assert_array_equal(read_points(labels / "points" / f"{stem}.csv"), want)


def test_det_train_without_pseudo_masks_is_one_line_error(root, synthetic_dir, tmp_path):
    wf = workflow(root, "det_train.json", tmp_path / "empty", synthetic_dir / "datalist.json", **FAST)
    with pytest.raises(Exception) as e:
        wf.run()
    err = root_cause(e.value)
    assert isinstance(err, FileNotFoundError) and "pseudo-mask folder not found (run psm_infer first)" in str(err)


def fake_popen(calls, rc=0, envs=None):
    """Stands in for subprocess.Popen in bundle.label_free: records the commands (and environments), exits ``rc``."""
    from types import SimpleNamespace

    def popen(cmd, **kw):
        calls.append(cmd)
        if envs is not None:
            envs.append(kw.get("env"))
        return SimpleNamespace(wait=lambda: rc)
    return popen


def test_label_free_skips_completed_stages(tmp_path, synthetic_dir, monkeypatch):
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    rep = lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="psm,det")
    assert [r[:2] for r in rep] == [("psm", "ran"), ("det", "ran")] and len(calls) == 2
    assert "psm_infer.json" in calls[0][calls[0].index("--config_file") + 1]
    rep = lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="psm,det", force="det",
                          override={"det": {"epochs": 3, "resume": False}})
    assert [r[:2] for r in rep] == [("psm", "skipped"), ("det", "ran")]
    assert calls[-1][calls[-1].index("--epochs") + 1] == "3"
    assert calls[-1][calls[-1].index("--resume") + 1] == "False"  # Fire parses this as a boolean
    # --force on a finished training stage retrains it from scratch; a forced non-training stage just reruns
    lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="psm,det", force="psm,det")
    assert "--resume" not in calls[-2] and calls[-1][-2:] == ["--resume", "False"]
    # the command line: Fire hands --override over as a dict whose JSON false became the string 'false'
    lf.main(str(synthetic_dir / "images"), bundle_root=str(tmp_path / "cli"), stages="seg",
            override={"seg": {"keep_foreground": "false", "epochs": 2}})
    assert calls[-1][calls[-1].index("--keep_foreground") + 1] == "False"
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen([], rc=1))
    with pytest.raises(RuntimeError, match="stage seg failed"):
        lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="seg")
    with pytest.raises(ValueError, match="unknown stage"):
        lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="train")


def test_label_free_ki67_stages(tmp_path, synthetic_dir, monkeypatch):
    """--stain ihc: round-1 seeds, self-training rounds and inference as ki67_train / ki67_infer runs with markers."""
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))

    def args(cmd):
        i = cmd.index("--logging_file") + 2
        return cmd[cmd.index("--config_file") + 1].split("/")[-1], cmd[i:]

    images, run = str(synthetic_dir / "images"), str(tmp_path / "k")
    rep = lf.run_ki67_pipeline(images, run, seeds=3, rounds=2, mpp=0.5, override={"train": {"epochs": 2}})
    assert [r[:2] for r in rep] == [(n, "ran") for n in ("ki67_r1", "ki67_r1_seed1", "ki67_r1_seed2", "ki67_r2",
                                                         "ki67_infer")]
    assert [args(c) for c in calls] == [
        ("ki67_train.json", ["--mpp", "0.5", "--epochs", "2"]),
        ("ki67_train.json", ["--mpp", "0.5", "--epochs", "2", "--seed", "1"]),
        ("ki67_train.json", ["--mpp", "0.5", "--epochs", "2", "--seed", "2"]),
        ("ki67_train.json", ["--mpp", "0.5", "--epochs", "2", "--round", "2"]),
        ("ki67_infer.json", ["--mpp", "0.5", "--round", "2"])]  # the last round's weights
    assert (tmp_path / "k" / "stages" / "ki67_r1_seed2.json").is_file()
    calls.clear()
    rep = lf.run_ki67_pipeline(images, run, seeds=3, rounds=2, force="ki67_r2,ki67_infer")
    assert [r[1] for r in rep] == ["skipped"] * 3 + ["ran", "ran"]
    assert args(calls[0]) == ("ki67_train.json", ["--round", "2", "--resume", "False"])
    assert args(calls[1]) == ("ki67_infer.json", ["--round", "2"])
    assert [r[0] for r in lf.run_ki67_pipeline(images, str(tmp_path / "one"))] == ["ki67_r1", "ki67_infer"]
    with pytest.raises(ValueError, match="unknown stage 'ki67_r2'"):
        lf.run_ki67_pipeline(images, run, stages="ki67_r2")  # one round only
    with pytest.raises(ValueError, match="seeds"):
        lf.ki67_stages(seeds=0)
    with pytest.raises(ValueError, match="needs --rounds 2"):
        lf.ki67_stages(seeds=4)  # extra seeds only teach round 2
    calls.clear()  # the plan's seed / round win over an "all" override
    lf.run_ki67_pipeline(images, str(tmp_path / "ov"), seeds=2, rounds=2, stages="ki67_r1_seed1",
                         override={"all": {"seed": 3}})
    assert args(calls[0]) == ("ki67_train.json", ["--seed", "1"])
    with pytest.raises(ValueError, match="--override must map"):
        lf.run_ki67_pipeline(images, run, override={"epochs": 3})
    with pytest.raises(ValueError, match="stage names"):
        lf.run_ki67_pipeline(images, run, force=True)  # a bare --force
    # a forced rerun that fails leaves no marker, so a plain rerun runs (and resumes) the stage again
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen([], rc=1))
    with pytest.raises(RuntimeError, match="stage ki67_infer failed"):
        lf.run_ki67_pipeline(images, run, seeds=3, rounds=2, force="ki67_infer")
    assert not (tmp_path / "k" / "stages" / "ki67_infer.json").exists()
    assert (tmp_path / "k" / "stages" / "ki67_r2.json").is_file()
    with pytest.raises(SystemExit):
        lf.main(images, bundle_root=run, stain="ki67")
    # --jobs 2: round-1 seeds 1.. two at a time with one thread each on two CPUs; ki67_r1 and round 2 alone
    calls, envs = [], []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls, envs=envs))
    monkeypatch.setattr(lf.os, "cpu_count", lambda: 2)
    rep = lf.run_ki67_pipeline(images, str(tmp_path / "jobs"), seeds=4, rounds=2, jobs=2)
    assert [r[0] for r in rep] == ["ki67_r1", "ki67_r1_seed1", "ki67_r1_seed2", "ki67_r1_seed3", "ki67_r2",
                                   "ki67_infer"]
    threads = [e.get("OMP_NUM_THREADS") for e in envs]
    own = os.environ.get("OMP_NUM_THREADS")  # a stage run alone keeps the caller's setting
    assert threads == [own, "1", "1", own, own, own]  # batches: r1 | seed1 + seed2 | seed3 | r2 | infer
    marker = json.loads((tmp_path / "jobs" / "stages" / "ki67_r1_seed2.json").read_text())
    assert marker["side_by_side"] == 2


def test_label_free_mpp_reaches_every_sized_stage(tmp_path, synthetic_dir, monkeypatch):
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), mpp=0.5,
                    override={"infer": {"mpp": 0.4}})
    mpp = {c[c.index("--config_file") + 1].split("/")[-1]: (c[c.index("--mpp") + 1] if "--mpp" in c else None)
           for c in calls}
    assert mpp == {"ssl_train.json": None, "psm_infer.json": "0.5", "det_train.json": "0.5",
                   "seg_train.json": "0.5", "inference.json": "0.4"}  # an explicit stage override wins
    with pytest.raises(ValueError, match="mpp"):
        lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run2"), mpp=-1)


def test_export_segmentation_network(root, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    from bundle.networks import ResUNet34

    cfg, meta = str(root / "configs" / "inference.json"), str(root / "configs" / "metadata.json")
    torch.manual_seed(0)
    net = ResUNet34(in_channels=4, out_channels=2, base_channels=8).eval()  # default: RGB + haematoxylin channel
    torch.save(net.state_dict(), tmp_path / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=2, base_channels=8)
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "model.pt"),
                meta_file=meta, config_file=cfg, base_channels=8)
    ts = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, 4, 100, 70)  # not a multiple of 32, not the export size
    assert torch.allclose(ts(x), net(x), atol=1e-5)
    # an RGB-only checkpoint (seg_train --hematoxylin_input False) in a bundle root: channels read from it
    seg_dir = tmp_path / "rgb" / "models" / "seg"
    seg_dir.mkdir(parents=True)
    torch.save(ResUNet34(out_channels=2, base_channels=8).state_dict(), seg_dir / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=2, base_channels=8,
                      bundle_root=str(tmp_path / "rgb"), **{"_meta_#network_data_format#inputs#image#num_channels": 3})


def test_det_train_same_seed_same_weights(root, synthetic_dir, pseudo_root, tmp_path):
    import shutil

    weights = []
    for i in range(2):
        broot = tmp_path / f"s{i}"
        shutil.copytree(pseudo_root / "eval" / "pseudo_masks", broot / "eval" / "pseudo_masks")
        # the same-seed guarantee is a CPU one (cuDNN kernels are not bit-reproducible), so pin the device
        workflow(root, "det_train.json", broot, synthetic_dir / "datalist.json", device="$torch.device('cpu')",
                 **FAST).run()
        weights.append(torch.load(broot / "models" / "det" / "model.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_hematoxylin_teacher_skips_ssl_and_psm(root, synthetic_dir, tmp_path, monkeypatch):
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    rep = lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), stages="ssl,psm",
                          teacher="hematoxylin")
    assert [r[:2] for r in rep] == [("psm", "ran")]
    assert calls[0][calls[0].index("--scm#fusion") + 1] == "otsu"
    # the psm_infer config itself with that override: pseudo masks, no PSM maps, no checkpoint needed
    wf = ConfigWorkflow(config_file=str(root / "configs" / "psm_infer.json"), workflow_type="infer",
                        meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=str(root / "configs" / "logging.conf"), bundle_root=str(tmp_path / "r"),
                        dataset_dir=str(synthetic_dir / "datalist.json"), ckpt_path=None,
                        **{"scm#fusion": "otsu", "scm#min_size": 30})
    wf.initialize()
    summary = wf.run()[0]
    out = tmp_path / "r" / "eval" / "pseudo_masks"
    assert len(list((out / "masks").glob("*.png"))) == 6 and not (out / "psm").exists()
    assert summary["pixel_f1"] > 0.5  # synthetic nuclei are dark: the classical teacher finds them


def test_mask_points_skip_the_det_stage(synthetic_dir, tmp_path, monkeypatch):
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    rep = lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), points="mask")
    assert [r[0] for r in rep] == ["ssl", "psm", "seg", "infer"]
    seg = calls[2]
    assert seg[seg.index("--point_source") + 1] == "mask" and "--point_source" not in calls[3]
    with pytest.raises(ValueError, match="unknown points"):
        lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), points="gt")


def test_rerun_with_other_settings_warns(synthetic_dir, tmp_path, monkeypatch, caplog):
    """A finished stage is skipped on a rerun; when the rerun's settings differ from the ones it finished with
    (here --points, recorded in its marker) the user is told that they need --force, and a det stage asked for with
    --points mask is reported as not run."""
    import bundle.label_free as lf

    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen([]))
    images, run = str(synthetic_dir / "images"), str(tmp_path / "run")
    lf.run_pipeline(images, run, stages="psm,seg", points="mask")
    with caplog.at_level("WARNING", logger="bundle.label_free"):
        lf.run_pipeline(images, run, stages="psm,seg", points="mask")  # same settings: silent
        assert not [r for r in caplog.records if "other settings" in r.getMessage()]
        rep = lf.run_pipeline(images, run, stages="psm,seg")  # det points now: seg is stale
    assert [r[1] for r in rep] == ["skipped", "skipped"]
    warned = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(warned) == 1 and "stage seg" in warned[0] and "--force seg" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="bundle.label_free"):
        rep = lf.run_pipeline(images, run, stages="det,seg", force="det", points="mask")
    assert [r[0] for r in rep] == ["seg"]
    assert any("drops the det stage" in r.getMessage() for r in caplog.records)


def test_child_env_keeps_the_callers_pythonpath(root, monkeypatch):
    """Child `python -m monai.bundle` processes get this checkout first on PYTHONPATH and keep the caller's entries
    after it (a machine whose packages are only on PYTHONPATH must still import monai in the child)."""
    import os

    from bundle.label_free import child_env

    monkeypatch.setenv("PYTHONPATH", "/carried/packages")
    env = child_env(OMP_NUM_THREADS=1)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(root), "/carried/packages"]
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]
    monkeypatch.delenv("PYTHONPATH")
    assert child_env()["PYTHONPATH"] == str(root)
