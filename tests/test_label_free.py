# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Tests bundle.label_free: the stage runner (`python -m bundle.label_free`), its plans, markers and command line."""

import json
import os
import subprocess
import sys

import pytest
from monai.bundle import ConfigWorkflow

from bundle.label_free import child_env


def test_failed_stage_ends_with_its_cause(tmp_path, root):
    """An empty folder: the stage (a ``monai.bundle run``) ends its traceback with the one-line cause, and
    ``bundle.label_free`` repeats it in its own last line."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "bundle.label_free", "--dataset_dir", str(empty), "--bundle_root",
                        str(tmp_path / "out"), "--stages", "ssl"], cwd=root, env=child_env(OMP_NUM_THREADS=1),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    cause = f"ImageError: {empty}: no image files"
    assert any(ln.startswith(f"ERROR: {cause}") for ln in lines), r.stderr[-2000:]
    assert "stage ssl failed (exit 1): " + cause in lines[-1]


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
        return cmd[cmd.index("--config_file") + 1].split("/")[-1].rstrip("']"), cmd[i:]

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
    mpp = {c[c.index("--config_file") + 1].split("/")[-1].rstrip("']"): (c[c.index("--mpp") + 1] if "--mpp" in c else None)
           for c in calls}
    assert mpp == {"ssl_train.json": None, "psm_infer.json": "0.5", "det_train.json": "0.5",
                   "train.json": "0.5", "inference.json": "0.4"}  # an explicit stage override wins
    with pytest.raises(ValueError, match="mpp"):
        lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run2"), mpp=-1)


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


def test_init_passes_the_shipped_weights_to_the_training_stages(root, tmp_path, synthetic_dir, monkeypatch):
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), init="models")
    ckpt = str((root / "models" / "model.pt").resolve())
    init = {c[c.index("--config_file") + 1].split("/")[-1].rstrip("']"): c[c.index("--init_ckpt") + 1]
            if "--init_ckpt" in c else None for c in calls}
    assert init == {"ssl_train.json": None, "psm_infer.json": None, "det_train.json": ckpt, "train.json": ckpt,
                    "inference.json": None}
    assert lf.init_checkpoint("models", "ki67/model.pt") == str((root / "models" / "ki67" / "model.pt").resolve())
    with pytest.raises(FileNotFoundError, match="--init checkpoint not found"):
        lf.init_checkpoint(str(tmp_path / "nothing"))


@pytest.mark.parametrize("path", ["/data/$HOME/tiles", "$(touch x)", "@network_def", "%configs/train.json#x", "2024",
                                  "a,b", "True", "/a/b::c", "/plain/path with space", "/data/user@host/x"])
def test_user_paths_reach_the_config_as_literal_strings(path, tmp_path):
    """Issue 33, item 2: a folder name must never be evaluated, resolved, expanded or turned into a number."""
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    from bundle.label_free import bundle_command, config_literal

    cmd = bundle_command("configs/inference.json", path, path)
    arg = cmd[cmd.index("--dataset_dir") + 1]
    assert arg == config_literal(path) and cmd[cmd.index("--bundle_root") + 1] == arg
    parsed = ConfigParser({"dataset_dir": DefaultParseValue(arg), "network_def": 1})  # as monai.bundle run reads it
    assert parsed.get_parsed_content("dataset_dir") == path
    if path.startswith("/plain") or path == "/data/user@host/x":
        assert arg == path  # plain paths stay readable in the logged command


def test_killing_the_pipeline_stops_its_stage_and_the_folder_is_exclusive(tmp_path):
    """Issue 33, items 5-6: SIGTERM to label_free stops the running stage too (it used to keep training and race the
    rerun); a second run into a held bundle_root stops with one line; a dead holder's lock is taken over."""
    import signal
    import textwrap
    import time

    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import sys
        from bundle.label_free import run_stages
        code = "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
        child = [sys.executable, "-c", code]
        run_stages([("slow", child, False)], {str(tmp_path / 'root')!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=child_env(), stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    lock = json.loads((tmp_path / "root" / ".lock").read_text())
    assert lock["pid"] == proc.pid
    # a second run into the same bundle_root: one line naming the holder
    busy = subprocess.run([sys.executable, "-m", "bundle.label_free", "--dataset_dir", str(tmp_path),
                           "--bundle_root", str(tmp_path / "root"), "--stages", "psm"], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    last = [ln for ln in busy.stderr.splitlines() if ln.strip()][-1]
    assert busy.returncode == 1 and "in use by another label-free run" in last and f"PID {proc.pid}" in last
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the stage is gone with its parent
    assert "stopped by signal SIGTERM" in proc.stderr.read()
    assert not (tmp_path / "root" / ".lock").exists()  # released on the way out
    # a lock whose holder is gone is stale: taken over
    from bundle.runs import FolderLock, output_run

    (tmp_path / "root" / ".lock").write_text(json.dumps({"pid": child, "host": __import__("socket").gethostname()}))
    with FolderLock(tmp_path / "root") as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    # a runner's output folder: temporaries of a killed run and its old summary are cleared at the start
    out = tmp_path / "out"
    (out / "points").mkdir(parents=True)
    (out / "points" / ".a.csv.x1.part.csv").write_text("half")
    (out / "summary.csv").write_text("old")
    with output_run(out):
        assert not list(out.rglob("*.part*")) and not (out / "summary.csv").exists()


def test_nproc_runs_the_training_and_inference_stages_under_torchrun(synthetic_dir, tmp_path, monkeypatch):
    """Issue 30: ``--nproc 2``: det, seg and infer (Ki-67: every training round and the inference) start with
    ``torchrun --standalone --nproc_per_node 2`` and their multi-GPU override merged last; psm runs as before.
    (The two-process training itself: tests/test_distributed.py.)"""
    import bundle.label_free as lf

    calls = []
    monkeypatch.setattr(lf.subprocess, "Popen", fake_popen(calls))
    lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "run"), nproc=2)
    assert [("torch.distributed.run" in c) for c in calls] == [True, False, True, True, True]  # ssl psm det seg infer
    for cmd in calls[:1] + calls[2:]:
        cfg = cmd[cmd.index("--config_file") + 1]
        assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and "--standalone" in cmd
        want = ("multi_gpu_inference.json" if "inference.json" in cfg else
                "multi_gpu_ssl_train.json" if "ssl_train.json" in cfg else "multi_gpu_train.json")
        assert cfg.rstrip("']").endswith(want)
    calls.clear()
    lf.run_ki67_pipeline(str(synthetic_dir / "images"), str(tmp_path / "k"), nproc=2)
    assert [("torch.distributed.run" in c) for c in calls] == [True, True]
    assert lf.torchrun_command(["py", "-m", "monai.bundle", "run", "--config_file", "a.json"], 1, "x.json") == [
        "py", "-m", "monai.bundle", "run", "--config_file", "a.json"]
    with pytest.raises(SystemExit):
        lf.main(str(synthetic_dir / "images"), str(tmp_path / "j"), stain="ihc", nproc=2, jobs=2)


def test_mpp_auto_trains_on_working_scale_copies_and_infers_on_the_tiles(synthetic_dir, tmp_path, monkeypatch):
    """Issue 29: ``--mpp auto`` adds the scale stage, gives ssl / psm / det / seg the 40x copies and no ``--mpp``,
    and runs infer on the user's own tiles with no ``--mpp`` (each tile's scale measured); Ki-67 refuses it."""
    import bundle.label_free as lf

    report = lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "r"), mpp="auto", dry_run=True)
    assert [r[0] for r in report] == ["scale", "ssl", "psm", "det", "seg", "infer"]
    plan = {}
    monkeypatch.setattr(lf, "run_stages", lambda p, *a, **k: plan.setdefault("plan", p))
    lf.run_pipeline(str(synthetic_dir / "images"), str(tmp_path / "r"), mpp="auto")
    cmds = dict((name, cmd) for name, cmd, *_ in plan["plan"])
    work = str(tmp_path / "r" / "eval" / "working_scale" / "images")
    assert cmds["scale"][-3:] == ["bundle.scale", str(synthetic_dir / "images"),
                                  str(tmp_path / "r" / lf.WORKING_SCALE_DIR)]
    for st in ("ssl", "psm", "det", "seg"):
        assert cmds[st][cmds[st].index("--dataset_dir") + 1] == work and "--mpp" not in cmds[st]
    assert cmds["infer"][cmds["infer"].index("--dataset_dir") + 1] == str(synthetic_dir / "images")
    assert "--mpp" not in cmds["infer"]
    with pytest.raises(SystemExit):
        lf.main(str(synthetic_dir / "images"), str(tmp_path / "k"), stain="ihc", mpp="auto")
