import math

import pytest

from ml import HYPERPARAMETERS, ConfigError, TrainConfig


def test_defaults_come_from_one_table():
    config = TrainConfig()
    assert set(HYPERPARAMETERS) == set(config.to_dict())
    for name, param in HYPERPARAMETERS.items():
        assert getattr(config, name) == param.default, name


def test_from_dict_fills_missing_keys_with_defaults_and_round_trips():
    config = TrainConfig.from_dict({"epochs": 3, "arch": "seed_cnn"})
    assert config.epochs == 3 and config.arch == "seed_cnn"
    assert config.batch_size == HYPERPARAMETERS["batch_size"].default
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_ints_are_accepted_for_floats_and_integral_floats_for_ints():
    config = TrainConfig.from_dict({"lr": 1, "weight_decay": 0, "epochs": 4.0})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.weight_decay == 0.0 and isinstance(config.weight_decay, float)
    assert config.epochs == 4 and isinstance(config.epochs, int)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError) as error:
        TrainConfig(epochs=0)
    assert error.value.field == "epochs"


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"arch": "vgg"})
    assert error.value.field == "arch"
    assert str(error.value) == "Unknown architecture 'vgg'. Choose one of: seed_cnn, resnet, seed_lstm, cnn_mel, crnn"


def test_unknown_key_is_refused_by_name():
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 0.1})
    assert error.value.field == "learning_rate"
    assert "Unknown hyperparameter 'learning_rate'" in error.value.message
    assert "lr" in error.value.message


def test_epochs_message_names_the_range():
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"epochs": 501})
    assert error.value.message == "epochs must be between 1 and 500, got 501"


def _bad_values():
    for name, p in HYPERPARAMETERS.items():
        if p.kind in ("int", "float"):
            yield name, p.min - (1 if p.kind == "int" else p.min or 1e-3), "between"
            yield name, p.max * 2 + 1, "between"
            yield name, "3", "number"  # strings are the caller's job to convert
            yield name, True, "number"  # bool is an int in Python, not a number here
            yield name, None, "number"
        if p.kind == "float":
            yield name, math.nan, "finite"
            yield name, math.inf, "finite"
        if p.kind == "int":
            yield name, 2.5, "whole number"
        if p.kind == "choice":
            yield name, "nope", "Choose one of"
            yield name, 1, "Choose one of"
        if p.kind == "bool":
            yield name, "yes", "true or false"
            yield name, 1, "true or false"


@pytest.mark.parametrize(("name", "value", "words"), list(_bad_values()))
def test_each_bad_value_names_its_field_and_what_is_allowed(name, value, words):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({name: value})
    assert error.value.field == name
    assert words in error.value.message
    if words == "between":
        p = HYPERPARAMETERS[name]
        assert f"{name} must be between {p.min:g} and {p.max:g}" in error.value.message


def test_a_non_dict_is_refused():
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(["epochs", 3])


def test_every_parameter_is_described_for_forms():
    for name, p in HYPERPARAMETERS.items():
        assert p.kind in ("choice", "int", "float", "bool"), name
        assert p.help, name
        if p.kind == "choice":
            assert p.default in p.choices, name
        if p.kind in ("int", "float"):
            assert p.min <= p.default <= p.max, name
