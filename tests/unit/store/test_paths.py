import pytest
from dtgen.nodes.store.paths import DatasetPathError, safe_dataset_dir, safe_label


@pytest.mark.parametrize("name", [
    "..", "../x", "a/../../b", "/abs", "C:/x", "C:evil", "a\\b", "", "  ", ".hidden", "a/.git", "x.",
    "CON", "con", "NUL.txt", "com1", "LPT9.png", "aux.tar.gz", "caf\u00e9", "p\u0430ypal",  # Cyrillic a
    "a//b", "a b", "x" * 101, "\uff0e\uff0e",  # full-width '..' -> '..' after NFKC
])
def test_unsafe_dataset_names_are_refused(tmp_path, name):
    with pytest.raises(DatasetPathError) as e:
        safe_dataset_dir(tmp_path, name)
    assert repr(name) in str(e.value) or e.value.value == name
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_safe_dataset_names(tmp_path):
    assert safe_dataset_dir(tmp_path, "tableware_v1") == tmp_path.resolve() / "tableware_v1"
    assert safe_dataset_dir(tmp_path, "runs/2024-06.a") == tmp_path.resolve() / "runs" / "2024-06.a"
    assert safe_dataset_dir(tmp_path, "\uff41bc") == tmp_path.resolve() / "abc"  # full-width letters fold


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)
    with pytest.raises(DatasetPathError, match="outside the output directory"):
        safe_dataset_dir(out, "link/ds")


@pytest.mark.parametrize("label", ["a/b", "..", "C:", "PRN", ".x", "", "\u0441up", "x\x00"])
def test_unsafe_labels(label):
    with pytest.raises(DatasetPathError):
        safe_label(label)


def test_label_sanitising():
    assert safe_label("tea cup") == "tea_cup"
    assert safe_label("  Steel-defect.v2 ") == "Steel-defect.v2"


@pytest.mark.parametrize("label", ["cat", "tea cup", "_under", "a..b", "-dash", "x" * 100, "x" * 101, "CON",
                                   "Metadata.jsonl", "v1.2", "caf\u00e9", "trail."])
def test_the_writer_and_the_pack_validator_share_one_label_rule(label):
    from dtgen.nodes.common.labels import label_problem, normalise_label

    problem = label_problem(normalise_label(label))
    if problem is None:
        assert safe_label(label) == normalise_label(label)
    else:
        with pytest.raises(DatasetPathError) as info:
            safe_label(label)
        assert problem in str(info.value)
