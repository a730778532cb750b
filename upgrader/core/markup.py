"""Styled text whose user-supplied parts are shown literally, never read as Rich markup.

Names, ids, class names, reasons, actors and paths are free text a user typed: ``[/]x`` in one of them
must print as ``[/]x``, not end a style or raise ``MarkupError``. The interfaces style their own words
with a markup template and put the values in with :func:`styled`.

Why not ``template.format(*map(rich.markup.escape, values))``: Rich's escape cannot be right for a value
that ends in a backslash, because what that backslash means depends on the template text after it
(``"x\\"`` followed by ``" done"`` shows two backslashes; ``"x\\\\"`` followed by ``"[/b]"`` shows one).
:func:`styled` never puts a value through the markup parser at all: it parses the template with a
placeholder per value, then swaps each placeholder for the value as plain text, keeping the styles
the template gave that spot.
"""

from __future__ import annotations

import re

from rich.text import Text

# A placeholder no template contains and the markup parser leaves alone (no "[" and no backslash).
_MARK = "\x00"
_PLACEHOLDER = re.compile(f"{_MARK}(\\d+){_MARK}")


def styled(template: str, *values: object) -> Text:
    """Rich text from a markup ``template`` whose ``{}`` fields take ``values`` literally.

    ``styled("[b]{}[/b] refused: {}", name, reason)`` is bold ``name``, then the reason as typed.
    Fields are positional (``{}`` or ``{0}``; a field may repeat); a value is shown as ``str(value)``.

    Raises:
        IndexError: the template has more fields than ``values`` (a programming error).
        rich.errors.MarkupError: the template itself is not valid markup (never a value's fault).
    """
    marks = [f"{_MARK}{i}{_MARK}" for i in range(len(values))]
    parsed = Text.from_markup(template.format(*marks))
    plain = parsed.plain
    out = Text(style=parsed.style, end=parsed.end)
    position = 0
    for match in _PLACEHOLDER.finditer(plain):
        start, end = match.span()
        out.append_text(parsed[position:start])
        value = Text(str(values[int(match.group(1))]))
        for span in parsed[start:end].spans:  # the styles the template put on this field
            value.stylize(span.style)
        out.append_text(value)
        position = end
    out.append_text(parsed[position:])
    return out


def literal(value: object) -> Text:
    """``str(value)`` as text that is never read as markup (a table cell, a label, a body)."""
    return Text(str(value))
