from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import zarr_instances
import zarr_instances._extract_write as xw
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
    assert main(argv) == 2 - 2  # the same command on the finished store: nothing to do
    assert "complete already" in capsys.readouterr().out
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
        assert main([*argv[:3], out + "3", *argv[4:], "--storage-options", bad]) == 2
        err = capsys.readouterr().err
        prefix = "argument --storage-options: must be a JSON object, e.g. '{\"anon\": true}'"
        assert f"{prefix}, got {bad!r}" in err
        assert why in err
    assert not (tmp_path / "out.zarr3").exists()


def test_demo_runs_extract_and_stream(capsys):
    assert main(["demo", "--n", "300", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "extract_instances:" in out
    assert "batched, 4-chunk buffers" in out
    assert "demo:" not in out  # stdout is the table; the steps go to stderr
    steps = captured.err.splitlines()
    assert steps[0] == "demo: [1/4] drawing 300 round cells on a 762 x 762 image"
    assert steps[1].startswith("demo: [2/4] extract_instances: one 32 x 32 crop per cell -> ")
    assert steps[2:] == [
        "demo: [3/4] streaming one epoch, per-sample (harpy-compatible), 0 workers",
        "demo: [4/4] streaming one epoch, batched, 4-chunk buffers, 0 workers",
        "demo: done",
    ]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"zarr-instances {zarr_instances.__version__}\n"


def _one_line_error(capsys, argv: list[str], expected: str) -> str:
    """Run ``main(argv)``; assert exit code 2 and one error line holding ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert expected in err, err
    return err


def test_user_input_errors_are_one_line(paths, tmp_path, capsys):
    img, msk = paths
    out = str(tmp_path / "out.zarr")
    a_file = tmp_path / "image.tif"
    a_file.write_bytes(b"II*")
    ex = ["extract", img, msk]
    cases = [
        (
            [*ex, out, "--diameter", "12", "--workers", "0"],
            "zarr-instances extract: error: argument --workers: must be >= 1, got 0 "
            "(see 'zarr-instances extract --help')",
        ),
        (
            [*ex, out, "--diameter", "0"],
            "argument --diameter: must be an integer >= 1 or 'auto', got '0'",
        ),
        ([*ex, out, "--diameter", "twelve"], "must be an integer >= 1 or 'auto', got 'twelve'"),
        ([*ex, out, "--diameter", "12", "--chunk-i", "0"], "argument --chunk-i: must be >= 1"),
        ([*ex, out, "--diameter", "12", "--memory-limit", "0"], "argument --memory-limit: must"),
        ([*ex, out], "the following arguments are required: --diameter"),
        (
            [*ex, out, "--diameter", "12", "--compressor", "blosc-lz4", "--clevel", "99"],
            "error: --clevel must be in 0..9 for --compressor blosc-lz4, got 99",
        ),
        (
            [*ex, out, "--diameter", "12", "--shards", "10", "--zarr-format", "2"],
            "error: --shards needs --zarr-format 3, got --shards 10, --zarr-format 2",
        ),
        (
            [*ex, out, "--diameter", "12", "--shards", "10", "--chunk-i", "3"],
            "error: --shards must be a multiple of --chunk-i 3, got --shards 10",
        ),
        (
            [*ex, str(a_file), "--diameter", "12", "--overwrite"],
            f"error: OUT {str(a_file)!r} is a file; an instance store is a directory: choose "
            "another path (--overwrite does not replace files)",
        ),
        (
            ["extract", img, img, out, "--diameter", "12"],
            "error: image and mask must cover the same pixels",
        ),
        (
            ["extract", img + "-nope", msk, out, "--diameter", "12"],
            f"error: No Zarr array or group at IMAGE {img + '-nope'!r}: the path does not exist",
        ),
        (["inspect", img, "--n", "0"], "zarr-instances inspect: error: argument --n: must be >= 1"),
        (
            ["demo", "--workers", "-1"],
            "zarr-instances demo: error: argument --workers: must be >= 0",
        ),
        (["demo", "--n", "0"], "argument --n: must be >= 1, got 0"),
        (["frobnicate"], "zarr-instances: error: argument command: invalid choice: 'frobnicate'"),
    ]
    for argv, expected in cases:
        _one_line_error(capsys, argv, expected)
    assert a_file.read_bytes() == b"II*"
    assert not (tmp_path / "out.zarr").exists()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    _one_line_error(
        capsys,
        [*ex, str(other), "--diameter", "12"],
        f"OUT {str(other)!r} exists and is not an instance store written by extract_instances; "
        "pass --overwrite to replace it, or choose another path",
    )

    assert main([*ex, out, "--diameter", "12", "--no-progress"]) == 0
    capsys.readouterr()
    for argv, expected in (
        (["inspect", out, "--montage", str(tmp_path / "no" / "m.png")], "the folder"),
        (["inspect", out, "--montage", str(tmp_path / "m.png"), "--channel", "5"], "--channel "),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and expected in err, err
    assert "--channel must be in [0, 2), got 5" in err


def test_montage_without_pillow_is_one_line(paths, tmp_path, capsys, monkeypatch):
    img, msk = paths
    out = str(tmp_path / "out.zarr")
    assert main(["extract", img, msk, out, "--diameter", "12", "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL raises ImportError
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    err = _one_line_error(
        capsys,
        ["inspect", out, "--montage", str(tmp_path / "m.png")],
        "zarr-instances inspect: error: --montage needs pillow: pip install pillow "
        "(the [montage] extra), or leave out --montage",
    )
    assert not (tmp_path / "m.png").exists(), err


def _interrupt_after(monkeypatch, n_units: int) -> None:
    """Make the next extraction die after writing ``n_units`` write units."""
    real = xw.write_units
    written: list[int] = []

    def dying(*args, **kwargs):
        if len(written) >= n_units:
            raise KeyboardInterrupt  # as a user pressing Ctrl-C
        written.extend(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(xw, "write_units", dying)
    monkeypatch.setattr(xw, "_TASK_BYTES", 1)  # one unit per write task


def test_interrupted_store_then_rerun_then_finished(paths, tmp_path, capsys, monkeypatch):
    img, msk = paths
    out = str(tmp_path / "out.zarr")
    argv = ["extract", img, msk, out, "--diameter", "12", "--chunk-i", "4", "--no-progress"]
    argv += ["--scheduler", "synchronous"]
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()
    assert "of crops uncompressed" in capsys.readouterr().err  # the estimate came first
    n_units = zarr.open_array(out + "/progress").size
    assert n_units == 8

    # Opening it says what is missing and how to finish it.
    _one_line_error(
        capsys,
        ["inspect", out],
        f"zarr-instances inspect: error: STORE {out!r} holds an unfinished extraction: 2 of 8 "
        "write units are written. Rerun the same zarr-instances extract command to finish "
        "it; it writes only the missing units",
    )
    # A changed command names the flags that differ, with both values.
    changed = [*argv[:4], "--diameter", "14", *argv[6:], "--keep-background", "--seed", "3"]
    _one_line_error(
        capsys,
        changed,
        f"error: cannot resume OUT {out!r}: parameters differ from the interrupted extraction: "
        "--diameter: stored 12, now 14; --keep-background: stored off, now on; --seed: stored "
        "0, now 3. Rerun with the "
        "stored values to resume it, or pass --overwrite to start again",
    )
    # The same command finishes it; then it is a no-op; then the store streams.
    assert main(argv) == 0
    assert "wrote 30 crops (2, 1, 12, 12) uint16" in capsys.readouterr().out
    files = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(
        f"{out} is complete already: 30 crops (2, 1, 12, 12) uint16 extracted with these "
        "arguments; nothing to write"
    )
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == files
    _one_line_error(
        capsys,
        changed,
        f"error: OUT {out!r} holds a complete instance store; parameters differ from the "
        "complete store: --diameter: stored 12, now 14; --keep-background: stored off, now "
        "on; --seed: stored 0, now 3. Pass --overwrite to replace it, or choose another path",
    )
    _, ref = extract_instances(img, msk, 12)
    assert main(["inspect", out]) == 0
    assert "extraction    complete; written units [8, 8]" in capsys.readouterr().out
    from zarr_instances import ZarrIterableInstances

    rows = list(ZarrIterableInstances(out, None, None, normalize=None))
    np.testing.assert_array_equal(np.stack([x.numpy() for x, _, _ in rows]), ref.compute())


def test_console_errors_in_a_real_process(paths, tmp_path):
    img, msk = paths
    env = {**os.environ, "PYTHONPATH": str(Path(zarr_instances.__file__).parents[1])}
    a_file = tmp_path / "image.tif"
    a_file.write_bytes(b"II*")
    run = functools.partial(subprocess.run, capture_output=True, text=True, env=env, timeout=300)
    cmd = [sys.executable, "-m", "zarr_instances"]
    done = run([*cmd, "--version"])
    assert (done.returncode, done.stdout) == (0, f"zarr-instances {zarr_instances.__version__}\n")
    for argv, expected in (
        (["extract", img, msk, str(a_file), "--diameter", "12"], "is a file"),
        (
            ["extract", img, msk, str(tmp_path / "o.zarr"), "--diameter", "12", "--workers", "0"],
            "argument --workers: must be >= 1, got 0",
        ),
    ):
        done = run([*cmd, *argv])
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_extract_diameter_auto_reports_its_choice_and_clipping(tmp_path, capsys):
    import zarr

    from zarr_instances.testing import make_image_and_mask

    image, mask = make_image_and_mask((128, 128), 20, 12, seed=1)
    zarr.save_array(str(tmp_path / "i.zarr"), image)
    zarr.save_array(str(tmp_path / "m.zarr"), mask)
    args = [str(tmp_path / "i.zarr"), str(tmp_path / "m.zarr")]
    code = main(["extract", *args, str(tmp_path / "a.zarr"), "--diameter", "auto", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0
    assert 'diameter="auto" chose' in err and "of crops uncompressed" in err
    assert "warning" not in err and "Traceback" not in err
    code = main(["extract", *args, str(tmp_path / "b.zarr"), "--diameter", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0
    lines = [ln for ln in err.splitlines() if "warning:" in ln]
    assert len(lines) == 1 and "20 of 20 instances" in lines[0] and "--diameter" not in err
    assert main(["extract", *args, str(tmp_path / "c.zarr"), "--diameter", "big"]) == 2
    assert "must be an integer >= 1 or 'auto'" in capsys.readouterr().err
