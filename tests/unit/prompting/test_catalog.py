"""Pack names: shipped names always mean the shipped file; a user pack with a taken name is listed
under a distinct name (never hidden) and a warning names both files."""
import logging

import pytest

from dtgen.nodes.prompting.catalog import SHIPPED_PACKS, build_sampler, pack_files, pack_path
from dtgen.nodes.prompting.pack import PromptPackError
from dtgen.runner.packs import local_sampler

SHIPPED = {"tableware", "fruits", "steel_defects"}
LOGGER = "dtgen.nodes.prompting.catalog"


def edited_tableware(folder, file_name="tableware.yaml"):
    """A user's copy of the shipped tableware pack with their own trigger."""
    folder.mkdir(exist_ok=True)
    text = (SHIPPED_PACKS / "tableware.yaml").read_text(encoding="utf-8")
    assert "trigger: dtgtableware\n" in text
    path = folder / file_name
    path.write_text(text.replace("trigger: dtgtableware\n", "trigger: myedit\n"), encoding="utf-8")
    return path


def clash_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_user_copy_of_a_shipped_pack_is_listed_under_a_distinct_name(tmp_path, caplog):
    user = tmp_path / "dtgen_prompts"
    mine = edited_tableware(user)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    files = pack_files([user])
    assert set(files) == SHIPPED | {"user/tableware.yaml"}
    assert files["tableware"] == str(SHIPPED_PACKS / "tableware.yaml")
    assert files["user/tableware.yaml"] == str(mine)

    shipped = build_sampler("tableware", "balanced", 0, "", "", [user])
    edited = build_sampler("user/tableware.yaml", "balanced", 0, "", "", [user])
    assert shipped.pack.trigger == "dtgtableware"
    assert edited.pack.trigger == "myedit"
    assert edited.item(0).positive.startswith("myedit")
    assert edited.labels == shipped.labels

    (message,) = clash_warnings(caplog)
    assert str(mine) in message and str(SHIPPED_PACKS / "tableware.yaml") in message
    assert "'user/tableware.yaml'" in message


def test_a_clash_is_reported_once_not_on_every_listing(tmp_path, caplog):
    user = tmp_path / "packs"
    edited_tableware(user)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(3):
        pack_files([user])
    assert len(clash_warnings(caplog)) == 1


def test_same_stem_in_two_user_folders_and_yaml_yml_twins(tmp_path, caplog):
    first, second = tmp_path / "one", tmp_path / "two"
    a1 = edited_tableware(first, "mine.yaml")
    a2 = edited_tableware(second, "mine.yaml")
    twin = edited_tableware(second, "mine.yml")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    files = pack_files([first, second])
    assert {name: files[name] for name in files if name not in SHIPPED} == {
        "mine": str(a1), "user2/mine.yaml": str(a2), "user2/mine.yml": str(twin)}
    warnings = clash_warnings(caplog)
    assert len(warnings) == 2
    assert all(str(a1) in w for w in warnings)
    assert any(str(a2) in w for w in warnings) and any(str(twin) in w for w in warnings)


def test_listing_skips_non_packs_missing_folders_and_does_not_parse(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (first / "b.yaml").write_text("not: [valid", encoding="utf-8")     # not parsed when listed
    (first / "a.yml").write_text("", encoding="utf-8")
    (first / "notes.txt").write_text("", encoding="utf-8")
    (first / "folder.yaml").mkdir()
    (second / "c.YAML").write_text("", encoding="utf-8")
    files = pack_files([first, second, tmp_path / "absent"])
    assert {name: files[name] for name in files if name not in SHIPPED} == {
        "a": str(first / "a.yml"), "b": str(first / "b.yaml"), "c": str(second / "c.YAML")}
    assert list(files) == sorted(files)
    with pytest.raises(PromptPackError, match="b.yaml"):
        build_sampler("b", user_dirs=[first])


def test_a_folder_listed_twice_does_not_clash_with_itself(tmp_path, caplog):
    user = tmp_path / "packs"
    edited_tableware(user, "mine.yaml")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    files = pack_files([user, str(user) + "/", SHIPPED_PACKS])
    assert set(files) == SHIPPED | {"mine"}
    assert clash_warnings(caplog) == []


def test_unknown_name_lists_the_names_and_folders(tmp_path):
    with pytest.raises(PromptPackError) as info:
        pack_path("tablware", [tmp_path])
    message = str(info.value)
    assert "'tablware'" in message and "tableware" in message and str(tmp_path) in message
    assert "models/dtgen_prompts" in message


def test_queue_client_resolves_names_like_the_node(tmp_path):
    user = tmp_path / "dtgen_prompts"
    edited_tableware(user)
    inputs = {"pack": "user/tableware.yaml", "mode": "balanced", "seed": 5}
    client = local_sampler(inputs, [user])
    node = build_sampler("user/tableware.yaml", "balanced", 5, "", "", [user])
    assert client.pack.trigger == node.pack.trigger == "myedit"
    assert [client.item(i).positive for i in range(4)] == [node.item(i).positive for i in range(4)]
    assert local_sampler({**inputs, "pack": "tableware"}, [user]).pack.trigger == "dtgtableware"
    with pytest.raises(PromptPackError, match="--pack-dir"):
        local_sampler(inputs)                                  # the client was not given the folder
