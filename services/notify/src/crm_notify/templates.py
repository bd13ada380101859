"""Localised message templates, rendered in Jinja2's sandbox.

Templates come from the rules file, so whoever edits that file must not be able to reach the
service's internals: the immutable sandbox refuses attribute tricks and calls that change
data. HTML bodies are autoescaped; subjects and text bodies are not (they are not HTML).
The language is the customer's (`language` or `locale` trait) when the template has it, else a
broader form of it (`zh-Hant-TW` → `zh-Hant`; `zh-TW` → `zh-Hant`; `lt-LT` → `lt`), else the
rules' default language.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from jinja2 import Template, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from crm_notify.rules import Message, Rules
from crm_shared.configfile import Loc

_TRADITIONAL_REGIONS = frozenset({"tw", "hk", "mo"})


@cache
def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(autoescape=autoescape, undefined=Undefined)


@cache
def _template(source: str, autoescape: bool) -> Template:
    return _environment(autoescape).from_string(source)


@dataclass(frozen=True)
class Rendered:
    language: str
    subject: str
    text: str
    html: str | None


def compile_problems(rules: Rules) -> list[tuple[Loc, str]]:
    """Every template that does not compile, with where it is."""
    found: list[tuple[Loc, str]] = []
    for name, languages in rules.templates.items():
        for language, message in languages.items():
            for part in ("subject", "text", "html"):
                source = getattr(message, part)
                if source is None:
                    continue
                try:
                    _environment(part == "html").from_string(source)
                except TemplateError as exc:
                    found.append((("templates", name, language, part), f"does not compile: {exc}"))
    return found


def candidates(wanted: str) -> list[str]:
    """`wanted` and its broader forms, most specific first."""
    parts = wanted.replace("_", "-").split("-")
    found = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if parts[0].lower() == "zh" and len(parts) > 1 and parts[1].lower() in _TRADITIONAL_REGIONS:
        found.insert(len(found) - 1, "zh-Hant")
    return found


def choose_language(wanted: str | None, available: set[str], default: str) -> str:
    by_lower = {language.lower(): language for language in available}
    for candidate in candidates(wanted) if wanted else []:
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    return default


def render(rules: Rules, template: str, wanted: str | None, context: dict[str, Any]) -> Rendered:
    """The template in the customer's language (or the nearest, or the default)."""
    languages = rules.templates[template]
    language = choose_language(wanted, set(languages), rules.default_language)
    message: Message = languages[language]
    html = _template(message.html, True).render(context) if message.html is not None else None
    return Rendered(
        language=language,
        subject=" ".join(_template(message.subject, False).render(context).split()),
        text=_template(message.text, False).render(context),
        html=html,
    )


def with_unsubscribe(rendered: Rendered, link: str) -> Rendered:
    """The message with its unsubscribe link in every part that does not show it yet."""
    text, html = rendered.text, rendered.html
    if link not in text:
        text = text.rstrip("\n") + f"\n\n--\nTo stop these emails: {link}\n"
    if html is not None and escape(link) not in html:
        html += f'\n<p><a href="{escape(link)}">Unsubscribe</a></p>'
    return replace(rendered, text=text, html=html)
