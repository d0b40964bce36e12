"""Prompt templates for turning class names into CLIP text prompts.

    >>> from ovs.templates import get_templates
    >>> [t.format("cat") for t in get_templates("simple")]
    ['a photo of a cat.']

Each template is a str with exactly one "{}" where the class name goes.
- ``IMAGENET_TEMPLATES``: the 80 prompts OpenAI's CLIP uses for ImageNet zero-shot
  classification (open_clip's ``OPENAI_IMAGENET_TEMPLATES``, same order).
- ``VILD_TEMPLATES``: the 14 prompts of ViLD that FC-CLIP averages over (its ``VILD_PROMPT``).
- ``SIMPLE_TEMPLATES``: the single prompt "a photo of a {}.".
- ``BARE_TEMPLATES``: just the class name.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["IMAGENET_TEMPLATES", "VILD_TEMPLATES", "SIMPLE_TEMPLATES", "BARE_TEMPLATES",
           "NAMES", "get_templates"]

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

BARE_TEMPLATES: tuple[str, ...] = ("{}",)

_NAMED = {
    "imagenet80": IMAGENET_TEMPLATES,
    "vild": VILD_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "none": BARE_TEMPLATES,
    "bare": BARE_TEMPLATES,
}
#: The template set names get_templates takes (the one table of them: _NAMED above).
NAMES: tuple[str, ...] = tuple(_NAMED)


def get_templates(name_or_list: str | Sequence[str]) -> list[str]:
    """Templates by name ("imagenet80", "vild", "simple", "none" or "bare") or a user list.

    A user list must be a non-empty list/tuple of str, each with exactly one "{}" and no other
    braces (templates are filled with ``str.format``). Returns a new list.
    """
    if isinstance(name_or_list, str):
        key = name_or_list.strip().lower()
        if key not in _NAMED:
            raise ValueError(f"unknown template set {name_or_list!r}; expected one of "
                             f"{', '.join(sorted(_NAMED))} or a list of templates")
        return list(_NAMED[key])
    if not isinstance(name_or_list, (list, tuple)):
        raise TypeError(f"templates must be a name or a list of str, got {type(name_or_list).__name__}")
    if not name_or_list:
        raise ValueError("the template list is empty")
    out = []
    for i, t in enumerate(name_or_list):
        if not isinstance(t, str):
            raise TypeError(f"templates[{i}] must be str, got {type(t).__name__}")
        if t.count("{}") != 1 or t.count("{") != 1 or t.count("}") != 1:
            raise ValueError(f"templates[{i}] = {t!r} must contain exactly one '{{}}' and no other braces")
        out.append(t)
    return out
