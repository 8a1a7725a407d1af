"""A small GPT, character by character, trained pipelined over two ranks.

    conveyor train examples/train_gpt.py:make_model --stages 2 --loss examples/train_gpt.py:lm_loss \\
        --schedule 1f1b --microbatches 4 --batch-size 32 --steps 600 --optimizer adamw --lr 0.003
    python examples/train_gpt.py            # the same from Python, then text sampled from the weights
    python examples/train_gpt.py --traced   # the GPT module cut by torch's tracer instead

The model is a decoder-only transformer: token and position embeddings, pre-norm
blocks of causal self-attention and an MLP, a final LayerNorm, and an output layer
tied to the token embedding. ``make_model`` gives it as layers,
``nn.Sequential(embedding, *blocks, head)``, which conveyor cuts wherever the
profile says; the head and the embedding share one weight across the cut.
``make_traced`` gives the same network as one ``GPT`` module with its own forward,
cut by torch's tracer before ``blocks.2`` (``conveyor.train.Traced``).

The text is generated here, deterministically: a village chronicle from a small
grammar (38 KiB), so nothing is downloaded and the model has real structure
to learn (words, agreement, punctuation) in a few hundred steps.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from conveyor.train import Traced, train

BLOCK = 32  # characters of context
DIM, HEADS, LAYERS = 48, 4, 4
SENTENCES = 600

# --- the text -------------------------------------------------------------------------

WHO = ["the miller", "the baker", "the old shepherd", "a young weaver", "the blacksmith",
       "the fisherman", "his wife", "the priest", "a pedlar from the coast", "the children",
       "the innkeeper", "my grandmother"]  # fmt: skip
DID = ["carried", "sold", "counted", "mended", "gave away", "found", "bought", "hid", "lost"]
HOW_MANY = ["two", "three", "four", "five", "seven", "ten", "a dozen", "twenty"]
WHAT = ["sacks of barley", "loaves of rye", "baskets of apples", "nets", "grey stones",
        "candles", "lambs", "lanterns", "barrels of cider", "bolts of linen", "copper pots"]  # fmt: skip
WHERE = ["to the mill by the river", "at the market in town", "behind the church",
         "on the hill above the farm", "near the old bridge", "in the cellar of the inn",
         "along the road to the sea"]  # fmt: skip
WHEN = ["on monday", "in the morning", "before the rain", "after supper", "at dawn",
        "on the feast of saint john", "in the first week of winter"]  # fmt: skip
WEATHER = ["the wind blew from the north", "the rain came", "the snow fell",
           "the river rose", "the sun was hot", "the fog lay on the fields"]  # fmt: skip
THEN = ["stayed at home", "went down to the harbour", "sang in the church",
        "slept by the fire", "walked to the next village", "told old stories"]  # fmt: skip
SAID = ["we shall need more", "it was not so in my day", "the winter will be long",
        "who will pay for this", "bring the lamp"]  # fmt: skip


def chronicle(sentences: int = SENTENCES, seed: int = 0) -> str:
    """The training text: the same string on every machine for the same arguments."""
    pick = random.Random(seed).choice
    lines, paragraph = [], []
    for _ in range(sentences):
        form = pick("abcd")
        if form == "a":
            s = f"{pick(WHEN)}, {pick(WHO)} {pick(DID)} {pick(HOW_MANY)} {pick(WHAT)} {pick(WHERE)}."
        elif form == "b":
            s = f"{pick(WHO)} {pick(DID)} {pick(HOW_MANY)} {pick(WHAT)} {pick(WHERE)} {pick(WHEN)}."
        elif form == "c":
            s = f"when {pick(WEATHER)}, {pick(WHO)} {pick(THEN)}."
        else:
            s = f'"{pick(SAID).capitalize()}," said {pick(WHO)}.'
        paragraph.append(s[0].upper() + s[1:] if s[0] != '"' else s)
        if len(paragraph) == 5:
            lines.append(" ".join(paragraph))
            paragraph = []
    return "\n\n".join(lines) + "\n"


TEXT = chronicle()
CHARS = sorted(set(TEXT))
VOCAB = len(CHARS)


def encode(text: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(CHARS)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(tokens: torch.Tensor) -> str:
    return "".join(CHARS[int(t)] for t in tokens)


def make_data(stride: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): windows of BLOCK characters and the same windows one character on."""
    tokens = encode(TEXT)
    starts = torch.arange(0, len(tokens) - BLOCK - 1, stride)
    offsets = torch.arange(BLOCK)
    inputs = tokens[starts[:, None] + offsets]
    return inputs, tokens[starts[:, None] + offsets + 1]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position's next character."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# --- the model ------------------------------------------------------------------------


