"""The M2 model classes and what each one is to transformers and the Hub, in one table.

Registration with the Auto classes (`register_auto_classes`, run on `import m2_hf`), the Hub task written into
model cards (`m2_hf.hub`), the Auto classes of exported remote code (`m2_hf.remote_code`) and the kinds of
converted checkpoints (`m2_hf.conversion.heads`) all read `M2_CLASSES`; a head added here is registered, carded
and exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import transformers

from . import modeling
from .modeling import M2Config

# Families of classes that share saved folders: text encoders and their heads, causal LMs, vision models.
TEXT, CAUSAL, VISION = "text", "causal", "vision"


@dataclass(frozen=True)
class M2Class:
    """One M2 model class.

    Attributes:
        name: the class name in `m2_hf`.
        auto_class: the transformers Auto class that loads it.
        pipeline_tag: its Hub task (the `pipeline_tag` of its model card).
        families: the families whose folders it loads; a remote-code folder maps the Auto classes of the first
            family its saved architecture belongs to.
        registered: whether `import m2_hf` registers it with `auto_class` (a model type maps each Auto class to
            one class: `AutoModel` loads `M2Model`, so the vision backbone is loaded by its class or remote code).
        pipeline: whether transformers' pipeline for `pipeline_tag` loads it through the Auto classes.
    """

    name: str
    auto_class: str
    pipeline_tag: str
    families: tuple[str, ...]
    registered: bool = True
    pipeline: bool = True

    @property
    def model_class(self) -> type:
        return getattr(modeling, self.name)


M2_CLASSES = (
    M2Class("M2Model", "AutoModel", "feature-extraction", (TEXT, CAUSAL), pipeline=False),
    M2Class("M2ForMaskedLM", "AutoModelForMaskedLM", "fill-mask", (TEXT,)),
    M2Class("M2ForSequenceClassification", "AutoModelForSequenceClassification", "text-classification", (TEXT,)),
    M2Class("M2ForTokenClassification", "AutoModelForTokenClassification", "token-classification", (TEXT,)),
    M2Class("M2ForCausalLM", "AutoModelForCausalLM", "text-generation", (CAUSAL,)),
    M2Class("M2ForImageClassification", "AutoModelForImageClassification", "image-classification", (VISION,)),
    M2Class("M2VisionModel", "AutoModel", "image-feature-extraction", (VISION,), registered=False, pipeline=False),
)


def m2_class(name: str) -> M2Class:
    """The table entry of the class called `name`."""
    for entry in M2_CLASSES:
        if entry.name == name:
            return entry
    raise KeyError(f"{name!r} is not an M2 model class; known: {[entry.name for entry in M2_CLASSES]}.")


def family_auto_classes(architecture: str) -> dict[str, str]:
    """`{Auto class: class name}` of the first family `architecture` belongs to (empty if it is in none)."""
    entry = next((entry for entry in M2_CLASSES if entry.name == architecture), None)
    if entry is None:
        return {}
    family = entry.families[0]
    mapping = {}
    for member in M2_CLASSES:
        if family in member.families:
            mapping.setdefault(member.auto_class, member.name)
    mapping[entry.auto_class] = entry.name  # the family's Auto class for this architecture is the architecture
    return mapping


def register_auto_classes() -> None:
    """Register `M2Config` (model type `"m2"`) and every registered class of `M2_CLASSES` with its Auto class."""
    transformers.AutoConfig.register(M2Config.model_type, M2Config, exist_ok=True)
    for entry in M2_CLASSES:
        if entry.registered:
            getattr(transformers, entry.auto_class).register(M2Config, entry.model_class, exist_ok=True)
