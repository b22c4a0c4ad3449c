from pathlib import Path

from gennaker.spec.models import STAGE_TYPES
from gennaker.spec.reference import render_reference

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_reference_is_current() -> None:
    # docs/spec-language.md is generated: `gennaker reference -o docs/spec-language.md` after a model change.
    assert (REPO / "docs" / "spec-language.md").read_text(encoding="utf-8") == render_reference()


def test_the_reference_documents_every_stage_type() -> None:
    text = render_reference()
    for stage_type in STAGE_TYPES:
        assert f"`{stage_type}`" in text
    assert "| `dependsOn` |" in text and "| `onFailure` |" in text
