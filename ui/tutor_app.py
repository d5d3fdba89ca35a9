"""The Gradio tutor: pick a language, learner type, level and style, then chat.

The page is a client of the gateway (``ui.client``): the conversation lives in the browser
session as plain OpenAI messages and is sent whole with every turn, so the server keeps no chat
state and "new conversation" only has to empty it. The chat display is a copy of those messages.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
import openai
from fastapi import FastAPI

from common.metrics import conversation_recasts
from common.modes import LEVELS
from ui.client import (
    DEFAULT_VARIANTS,
    LANGUAGE_NAMES,
    LEARNER_NAMES,
    SCAFFOLDING,
    ReplyInfo,
    TutorClient,
    friendly_error,
)

Messages = list[dict[str, str]]

CSS = """
#tutor-status:empty { display: none; }
#tutor-status { color: var(--error-text-color, #b91c1c); }
#reply-info { font-size: 0.8em; opacity: 0.7; }
"""

INTRO = (
    "# Language tutor\n"
    "Chat about anything. The tutor answers naturally and, when you make a mistake, "
    "says it back the right way instead of marking it."
)


def _language_choices(table: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    return [(LANGUAGE_NAMES.get(code, code), code) for code in table]


def _learner_choices(table: dict[str, dict[str, str]], language: str) -> list[tuple[str, str]]:
    return [(LEARNER_NAMES.get(kind, kind), kind) for kind in table.get(language, {})]


def pick_variant(table: dict[str, dict[str, str]], language: str, learner: str | None) -> str:
    """The model id for a language and learner type; the language's first one as fallback."""
    learners = table.get(language) or next(iter(table.values()))
    return learners.get(learner or "", next(iter(learners.values())))


def corrections_markdown(conversation: Messages) -> str:
    """The "what did I get wrong?" panel: what the learner wrote, what the tutor said."""
    pairs = conversation_recasts(conversation)
    if not any(m["role"] == "assistant" for m in conversation):
        return "Nothing to look at yet: chat a little first."
    if not pairs:
        return "The tutor did not say anything you wrote in another way. Well done!"
    lines = ["The tutor said these differently:", ""]
    for wrote, said in pairs:
        you = f"~~{html.escape(wrote)}~~" if wrote else "*(nothing)*"
        tutor = f"**{html.escape(said)}**" if said else "*(left out)*"
        lines.append(f"- you wrote {you} → the tutor said {tutor}")
    return "\n".join(lines)


