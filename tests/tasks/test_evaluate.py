import pytest

from tasks.evaluate import EvaluationSettings, check_evaluation
from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing


def test_missing_dreamsim_weights_name_the_cli_flags_and_the_deployment_parameters(tmp_path):
    settings = EvaluationSettings(metric="dreamsim_open_clip_vitb32", cache_dir=str(tmp_path))
    with pytest.raises(DreamSimWeightsMissing) as missing:
        check_evaluation(settings)
    message = str(missing.value)
    for name in ("--dreamsim-cache", "evaluation.cache_dir", "--fallback-metric", "evaluation.fallback",
                 "evaluation.metric"):
        assert name in message
