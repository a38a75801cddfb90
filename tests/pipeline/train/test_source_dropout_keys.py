"""The yaml keys of source control: train's visual_dropout (ranges [0, 1)) and evaluate/tag's visual.sources and
text_only (unknown sources exit 2)."""
import pytest

from exit_codes import UsageError
from pipeline.stage_config import stage_config


def test_dropout_defaults_and_overrides():
    cfg = stage_config("train")
    assert (cfg.visual_dropout.source, cfg.visual_dropout.image) == (0.0, 0.0)
    cfg = stage_config("train", overrides=["visual_dropout.source=0.25", "visual_dropout.image=0.5"])
    assert (cfg.visual_dropout.source, cfg.visual_dropout.image) == (0.25, 0.5)


@pytest.mark.parametrize("override", ["visual_dropout.source=1", "visual_dropout.image=-0.1",
                                      "visual_dropout.source=1.5"])
def test_dropout_out_of_range_exits_2(override):
    with pytest.raises(UsageError) as info:
        stage_config("train", overrides=[override])
    assert info.value.exit_code == 2 and f"{override.split('=')[0]} must be in [0, 1)" in str(info.value)


@pytest.mark.parametrize("stage", ["evaluate", "tag"])
def test_prediction_sources_keys(stage):
    cfg = stage_config(stage)
    assert cfg.visual.sources == [] and cfg.text_only is False
    cfg = stage_config(stage, overrides=["visual.sources=orig", "text_only=true"])
    assert cfg.visual.sources == ["orig"] and cfg.text_only is True
    with pytest.raises(UsageError) as info:
        stage_config(stage, overrides=["visual.sources=orig,faces"])
    assert info.value.exit_code == 2 and "visual.sources must be a list of orig, grounding, rcnn" in str(info.value)