class Embedding(nn.Module):
    """Token plus position embedding: (batch, time) ids -> (batch, time, dim)."""

    def __init__(self, vocab: int, block: int, dim: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(block, dim) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tok(idx) + self.pos[: idx.shape[1]]


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x)).

    The query, key and value projection has no bias: a key bias cancels in the
    softmax, so its gradient would be nothing but rounding noise for Adam to follow.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class Head(nn.Module):
    """Final LayerNorm, then logits through the token embedding's weight (tied)."""

    def __init__(self, dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.weight = embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) @ self.weight.T


class GPT(nn.Module):
    """The whole decoder as one module with its own forward: (batch, time) ids -> logits."""

    def __init__(
        self, *, vocab: int = VOCAB, block: int = BLOCK, dim: int = DIM, heads: int = HEADS,
        layers: int = LAYERS,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed = Embedding(vocab, block, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.head = Head(dim, self.embed.tok)
        self.apply(_init)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def as_sequential(self) -> nn.Sequential:
        """The same modules (and weights) as layers: embedding, blocks, head."""
        return nn.Sequential(self.embed, *self.blocks, self.head)


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def make_model(**sizes: int) -> nn.Sequential:
    """The GPT as layers, for conveyor to cut: ``nn.Sequential(embedding, *blocks, head)``."""
    return GPT(**sizes).as_sequential()


def make_traced(split: str = "blocks.2", **sizes: int) -> Traced:
    """The GPT as one module, cut by torch's tracer before ``split``."""
    return Traced(GPT(**sizes), split_points=[split], sample=make_data()[0][:1])


@torch.no_grad()
def generate(model: nn.Module, prompt: str, length: int, *, seed: int = 0) -> str:
    """``prompt`` and ``length`` more characters, each drawn from the model's next-character odds."""
    gen = torch.Generator().manual_seed(seed)
    tokens = encode(prompt)[None]
    model.eval()
    for _ in range(length):
        logits = model(tokens[:, -BLOCK:])[0, -1]
        nxt = torch.multinomial(torch.softmax(logits / 0.8, dim=-1), 1, generator=gen)
        tokens = torch.cat([tokens, nxt[None]], dim=1)
    return decode(tokens[0])


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the GPT pipelined on 2 ranks, then sample.")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--traced", action="store_true", help="cut GPT by tracing (make_traced)")
    args = parser.parse_args(argv)
    report = train(
        make_traced if args.traced else make_model, make_data, stages=2, schedule="1f1b",
        microbatches=4, batch_size=32, steps=args.steps, optimizer="adam", lr=3e-3,
        loss=f"{Path(__file__).resolve()}:lm_loss",
    )  # fmt: skip
    print(report.summary())
    if args.traced:
        traced = make_traced()
        model: nn.Module = traced.model
        model.load_state_dict(traced.model_state(report.state_dict))
    else:
        model = make_model()
        model.load_state_dict(report.state_dict)
    losses = report.losses
    print(f"\nloss {losses[0]:.3f} at the first step, {losses[-1]:.3f} at the last")
    print("\nsampled from the pipelined run's weights:\n")
    print(generate(model, "When the ", 300))


if __name__ == "__main__":
    main()
