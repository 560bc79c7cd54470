"""Reference catalogue I/O (NVSS layout and CSV)."""
from __future__ import annotations

import pytest

from dsa110_contimg.catalog import NVSS_COLUMNS, CatalogSource, cone, read_catalog, separation_arcsec, write_nvss_catalog
from dsa110_contimg.errors import CatalogError


def _sources():
    return [
        CatalogSource("A", 0.00123, 55.55555, 1.2345),
        CatalogSource("B", 128.72875, 55.57253, 8.0),
        CatalogSource("C", 359.99999, -12.34567, 0.0213),
        CatalogSource("D", 187.5, 2.05, 0.5),
        CatalogSource("E", 200.123456, -0.0001, 0.00311),
    ]


def test_nvss_round_trip(tmp_path):
    path = tmp_path / "cat.tsv"
    write_nvss_catalog(_sources(), path)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(NVSS_COLUMNS)
    fields = lines[2].split("\t")
    assert fields[1] == "08 34 54.90" and fields[2] == "+55 34 21.1"
    back = read_catalog(path)
    assert [s.name for s in back] == [s.name for s in _sources()]
    for a, b in zip(_sources(), back):
        assert separation_arcsec(a, b) < 0.1  # RA to 0.01 s, Dec to 0.1 arcsec
        assert abs(a.flux_jy - b.flux_jy) * 1e3 < 0.1  # mJy to 0.1
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temp left


def test_csv_catalog(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("name,ra_deg,dec_deg,flux_jy\nX,10.5,20.25,0.3\nY,11,21,0.1\n")
    cat = read_catalog(path)
    assert [(s.name, s.ra_deg, s.dec_deg, s.flux_jy) for s in cat] == [("X", 10.5, 20.25, 0.3), ("Y", 11.0, 21.0, 0.1)]


@pytest.mark.parametrize(
    "text",
    [
        "\t".join(NVSS_COLUMNS) + "\nJ1\t25 00 00.00\t+10 00 00.0\t0\t0\t1\t0\t0\t0\t0\n",  # RA hours 25
        "\t".join(NVSS_COLUMNS) + "\nJ1\t01 00 00.00\t+10 00 00.0\t0\t0\tabc\t0\t0\t0\t0\n",  # flux not a number
        "\t".join(NVSS_COLUMNS) + "\nJ1\t01 00 00.00\n",  # truncated row
        "just some text\n",
        "",
        "name,ra_deg,flux_jy\nX,1,2\n",  # CSV without dec
    ],
)
def test_malformed_catalog_raises_naming_file(tmp_path, text):
    path = tmp_path / "bad_catalog.tsv"
    path.write_text(text)
    with pytest.raises(CatalogError) as exc:
        read_catalog(path)
    assert exc.value.path == str(path)
    assert "bad_catalog.tsv" in str(exc.value)


def test_missing_catalog(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope.tsv")


def test_cone_nearest_first():
    src = _sources()
    got = cone(src, 128.7, 55.6, 1.0)
    assert [s.name for s in got] == ["B"]
    got = cone(src, 0.0, 0.0, 60.0)
    assert [s.name for s in got] == ["C", "A"]
