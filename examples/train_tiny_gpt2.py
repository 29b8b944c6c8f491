"""Train a tiny GPT-2 that knows a few hundred synthetic facts (the `tests/fixtures/tiny-gpt2` fixture).

No real GPT-2 weights are available offline, yet the ROME engine must be tested on the GPT-2
architecture (its MLP output projection is a `Conv1D` with weight layout (in, out)). So we
invent a small world -- people with made-up surnames who live in cities, speak languages,
have jobs, sports and instruments -- and train a 4-layer GPT-2 on it until it recalls the
facts from their main prompt and from paraphrases. Everything is seeded, so a rerun with the
same --seed rebuilds the same data, tokenizer and (on the same torch build) the same weights.

    python examples/train_tiny_gpt2.py --out tests/fixtures/tiny-gpt2

Written to --out: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, facts.json and corpus.txt (about 1.2 MB in all).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

# ----------------------------------------------------------------------------- the world

NUM_SUBJECTS = 150  # 150 people x 5 relations = 750 facts: enough to need real memorisation
ANCHOR_SUBJECT = "Tomas Varek"  # always subject 0, so docs and tests can name a known person
FIRST_NAMES = [
    "Tomas", "Anna", "Lukas", "Maria", "Elena", "Jonas", "Sofia", "Pavel", "Ines", "Oskar",
    "Clara", "Marek", "Nina", "Hugo", "Lena", "Felix", "Irina", "Karl", "Rosa", "Emil",
]
# Surnames are built as onset+vowel + onset+vowel+coda ("Va" + "rek"), drawn without
# replacement, so each person's *last* subject token is unique -- the token ROME edits at.
ONSETS = ["b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u"]
CODAS = ["k", "l", "m", "n", "r", "s", "t"]

# relation -> (prompts, objects). prompts[0] is the main prompt, the rest are paraphrases;
# "{}" marks the subject. Every object is one word, hence one token.
RELATIONS = {
    "city": (
        ["{} lives in the city of", "{} resides in the city of", "The home of {} is the city of"],
        ["Paris", "Rome", "Berlin", "Tokyo", "Madrid", "Cairo", "Lima", "Oslo", "Vienna", "Dublin"],
    ),
    "language": (
        ["{} speaks the language", "The native language of {} is", "{} is fluent in the language"],
        ["English", "French", "German", "Spanish", "Japanese", "Arabic", "Russian", "Italian"],
    ),
    "profession": (
        ["{} works as a", "{} is employed as a", "The job of {} is a"],
        ["doctor", "lawyer", "teacher", "pilot", "chef", "farmer", "engineer", "painter"],
    ),
    "sport": (
        ["{} plays the sport of", "The favorite sport of {} is", "{} enjoys the sport of"],
        ["football", "tennis", "golf", "chess", "hockey", "cricket", "rugby", "baseball"],
    ),
    "instrument": (
        ["{} plays the instrument", "The instrument of {} is the", "{} performs music on the"],
        ["piano", "violin", "guitar", "drums", "flute", "cello", "harp", "trumpet"],
    ),
}

# Filler text, so that the MLP second-moment statistics (computed from corpus.txt) see the
# subjects and common words in contexts other than the fact templates.
ADJECTIVES = ["red", "old", "small", "quiet", "bright", "cold", "warm", "dark", "new", "green"]
NOUNS = ["house", "car", "dog", "garden", "river", "book", "window", "train", "letter", "table"]
VERBS = ["saw", "found", "painted", "opened", "liked", "sold", "cleaned", "visited"]
TIMES = ["today", "yesterday", "again", "early", "later", "often"]
WEATHER = ["cold", "warm", "rainy", "sunny", "windy", "grey"]
FILLER_TEMPLATES = [
    "The weather was {weather} {time} .",
    "{name} {verb} a {adj} {noun} .",
    "{name} {verb} the {noun} {time} .",
    "The {adj} {noun} was near the {noun2} .",
    "We {verb} the {adj} {noun} {time} .",
    "The {adj} {noun} and the {adj2} {noun2} .",
    "{name} and {name2} {verb} the {noun} .",
    "It was {weather} , so {name} {verb} the {noun} .",
]
NUM_FILLER_SENTENCES = 900

# ----------------------------------------------------------------------------- training

N_POSITIONS = 32  # longest training row; every prompt is far shorter
MODEL_SHAPE = dict(n_layer=4, n_embd=64, n_head=4, n_inner=256)  # n_inner = 4 * n_embd, as GPT-2
BATCH_SIZE = 64
LEARNING_RATE = 3e-3  # high for a transformer, fine for a model this small
WEIGHT_DECAY = 0.01  # light: decay fights the memorisation we want
WARMUP_STEPS = 100  # a short warmup keeps the first AdamW steps from blowing up
EVAL_EVERY = 250
TARGET_ACCURACY = 0.99  # stop once main prompts and paraphrases both reach this
UNK, EOS = "[UNK]", "<|endoftext|>"  # EOS doubles as bos and pad, as in GPT-2


def make_subjects(rng: random.Random) -> list[str]:
    """ANCHOR_SUBJECT plus invented "First Surname" names, every surname unique."""
    anchor_surname = ANCHOR_SUBJECT.split()[1]
    syllables = [o + v for o in ONSETS for v in VOWELS]
    closed = [o + v + c for o in ONSETS for v in VOWELS for c in CODAS]
    candidates = [(a + b).capitalize() for a in syllables for b in closed]
    surnames = rng.sample([s for s in candidates if s != anchor_surname], NUM_SUBJECTS - 1)
    return [ANCHOR_SUBJECT] + [f"{rng.choice(FIRST_NAMES)} {surname}" for surname in surnames]


def make_facts(subjects: list[str], rng: random.Random) -> list[dict]:
    """One fact per (subject, relation), its object drawn uniformly from the relation's list."""
    facts = []
    for subject in subjects:
        for relation, (prompts, objects) in RELATIONS.items():
            facts.append({
                "subject": subject,
                "relation": relation,
                "prompt": prompts[0],
                "paraphrases": prompts[1:],
                "target": rng.choice(objects),
            })
    return facts


