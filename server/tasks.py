"""Background task requests from chat front-ends go to a cheap model, not a busy adapter.

Open WebUI asks the chat's own model for a title, tags, follow-up suggestions, search queries and
autocompletions: small side jobs, sent as one user message built from a template. Served by a
tutor variant, they would queue behind learners on that variant's adapter and come back with the
persona's voice; the base model (or ``TUTOR_TASK_MODEL``) does them better and off the hot path.

They are recognised by the markers in Open WebUI's default task templates (0.6 - 0.12): every
one starts with ``### Task:`` and quotes the chat in ``<chat_history>``. Its RAG template also
starts with ``### Task:`` but carries the learner's real question and has no ``<chat_history>``,
so it stays on the variant. Custom templates without these markers are not recognised: point
Open WebUI's own task model setting (``TASK_MODEL_EXTERNAL``) at the base model instead.
"""

from __future__ import annotations

from common.settings import Settings
from server.protocol import ChatCompletionRequest

# Each entry: strings that must all appear in one user message.
TASK_MARKERS: tuple[tuple[str, ...], ...] = (
    ("### Task:", "<chat_history>"),  # title, tags, follow-ups, queries, autocomplete, image
    ("reflect the speaker's likely facial expression",),  # emoji (voice calls)
)


def is_background_task(req: ChatCompletionRequest) -> bool:
    """Whether the request is a front-end's side job rather than a learner's turn."""
    for message in req.messages:
        if message.role != "user":
            continue
        text = message.text()
        if any(all(marker in text for marker in markers) for markers in TASK_MARKERS):
            return True
    return False


def task_model(req: ChatCompletionRequest, settings: Settings, base_id: str) -> str | None:
    """The model id a background task should use instead of the requested one, else None."""
    if not settings.route_tasks or not is_background_task(req):
        return None
    return settings.task_model or base_id
