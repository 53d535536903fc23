"""``zarr-instances extract`` on studies (--manifest, glob patterns), --metadata, --append."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

import zarr_instances
from zarr_instances import read_table
from zarr_instances._cli_study import pair_globs
from zarr_instances.cli import main
from zarr_instances.testing import make_image_and_mask

tifffile = pytest.importorskip("tifffile")


def _write(tmp_path: Path, names: dict[str, tuple[str, str]], fmt: str = "tif") -> None:
    """Write a small image and mask per source, at the relative paths given."""
    for k, (image, mask) in enumerate(names.values()):
        im, m = make_image_and_mask((48, 48), 6, 10, seed=k)
        for rel, data in ((image, im), (mask, m)):
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "tif":
                tifffile.imwrite(path, data)
            else:
                np.save(path, data)


def _one_error(capsys, argv, expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


def test_manifest_study_end_to_end(tmp_path, capsys, monkeypatch):
    files = {
        "a": ("data/images/a.tif", "data/masks/a.tif"),
        "b": ("data/images/b.npy", "data/masks/b.npy"),
    }
    _write(tmp_path, {"a": files["a"]}, "tif")
    _write(tmp_path, {"b": files["b"]}, "npy")
    csv = tmp_path / "data" / "study.csv"
    lines = [
        f"{n},{i.removeprefix('data/')},{m.removeprefix('data/')}" for n, (i, m) in files.items()
    ]
    csv.write_text("source,image,mask\n" + "\n".join(lines) + "\n")
    pd.DataFrame(
        {"source": ["a", "a", "b", "nope"], "instance_id": [1, 2, 1, 1], "kind": list("xyxz")}
    ).to_csv(tmp_path / "meta.csv", index=False)
    monkeypatch.chdir(tmp_path)  # the manifest's paths are read from its folder, not here
    out = str(tmp_path / "s.zarr")
    argv = ["extract", "--manifest", str(csv), out, "--diameter", "10", "--no-progress"]
    argv += ["--metadata", "meta.csv"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "from 2 sources to" in cap.out and cap.out.startswith("wrote ")
    warned = [ln for ln in cap.err.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and "--metadata: 1 metadata rows match no crop" in warned[0]
    table = read_table(out)
    assert sorted(table["source"].unique()) == ["a", "b"]
    assert table.loc[(table["source"] == "a") & (table["instance_id"] == 2), "kind"].item() == "y"
    n = len(table)
    # The same command again: nothing to do.
    assert main(argv) == 0
    assert "complete already" in capsys.readouterr().out
    # Inspect: sources, crops per source, metadata values, clipping, intensities.
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    counts = table["source"].value_counts()
    assert "sources       2" in text
    assert f"a: {counts['a']}" in text and f"b: {counts['b']}" in text
    assert "kind          NA: " in text and "x: 2" in text
    assert "clipped       " in text and "objects > 1% outside" in text
    assert "intensity     object-pixel percentiles" in text
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["table"]["n_sources"] == 2
    assert sum(info["table"]["crops_per_source"].values()) == n
    assert set(info["table"]["intensity"]["sources"]) == {"a", "b"}

    # --append adds a new source (--diameter: the store's); its percentiles too.
    _write(tmp_path, {"c": ("c.tif", "c_mask.tif")})
    argv2 = ["extract", "c.tif", "c_mask.tif", out, "--append", "--no-progress"]
    assert main(argv2) == 0
    assert "appended" in capsys.readouterr().out
    table2 = read_table(out)
    assert sorted(table2["source"].unique()) == ["a", "b", "c"] and len(table2) > n
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["table"]["intensity"]["sources"]) == {"a", "b", "c"}
    # appending the same source again is refused in CLI words
    _one_error(capsys, argv2, "source 'c' is in the store already")


def test_glob_pairing(tmp_path, capsys):
    files = {s: (f"img/{s}.tif", f"lbl/{s}_mask.tif") for s in ("p1", "p2", "p3")}
    _write(tmp_path, files)
    images, masks = pair_globs(str(tmp_path / "img/*.tif"), str(tmp_path / "lbl/*.tif"))
    assert sorted(images) == sorted(masks) == ["p1", "p2", "p3"]
    assert masks["p2"].endswith("p2_mask.tif")
    out = str(tmp_path / "g.zarr")
    argv = ["extract", str(tmp_path / "img/*.tif"), str(tmp_path / "lbl/*.tif"), out]
    assert main([*argv, "--diameter", "10", "--no-progress"]) == 0
    assert "from 3 sources" in capsys.readouterr().out
    assert sorted(read_table(out)["source"].unique()) == ["p1", "p2", "p3"]


@pytest.mark.parametrize(
    ("images", "masks", "names"),
    [
        (["a.ome.tif", "b.ome.tif"], ["a.tiff", "b.tiff"], ["a", "b"]),
        (["x1_img.tif", "x2_img.tif"], ["x1_labels.npy", "x2_labels.npy"], ["x1", "x2"]),
        (["img_s1.tif", "img_s2.tif"], ["lbl_s1.tif", "lbl_s2.tif"], ["s1", "s2"]),
        (["cell1.tif"], ["cell1_mask.tif"], ["cell1"]),
    ],
)
def test_glob_pairing_rule(tmp_path, images, masks, names):
    for side, files in (("i", images), ("m", masks)):
        (tmp_path / side).mkdir()
        for f in files:
            (tmp_path / side / f).write_bytes(b"")
    got_i, got_m = pair_globs(str(tmp_path / "i/*"), str(tmp_path / "m/*"))
    assert sorted(got_i) == sorted(got_m) == names


def test_study_input_errors(tmp_path, capsys):
    _write(tmp_path, {s: (f"i/{s}.tif", f"m/{s}_mask.tif") for s in ("a", "b")})
    (tmp_path / "m" / "b_mask.tif").unlink()
    (tmp_path / "m" / "z_mask.tif").write_bytes(b"")
    out = str(tmp_path / "o.zarr")
    globs = [str(tmp_path / "i/*.tif"), str(tmp_path / "m/*.tif"), out, "--diameter", "8"]
    _one_error(capsys, ["extract", *globs], "images without a mask: '")
    assert main(["extract", *globs]) == 2
    err = capsys.readouterr().err
    assert "b.tif" in err and "z_mask.tif" in err
    _one_error(
        capsys,
        [
            "extract",
            str(tmp_path / "i/*.tif"),
            str(tmp_path / "m/a_mask.tif"),
            out,
            "--diameter",
            "8",
        ],
        "either both are glob patterns",
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("source,image\na,i/a.tif\n")
    _one_error(
        capsys,
        ["extract", "--manifest", str(bad), out, "--diameter", "8"],
        f"--manifest {str(bad)!r} needs the column(s) 'mask'",
    )
    bad.write_text("source,image,mask\na,i/a.tif,m/gone.tif\n")
    _one_error(
        capsys,
        ["extract", "--manifest", str(bad), out, "--diameter", "8"],
        "line 2 (source 'a'): mask 'm/gone.tif' does not exist",
    )
    _one_error(
        capsys,
        ["extract", "--manifest", str(tmp_path / "no.csv"), out, "--diameter", "8"],
        "no such file",
    )
    _one_error(capsys, ["extract", str(tmp_path / "i/a.tif"), out], "give IMAGE MASK OUT")
    _one_error(
        capsys,
        ["extract", "--manifest", str(bad), "x.tif", "y.tif", out, "--diameter", "8"],
        "--manifest replaces IMAGE and MASK",
    )
    ok = tmp_path / "ok.csv"
    ok.write_text("source,image,mask\na,i/a.tif,m/a_mask.tif\n")
    _one_error(
        capsys, ["extract", "--manifest", str(ok), out], "arguments are required: --diameter"
    )
    (tmp_path / "meta.csv").write_text("instance_id,kind\n1,x\n")
    _one_error(
        capsys,
        [
            "extract",
            "--manifest",
            str(ok),
            out,
            "--diameter",
            "8",
            "--metadata",
            str(tmp_path / "meta.csv"),
        ],
        "--metadata needs column(s) 'source' and 'instance_id'",
    )
    _one_error(
        capsys,
        ["extract", "--manifest", str(ok), out, "--diameter", "8", "--append"],
        "--append adds sources to an existing instance store",
    )
    assert not os.path.exists(out)


def test_flags_between_positionals(tmp_path, capsys):
    _write(tmp_path, {"a": ("a.tif", "a_mask.tif")})
    img, msk = str(tmp_path / "a.tif"), str(tmp_path / "a_mask.tif")
    out = str(tmp_path / "o.zarr")
    assert main(["extract", img, msk, "--diameter", "8", out, "--no-progress"]) == 0
    assert "from 1 source to" in capsys.readouterr().out
    assert read_table(out)["source"].unique().tolist() == ["a"]


@pytest.mark.filterwarnings("ignore:Consolidated metadata:zarr.errors.ZarrUserWarning")
def test_inspect_store_without_table(tmp_path, capsys):
    image, mask = make_image_and_mask((48, 48), 6, 10, seed=0)
    out = str(tmp_path / "o.zarr")
    zarr_instances.extract_instances(image, mask, 8, out=out)
    del zarr.open_group(out, mode="r+")["obs"]  # as written by an older version
    zarr.consolidate_metadata(out)
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "instances" in text and "sources " not in text
    assert main(["inspect", out, "--json"]) == 0
    assert "table" not in json.loads(capsys.readouterr().out)


def test_study_errors_in_a_real_process(tmp_path):
    _write(tmp_path, {"a": ("i/a.tif", "m/a.tif"), "b": ("i/b.tif", "m/other.tif")})
    env = {**os.environ, "PYTHONPATH": str(Path(zarr_instances.__file__).parents[1])}
    cmd = [sys.executable, "-m", "zarr_instances", "extract"]
    for argv, expected in (
        ([str(tmp_path / "i/*.tif"), str(tmp_path / "m/*.tif")], "masks without an image"),
        (["--manifest", str(tmp_path / "i/a.tif")], "--manifest"),
    ):
        full = [*cmd, *argv, str(tmp_path / "o.zarr"), "--diameter", "8"]
        done = subprocess.run(full, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
