import pytest

from tasks.config import TrialConfig, make_config, make_split, trial_key
from tasks.errors import UserError


def test_defaults_are_the_exercise_baseline():
    c = TrialConfig()
    assert (c.units, c.dropout, c.activation) == (128, 0.3, "relu")
    assert (c.batch_size, c.epochs) == (1000, 10)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("dropout", 1.0, "dropout=1.0"),
        ("dropout", -0.1, "dropout=-0.1"),
        ("units", 0, "units=0"),
        ("batch_size", 0, "batch_size=0"),
        ("epochs", 0, "epochs=0"),
        ("learning_rate", 0.0, "learning_rate=0.0"),
        ("learning_rate", -1e-3, "learning_rate=-0.001"),
        ("activation", "swish", "'relu', 'elu', 'sigmoid', 'tanh' or 'linear'"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_allowed(field, value, words):
    with pytest.raises(UserError) as info:
        make_config(**{field: value})
    message = str(info.value)
    assert words in message
    assert "\n" not in message


def test_trial_key_depends_on_config_data_and_backend_only():
    a = TrialConfig(units=64, dropout=0.1)
    same = TrialConfig(units=64, dropout=0.1000000000001)
    assert trial_key(a, "fp") == trial_key(same, "fp")
    assert trial_key(a, "fp") != trial_key(TrialConfig(units=64, dropout=0.2), "fp")
    assert trial_key(a, "fp") != trial_key(a, "other-data")
    assert trial_key(a, "fp") != trial_key(a, "fp", backend="keras")
    assert trial_key(a, "fp") != trial_key(a.model_copy(update={"seed": 1}), "fp")


def test_split_rejects_non_positive_subset():
    with pytest.raises(UserError, match="train_samples=0"):
        make_split(train_samples=0)


def test_the_docs_settings_table_is_generated_from_the_settings_object():
    from conftest import PROJECT_ROOT

    from tasks.settings import settings_table

    assert settings_table() in (PROJECT_ROOT / "docs" / "settings.md").read_text()


def test_no_module_but_settings_reads_a_setting_variable():
    """Every variable of :class:`Settings` is read by it alone: no other module names one in
    its code (docstrings and help texts may mention them)."""
    import ast

    from conftest import PROJECT_ROOT

    from tasks.settings import environment_variables

    names = set(environment_variables().values())
    readers = []
    for path in [*(PROJECT_ROOT / "tasks").rglob("*.py"), *(PROJECT_ROOT / "flows").glob("*.py")]:
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                readers.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.value}")
    assert readers == []


def test_settings_are_read_from_the_environment_in_one_place():
    from pathlib import Path

    from tasks.errors import UserError
    from tasks.settings import Settings

    settings = Settings.from_environment({
        "PIPELINE_DATA_DIR": "/tmp/d", "PIPELINE_FAULTS": '[{"units": 16, "times": -1}]',
        "PIPELINE_CONCURRENCY_TAG": " ", "PIPELINE_TF_LOGS": "1"})
    assert settings.data_dir == Path("/tmp/d") and settings.tf_logs is True
    assert settings.faults == [{"units": 16, "times": -1}]
    assert settings.concurrency_tag is None  # blank is unset
    with pytest.raises(UserError, match="bad setting"):
        Settings.from_environment({"PIPELINE_FAULTS": "[{not json"})
