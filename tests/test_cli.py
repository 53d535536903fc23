from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from zarr_instances import extract_instances
from zarr_instances.cli import main
from zarr_instances.testing import make_image_and_mask


@pytest.fixture
def paths(tmp_path) -> tuple[str, str]:
    image, mask = make_image_and_mask((96, 80), 30, 12, seed=4)
    zarr.create_array(tmp_path / "img.zarr", data=image, chunks=(2, 32, 32))
    zarr.create_array(tmp_path / "mask.zarr", data=mask, chunks=(32, 32))
    return str(tmp_path / "img.zarr"), str(tmp_path / "mask.zarr")


def test_extract_then_inspect(paths, tmp_path, capsys):
    img, msk = paths
    out = str(tmp_path / "out.zarr")
    rc = main(
        [
            "extract",
            img,
            msk,
            out,
            "--diameter",
            "12",
            "--chunk-i",
            "8",
            "--compressor",
            "blosc-lz4",
            "--extract-mask",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "crops (2, 1, 12, 12) uint16" in capsys.readouterr().out
    ids, ref = extract_instances(img, msk, 12)
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["image"][...], ref.compute())
    np.testing.assert_array_equal(g["instance_ids"][...], ids)
    assert "mask" in g

    png = tmp_path / "m.png"
    assert main(["inspect", out, "--montage", str(png), "--n", "10"]) == 0
    text = capsys.readouterr().out
    assert f"shape         ({ids.size}, 2, 1, 12, 12)" in text
    assert "chunks        (8, 2, 1, 12, 12)" in text
    assert "BloscCodec(cname=lz4" in text
    assert f"instances     {ids.size}" in text
    assert "extraction    complete" in text
    assert "montage: 10 crops" in text
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 4 * 64

    # storage options are for URLs; a local store ignores them
    assert main(["inspect", out, "--json", "--storage-options", '{"anon": true}']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_instances"] == ids.size
    assert info["parameters"]["diameter"] == 12


def test_extract_random_order_and_errors(paths, tmp_path, capsys):
    img, msk = paths
    out = str(tmp_path / "out.zarr")
    argv = [
        "extract",
        img,
        msk,
        out,
        "--diameter",
        "10",
        "--order",
        "random",
        "--seed",
        "4",
        "--keep-background",
        "--no-progress",
        "--scheduler",
        "synchronous",
    ]
    assert main(argv) == 0
    _, ref = extract_instances(img, msk, 10, order="random", seed=4, remove_background=False)
    np.testing.assert_array_equal(zarr.open_array(out + "/image")[...], ref.compute())
    capsys.readouterr()
    assert main(argv) == 2
    assert "complete instance store" in capsys.readouterr().err
    assert main(["extract", img + "-missing", msk, out + "2", "--diameter", "4"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.zarr")]) == 2


def test_extract_storage_options_json(paths, tmp_path, capsys, monkeypatch):
    import zarr_instances.extract as ex

    img, msk = paths
    seen = []
    real = ex.extract_instances
    monkeypatch.setattr(
        ex, "extract_instances", lambda *a, **kw: (seen.append(kw), real(*a, **kw))[1]
    )
    out = str(tmp_path / "out.zarr")
    opts = '{"anon": true, "client_kwargs": {"region_name": "eu-west-1"}}'
    expected = {"anon": True, "client_kwargs": {"region_name": "eu-west-1"}}
    argv = ["extract", img, msk, out, "--diameter", "10", "--no-progress"]
    assert main([*argv, "--storage-options", opts]) == 0
    assert seen[0]["storage_options"] == expected
    _, ref = real(img, msk, 10)  # local paths: the options are not used
    np.testing.assert_array_equal(zarr.open_array(out + "/image")[...], ref.compute())
    assert main([*argv[:3], out + "2", *argv[4:]]) == 0
    assert seen[-1]["storage_options"] is None
    capsys.readouterr()
    for bad, why in (
        ("{anon: true}", "Expecting property name"),
        ("[1, 2]", "a JSON array"),
        ('"s3"', "a JSON string"),
        ("", "Expecting value"),
    ):
        with pytest.raises(SystemExit) as info:
            main([*argv[:3], out + "3", *argv[4:], "--storage-options", bad])
        assert info.value.code == 2
        err = capsys.readouterr().err
        prefix = "argument --storage-options: must be a JSON object, e.g. '{\"anon\": true}'"
        assert f"{prefix}, got {bad!r}" in err
        assert why in err
    assert not (tmp_path / "out.zarr3").exists()


def test_demo_runs_extract_and_stream(capsys):
    assert main(["demo", "--n", "300", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "extract_instances:" in out
    assert "batched, 4-chunk buffers" in out
