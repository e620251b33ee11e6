# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""The whole label-free nuclei pipeline on a folder, one command, stage by stage:

    python -m bundle.label_free --dataset_dir /path/to/tiles --bundle_root out

Stages (each a MONAI bundle config run as ``python -m monai.bundle run``; outputs under ``bundle_root``):

1. ``ssl``   configs/ssl_train.json  -> models/ssl/model.pt       (self-supervised activation network)
2. ``psm``   configs/psm_infer.json  -> eval/pseudo_masks/masks/  (PSM + SCM pseudo masks)
3. ``det``   configs/det_train.json  -> models/det/model.pt       (detection network on the pseudo masks)
4. ``seg``   configs/train.json      -> models/model.pt           (points -> Voronoi -> segmentation network)
5. ``infer`` configs/inference.json  -> eval/nuclei/              (instances, points CSV, GeoJSON, overlays)

A stage whose completion marker ``<bundle_root>/stages/<stage>.json`` exists is skipped (``--force psm,det``
reruns stages; ``--stages psm,det,seg`` runs a subset). A killed training stage resumes from its last epoch when
rerun. ``--override '{"det": {"epochs": 10}}'`` passes config overrides per stage (``"all"`` applies to every
stage), ``--profile paper`` merges configs/profile_paper.json into the SSL/PSM stages, and
``--teacher hematoxylin`` replaces the PSM pseudo masks by haematoxylin-Otsu masks (no ``ssl`` stage), the teacher
that measured better on MoNuSeg (docs/nuclei.md). ``--points mask`` skips the ``det`` stage: the seg stage's Voronoi
labels take their points from the pseudo masks' own watershed instances (``train.json --point_source mask``).
With ``--teacher hematoxylin`` that measured level with the detection network's points and saves the det stage's
time (as long as the seg stage's); with PSM pseudo masks it measured worse (docs/nuclei.md).
``--mpp 0.5`` tells every stage the tiles' micrometres per pixel
(default 0.25, 40x): the pixel sizes tuned at 40x (object and hole areas, peak distances, point blur and merge
distance, Voronoi disks) are scaled to it (:func:`bundle.scale.size_scale`; docs/nuclei.md). ``--mpp auto`` (a
folder of unknown or mixed magnification) adds a first stage, ``scale``, that measures each tile's nucleus size and
writes it resized to 40x into ``eval/working_scale/images`` (:func:`bundle.scale.working_scale_copy`); ssl, psm,
det and seg train on those copies, and infer runs on the original tiles, each at its measured scale.
``--force`` on a finished training stage retrains it from scratch (``--resume False``), not from its last epoch.
``--init models`` starts the det / seg (Ki-67: every training round) networks from the bundle's shipped weights
instead of a random initialisation (``train.json`` ``init_ckpt``; a folder or a checkpoint file works too).
``--nproc 2`` runs the ssl, det, seg and Ki-67 training stages as DistributedDataParallel over 2 processes and the
inference stages sharded over them (``torchrun --standalone`` with ``configs/multi_gpu_ssl_train.json`` /
``multi_gpu_train.json`` / ``multi_gpu_inference.json``: one process per GPU; a global batch of N x
``images_per_batch``); psm runs in one process.

Ki-67 IHC tiles (``--stain ihc``; docs/ki67.md): the stages are ``configs/ki67_train.json`` runs and one
``configs/ki67_infer.json`` run: ``ki67_r1`` (round 1, seed 0), ``ki67_r1_seed1`` ... (``--seeds N``: N round-1
seeds in all), ``ki67_r2`` ... (``--rounds R``: self-training rounds, each taught by all seeds of the round
before) and ``ki67_infer`` (with the last round's weights). ``--seeds 4 --rounds 2`` is docs/ki67.md's robust
recipe; the defaults (one seed, one round) the cheap single run. ``--jobs 2`` trains round-1 seeds 1, 2, ... two
at a time (one thread each on a 2-core machine). ``--dab_threshold 0.4`` sets the Ki-67 positivity threshold (mean
nucleus DAB OD, default 0.3) of the training labels and the inference. ``--override`` keys: a stage name, ``"train"``
(every training stage) or ``"all"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bundle.errors import ERROR_FILE_ENV

logger = logging.getLogger(__name__)

__all__ = [
    "STAGES", "CONFIGS", "OVERLAYS", "config_files", "config_arg", "CONFIG_DIR", "MPP_STAGES", "stage_command",
    "config_literal",
    "bundle_command", "machine", "child_env", "run_pipeline", "TRAINING_STAGES", "run_stages", "ki67_stages",
    "run_ki67_pipeline", "main", "torchrun_command", "DISTRIBUTED"
]

STAGES = ("ssl", "psm", "det", "seg", "infer")


CONFIGS = {"ssl": "ssl_train.json", "psm": "psm_infer.json", "det": "det_train.json", "seg": "train.json",
           "infer": "inference.json"}


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


MPP_STAGES = ("psm", "det", "seg", "infer")  # the configs with an ``mpp`` key


OVERLAYS = {"det_train.json": "train.json", "ki67_train.json": "train.json"}  # overlay -> the base it is merged onto


def config_files(name: str, config_dir: Path = CONFIG_DIR) -> list:
    """The config files that make up config ``name``: an overlay (``det_train.json``, ``ki67_train.json``) comes after
    the shared training base ``train.json`` it overrides, as MONAI merges ``--config_file`` lists left to right."""
    names = [OVERLAYS[name], name] if name in OVERLAYS else [name]
    return [str(Path(config_dir) / n) for n in names]


def config_arg(names, config_dir: Path = CONFIG_DIR) -> str:
    """``--config_file`` value for one config name or a list of them (each expanded by :func:`config_files`)."""
    files = [f for n in ([names] if isinstance(names, str) else names) for f in config_files(n, config_dir)]
    return files[0] if len(files) == 1 else str(files)


def stage_command(stage: str, dataset_dir: str, bundle_root: str, profile: str = "cpu", overrides: dict | None = None,
                  config_dir: Path = CONFIG_DIR) -> list:
    """The ``python -m monai.bundle run ...`` argument list of one stage."""
    if stage not in CONFIGS:
        raise ValueError(f"unknown stage {stage!r} (use {', '.join(STAGES)})")
    names = [CONFIGS[stage]] + (["profile_paper.json"] if profile == "paper" and stage in ("ssl", "psm") else [])
    cfg = config_arg(names, config_dir)
    return bundle_command(cfg, dataset_dir, bundle_root, overrides, config_dir)


DISTRIBUTED = {"ssl": "multi_gpu_ssl_train.json", "det": "multi_gpu_train.json", "seg": "multi_gpu_train.json",
               "infer": "multi_gpu_inference.json", "ki67_train.json": "multi_gpu_train.json",
               "ki67_infer.json": "multi_gpu_inference.json"}


def torchrun_command(cmd: list, nproc: int, override_config: str, config_dir: Path = CONFIG_DIR) -> list:
    """A :func:`bundle_command` as ``torchrun --standalone --nproc_per_node nproc`` with ``override_config`` (e.g.
    ``multi_gpu_train.json``) merged last; ``cmd`` itself when ``nproc`` is 1."""
    import ast

    if int(nproc) <= 1:
        return list(cmd)
    cmd = list(cmd)
    i = cmd.index("--config_file") + 1
    files = ast.literal_eval(cmd[i]) if cmd[i].startswith("[") else [cmd[i]]
    cmd[i] = str([*files, str(Path(config_dir) / override_config)])
    head = cmd.index("-m")
    return [cmd[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(nproc)), *cmd[head:]]


def config_literal(value) -> str:
    """A user-given string (a folder, a file) as a ``monai.bundle run`` argument that reaches the config as exactly
    that string. Fire would turn ``2024`` into a number and ``a,b`` into a tuple, and MONAI would evaluate a leading
    ``$``, resolve ``@name`` and expand ``%macro``; such a value is passed as ``$bytes.fromhex('...').decode()``, an
    expression of hex digits only (nothing in it can be a reference) that evaluates to the original string. Plain
    values are passed as they are, so commands stay readable."""
    from fire.parser import DefaultParseValue

    s = str(value)
    plain = s != "" and s[0] not in "$@%" and "::" not in s and DefaultParseValue(s) == s
    return s if plain else f"$bytes.fromhex('{s.encode().hex()}').decode()"


def bundle_command(cfg: str, dataset_dir: str, bundle_root: str, overrides: dict | None = None,
                   config_dir: Path = CONFIG_DIR) -> list:
    """``python -m monai.bundle run --config_file cfg ...`` with this bundle's metadata and logging files and
    ``overrides`` as ``--key value`` arguments (``dataset_dir`` and ``bundle_root`` as :func:`config_literal`)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, "--dataset_dir",
           config_literal(dataset_dir), "--bundle_root", config_literal(bundle_root),
           "--meta_file", str(config_dir / "metadata.json"),
           "--logging_file", str(config_dir / "logging.conf")]
    for k, v in (overrides or {}).items():
        # Fire reads "True"/"False" as booleans (JSON's true/false would stay strings, and "false" is truthy);
        # Fire also parses this module's own --override, turning a JSON false into the string "false"
        if isinstance(v, str) and v.lower() in ("true", "false"):
            v = v.lower() == "true"
        cmd += [f"--{k}", v if isinstance(v, str) else repr(v) if isinstance(v, bool) else json.dumps(v)]
    return cmd


def machine() -> dict:
    """Where a stage ran, for its marker: platform, CPU count and the GPU present (the configs pick it unless a
    ``device`` override says otherwise), or None. Never raises: a marker must not be lost to this."""
    import platform

    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - broken driver etc.: the stage itself ran
        gpu = "unknown"
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu}


def child_env(**extra) -> dict:
    """Environment for a child ``python -m monai.bundle ...`` process: this checkout's root first on ``PYTHONPATH``
    (so ``bundle`` imports without an install), the caller's ``PYTHONPATH`` kept after it (a GPU machine's carried
    packages, say), and ``extra`` variables (e.g. ``OMP_NUM_THREADS=1``) as strings."""
    root = str(Path(__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, old] if old else [root]),
            **{k: str(v) for k, v in extra.items()}}


def _names(x) -> list:
    """A comma-separated string (Fire may also hand over a tuple) -> list of names."""
    if isinstance(x, bool):  # a bare ``--force`` on the command line
        raise ValueError("--stages / --force take stage names, e.g. --force det,seg")
    if isinstance(x, str):
        return [s.strip() for s in x.split(",") if s.strip()]
    return list(x or ())


def _overrides(x) -> dict:
    """``--override``: a JSON string or a dict (Fire parses it) -> dict."""
    x = (json.loads(x) if x else {}) if isinstance(x, str) else (x or {})
    if not isinstance(x, dict) or not all(isinstance(v, dict) for v in x.values()):
        raise ValueError(f"--override must map stage names to {{key: value}} dicts, e.g. '{{\"det\": {{\"epochs\": 10}}}}', "
                         f"got {x!r}")
    return dict(x)


def _check_inputs(dataset_dir: str, mpp: float | None) -> None:
    """One clear error before any stage runs: a missing dataset, an ``mpp`` out of range."""
    if mpp is not None:
        from bundle.scale import size_scale

        size_scale(mpp)
    if not os.path.exists(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir}: dataset folder or datalist not found")


def run_pipeline(dataset_dir: str, bundle_root: str, stages: str | list = STAGES, force: str | list = (),
                 profile: str = "cpu", override: str | dict | None = None, dry_run: bool = False,
                 teacher: str = "psm", mpp: float | None = None, points: str = "det", init: str | None = None,
                 nproc: int = 1) -> list:
    """Run the stages in order, skipping completed ones (:func:`run_stages`). Returns
    ``[(stage, "ran" | "skipped" | "dry-run", seconds)]``.

    ``init`` (a folder with a ``model.pt``, e.g. the bundle's ``models``) starts the det and seg networks from those
    weights instead of from scratch (:func:`bundle.checkpoints.init_from`).

    ``teacher="hematoxylin"`` makes the pseudo masks by haematoxylin Otsu (``--scm#fusion otsu``) and skips the
    ``ssl`` stage (no activation network is needed); ``"psm"`` (default) is the PSM method. ``mpp`` (the tiles'
    micrometres per pixel; None = the configs' 0.25) is passed to every stage that scales pixel sizes by it;
    ``"auto"`` (a folder of unknown or mixed magnification) first runs the ``scale`` stage
    (:func:`bundle.scale.working_scale_copy`: each tile's nucleus size measured, the tile resized to 40x into
    ``<bundle_root>/eval/working_scale/images``), trains every network on those copies at 40x, and runs the
    ``infer`` stage on the original tiles with each tile's scale measured (``inference.json`` with no ``mpp``).
    ``points="mask"`` drops the ``det`` stage and gives the seg stage the pseudo masks' own instance centres
    (``train.json`` ``point_source``); ``"det"`` (default) is the PSM method's detection network. ``nproc`` > 1 runs
    det, seg and infer on that many processes (:func:`torchrun_command`).

    Raises:
        RuntimeError: a stage failed (its command and exit code are named; earlier outputs are kept).
    """
    stages, force, override = _names(stages), _names(force), _overrides(override)
    if teacher not in ("psm", "hematoxylin"):
        raise ValueError(f"unknown teacher {teacher!r} (use 'psm' or 'hematoxylin')")
    if points not in ("det", "mask"):
        raise ValueError(f"unknown points {points!r} (use 'det' or 'mask')")
    if points == "mask":
        if "det" in force or ("det" in stages and stages != list(STAGES)):
            logger.warning("--points mask drops the det stage: the det named in --stages / --force is not run")
        if teacher == "psm":
            logger.warning("--points mask with PSM pseudo masks measured worse than the det stage's points on MoNuSeg "
                           "(train AJI 0.410 vs 0.432, docs/nuclei.md); it was a tie with --teacher hematoxylin")
        stages = [st for st in stages if st != "det"]
        override = {**override, "seg": {"point_source": "mask", **override.get("seg", {})}}
    if teacher == "hematoxylin":
        stages = [st for st in stages if st != "ssl"]
        override = {**override, "psm": {"scm#fusion": "otsu",
                                         "scm#min_size": "$bundle.scale.scaled(30, @size_scale, area=True)",
                                         "ckpt_path": "$None", **override.get("psm", {})}}
    auto = str(mpp).lower() == "auto"
    if mpp is not None and not auto:
        override = {**override, **{st: {"mpp": float(mpp), **override.get(st, {})} for st in MPP_STAGES}}
    if init:
        ckpt = init_checkpoint(init)
        override = {**override, **{st: {"init_ckpt": ckpt, **override.get(st, {})} for st in ("det", "seg")}}
    for s in list(stages) + list(force):
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r} (use {', '.join(STAGES)})")
    _check_inputs(dataset_dir, None if auto else mpp)
    # --mpp auto: the training stages see copies of the tiles at the common 40x working scale (the "scale" stage);
    # inference runs on the user's own tiles, each at its measured scale (inference.json with no mpp)
    train_dir = str(Path(bundle_root) / WORKING_SCALE_DIR / "images") if auto else dataset_dir
    plan = [(st, stage_command(st, dataset_dir if st == "infer" else train_dir, bundle_root, profile,
                               {**override.get("all", {}), **override.get(st, {})}), st in TRAINING_STAGES)
            for st in STAGES if st in stages]
    plan = [(st, torchrun_command(cmd, nproc, DISTRIBUTED[st]) if st in DISTRIBUTED else cmd, trains)
            for st, cmd, trains in plan]
    if auto and any(st != "infer" for st, _, _ in plan):
        scale = [sys.executable, "-m", "bundle.scale", str(dataset_dir), str(Path(bundle_root) / WORKING_SCALE_DIR)]
        plan.insert(0, ("scale", scale, False))
    return run_stages(plan, bundle_root, force, dry_run)


WORKING_SCALE_DIR = "eval/working_scale"  # --mpp auto: the tiles at 40x (images/) and each one's scale (scales.csv)


TRAINING_STAGES = ("ssl", "det", "seg")  # their configs resume from a checkpoint (``resume``)


def init_checkpoint(init: str, name: str = "model.pt") -> str:
    """``--init``: ``models`` (this bundle's shipped weights), a folder holding ``name``, or a checkpoint file ->
    the checkpoint's absolute path (:func:`config_literal`); one-line error when it does not exist."""
    p = CONFIG_DIR.parent / "models" if str(init) == "models" else Path(init)
    p = p / name if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p}: --init checkpoint not found (use 'models' for the bundle's shipped weights)")
    return config_literal(p.resolve())


def _settings_changed(marker: Path, cmd: list) -> bool:
    """Whether a finished stage's recorded command (its marker) set other config values than ``cmd`` does: the
    ``--key value`` pairs after ``--config_file``, ignoring the interpreter, the metadata / logging file paths and
    ``--resume``. An unreadable or older marker without a command counts as unchanged (no false alarm)."""
    def settings(c):
        c, out = list(c), {}
        for i in range(len(c) - 1):
            if str(c[i]).startswith("--") and str(c[i]) not in ("--resume", "--meta_file", "--logging_file"):
                out[str(c[i])] = str(c[i + 1])
        return out

    try:
        recorded = json.loads(marker.read_text()).get("command")
    except (OSError, ValueError):
        return False
    return bool(recorded) and settings(recorded[1:]) != settings(cmd[1:])


def run_stages(plan: list, bundle_root: str, force=(), dry_run: bool = False, jobs: int = 1) -> list:
    """Run ``plan`` = ``[(name, command, trains[, group])]`` in order, skipping a stage whose marker
    ``<bundle_root>/stages/<name>.json`` exists unless ``name`` is in ``force``; a forced finished stage that
    ``trains`` gets ``--resume False`` (unless its command sets ``--resume``), so it trains again from scratch
    instead of resuming its finished checkpoint. With ``jobs`` > 1, up to ``jobs`` consecutive stages of the same
    ``group`` (independent of each other, e.g. round-1 seeds) run side by side, each with
    ``OMP_NUM_THREADS`` = CPUs / jobs. Returns ``[(name, "ran" | "skipped" | "dry-run", seconds)]``.

    Raises:
        RuntimeError: a stage failed (its command and exit code are named; earlier outputs are kept), or another
            live run holds ``bundle_root`` (:class:`bundle.runs.FolderLock`, one line naming it).
    """
    done_dir = Path(bundle_root) / "stages"
    report, todo = [], []
    for stage, cmd, trains, *group in plan:
        marker = done_dir / f"{stage}.json"
        if marker.is_file() and stage not in force:
            logger.info(f"stage {stage}: done before ({marker}), skipped")
            if _settings_changed(marker, cmd):
                logger.warning(f"stage {stage}: finished before with other settings (the command in {marker}); this "
                               f"run's settings (e.g. --teacher, --points, --mpp, --override) do not reach it unless "
                               f"you add --force {stage}")
            report.append((stage, "skipped", 0.0))
            continue
        if marker.is_file() and trains and "--resume" not in cmd:
            cmd = cmd + ["--resume", "False"]
        if dry_run:
            logger.info(f"stage {stage}: {' '.join(cmd)}")
            report.append((stage, "dry-run", 0.0))
            continue
        todo.append((stage, cmd, marker, group[0] if group else None))
    if not todo:
        return report
    from bundle.runs import FolderLock

    with FolderLock(bundle_root, what="label-free run"), _forward_signals() as children:
        return _run_batches(todo, report, jobs, children)


@contextlib.contextmanager
def _forward_signals():
    """SIGTERM / SIGINT (and SIGHUP) to this process end its stage processes too: each is asked to stop (SIGTERM),
    given 30 s, then killed, and only then does this process exit (with 128 + the signal number). Without this a
    killed pipeline left its training stage running, racing the rerun on the same checkpoints. Yields the list the
    caller appends its child processes to."""
    import signal

    children: list = []

    def stop(signum, _frame):
        raise _Stopped(signum)

    sigs = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, stop) for s in sigs}
    try:
        yield children
    except (_Stopped, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        live = [p for p in children if p.poll() is None]
        for p in live:
            p.terminate()
        for p in live:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        logger.error(f"stopped by signal {signal.Signals(signum).name}; {len(live)} running stage(s) stopped too; "
                     "rerun the same command to resume")
        raise SystemExit(128 + int(signum)) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Stopped(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _run_batches(todo: list, report: list, jobs: int, children: list) -> list:
    from bundle.io import write_json

    while todo:
        batch = [todo.pop(0)]
        while todo and int(jobs) > len(batch) and batch[0][3] is not None and todo[0][3] == batch[0][3]:
            batch.append(todo.pop(0))
        env = child_env(OMP_NUM_THREADS=max(1, (os.cpu_count() or 1) // len(batch))) if len(batch) > 1 else child_env()
        t0, procs, error_files = time.time(), [], []
        for stage, cmd, marker, _ in batch:
            marker.unlink(missing_ok=True)  # a forced rerun that dies must not look done; a plain rerun resumes it
            logger.info(f"stage {stage}: {' '.join(cmd)}")
            fd, error_file = tempfile.mkstemp(prefix=f"{stage}.", suffix=".error")  # the stage's last error line
            os.close(fd)
            error_files.append(Path(error_file))
            procs.append(subprocess.Popen(cmd, env={**env, ERROR_FILE_ENV: error_file}))
            children.append(procs[-1])
        failed = []
        for (stage, cmd, marker, _), proc, error_file in zip(batch, procs, error_files):
            rc = proc.wait()
            cause = error_file.read_text().strip() if rc != 0 and error_file.is_file() else ""
            error_file.unlink(missing_ok=True)
            if rc != 0:
                failed.append(f"stage {stage} failed (exit {rc}){': ' + cause if cause else ''}; fix the cause and "
                              f"rerun: completed stages are skipped and training resumes. Command: {' '.join(cmd)}")
                continue
            write_json(marker, {"stage": stage, "seconds": time.time() - t0, "command": cmd,
                                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                                "side_by_side": len(batch)})
            report.append((stage, "ran", time.time() - t0))
        if failed:
            raise RuntimeError(" | ".join(failed))
    return report


def ki67_stages(seeds: int = 1, rounds: int = 1) -> list:
    """The Ki-67 plan: ``[(name, config, arguments)]``, see the module docstring."""
    seeds, rounds = int(seeds), int(rounds)
    if seeds < 1 or rounds < 1:
        raise ValueError(f"seeds and rounds must be >= 1, got seeds={seeds}, rounds={rounds}")
    if seeds > 1 and rounds == 1:
        raise ValueError(f"--seeds {seeds} needs --rounds 2: the extra round-1 seeds only teach the next round")
    plan = [("ki67_r1", "ki67_train.json", {})]
    plan += [(f"ki67_r1_seed{s}", "ki67_train.json", {"seed": s}) for s in range(1, seeds)]
    plan += [(f"ki67_r{r}", "ki67_train.json", {"round": r}) for r in range(2, rounds + 1)]
    return plan + [("ki67_infer", "ki67_infer.json", {"round": rounds} if rounds > 1 else {})]


def run_ki67_pipeline(dataset_dir: str, bundle_root: str, seeds: int = 1, rounds: int = 1, stages=None, force=(),
                      override: str | dict | None = None, dry_run: bool = False, mpp: float | None = None,
                      jobs: int = 1, init: str | None = None, dab_threshold: float | None = None,
                      nproc: int = 1) -> list:
    """Train and run the Ki-67 positive / negative detector on a folder of IHC tiles (docs/ki67.md), stage by stage
    as :func:`run_pipeline` does. ``stages`` (None = all) and ``force`` take the names of :func:`ki67_stages`;
    ``jobs`` 2 trains round-1 seeds 1, 2, ... two at a time (after ``ki67_r1``, which writes their labels).
    ``dab_threshold`` (mean nucleus DAB OD; default the configs' 0.3) reaches every stage: the training labels'
    positive class and the inference."""
    plan = ki67_stages(seeds, rounds)
    names = [p[0] for p in plan]
    stages, force, override = _names(stages) or names, _names(force), _overrides(override)
    for s in stages + force:
        if s not in names:
            raise ValueError(f"unknown stage {s!r} (use {', '.join(names)}; --seeds / --rounds add stages)")
    _check_inputs(dataset_dir, mpp)
    steps = []
    for name, config, args in plan:
        if name not in stages:
            continue
        trains = config == "ki67_train.json"
        ov = {**({"mpp": float(mpp)} if mpp is not None else {}),
              **({"dab_threshold": float(dab_threshold)} if dab_threshold is not None else {}),
              **({"init_ckpt": init_checkpoint(init, "ki67/model.pt")} if init and trains else {}),
              **override.get("all", {}),
              **(override.get("train", {}) if trains else {}), **override.get(name, {}), **args}  # plan wins
        group = "r1_seeds" if name.startswith("ki67_r1_seed") else None  # they share ki67_r1's labels only
        cmd = torchrun_command(bundle_command(config_arg(config), dataset_dir, bundle_root, ov), nproc,
                               DISTRIBUTED[config])
        steps.append((name, cmd, trains, group))
    return run_stages(steps, bundle_root, force, dry_run, jobs)


def main(dataset_dir: str, bundle_root: str = "label_free_out", stages: str = "", force: str = "",
         profile: str = "cpu", override: str = "", dry_run: bool = False, teacher: str = "psm",
         mpp: float | str | None = None, stain: str = "he", seeds: int = 1, rounds: int = 1, jobs: int = 1,
         points: str = "det", init: str = "", dab_threshold: float | None = None, nproc: int = 1) -> None:
    """Command-line entry (Python Fire): see the module docstring."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        if not isinstance(dry_run, bool):  # Fire hands over --dry_run Flase as the (true) string "Flase"
            raise ValueError(f"--dry_run {dry_run!r}: not a boolean; use True or False")
        ignored = ({"profile": profile != "cpu", "teacher": teacher != "psm", "points": points != "det"}
                   if stain == "ihc" else
                   {"seeds": int(seeds) != 1, "rounds": int(rounds) != 1, "jobs": int(jobs) != 1,
                    "dab_threshold": dab_threshold is not None})
        if int(nproc) < 1 or (int(nproc) > 1 and int(jobs) > 1):
            raise ValueError(f"--nproc {nproc} --jobs {jobs}: use one of them (nproc >= 1)")
        for k in (k for k, v in ignored.items() if v):
            logger.warning(f"--{k} does nothing with --stain {stain}")
        if stain == "ihc" and str(mpp).lower() == "auto":
            raise ValueError("--mpp auto is for H&E folders; Ki-67 training takes one --mpp (its inference measures "
                             "each tile's scale by itself)")
        if stain == "ihc":
            report = run_ki67_pipeline(dataset_dir, bundle_root, seeds, rounds, stages, force, override or None,
                                       dry_run, mpp, jobs, init or None, dab_threshold, int(nproc))
        elif stain == "he":
            report = run_pipeline(dataset_dir, bundle_root, stages or STAGES, force, profile, override or None,
                                  dry_run, teacher, mpp, points, init or None, int(nproc))
        else:
            raise ValueError(f"unknown stain {stain!r} (use 'he' or 'ihc')")
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        logger.error(str(e))
        raise SystemExit(1) from None
    for stage, what, sec in report:
        print(f"{stage:14s} {what:8s} {sec:8.1f} s")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
