"""Prompts and targets in one tokenisation: what training, option scoring and generation all share.

Every task is one user turn (the video, then a tagged question) and one assistant turn (the target):

* ``[answer] question``  -> the answer                                    (task ``answer``)
* ``[explain] question`` -> the rationale sentences                       (task ``rationale``)
* ``[explain] question`` -> the rationale, then ``Answer: <answer>``      (task ``joint``)

**One tokenisation.** A target is tokenised as running text, with a leading space (:func:`target_text`): the
answer "green" becomes ``Ġgreen``, the same token the rationale's "So the answer is green." and the options
line's "(A) green" use. Tokenised bare, it would be ``g re en`` (byte-level BPE spells a word without its
space in pieces), and a rationale could not teach the answer it states.

**Prompt format** (:class:`PromptFormat`): ``chat`` is the model's own chat template with its default system
prompt; ``compact`` leaves the system prompt out (an empty system turn) and is what the tiny laptop models
use, where every token is compute. ``options`` says whether the lettered options are shown in the prompt
(scoring by likelihood does not need them). A trained model records the format it was trained with in its
model card (:mod:`step_ray.models.card`); scoring and generation use that format, not the caller's config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

TASK_ANSWER = 0
TASK_RATIONALE = 1
TASK_JOINT = 2  # a sequence whose target is the rationale, then the answer (``joint`` format)
TASK_NAMES = ("answer", "rationale", "joint")
TASK_TAGS = ("[answer]", "[explain]", "[explain]")
JOINT_ANSWER_MARK = "\nAnswer:"
OPTION_LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class PromptFormat:
    """How a question is put to the model (see the module docstring)."""

    style: Literal["chat", "compact"] = "chat"
    options: bool = True

    @classmethod
    def of(cls, model_cfg: Any) -> "PromptFormat":
        """The format a :class:`~step_ray.config.ModelConfig` asks for."""
        return cls(style=model_cfg.prompt, options=model_cfg.options_in_prompt)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PromptFormat":
        return cls(style=str(data.get("style", "chat")), options=bool(data.get("options", True)))  # type: ignore[arg-type]


def question_text(question: str, options: Sequence[str], fmt: PromptFormat) -> str:
    """The question, and its lettered options when the format shows them."""
    if not fmt.options:
        return question
    opts = " ".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question}\nOptions: {opts}"


def prompt_text(processor: Any, task: int, question: str, options: Sequence[str], fmt: PromptFormat) -> str:
    """The chat-formatted prompt of ``task``: one video placeholder, the tagged question, the assistant header."""
    messages: list[dict[str, Any]] = []
    if fmt.style == "compact":
        messages.append({"role": "system", "content": [{"type": "text", "text": ""}]})
    messages.append({
        "role": "user",
        "content": [
            {"type": "video"},
            {"type": "text", "text": f"{TASK_TAGS[task]} {question_text(question, options, fmt)}"},
        ],
    })
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def target_text(text: str) -> str:
    """A target as running text: one leading space, so its words tokenise as they do inside sentences."""
    return " " + str(text).strip()


def target_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of :func:`target_text` (no special tokens; the caller appends the end-of-turn token)."""
    return list(tokenizer(target_text(text), add_special_tokens=False)["input_ids"])


def answer_text(row: Mapping[str, Any]) -> str:
    """The answer target: the correct option's text."""
    options = list(row["options"])
    idx = row.get("answer_index")
    if idx is not None and 0 <= int(idx) < len(options):
        return str(options[int(idx)])
    return str(row["answer"])


def rationale_text(row: Mapping[str, Any]) -> str:
    """The rationale target: the step sentences joined with spaces."""
    steps = row.get("rationale")
    if steps is None:
        return ""
    if isinstance(steps, str):
        return steps.strip()
    return " ".join(str(s).strip() for s in steps if str(s).strip())


def joint_text(row: Mapping[str, Any]) -> tuple[str, str]:
    """(rationale part, answer part) of the ``joint`` target: ``<rationale>\\nAnswer:`` and `` <answer>``."""
    return target_text(rationale_text(row)) + JOINT_ANSWER_MARK, target_text(answer_text(row))


def end_of_turn_id(tokenizer: Any) -> int:
    """``<|im_end|>`` (Qwen's end of an assistant turn), else the tokenizer's eos."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tid is None or tid == tokenizer.unk_token_id:
        tid = tokenizer.eos_token_id
    return int(tid)
