"""`coordgan sample`: the swap grid as a PNG, its --out refused up front where it would mislead or replace."""

from PIL import Image

from cli_helpers import run_main


def sample(monkeypatch, capsys, out, *extra):
    return run_main(monkeypatch, capsys, "sample", "--preset", "tiny", "--n", 1, "--out", out, *extra)


def test_sample_writes_a_png_and_replaces_it_only_with_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "grids" / "grid.png"
    code, stdout, err = sample(monkeypatch, capsys, out)
    assert code in (0, None), err
    with Image.open(out) as img:
        assert img.format == "PNG"
    out.write_bytes(b"an earlier grid")
    code, _, err = sample(monkeypatch, capsys, out)
    assert code == 1 and err == f"Error: {out} exists; pass --overwrite to replace it.\n"
    assert out.read_bytes() == b"an earlier grid"
    code, _, err = sample(monkeypatch, capsys, out, "--overwrite")
    assert code in (0, None), err
    with Image.open(out) as img:
        assert img.format == "PNG"


def test_sample_refuses_a_name_of_another_format(tmp_path, monkeypatch, capsys):
    for name in ("grid.jpg", "grid.JPEG", "grid"):
        code, _, err = sample(monkeypatch, capsys, tmp_path / name)
        assert code == 1 and err == (f"Error: --out {tmp_path / name}: sample writes a PNG; give a file name "
                                     "ending in .png.\n"), err
        assert not (tmp_path / name).exists()
    (tmp_path / "grid.png").mkdir()
    code, _, err = sample(monkeypatch, capsys, tmp_path / "grid.png", "--overwrite")
    assert code == 1 and err == f"Error: {tmp_path / 'grid.png'} is a folder; give a file name to write.\n"
