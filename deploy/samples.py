"""The README's opening replies: the official ``openai`` client at temperature 0 against a gateway.

    python -m deploy.samples http://127.0.0.1:8000

prints one Markdown row per learner sentence (model, sentence, reply, ``x-tutor-adapter`` and
``x-tutor-grounding``) and the seconds each took, so the table in the README is what the shipped
service answered, not something written by hand. Ask a gateway on an empty registry (a fresh
clone's state): a registry with training checkpoints numbers the shipped versions later.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

from openai import OpenAI

# Per variant: a sentence with errors its learners make, and a correct one (left alone?).
ASK: tuple[tuple[str, str], ...] = (
    ("tutor", "Yesterday I go to the store and buy many apple."),
    ("tutor", "She don't like swimming because the water are cold."),
    ("tutor", "My sister work in a hospital since three years."),
    ("tutor", "I went to the beach with my family last summer."),
    ("tutor-es-l2", "Ayer yo va a la playa con mi amigos."),
    ("tutor-es-l2", "Mi hermana es muy alto y le gusta los perros."),
    ("tutor-es-l2", "Me gusta mucho cocinar con mi familia los domingos."),
    ("tutor-es-heritage", "Ayer yo va a la playa con mi amigos."),
    ("tutor-es-heritage", "Nosotros trujimos mucha comida para la fiesta."),
    ("tutor-zh-heritage", "我昨天去商店买了三个苹果，但是他们很贵了。"),
    ("tutor-zh-heritage", "我妈妈做饭做的很好吃，我每天吃两个碗饭。"),
    ("tutor-zh-heritage", "我有三个书。"),
    ("tutor-zh-l2", "我昨天去商店买了三个苹果，但是他们很贵了。"),
    ("tutor-zh-l2", "我很喜欢吃饺子，但是我不会做饺子了。"),
    ("tutor-zh-l2", "我周末常常和朋友一起去公园散步。"),
    # the English tutor's corrector, asked on its own: the corrected sentence only
    ("tutor-corrector", "She don't like swimming because the water are cold."),
    ("tutor-corrector", "therefore I brougth a car imediately."),
)


def rows(url: str) -> Iterator[tuple[str, float]]:
    """Each README row as Markdown, with the seconds it took (not part of the row)."""
    client = OpenAI(base_url=f"{url.rstrip('/')}/v1", api_key="unused")
    for model, text in ASK:
        start = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0
        )
        reply = (raw.parse().choices[0].message.content or "").replace("\n", " ")
        adapter = raw.headers.get("x-tutor-adapter")
        grounding = raw.headers.get("x-tutor-grounding") or "-"
        row = f"| `{model}` | {text} | {reply} | `{adapter}`, {grounding} |"
        yield row, time.monotonic() - start


def main(url: str) -> None:
    for row, seconds in rows(url):
        print(f"{row}  ({seconds:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
