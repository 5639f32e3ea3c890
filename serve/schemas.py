"""The service's request and response schemas (pydantic); they also make the OpenAPI document."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

#: a character that is not white space in JSON Schema's (ECMA-262) sense: the OpenAPI document states the
#: rule with this pattern and the service enforces the same one (Python's str.strip() also strips
#: U+0085 and U+001C-U+001F, which a schema-driven client may send as a "non-blank" text)
NON_BLANK = "[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


def _not_blank(text: str) -> str:
    if not re.search(NON_BLANK, text):
        raise ValueError("text is blank (whitespace only)")
    return text


def texts_type(max_texts: int, max_text_chars: int):
    """The ``texts`` argument's type: 1 to ``max_texts`` non-blank strings of 1 to ``max_text_chars``
    characters (strict: a number or null is a 400, not coerced)."""
    text = Annotated[
        str,
        StringConstraints(strict=True, min_length=1, max_length=max_text_chars),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": NON_BLANK}),  # the spec says what _not_blank enforces
    ]
    return Annotated[
        list[text],
        Field(min_length=1, max_length=max_texts,
              description=f"1 to {max_texts} non-blank texts of at most {max_text_chars} characters each. "
                          "Texts over the model's max_length tokens are truncated (see `truncated`)."),
    ]


class Prediction(BaseModel):
    """One text's prediction (probabilities are softmax outputs in [0, 1])."""

    label: str = Field(description="Most probable class.")
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class, in label order.")
    truncated: bool = Field(description="True when the text had more than max_length tokens and was cut.")
    tokens: int = Field(description="Tokens fed to the model (special tokens included, <= max_length).")
    batch_size: int = Field(description="Texts in the model call that served this one (adaptive batching).")
