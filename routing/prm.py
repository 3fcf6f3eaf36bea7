"""How a process reward model served over vLLM's pooling API reads steps and writes scores.

Pure data, set per backend pool in routes.yaml (``backends[].prm``); the client that speaks the
wire format is ``gateway.backends.prm.PrmVerifier``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PrmConventions(BaseModel):
    """How one PRM reads its input and writes its scores (pure data; lives in route/pool YAML).

    The input of one solution is ``input_template`` with ``{question}`` and ``{steps}`` filled
    in, where ``{steps}`` is ``step_separator.join(step + step_tag for step in steps)``: e.g.
    ``"What is 2+3?\\nstep 1<file_sep>\\nstep 2<file_sep>"``. Occurrences of the tag inside the
    question or a step are removed first (each tag yields a score). ``score_format`` says what
    one row of the answer is: ``p_good`` = a single probability that the step is good (vLLM's
    ``from_2_way_softmax`` head over ``["No", "Yes"]``), ``classes`` = a class-probability
    vector in which ``good_index`` is the good class. ``candidate_split`` splits a whole
    candidate's text into steps for ``score``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_tag: str = Field("<file_sep>", min_length=1, description="Text of the step-tag token.")
    step_separator: str = Field("\n", description="Between one step's tag and the next step.")
    input_template: str = Field(
        "{question}\n{steps}", description="Uses {question} and {steps}, each exactly once."
    )
    score_format: Literal["p_good", "classes"] = "p_good"
    good_index: int = Field(1, ge=0, description="The good class when score_format is classes.")
    candidate_split: str = Field("\n\n", min_length=1, description="Step boundary in score().")

    @field_validator("input_template")
    @classmethod
    def _placeholders(cls, template: str) -> str:
        try:
            template.format(question="", steps="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may use only {{question}} and {{steps}}; got {exc!r}") from exc
        for name in ("{question}", "{steps}"):
            if template.count(name) != 1:
                raise ValueError(f"must contain {name} exactly once")
        return template


_QWEN_PRM_TEMPLATE = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within "
    "\\boxed{{}}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n{steps}<|im_end|><|endoftext|>"
)

PRESETS: dict[str, PrmConventions] = {
    # The local CPU server: SmolLM2 with a ["No","Yes"] head, <file_sep> (id 5) as the tag.
    "smollm2-file-sep": PrmConventions(),
    # Qwen/Qwen2.5-Math-PRM-7B: chat-formatted, steps tagged <extra_0>, classes [bad, good].
    "qwen2.5-math-prm": PrmConventions(
        step_tag="<extra_0>",
        step_separator="",
        input_template=_QWEN_PRM_TEMPLATE,
        score_format="classes",
        good_index=1,
    ),
    # peiyi9979/math-shepherd-mistral-7b-prm: "ки" tags, returned tokens ["+", "-"].
    "math-shepherd": PrmConventions(
        step_tag=" ки",
        step_separator="\n",
        input_template="{question} {steps}",
        score_format="classes",
        good_index=0,
    ),
}