def make_filler(subjects: list[str], rng: random.Random) -> list[str]:
    """Sentences from FILLER_TEMPLATES with random words; people appear in them too."""
    sentences = set()
    while len(sentences) < NUM_FILLER_SENTENCES:
        template = rng.choice(FILLER_TEMPLATES)
        sentences.add(template.format(
            name=rng.choice(subjects), name2=rng.choice(subjects), verb=rng.choice(VERBS),
            adj=rng.choice(ADJECTIVES), adj2=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
            noun2=rng.choice(NOUNS), time=rng.choice(TIMES), weather=rng.choice(WEATHER),
        ))
    return sorted(sentences)


def make_corpus(facts: list[dict], subjects: list[str], rng: random.Random) -> list[str]:
    """Every fact in every phrasing, "<subject> is a person .", and filler, shuffled."""
    sentences = [
        f"{prompt.format(fact['subject'])} {fact['target']} ."
        for fact in facts for prompt in [fact["prompt"], *fact["paraphrases"]]
    ]
    sentences += [f"{subject} is a person ." for subject in subjects]
    sentences += make_filler(subjects, rng)
    rng.shuffle(sentences)
    return sentences


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the corpus words; ids are stable (specials first, then sorted).

    Whitespace pre-tokenisation means `prompt + " " + target` tokenizes as the prompt's tokens
    followed by the single target token, which the ROME engine relies on.
    """
    pre_tokenizer = pre_tokenizers.Whitespace()  # splits on spaces and around punctuation
    words = {w for line in corpus for w, _ in pre_tokenizer.pre_tokenize_str(line)}
    vocab = {token: i for i, token in enumerate([UNK, EOS, *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK, bos_token=EOS, eos_token=EOS,
        pad_token=EOS, model_max_length=N_POSITIONS,
    )


def check_tokenizer(folder: Path, facts: list[dict]) -> None:
    """Reload the saved tokenizer through AutoTokenizer and check the properties we promise."""
    tok = AutoTokenizer.from_pretrained(folder)
    text = f"{ANCHOR_SUBJECT} lives in the city of Rome"
    assert tok.decode(tok(text)["input_ids"]) == text, "round trip failed"
    for fact in facts:
        prompt = fact["prompt"].format(fact["subject"])
        prompt_ids = tok(prompt)["input_ids"]
        full_ids = tok(prompt + " " + fact["target"])["input_ids"]
        assert full_ids == prompt_ids + [tok.convert_tokens_to_ids(fact["target"])], prompt
        assert tok.unk_token_id not in full_ids, prompt


# ----------------------------------------------------------------------------- training

def training_rows(sentence_ids: list[list[int]], generator: torch.Generator) -> torch.Tensor:
    """BATCH_SIZE rows of N_POSITIONS tokens, each random sentences packed back to back.

    Packing puts facts both at position 0 (how prompts are evaluated) and after other text
    (how ROME's context templates present them).
    """
    rows = []
    for _ in range(BATCH_SIZE):
        row: list[int] = []
        while len(row) < N_POSITIONS:
            row += sentence_ids[torch.randint(len(sentence_ids), (1,), generator=generator).item()]
        rows.append(row[:N_POSITIONS])
    return torch.tensor(rows)  # (batch, time)


@torch.no_grad()
def top1_accuracy(model, tok, prompts: list[str], targets: list[str]) -> float:
    """Share of prompts whose next-token argmax is the target token (teacher-forced)."""
    encoded = [tok(p)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    # Right padding (masked anyway): a causal model's last prompt position never sees the pads.
    batch = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids in encoded])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded])
    logits = model(batch, attention_mask=mask).logits  # (prompts, time, vocab)
    last = torch.tensor([len(ids) - 1 for ids in encoded])
    predicted = logits[torch.arange(len(encoded)), last].argmax(-1)  # (prompts,)
    expected = torch.tensor(tok.convert_tokens_to_ids(targets))
    return (predicted == expected).float().mean().item()


def evaluate(model, tok, facts: list[dict]) -> tuple[float, float]:
    """Accuracy on main prompts and on paraphrases."""
    main = top1_accuracy(model, tok, [f["prompt"].format(f["subject"]) for f in facts],
                         [f["target"] for f in facts])
    pairs = [(p.format(f["subject"]), f["target"]) for f in facts for p in f["paraphrases"]]
    paraphrase = top1_accuracy(model, tok, [p for p, _ in pairs], [t for _, t in pairs])
    return main, paraphrase


def learning_rate_factor(step: int, max_steps: int) -> float:
    """Linear warmup over WARMUP_STEPS, then cosine decay to zero at max_steps."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return warmup * 0.5 * (1.0 + math.cos(math.pi * min(step, max_steps) / max_steps))


def train(model, tok, corpus: list[str], facts: list[dict], seed: int, max_steps: int) -> float:
    """AdamW with linear warmup and cosine decay until TARGET_ACCURACY; returns the last loss."""
    sentence_ids = [tok(s)["input_ids"] for s in corpus]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, max_steps))
    loss = torch.tensor(float("nan"))
    for step in range(1, max_steps + 1):
        model.train()
        rows = training_rows(sentence_ids, generator)
        loss = model(rows, labels=rows).loss  # the model shifts labels itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % EVAL_EVERY == 0:
            model.eval()
            main, paraphrase = evaluate(model, tok, facts)
            print(f"step {step:5d}  loss {loss.item():.4f}  main {main:.3f}  paraphrase {paraphrase:.3f}")
            if min(main, paraphrase) >= TARGET_ACCURACY:
                break
    model.eval()
    return loss.item()