def build_tutor_app(
    base_url: str, api_key: str = "unused", *, variants: dict[str, dict[str, str]] | None = None
) -> gr.Blocks:
    """The tutor page for the gateway at ``base_url`` (with or without ``/v1``).

    ``variants`` (language -> learner -> model id) seeds the pickers; on every page load they
    are refreshed from the gateway's ``/v1/models``.
    """
    client = TutorClient(base_url, api_key)
    table0 = variants or DEFAULT_VARIANTS
    first_language = next(iter(table0))

    with gr.Blocks(title="Language tutor", analytics_enabled=False) as demo:
        table = gr.State(table0)
        conversation = gr.State([])
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                language = gr.Radio(
                    _language_choices(table0),
                    value=first_language,
                    label="Language",
                    elem_id="language",
                )
                learner = gr.Radio(
                    _learner_choices(table0, first_language),
                    value=next(iter(table0[first_language])),
                    label="I am a",
                    elem_id="learner",
                )
                variant_md = gr.Markdown(elem_id="variant")
                level = gr.Radio(list(LEVELS), value="beginner", label="Level", elem_id="level")
                scaffolding = gr.Dropdown(
                    [(label, key) for key, label in SCAFFOLDING.items()],
                    value="",
                    label="Tutoring style",
                    elem_id="scaffolding",
                )
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    temperature = gr.Slider(
                        0, 1.5, value=0.7, step=0.05, label="Temperature", elem_id="temperature"
                    )
                    max_tokens = gr.Slider(
                        8, 1024, value=200, step=1, label="Longest reply", elem_id="max-tokens"
                    )
                show_panel = gr.Checkbox(
                    False,
                    label='Show "what did I get wrong?"',
                    info="Off by default: the tutor corrects you by example, not by marking.",
                    elem_id="show-corrections",
                )
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    elem_id="chat",
                    height=460,
                    feedback_options=None,
                    buttons=["copy"],
                )
                status = gr.Markdown(elem_id="tutor-status")
                reply_info = gr.Markdown(elem_id="reply-info")
                with gr.Row():
                    message = gr.Textbox(
                        placeholder="Write to your tutor…",
                        show_label=False,
                        scale=5,
                        elem_id="message",
                        autofocus=True,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                new = gr.Button("New conversation", elem_id="new-conversation")
                with gr.Group(visible=False) as panel:
                    check = gr.Button("What did I get wrong?", elem_id="check")
                    corrections = gr.Markdown(elem_id="corrections")

        def describe(tbl: dict, lang: str, kind: str | None) -> str:
            return f"Tutor model: `{pick_variant(tbl, lang, kind)}`"

        def on_load(tbl: dict, lang: str, kind: str | None):
            try:
                fresh = client.variants() or tbl
                problem = ""
            except openai.APIError as exc:
                fresh, problem = tbl, f"⚠️ {friendly_error(exc, '')}"
            lang = lang if lang in fresh else next(iter(fresh))
            kinds = fresh[lang]
            kind = kind if kind in kinds else next(iter(kinds))
            return (
                fresh,
                gr.update(choices=_language_choices(fresh), value=lang),
                gr.update(choices=_learner_choices(fresh, lang), value=kind),
                describe(fresh, lang, kind),
                problem,
            )

        def on_language(tbl: dict, lang: str, kind: str | None):
            """Keep the learner type when the new language has it (Spanish L2 -> Mandarin L2)."""
            kinds = tbl.get(lang, {"": ""})
            kind = kind if kind in kinds else next(iter(kinds))
            return gr.update(choices=_learner_choices(tbl, lang), value=kind), describe(
                tbl, lang, kind
            )

        def respond(
            text: str,
            convo: Messages,
            tbl: dict,
            lang: str,
            kind: str | None,
            lvl: str | None,
            style: str | None,
            temp: float,
            limit: float,
        ) -> Iterator[tuple[Any, ...]]:
            text = (text or "").strip()
            if not text:
                yield convo, convo, "", gr.skip(), gr.skip()
                return
            variant = pick_variant(tbl, lang, kind)
            asked = [*convo, {"role": "user", "content": text}]
            shown = [*asked, {"role": "assistant", "content": ""}]
            yield shown, convo, "", "", ""
            info = ReplyInfo()
            reply = ""
            try:
                for reply in client.stream_reply(
                    variant,
                    asked,
                    level=lvl,
                    scaffolding=style,
                    temperature=temp,
                    max_tokens=int(limit),
                    info=info,
                ):
                    shown[-1] = {"role": "assistant", "content": reply}
                    yield shown, convo, "", "", gr.skip()
            except openai.APIError as exc:
                # The turn did not happen: the learner's text goes back in the box to resend.
                yield convo, convo, text, f"⚠️ {friendly_error(exc, variant)}", ""
                return
            done = [*asked, {"role": "assistant", "content": reply}]
            adapter = f" · adapter `{info.adapter}`" if info.adapter else ""
            yield done, done, "", "", f"Answered by `{info.variant or variant}`{adapter}"

        def reset():
            return [], [], "", "", "", ""

        demo.load(
            on_load,
            [table, language, learner],
            [table, language, learner, variant_md, status],
        )
        language.input(on_language, [table, language, learner], [learner, variant_md])
        learner.input(describe, [table, language, learner], variant_md)
        inputs = [message, conversation, table, language, learner, level, scaffolding]
        inputs += [temperature, max_tokens]
        outputs = [chatbot, conversation, message, status, reply_info]
        chats = [
            send.click(respond, inputs, outputs, concurrency_limit=16),
            message.submit(respond, inputs, outputs, concurrency_limit=16),
        ]
        cleared = [chatbot, conversation, message, status, reply_info, corrections]
        new.click(reset, None, cleared, cancels=chats)
        chatbot.clear(reset, None, cleared, cancels=chats)  # the chat's own trash button
        show_panel.change(lambda on: gr.update(visible=on), show_panel, panel)
        check.click(corrections_markdown, conversation, corrections)
    return demo


def mount_ui(app: FastAPI, base_url: str, *, path: str = "/ui", api_key: str = "unused") -> FastAPI:
    """Mount the tutor page on ``app`` at ``path``; it talks to ``base_url`` over HTTP."""
    return gr.mount_gradio_app(
        app, build_tutor_app(base_url, api_key), path=path, css=CSS, ssr_mode=False
    )


def create_ui_app(base_url: str, api_key: str = "unused") -> FastAPI:
    """A stand-alone app serving only the tutor page at ``/``, for ``tutor ui``."""
    return mount_ui(FastAPI(title="Tutor UI"), base_url, path="/", api_key=api_key)
