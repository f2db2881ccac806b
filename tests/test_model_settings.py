"""Evaluation-only model settings: checkpoint.with_evaluation_settings and eval/run.py --model-setting NAME=VALUE."""

from __future__ import annotations

import json

import pytest

from infusion_tf import checkpoint, evaluate, short_run
from infusion_tf.config import InfusionConfig

TINY = dict(batch_size=50, langevin_steps=2, learning_steps=2, proposal_chains=2, proposal_steps=4)


def test_settings_are_parsed_by_the_fields_type_and_checked_by_the_config():
    config = short_run.ShortRunConfig(**TINY)
    changed, applied = checkpoint.with_evaluation_settings(
        config, ["proposal_steps=300", "proposal_step_size=0.05", " proposal_widen = 2 "])
    assert applied == {"proposal_steps": 300, "proposal_step_size": 0.05, "proposal_widen": 2.0}
    assert isinstance(changed.proposal_steps, int) and isinstance(changed.proposal_widen, float)
    assert changed == short_run.ShortRunConfig(**{**TINY, "proposal_steps": 300, "proposal_step_size": 0.05,
                                                  "proposal_widen": 2.0})
    assert checkpoint.with_evaluation_settings(config, []) == (config, {})
    with pytest.raises(ValueError, match="proposal_step_size must be a finite number > 0"):
        checkpoint.with_evaluation_settings(config, ["proposal_step_size=-0.1"])  # the config's own check
    with pytest.raises(ValueError, match="proposal_steps takes a value of type int, got '1.5'"):
        checkpoint.with_evaluation_settings(config, ["proposal_steps=1.5"])


@pytest.mark.parametrize("assignment, words", [
    ("sigma=0.2", ["'sigma'", "changes the trained model", "proposal_steps"]),
    ("no_such_field=1", ["'no_such_field'", "no such config field"]),
    ("proposal_steps", ["NAME=VALUE", "'proposal_steps'"]),
])
def test_only_fields_the_model_marks_evaluation_only_can_be_set(assignment, words):
    with pytest.raises(ValueError) as error:
        checkpoint.with_evaluation_settings(short_run.ShortRunConfig(**TINY), [assignment])
    for word in words:
        assert word in str(error.value)


def test_a_model_that_marks_no_fields_refuses_every_setting():
    assert checkpoint.evaluation_settings("infusion") == ()
    with pytest.raises(ValueError, match="evaluation-only settings: none"):
        checkpoint.with_evaluation_settings(InfusionConfig(), ["num_steps=3"])


def test_eval_command_applies_and_records_the_settings(tmp_path, capsys):
    """A 100-image run of short_run_ot; eval/run.py's --model-setting reaches the model and results.json; a field that
    is not evaluation-only is one error line (exit 2) before any work."""
    from infusion_tf import training

    run = tmp_path / "run"
    training.train(short_run.ShortRunConfig(train_examples=100, validation_examples=4, epochs=1, **TINY), str(run),
                   verbose=0)
    out = tmp_path / "lb.json"
    base = ["--checkpoint", str(run), "--estimator", "lower_bound", "--k", "2", "--repeats", "1", "--num-examples",
            "2", "--output", str(out)]
    assert evaluate.main(base + ["--model-setting", "proposal_steps=6", "--model-setting",
                                 "proposal_step_size=0.05"]) == 0
    result = json.loads(out.read_text())
    assert result["model_settings"] == {"proposal_steps": 6, "proposal_step_size": 0.05}
    assert result["settings"]["config"]["proposal_steps"] == 6
    assert result["settings"]["model_settings"] == ["proposal_steps=6", "proposal_step_size=0.05"]
    assert json.loads((run / "config.json").read_text())["proposal_steps"] == 4  # the run folder is not changed
    out.unlink()
    capsys.readouterr()
    assert evaluate.main(base + ["--model-setting", "sigma=0.1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "'sigma'" in errors[0] and "changes the trained model" in errors[0]
    assert not out.exists()
