"""The ID-only variant of the transformer scorer: same head and user tower, learned item embeddings
instead of text, so the value of the language model is measured rather than assumed."""

from __future__ import annotations

from dataclasses import asdict, replace

from ripplerec.models.head import HeadConfig
from ripplerec.models.transformer_scorer import TransformerScorer, TransformerScorerConfig

__all__ = ["IdOnlyScorer"]


class IdOnlyScorer(TransformerScorer):
    """A :class:`TransformerScorer` whose items are learned id embeddings; it needs no encoder."""

    name = "id-only"

    def __init__(self, config: TransformerScorerConfig | None = None, name: str | None = None, **_: object) -> None:
        config = config or TransformerScorerConfig()
        # the text-specific options (id gate, text affinity) do not apply to learned ids
        head = HeadConfig(
            **{
                **asdict(config.head),
                "item_representation": "id",
                "id_gate": 0.0,
                "bias_gate": False,
                "text_affinity": False,
                "text_feature": False,
            }
        )
        super().__init__(replace(config, head=head), encoder=None, name=name)
