"""Typed config: recipes, overrides, validation errors that name the key and suggest the closest one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchgpt.cli import main as cli_main
from scratchgpt.config import Config, apply_overrides, from_dict, load_recipe, parse_override, to_dict
from scratchgpt.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

RECIPES = sorted((REPO / "configs").rglob("*.toml"))


def test_a_config_mistake_reaches_the_user_as_one_error_line(tmp_path, capsys):
    """What ConfigError being a UserError is for: the CLI prints it as one `error:` line and exits 2."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nnorm = "rmsnrom"\n', encoding="utf-8")
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run"), "--train.max_itres=3"]) == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == ["error: unknown key 'train.max_itres' (did you mean 'train.max_iters'?)"]
    assert cli_main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("error: 'model.norm' must be one of layernorm, rmsnorm, none, got 'rmsnrom' "
                                       "(did you mean 'rmsnorm'?)\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("raw, key, suggestion", [
    ({"train": {"max_itres": 5}}, "train.max_itres", "train.max_iters"),
    ({"model": {"n_embed": 64}}, "model.n_embed", "model.n_embd"),
    ({"train": {"learning_rte": 1e-3}}, "train.learning_rte", "train.learning_rate"),
])
def test_unknown_key_names_closest(raw, key, suggestion):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert f"unknown key '{key}'" in str(e.value)
    assert f"did you mean '{suggestion}'" in str(e.value)


def test_unknown_key_in_override_names_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.max_itres'.*did you mean 'train\.max_iters'"):
        apply_overrides({}, ["--train.max_itres=10"])
    with pytest.raises(ConfigError, match=r"unknown key 'modle\.n_layer'.*did you mean 'model\.n_layer'"):
        apply_overrides({}, ["--modle.n_layer=2"])


def test_unknown_key_without_close_match_has_no_suggestion():
    # compared within the section: the shared 'train.' prefix alone must not make a key look close
    for raw in ({"train": {"zzzzzz": 1}}, {"model": {"qqq": 1}}):
        with pytest.raises(ConfigError) as e:
            from_dict(raw)
        assert "unknown key" in str(e.value) and "did you mean" not in str(e.value)


@pytest.mark.parametrize("arg, suggestion", [
    ("--train.dropout=0.1", "model.dropout"),  # the right key in the wrong section
    ("--train.n_layer=2", "model.n_layer"),
    ("--max_iters=5", "train.max_iters"),  # section left out
    ("--trian.max_iters=5", "train.max_iters"),
])
def test_override_suggestions_across_sections(arg, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        apply_overrides({}, [arg])


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*did you mean 'train'"):
        from_dict({"trian": {"max_iters": 5}})
    with pytest.raises(ConfigError, match="must be a table"):
        from_dict({"train": 5})


@pytest.mark.parametrize("value, got", [("abc", "str"), (2.5, "float"), (True, "bool"), ([1], "list")])
def test_wrong_type_for_int(value, got):
    with pytest.raises(ConfigError) as e:
        from_dict({"train": {"max_iters": value}})
    assert "'train.max_iters' must be int" in str(e.value) and f"got {got}" in str(e.value)


def test_wrong_type_for_bool_and_str():
    with pytest.raises(ConfigError, match="'train.compile' must be bool, got int"):
        from_dict({"train": {"compile": 1}})
    with pytest.raises(ConfigError, match="'data.dir' must be str, got int"):
        from_dict({"data": {"dir": 3}})
    with pytest.raises(ConfigError, match="'name' must be str"):
        from_dict({"name": 3})


def test_int_accepted_for_float():
    cfg = from_dict({"train": {"learning_rate": 1, "min_lr": 0}, "model": {"dropout": 0}})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert isinstance(cfg.train.min_lr, float) and isinstance(cfg.model.dropout, float)


def test_invalid_choice():
    with pytest.raises(ConfigError) as e:
        from_dict({"model": {"norm": "batchnorm"}})
    msg = str(e.value)
    assert "'model.norm' must be one of layernorm, rmsnorm, none" in msg and "'batchnorm'" in msg
    with pytest.raises(ConfigError, match="did you mean 'rmsnorm'"):
        from_dict({"model": {"norm": "rmsnrom"}})
    with pytest.raises(ConfigError, match="'train.lr_schedule' must be one of"):
        from_dict({"train": {"lr_schedule": "step"}})


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="divisible"):
        from_dict({"model": {"n_embd": 30, "n_head": 4}})
    with pytest.raises(ConfigError, match="'model.n_layer' must be positive"):
        from_dict({"model": {"n_layer": 0}})
    with pytest.raises(ConfigError, match="dropout"):
        from_dict({"model": {"dropout": 1.0}})


