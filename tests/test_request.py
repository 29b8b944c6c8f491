"""EditRequest validation and locating the subject's last token on BPE and SentencePiece tokenisers."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from romevc.editing.request import EditRequest, subject_last_token_index
from romevc.errors import EditRequestError
from tests.conftest import tiny_tokenizer

CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "Danielle Darrieux speaks French. The mother tongue of Danielle Darrieux is French.",
    "Toko Yasuda plays the guitar and Toko Yasuda sings.",
] * 20


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """A BPE with the SentencePiece word-start marker '▁' and a BOS token, as LLaMA/Mistral use."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"]))
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>")


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE: the space belongs to the following word."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_prompt_with_slot():
    r = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    assert r.text == "The Eiffel Tower is located in the city of"
    assert r.fact() == "The Eiffel Tower is located in the city of → Rome"


def test_literal_subject_is_converted():
    r = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", " English ")
    assert r.prompt == "The mother tongue of {} is"
    assert r.target_new == "English"


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="The capital is", subject="Eiffel", target_new="Rome"), "does not contain the subject"),
    (dict(prompt="{} is in", subject="X", target_new="  "), "`target_new` must be a non-empty string"),
    (dict(prompt="{} is in", subject="", target_new="Rome"), "`subject` must be a non-empty string"),
    (dict(prompt="{} and {}", subject="X", target_new="Rome"), "exactly one"),
    (dict(prompt="{} is {in}", subject="X", target_new="Rome"), "stray brace"),
    (dict(prompt="", subject="X", target_new="Rome"), "`prompt` must be a non-empty string"),
])
def test_bad_requests(kwargs, message):
    with pytest.raises(EditRequestError, match=message):
        EditRequest(**kwargs)


def test_from_dict_accepts_common_aliases():
    r = EditRequest.from_dict({"prompt": "{} plays", "subject": "X", "target": "piano", "ground_truth": "guitar"})
    assert (r.target_new, r.target_true) == ("piano", "guitar")
    with pytest.raises(EditRequestError, match="lacks target_new"):
        EditRequest.from_dict({"prompt": "{} plays", "subject": "X"})


def _check_last_subject_token(tokenizer, prompt: str, subject: str, prefix: str = "") -> str:
    """The text up to the located token ends with the subject; one token earlier it does not."""
    ids = tokenizer(prefix + prompt.format(subject))["input_ids"]
    index = subject_last_token_index(tokenizer, prompt, subject, prefix)
    upto = tokenizer.decode(ids[: index + 1], skip_special_tokens=True)
    assert upto.endswith(subject), (prompt, upto)
    assert not tokenizer.decode(ids[:index], skip_special_tokens=True).endswith(subject)
    return tokenizer.convert_ids_to_tokens(ids[index])


@pytest.mark.parametrize("make", [sentencepiece_like, byte_level_bpe])
def test_subject_last_token(make):
    tok = make()
    cases = [
        ("{} is located in the city of", "The Eiffel Tower"),  # subject at position 0
        ("The mother tongue of {} is", "Danielle Darrieux"),  # after a space
        ("{} plays the guitar and Toko Yasuda sings", "Toko Yasuda"),  # repeated: the slot wins
    ]
    for prompt, subject in cases:
        _check_last_subject_token(tok, prompt, subject)
        _check_last_subject_token(tok, prompt, subject, prefix="Paris. ")
    ids = tok("Toko Yasuda plays the guitar and Toko Yasuda sings")["input_ids"]
    assert subject_last_token_index(tok, "{} plays the guitar and Toko Yasuda sings", "Toko Yasuda") < len(ids) // 2


def test_subject_last_token_on_word_level_fixture():
    tok = tiny_tokenizer()
    assert _check_last_subject_token(tok, "{} lives in the city of", "Tomas Varek") == "Varek"
    assert _check_last_subject_token(tok, "The home of {} is the city of", "Tomas Varek") == "Varek"
