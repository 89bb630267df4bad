"""Model cards of the released checkpoints: generated from the preset table, committed up to date."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from m2_hf import cli
from m2_hf.conversion import PRESETS, write_preset_cards
from m2_hf.conversion.model_cards import CARD_TEMPLATE, TEMPLATE_FILE

CARDS = Path(__file__).resolve().parents[2] / "model_cards"


def test_committed_cards_match_the_generator(tmp_path):
    written = write_preset_cards(tmp_path)
    assert sorted(path.name for path in CARDS.iterdir()) == sorted(path.name for path in written)
    for path in written:
        assert (CARDS / path.name).read_text() == path.read_text(), "run `m2-hf model-cards model_cards/`"


@pytest.mark.parametrize("name", list(PRESETS))
def test_card_describes_its_checkpoint(name):
    preset = PRESETS[name]
    card = ModelCard.load(CARDS / f"{name}.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"m2", "monarch-mixer"} <= set(card.data.tags)
    assert card.data.pipeline_tag == ("feature-extraction" if preset.kind == "encoder" else "fill-mask")
    text = card.text
    assert f"https://huggingface.co/{preset.weights}" in text and "https://github.com/HazyResearch/m2" in text
    assert f"--preset {name}" in text and "Apache-2.0" in text and "mask_padding=False" in text
    assert f"{preset.max_length:,} tokens" in text
    if preset.published_parameters is not None:
        assert f"| Parameters | {preset.published_parameters:,} |" in text
    if preset.glue_average is not None:
        assert f"**{preset.glue_average}**" in text and "| BERT-base (110M) | 79.6 |" in text
    assert ("pad_to_max_length=True" in text) == preset.pad_to_max_length


def test_command_line_writes_the_cards(tmp_path, capsys):
    assert cli.main(["model-cards", str(tmp_path)]) == 0
    assert (tmp_path / TEMPLATE_FILE).read_text() == CARD_TEMPLATE
    assert len(capsys.readouterr().out.splitlines()) == len(PRESETS) + 1
