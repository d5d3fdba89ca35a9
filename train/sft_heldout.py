"""Held-out perplexity: the score every SFT checkpoint gets, over assistant tokens only.

Separate from the trainer because it is a metric, not a training step: the checkpoint callback
calls it for the base and the adapter, with the same template and mask as training. torch is
imported inside the function, so importing this module stays cheap.
"""

from __future__ import annotations

from typing import Any


def encode_heldout(tokenizer: Any, chats: list[list[dict[str, str]]], template: str, max_len: int):
    """(input_ids, assistant mask) per chat, with the same template and mask as training."""
    out = []
    for chat in chats:
        enc = tokenizer.apply_chat_template(
            chat,
            chat_template=template,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = enc["input_ids"][:max_len], enc["assistant_masks"][:max_len]
        if sum(mask[1:]):
            out.append((ids, mask))
    return out


def heldout_nll(model: Any, encoded: list[tuple[list[int], list[int]]]) -> float:
    """Mean negative log-likelihood per assistant token (exp of it is the perplexity)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in encoded:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            target = x[0, 1:]
            m = torch.tensor(mask[1:], device=device, dtype=torch.bool)
            nll = torch.nn.functional.cross_entropy(logits[m], target[m], reduction="sum")
            total += float(nll)
            count += int(m.sum())
    if was_training:
        model.train()
    return total / max(1, count)