# ----------------------------------------------------------------------------- main

def save_fixture(out: Path, model, tok, facts: list[dict], corpus: list[str]) -> None:
    """Safetensors weights, tokenizer files, facts.json and corpus.txt (one sentence a line)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # loadable without custom code
    config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
    (out / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out / "corpus.txt").write_text("\n".join(corpus) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/tiny-gpt2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=4000)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)  # model initialisation draws from the global generator
    rng = random.Random(args.seed)
    subjects = make_subjects(rng)
    facts = make_facts(subjects, rng)
    corpus = make_corpus(facts, subjects, rng)
    tok = build_tokenizer(corpus)

    config = GPT2Config(
        vocab_size=len(tok), n_positions=N_POSITIONS, **MODEL_SHAPE,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(subjects)} subjects, {len(facts)} facts, {len(corpus)} sentences, "
          f"vocab {len(tok)}, {n_params:,} parameters")

    start = time.perf_counter()
    loss = train(model, tok, corpus, facts, args.seed, args.max_steps)
    seconds = time.perf_counter() - start

    save_fixture(args.out, model, tok, facts, corpus)
    check_tokenizer(args.out, facts)
    main_acc, paraphrase_acc = evaluate(model, tok, facts)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"parameters {n_params:,}  training {seconds:.0f} s  final loss {loss:.4f}")
    print(f"accuracy: main prompts {main_acc:.3f}  paraphrases {paraphrase_acc:.3f}")
    print(f"saved to {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
