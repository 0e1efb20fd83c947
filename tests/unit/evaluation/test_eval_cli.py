"""``runner/evaluate_cli.py`` with a real (random-weight) ViT-B-32 from a local file: the table on
stdout and the report, and one ``error:`` line with exit 1 on bad input."""
from __future__ import annotations

import argparse

import pytest
from dtgen.runner.evaluate_cli import add_evaluate_args, cmd_evaluate
from evalkit import CLASSES, image_folder, synthetic_item, write_dataset


def parse(argv):
    p = argparse.ArgumentParser()
    add_evaluate_args(p)
    return p.parse_args(argv)


@pytest.fixture
def setup(tmp_path):
    # stored embeddings of another model (4-d): the CLI's CLIP encodes every image itself
    ds = write_dataset(tmp_path / "ds", [synthetic_item(i, CLASSES[i % 3]) for i in range(9)],
                       image_folder(tmp_path / "real", {c: 1 for c in CLASSES}, seed=1))
    return ds, image_folder(tmp_path / "test", {c: 2 for c in CLASSES}, seed=2)


def test_cli_prints_the_table_and_writes_the_report(setup, vitb32_path, capsys):
    ds, test = setup
    # flat colours with faint noise: to a (random-init) ViT-B-32 the test and real images of a class
    # are near-duplicates (centred cosine > 0.999), refused by default, naming them and the rule
    rc = cmd_evaluate(parse([str(ds), "--test", str(test), "--clip-weights", str(vitb32_path)]))
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "(by pixels 0, by embedding 6)" in err and "centred cosine 0.99" in err
    rc = cmd_evaluate(parse([str(ds), "--test", str(test), "--clip-weights", str(vitb32_path), "--seed", "3",
                             "--leak-cosine", "1.01"]))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "| arm " in out and "| few-shot real " in out and "| synthetic + few-shot " in out
    assert "features: 512-d image embeddings" in out and "stored embeddings have size 8" in out
    assert (ds / "report" / "evaluation.json").is_file() and (ds / "report" / "confusion_synthetic.png").is_file()


@pytest.mark.parametrize("extra, problem", [
    ([], "--clip-weights FILE is required"),
    (["--clip-weights", "/nonexistent/clip.safetensors"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_1(setup, extra, problem, capsys):
    ds, test = setup
    rc = cmd_evaluate(parse([str(ds), "--test", str(test), *extra]))
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: ") and problem in err


def test_cli_names_a_corrupt_test_image_and_a_folder_that_is_no_dataset(setup, vitb32_path, tmp_path, capsys):
    ds, test = setup
    bad = test / "red" / "bad.png"
    bad.write_bytes(b"nope")
    assert cmd_evaluate(parse([str(ds), "--test", str(test), "--clip-weights", str(vitb32_path)])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {bad}: image cannot be used" in err
    (tmp_path / "plain").mkdir()
    assert cmd_evaluate(parse([str(tmp_path / "plain"), "--test", str(test), "--clip-weights", str(vitb32_path)])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a DTGen dataset" in err
