"""One typed configuration, validated before any model is loaded."""

import pytest

from dflora_core.config import RunConfig, field_docs, from_dict
from dflora_core.errors import ConfigError
from dflora_core.methods import validate


def test_defaults_validate_and_round_trip():
    cfg = RunConfig()
    validate(cfg, num_layers=30, model_type="llama")
    assert from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(**{"search.budget": 200}).search.budget == 200


def test_every_field_has_a_rationale():
    import dataclasses

    from dflora_core import config as C

    docs = field_docs()
    for cls in (C.RunConfig, C.DataConfig, C.ModelConfig, C.LowRankConfig, C.OptimConfig, C.SearchConfig):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in (
                "data",
                "model",
                "lowrank",
                "optim",
                "search",
                "baseline",
            ):
                continue
            assert f"{cls.__name__}.{f.name}" in docs, f"{cls.__name__}.{f.name} has no one-line rationale"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"lowrank": {"rank": 0}}, "lowrank.rank"),
        ({"optim": {"popsize": 1}}, "optim.popsize"),
        ({"search": {"budget": 100}}, "search.budget"),  # less than one round: 20 x 30 layers
        ({"lowrank": {"targets": ["q", "x"]}}, "lowrank.targets"),
        ({"lowrank": {"intrinsic_dim": 502}}, "lowrank.intrinsic_dim"),  # 4 factors for q,k
        ({"lowrank": {"projection_init": "zeros"}}, "lowrank.projection_init"),
        ({"lowrank": {"alpha": -1}}, "lowrank.alpha"),
        ({"search": {"acceptance": "greedy"}}, "search.acceptance"),
        ({"search": {"loss": "mse"}}, "search.loss"),
        ({"data": {"task": "imdb"}}, "data.task"),
        ({"method": "sgd"}, "method"),
        ({"model": {"dtype": "int8"}}, "model.dtype"),
        ({"optim": {"sigma": 0}}, "optim.sigma"),
    ],
)
def test_bad_values_name_their_field(change, field):
    with pytest.raises(ConfigError) as err:
        validate(from_dict(change), num_layers=30, model_type="llama")
    assert err.value.field == field


def test_unknown_and_mistyped_keys_are_errors():
    with pytest.raises(ConfigError, match="search.budgett"):
        from_dict({"search": {"budgett": 3}})
    with pytest.raises(ConfigError, match="lowrank.rank"):
        from_dict({"lowrank": {"rank": "four"}})
    assert from_dict({"lowrank": {"targets": "q,v"}}).lowrank.targets == ("q", "v")


def test_unknown_architecture_is_rejected_before_loading():
    with pytest.raises(ConfigError, match="model.name"):
        validate(RunConfig(), num_layers=12, model_type="t5")


def test_profiles_are_valid():
    from pathlib import Path

    from dflora_core.config import load_yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    profiles = sorted(root.glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "quick", "paper"}
    for p in profiles:
        data = load_yaml(p)
        run = data.get("run", data)
        cfg = from_dict(run)
        validate(cfg)


def test_an_error_in_a_settings_file_names_the_file(tmp_path):
    from argparse import Namespace

    from dflora_core.cli import build_config
    from dflora_core.lab.profiles import load_profile

    bad = tmp_path / "mine.yaml"
    bad.write_text("search:\n  budgett: 3\n")
    with pytest.raises(ConfigError, match=r"search\.budgett: unknown setting.*\(in .*mine\.yaml\)"):
        build_config(Namespace(config=str(bad), set=None))
    with pytest.raises(ConfigError, match=r"run\.search\.budgett: unknown setting.*\(in .*prof\.yaml\)"):
        (tmp_path / "prof.yaml").write_text("run:\n  search:\n    budgett: 3\n")
        load_profile(tmp_path / "prof.yaml")
    from dflora_core.config import load_run_settings

    with pytest.raises(ConfigError, match=r"search\.budgett: unknown setting.*\(in .*prof\.yaml\)"):
        load_run_settings(tmp_path / "prof.yaml", section="run")  # dflora compare --config
    # a mistake on the command line is not blamed on the file
    good = tmp_path / "good.yaml"
    good.write_text("search:\n  budget: 700\n")
    with pytest.raises(ConfigError) as err:
        build_config(Namespace(config=str(good), set=["search.budgett=3"]))
    assert "good.yaml" not in str(err.value) and err.value.field == "search.budgett"
    assert build_config(Namespace(config=str(good), set=None)).search.budget == 700