@pytest.mark.parametrize("arg, key, value", [
    ("--train.max_iters=2000", "train.max_iters", 2000),
    ("--train.learning_rate=3e-4", "train.learning_rate", 3e-4),
    ("--train.max_iters=1_000", "train.max_iters", 1000),
    ("--train.compile=true", "train.compile", True),
    ("--model.pos_emb=rope", "model.pos_emb", "rope"),  # bare word: not TOML, kept as a string
    ("--train.device=cpu", "train.device", "cpu"),
    ("--data.dir=data/my corpus", "data.dir", "data/my corpus"),
    ('--data.dir="quoted"', "data.dir", "quoted"),
    ("--train.out_dir=", "train.out_dir", ""),
    ("train.seed=-3", "train.seed", -3),
])
def test_parse_override(arg, key, value):
    got_key, got = parse_override(arg)
    assert got_key == key
    assert got == value and type(got) is type(value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--section.key=value"):
        parse_override("--train.max_iters")


def test_overrides_apply_on_top_of_recipe_and_validate():
    raw = {"train": {"max_iters": 10, "batch_size": 4}}
    out = apply_overrides(raw, ["--train.max_iters=20", "--model.n_layer=3", "--model.pos_emb=rope"])
    assert raw == {"train": {"max_iters": 10, "batch_size": 4}}  # the input is not modified
    cfg = from_dict(out)
    assert (cfg.train.max_iters, cfg.train.batch_size, cfg.model.n_layer, cfg.model.pos_emb) == (20, 4, 3, "rope")
    with pytest.raises(ConfigError, match="'train.max_iters' must be int, got str 'lots'"):
        from_dict(apply_overrides(raw, ["--train.max_iters=lots"]))


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integer_overrides_round_trip(n):
    assert parse_override(f"--train.max_iters={n}") == ("train.max_iters", n)
    if n >= 0:
        cfg = from_dict(apply_overrides({}, [f"--train.max_iters={n}"]))
        assert cfg.train.max_iters == n
    else:
        with pytest.raises(ConfigError, match="must not be negative"):
            from_dict(apply_overrides({}, [f"--train.max_iters={n}"]))


def test_to_dict_from_dict_round_trip():
    cfg = from_dict({"model": {"n_layer": 3, "pos_emb": "rope"}, "train": {"learning_rate": 3e-4}}, name="x")
    again = from_dict(to_dict(cfg))
    assert again == cfg and isinstance(again, Config)


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"bigram.toml", "shakespeare_char.toml", "shakespeare_char_cpu.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_recipe_loads(path):
    cfg = load_recipe(path)
    assert cfg.name == path.stem
    assert cfg.train.max_iters > 0


def test_bias_is_a_choice_and_older_bools_still_load():
    assert Config().model.bias == "none"  # nanoGPT's default
    # config.json files written when model.bias was a bool, and --model.bias=true on the command line
    assert from_dict({"model": {"bias": False}}).model.bias == "none"
    assert from_dict({"model": {"bias": True}}).model.bias == "gpt2"
    assert from_dict(apply_overrides({}, ["--model.bias=true"])).model.bias == "gpt2"
    assert from_dict(apply_overrides({}, ["--model.bias=lecture"])).model.bias == "lecture"
    cfg = from_dict({"model": {"bias": True}})
    assert from_dict(to_dict(cfg)) == cfg and to_dict(cfg)["model"]["bias"] == "gpt2"
    with pytest.raises(ConfigError, match=r"'model.bias' must be one of none, gpt2, lecture.*did you mean 'lecture'"):
        from_dict({"model": {"bias": "lectur"}})
    with pytest.raises(ConfigError, match="'model.bias' must be str, got int 1"):
        from_dict({"model": {"bias": 1}})


def test_lecture_recipe_values():
    cfg = load_recipe(REPO / "configs/shakespeare_char.toml")
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (t.batch_size, t.learning_rate, t.max_iters) == (64, 1e-3, 5000)
    bigram = load_recipe(REPO / "configs/bigram.toml", ["--train.max_iters=7"])
    assert bigram.model.arch == "bigram" and bigram.train.max_iters == 7


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nmax_iters = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nmax_itres = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train.max_iters'"):
        load_recipe(typo)
