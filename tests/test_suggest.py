"""``fewlabel suggest``: the selection rules on blobs in embedding space (TypiClust picks each blob's
centre, ProbCover covers more than chance, labelled images count as chosen, a seed fixes the picks),
and the command on generated images: its files, a random test sample apart from the picks, a second
round that proposes other images (never a labelled one nor a copy of one), and one-line refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fewlabel
from fewlabel.data.catalog import load_catalog
from fewlabel.data.identity import pixel_key
from fewlabel.errors import FewlabelError
from fewlabel.pipeline.selection import ball_coverage, normalise, probcover, random_picks, typiclust

from factory import corrupt_file, make_class_folder, run_cli, write_tiff

CLASSES = {"a": 12, "b": 12, "c": 12}
BUDGET = 4
CONVNET = ("--encoder", "convnet")  # seeded random weights: fast, and the same features every run


def blobs(seed: int = 0, n_blobs: int = 5, per: int = 60,
          outliers: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n_blobs`` tight Gaussian blobs in 16-D and ``outliers`` scattered points; blob of each row
    (-1: an outlier)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_blobs, 16)) * 5
    scattered = rng.normal(0, 8, (outliers, 16))
    x = np.concatenate([c + rng.normal(0, 0.5, (per, 16)) for c in centres] + [scattered])
    return x, np.r_[np.repeat(np.arange(n_blobs), per), -np.ones(outliers, int)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_typiclust_picks_the_centre_of_each_blob(seed: int) -> None:
    x, blob = blobs(seed)
    picks = typiclust(x, [], 5, seed).rows
    assert sorted(blob[picks]) == [0, 1, 2, 3, 4]  # one per blob, no outlier
    z = normalise(x)
    for row in picks:  # the most typical image sits at its blob's centre, not at its edge
        members = z[blob == blob[row]]
        centre = members.mean(0)
        spread = np.linalg.norm(members - centre, axis=1)
        assert np.linalg.norm(z[row] - centre) <= np.quantile(spread, 0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probcover_covers_more_than_random_picks(seed: int) -> None:
    x, _ = blobs(seed)
    chosen = probcover(x, [], 5, seed)
    delta = chosen.params["delta"]
    assert chosen.params["coverage"] == pytest.approx(ball_coverage(x, chosen.rows, delta))
    for draw in range(5):
        assert ball_coverage(x, random_picks(x, [], 5, draw).rows, delta) < chosen.params["coverage"]


def test_rules_are_deterministic_for_a_seed() -> None:
    x, _ = blobs(3)
    for rule in (typiclust, probcover, random_picks):
        a, b = rule(x, [7], 6, 11), rule(x, [7], 6, 11)
        assert a.rows == b.rows and [p.why for p in a.picks] == [p.why for p in b.picks]
    assert random_picks(x, [], 6, 0).rows != random_picks(x, [], 6, 1).rows


def test_labelled_images_count_as_chosen() -> None:
    x, blob = blobs(0)
    labelled = [0, 60]  # one image of blob 0 and one of blob 1
    for seed in range(3):
        assert sorted(blob[typiclust(x, labelled, 3, seed).rows]) == [2, 3, 4]
    # ProbCover: a labelled image's ball is covered from the start, so labelling the first pick of a
    # cold start leaves exactly the rest of that greedy sequence
    cold = probcover(x, [], 5, 0).rows
    assert probcover(x, cold[:1], 4, 0).rows == cold[1:]
    # no rule ever proposes a labelled or excluded row, even when it must take every other one
    free = len(x) - 3
    for rule in (typiclust, probcover, random_picks):
        rows = rule(x, [5, 6], free, 0, exclude=[9]).rows
        assert len(set(rows)) == free and not {5, 6, 9} & set(rows)


def test_rules_refuse_a_budget_they_cannot_meet() -> None:
    x, _ = blobs(0, per=3, outliers=0)
    for budget in (0, -2, 16):
        with pytest.raises(FewlabelError, match="--budget"):
            typiclust(x, [], budget, 0)


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own feature cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FEWLABEL_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def pool_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("suggest") / "pool", CLASSES, size=(32, 32), seed=0)


@pytest.fixture
def pool(pool_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pool_template, tmp_path / "pool"))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def resolved(out: Path, listed: list[dict[str, str]]) -> list[Path]:
    return [(out / r["path"]).resolve() for r in listed]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_writes_suggestions_a_contact_sheet_and_a_test_sample_apart(
        pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "to_label"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", out, *CONVNET) == 0
    printed = capsys.readouterr().out
    assert "chose 4 of 36 images by typiclust" in printed and "convnet" in printed
    assert "chosen at random, not by the selector" in printed and f"wrote {out}/" in printed
    picks = rows(out / "suggestions.csv")
    assert [int(r["rank"]) for r in picks] == [1, 2, 3, 4]
    assert all(r["rule"] == "typiclust" and "most typical" in r["why"] for r in picks)
    chosen = resolved(out, picks)
    assert all(p.is_file() and p.is_relative_to(pool.resolve()) for p in chosen)
    test = resolved(out, rows(out / "test_sample.csv"))
    assert len(test) == 20 and len(set(test)) == 20  # max(20, 10 % of 36), capped by 36 - 4
    assert not set(test) & set(chosen)
    sheet = (out / "contact_sheet.html").read_text()
    assert sheet.count("data:image/png;base64,") == BUDGET and "default-src 'none'" in sheet
    assert all(r["path"] in sheet for r in picks)
    assert sheet.index(picks[0]["path"]) < sheet.index(picks[-1]["path"])  # in the order to label them
    record = json.loads((out / "selection.json").read_text())
    assert record["rule"] == "typiclust" and record["counts"]["candidates"] == 36
    # the template, once its labels are filled in, is a manifest fewlabel reads, its test rows as test
    template = rows(out / "manifest_template.csv")
    assert [r["split"] for r in template] == ["train"] * BUDGET + ["test"] * 20
    assert all(r["label"] == "" for r in template)
    for r in template:
        r["label"] = Path(r["path"]).parent.name
    filled = out / "filled.csv"
    with open(filled, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(template)
    catalog = load_catalog(filled)
    assert sum(s.split == "test" for s in catalog.samples) == 20
    # the Python API gives the same picks, writing nothing without `out`
    api = fewlabel.suggest(pool, BUDGET, encoder="convnet")
    assert [Path(p).resolve() for p in api.paths] == chosen and api.files == {}


def test_second_round_proposes_others_never_a_labelled_image_nor_its_copy(
        pool: Path, tmp_path: Path) -> None:
    first_out = tmp_path / "round1"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", first_out, *CONVNET) == 0
    first = resolved(first_out, rows(first_out / "suggestions.csv"))
    # the expert labels them in a folder of their own: byte copies, and the first saved again as TIFF
    labelled = tmp_path / "labelled"
    for k, path in enumerate(first):
        (labelled / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, labelled / path.parent.name / f"labelled_{k}.png")
    from PIL import Image

    write_tiff(labelled / first[0].parent.name / "resaved.tif", np.asarray(Image.open(first[0]))[None])
    (labelled / first[0].parent.name / "labelled_0.png").unlink()  # only the pixel copy is left of it
    # and the pool holds another copy of a labelled image under another name
    shutil.copy(first[1], pool / "a" / "zz_copy.png")
    # one labelled image the pool does not hold: it joins the embedding as already chosen
    make_class_folder(tmp_path / "elsewhere", {"a": 1}, size=(32, 32), seed=99)
    shutil.copy(tmp_path / "elsewhere" / "a" / "p0001_s00.png", labelled / first[0].parent.name / "new.png")
    out = tmp_path / "round2"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--labelled", labelled, "--out", out, *CONVNET) == 0
    second = resolved(out, rows(out / "suggestions.csv"))
    test = resolved(out, rows(out / "test_sample.csv"))
    taken = {pixel_key(str(p)) for p in first}
    assert len(second) == BUDGET and not {pixel_key(str(p)) for p in second + test} & taken
    record = json.loads((out / "selection.json").read_text())
    counts = record["counts"]
    assert counts["labelled_in_pool"] == BUDGET and counts["candidates"] == 36 - BUDGET
    assert counts["labelled_outside_pool"] == 1 and counts["covering"] == BUDGET + 1 and counts["copies"] == 1


def test_a_filled_template_keeps_its_test_sample_and_proposes_others(
        pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first_out = tmp_path / "round1"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", first_out, *CONVNET) == 0
    template = rows(first_out / "manifest_template.csv")
    for r in template:
        r["label"] = Path(r["path"]).parent.name
    filled = first_out / "labels.csv"
    with open(filled, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(template)
    out = tmp_path / "round2"
    capsys.readouterr()
    assert run_cli("suggest", pool, "--budget", BUDGET, "--labelled", filled, "--out", out, *CONVNET) == 0
    assert "no new sample drawn" in capsys.readouterr().out
    before = set(resolved(first_out, template))
    second = resolved(out, rows(out / "suggestions.csv"))
    assert len(second) == BUDGET and not set(second) & before
    assert set(resolved(out, rows(out / "test_sample.csv"))) == set(resolved(first_out, rows(
        first_out / "test_sample.csv")))
    carried = rows(out / "manifest_template.csv")
    assert len(carried) == len(template) + BUDGET and sum(r["label"] == "" for r in carried) == BUDGET


def test_unreadable_files_are_listed_skipped_and_counted(pool: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    broken = corrupt_file(pool / "b" / "p0013_s00.png")
    (pool / "c" / "scan.xyz").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", out, *CONVNET) == 1
    err = capsys.readouterr().err
    assert "2 file(s) could not be read and were skipped" in err
    assert str(broken) in err and "scan.xyz" in err
    listed = resolved(out, rows(out / "suggestions.csv")) + resolved(out, rows(out / "test_sample.csv"))
    assert broken.resolve() not in listed
    record = json.loads((out / "selection.json").read_text())
    assert len(record["skipped"]) == 2 and record["counts"]["candidates"] == 35


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_a_budget_below_one_is_one_line(pool: Path, tmp_path: Path, budget: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("suggest", pool, "--budget", budget, "--out", tmp_path / "o", *CONVNET) == 2
    assert "--budget must be a whole number of at least 1" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_pool_smaller_than_the_budget_is_one_line(pool: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("suggest", pool, "--budget", 37, "--out", tmp_path / "o", *CONVNET) == 2
    line = one_error_line(capsys)
    assert str(pool) in line and "--budget 37 is more than the 36 image(s)" in line


def test_out_inside_the_pool_and_earlier_suggestions_are_refused(pool: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", pool / "to_label", *CONVNET) == 2
    assert "lies inside the input folder" in one_error_line(capsys)
    assert not (pool / "to_label").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "suggestions.csv").write_text("rank,path\n")
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", out, *CONVNET) == 2
    assert "pass --overwrite" in one_error_line(capsys)


def test_bad_pools_and_rules_are_one_line(tmp_path: Path, pool: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("suggest", tmp_path / "nowhere", "--budget", 2, "--out", tmp_path / "o") == 2
    assert "nowhere" in one_error_line(capsys)
    listing = tmp_path / "pool.csv"
    listing.write_text("file\nx.png\n")
    assert run_cli("suggest", listing, "--budget", 2, "--out", tmp_path / "o") == 2
    assert "needs a 'path' column" in one_error_line(capsys)
    assert run_cli("suggest", pool, "--budget", 2, "--rule", "best", "--out", tmp_path / "o") == 2
    assert "--rule must be one of typiclust, probcover, random" in one_error_line(capsys)


def test_a_pool_listed_in_a_csv_is_read_like_a_folder(pool: Path, tmp_path: Path) -> None:
    listing = tmp_path / "pool.csv"
    images = sorted(pool.rglob("*.png"))
    listing.write_text("path,comment\n" + "".join(f"{p.relative_to(tmp_path).as_posix()},x\n"
                                                    for p in images))
    out = tmp_path / "out"
    assert run_cli("suggest", listing, "--budget", BUDGET, "--rule", "probcover", "--out", out, *CONVNET) == 0
    picks = rows(out / "suggestions.csv")
    assert len(picks) == BUDGET and all(r["rule"] == "probcover" and "δ=" in r["why"] for r in picks)
    assert json.loads((out / "selection.json").read_text())["params"]["delta"] > 0


@pytest.mark.slow
def test_bccd_cold_start_with_imagenet_features(shared_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The real weights on the real pool (its class folders ignored): 16 picks over several classes."""
    weights = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    data = shared_dir / "datasets" / "bccd_wbc_fewshot" / "labelled"
    if not weights.is_file() or not data.is_dir():
        pytest.skip("the ImageNet weights or BCCD are not in ../shared")
    monkeypatch.setenv("FEWLABEL_IMAGENET_WEIGHTS", str(weights))
    out = tmp_path / "to_label"
    assert run_cli("suggest", data, "--budget", 16, "--out", out) == 0
    picks = resolved(out, rows(out / "suggestions.csv"))
    assert len(picks) == 16 and len({p.parent.name for p in picks}) >= 3
    assert len(rows(out / "test_sample.csv")) == 35  # 10 % of 342, rounded up


def test_an_encoder_prepared_on_the_pool_embeds_it(pool: Path, tmp_path: Path) -> None:
    """SimCLR on the unlabelled pool (``fewlabel pretrain ssl``), then its encoder file as the embedding."""
    encoder = tmp_path / "ssl.safetensors"
    assert run_cli("pretrain", "ssl", pool, "--out", encoder, "--steps", 2, "--image-size", 32) == 0
    out = tmp_path / "to_label"
    assert run_cli("suggest", pool, "--budget", BUDGET, "--out", out, "--encoder", "convnet",
                   "--encoder-weights", encoder) == 0
    chosen = json.loads((out / "selection.json").read_text())
    assert "ssl.safetensors" in chosen["embedding_line"] and len(rows(out / "suggestions.csv")) == BUDGET
