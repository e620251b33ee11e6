# Copyright (c) 2026 the label-free cell recognition bundle authors. Licensed under Apache-2.0.
"""Fixtures shared by tests in more than one file (per-workflow ones live in tests/<workflow>/conftest.py)."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Six synthetic 256x256 H&E tiles with instance labels and a datalist."""
    from bundle.synthetic import write_synthetic_folder

    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic_folder(d, n_tiles=6, size=256, seed=0)
    return d


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread: thread start-up dominates and stalls badly on a busy machine (on a
    loaded 2-core machine 2 threads were ~10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------- networks
def _small_res2net(seed=0):
    import torch

    from bundle.networks import Res2Net

    torch.manual_seed(seed)
    return Res2Net("cpu", base_channels=16).eval()


@pytest.fixture
def small_res2net():
    """``small_res2net(seed=0)``: a new seeded 16-channel Res2Net in eval mode per call."""
    return _small_res2net


# ----------------------------------------------------------------------------------------------------- Aperio XML
@pytest.fixture(name="BOX_A")
def box_a():
    """(x0, y0, x1, y1) of a 20 x 20 square, in pixel coordinates."""
    return (10, 10, 30, 30)


@pytest.fixture(name="BOX_B")
def box_b():
    """(x0, y0, x1, y1) of a 10 x 20 rectangle, in pixel coordinates."""
    return (50, 5, 60, 25)


def _region(box, rid):
    x0, y0, x1, y1 = box
    verts = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    return f'<Region Id="{rid}" Type="0"><Attributes/><Vertices>{verts}</Vertices></Region>'


def _aperio_xml(boxes) -> str:
    regions = "".join(_region(b, i + 1) for i, b in enumerate(boxes))
    return (
        '<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25">'
        '<Annotation Id="1" Type="4"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
        f"{regions}</Regions><Plots/></Annotation></Annotations>\n"
    )


def _write_xml(path, boxes):
    Path(path).write_text(_aperio_xml(boxes))
    return path


@pytest.fixture
def write_xml():
    """``write_xml(path, boxes)``: an Aperio XML file with one rectangular region per box; returns ``path``."""
    return _write_xml


# ----------------------------------------------------------------------------------------------------- point CSVs
def _write_points(tmp_path):
    from bundle.annotations import read_points

    p = tmp_path / "pts_ok.csv"
    p.write_text("x,y\n3,4\n10,20\n")
    assert read_points(p).tolist() == [[4.0, 3.0], [20.0, 10.0]]
    return p


@pytest.fixture
def write_points():
    """``write_points(tmp_path)``: a two-point x,y CSV (checked to read back as rows, cols); returns its path."""
    return _write_points


# ----------------------------------------------------------------------------------------------------- nuclei
@pytest.fixture(name="SMALL")
def small_nuclei():
    """Nucleus-finder sizes for the synthetic tiles, whose nuclei are small."""
    return {"min_radius": 3, "max_radius": 8, "min_area": 20, "max_area": 400}


def _nuclei_runner(data, out, net=None, **kw):
    import torch

    from bundle.inferers import TilePredictor
    from bundle.networks import ResUNet34
    from bundle.nuclei.detection import NucleiPostprocess
    from bundle.nuclei.runner import NucleiRunner

    torch.manual_seed(0)
    net = net or ResUNet34(out_channels=2, base_channels=8)
    out_kw = {k: kw.pop(k) for k in ("wsi", "write_masks", "auto_scale", "trained_diameter", "big_tile_px") if k in kw}
    predictor = TilePredictor(tta=False, network_mpp=0.25 if out_kw.get("auto_scale") else None)
    return NucleiRunner(net, data, out, predictor=predictor, postprocess=NucleiPostprocess(**kw), **out_kw)


@pytest.fixture
def nuclei_runner():
    """``nuclei_runner(data, out, net=None, **kw)``: a NucleiRunner without TTA (a seeded 8-channel ResUNet-34 unless
    ``net``); ``wsi`` and ``write_masks`` go to the runner, the other keywords to NucleiPostprocess."""
    return _nuclei_runner


# ----------------------------------------------------------------------------------------------------- Ki-67
@pytest.fixture(scope="session")
def ihc_tiles():
    """Three synthetic 160x160 IHC tiles: (rgb, points, classes), 5 positive and 7 negative nuclei each."""
    from bundle.ki67.data import synthetic_ihc_tile

    return [synthetic_ihc_tile(160, n_positive=5, n_negative=7, radius=7, seed=s) for s in range(3)]


@pytest.fixture(scope="session")
def ihc_dir(tmp_path_factory, ihc_tiles):
    """The ``ihc_tiles`` as tile_0..2.png in a folder, with a truncated broken.png beside them."""
    from bundle.io import write_image

    d = tmp_path_factory.mktemp("ihc")
    for i, (rgb, _, _) in enumerate(ihc_tiles):
        write_image(d / f"tile_{i}.png", rgb)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d
