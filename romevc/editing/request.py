"""What a user asks for: rewrite (subject, relation) → new object.

The prompt holds ``{}`` where the subject goes; a prompt that spells the subject out is
accepted and converted. Finding the subject's *last token* is the one tokeniser-sensitive
step of ROME, so it lives here and is tested on BPE and SentencePiece tokenisers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from romevc.errors import EditRequestError


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8: a lone surrogate (from ``"\\ud800"`` in JSON, or
    undecodable bytes on a command line) cannot be tokenised or stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt.format(subject)`` should be completed by ``target_new``."""

    prompt: str = field(metadata={"help": "the fact's prompt, with {} where the subject goes"})
    subject: str = field(metadata={"help": "the subject, e.g. 'The Eiffel Tower'"})
    target_new: str = field(metadata={"help": "the new object, written without a leading space"})
    target_true: str | None = field(default=None, metadata={"help": "the current object, if known"})

    def __post_init__(self) -> None:
        subject = self.subject.strip() if isinstance(self.subject, str) else self.subject
        if not isinstance(subject, str) or not subject:
            raise EditRequestError(f"`subject` must be a non-empty string, got {self.subject!r}")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise EditRequestError(f"`target_new` must be a non-empty string, got {self.target_new!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise EditRequestError(f"`prompt` must be a non-empty string, got {self.prompt!r}")
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise EditRequestError(f"`target_true` must be a string or absent, got {self.target_true!r}")
        for name in ("prompt", "subject", "target_new", "target_true"):
            value = getattr(self, name)
            if value is not None and not _is_unicode(value):
                raise EditRequestError(f"`{name}` is not valid Unicode text (it holds a lone surrogate), got {value!r}")
        prompt = self.prompt
        if prompt.count("{}") == 0:
            if subject not in prompt:
                raise EditRequestError(
                    f"the prompt {prompt!r} has no '{{}}' and does not contain the subject {subject!r}"
                )
            prompt = prompt.replace(subject, "{}", 1)
        if prompt.count("{}") != 1:
            raise EditRequestError(f"the prompt {self.prompt!r} must hold exactly one '{{}}' for the subject")
        if "{" in prompt.replace("{}", "") or "}" in prompt.replace("{}", ""):
            raise EditRequestError(f"the prompt {self.prompt!r} has a stray brace besides '{{}}'")
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def fact(self) -> str:
        """'The Eiffel Tower is located in the city of → Rome'."""
        return f"{self.text} → {self.target_new}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EditRequest":
        if not isinstance(data, dict):
            raise EditRequestError(f"an edit request must be a JSON object, got {type(data).__name__}")
        known = {"prompt", "subject", "target_new", "target_true"}
        aliases = {"target": "target_new", "ground_truth": "target_true"}
        fields = {aliases.get(k, k): v for k, v in data.items() if aliases.get(k, k) in known}
        missing = {"prompt", "subject", "target_new"} - fields.keys()
        if missing:
            raise EditRequestError(f"an edit request lacks {', '.join(sorted(missing))}: got keys {sorted(data)}")
        return cls(**fields)


def subject_last_token_index(tokenizer, prompt_with_slot: str, subject: str, prefix: str = "") -> int:
    """Index of the subject's last token in ``tokenize(prefix + prompt.format(subject))``.

    Tokenise the text up to the end of the subject and count its tokens: robust to BPE
    merges across the subject's leading space, to SentencePiece's word-start marker, to a
    subject at position 0, and to a subject repeated later in the prompt (the slot wins).
    If the subject's last token merges with the following text, the merged token is the
    first to contain the subject's end, which is the right key position.
    """
    before, _, after = prompt_with_slot.partition("{}")
    full = prefix + before + subject + after
    upto = prefix + before + subject
    ids_full = tokenizer(full, add_special_tokens=True)["input_ids"]
    ids_upto = tokenizer(upto, add_special_tokens=True)["input_ids"]
    n = len(ids_upto)
    if n == 0 or n > len(ids_full):
        raise EditRequestError(f"cannot locate subject {subject!r} in {full!r} after tokenisation")
    # Trailing special tokens (an EOS some tokenisers append) are not the subject.
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    while n > 1 and ids_upto[n - 1] in specials:
        n -= 1
    return n - 1
