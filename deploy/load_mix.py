"""What the simulated learners say and which variants they talk to (no Locust import here, so
tests and tools can use it without gevent's monkey-patching)."""

from __future__ import annotations

DEFAULT_VARIANTS = "tutor=3,tutor-es-l2=2,tutor-es-heritage=1,tutor-zh-l2=2,tutor-zh-heritage=1"

# Learner turns with typical errors, by the variant's language (its id's middle part).
LINES = {
    "en": [
        "Yesterday I go to the park with my friend.",
        "She have two cat and one dog.",
        "I am agree with you about the movie.",
        "Can you tell me where is the station?",
    ],
    "es": [
        "Ayer yo voy a la playa con mi amigos.",
        "Me gusta mucho los perros.",
        "Yo soy cansado hoy porque trabajé mucho.",
        "¿Tú quieres ir al cine conmigo mañana?",
    ],
    "zh": [
        "我有三个书。",
        "他是很高。",
        "我昨天去商店买了一个苹果。",
        "你喜欢吃什么中国菜？",
    ],
}


def parse_variants(spec: str) -> dict[str, float]:
    """``"a=3,b=1"`` -> ``{"a": 3.0, "b": 1.0}``; a bare name weighs 1."""
    weights: dict[str, float] = {}
    for item in spec.split(","):
        if item.strip():
            name, _, weight = item.partition("=")
            weights[name.strip()] = float(weight or 1)
    return weights


def language(variant: str) -> str:
    parts = variant.split("-")
    return parts[1] if len(parts) > 2 and parts[1] in LINES else "en"


class VariantPicker:
    """Smooth weighted round-robin (as in nginx): over every ``sum(weights)`` turns each variant
    gets exactly its weight, spread out rather than in runs, so a conversation switches variant
    from turn to turn and a short run still reaches every variant."""

    def __init__(self, weights: dict[str, float], start: int = 0) -> None:
        self.weights = weights
        self.current = dict.fromkeys(weights, 0.0)
        for _ in range(start):
            self.next()

    def next(self) -> str:
        total = sum(self.weights.values())
        for variant, weight in self.weights.items():
            self.current[variant] += weight
        chosen = max(self.current, key=lambda v: self.current[v])
        self.current[chosen] -= total
        return chosen
