"""A Dockerfile read into instructions: continuation lines, comments, the exec (JSON) and
shell forms, and variables ($VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}) as Docker expands
them in the instructions that take them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..errors import NsmagicError

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL",
             "EXPOSE", "CMD", "ENTRYPOINT", "MAINTAINER")
# Instructions whose arguments Docker expands variables in (RUN, CMD and ENTRYPOINT are left
# to the shell in the container).
EXPANDED = ("FROM", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE")
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(NsmagicError):
    pass


@dataclass(frozen=True)
class Instruction:
    line: int          # where it starts, for messages
    keyword: str       # upper case
    text: str          # the arguments as written (continuations joined)

    @property
    def source(self) -> str:
        return f"{self.keyword} {self.text}"

    def exec_form(self) -> list[str] | None:
        """The JSON array form's words, or None for the shell form."""
        if not self.text.startswith("["):
            return None
        try:
            words = json.loads(self.text)
        except ValueError:
            return None
        if isinstance(words, list) and all(isinstance(w, str) for w in words):
            return words
        return None

    def command(self) -> list[str]:
        """RUN, CMD, ENTRYPOINT: the exec form as is, the shell form under /bin/sh -c."""
        words = self.exec_form()
        return words if words is not None else ["/bin/sh", "-c", self.text]


def parse(text: str, name: str = "Dockerfile") -> list[Instruction]:
    found, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue    # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found.append(_instruction(pending + line, start, name))
        pending = ""
    if pending:
        found.append(_instruction(pending, start, name))
    if not found or found[0].keyword not in ("FROM", "ARG"):
        raise DockerfileError(f"{name} must start with FROM (ARG may come before it).")
    return found


def _instruction(text: str, line: int, name: str) -> Instruction:
    keyword, _, rest = text.strip().partition(" ")
    keyword = keyword.upper()
    if keyword not in SUPPORTED:
        raise DockerfileError(f"{name} line {line}: {keyword} is not supported by nsmagic "
                              f"build; it knows {', '.join(SUPPORTED[:-1])}.")
    if "<<" in rest and keyword in ("RUN", "COPY"):
        raise DockerfileError(f"{name} line {line}: here-documents (<<) are not supported by "
                              "nsmagic build; write the lines into a file and COPY it.")
    return Instruction(line, keyword, rest.strip())


def expand(text: str, variables: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        value = variables.get(name)
        if m.group("op") == "-":
            return value if value else m.group("word")
        if m.group("op") == "+":
            return m.group("word") if value else ""
        return value or ""
    return _VAR.sub(one, text.replace("\\$", "\0")).replace("\0", "$")


def pairs(text: str, legacy: bool = True) -> list[tuple[str, str]]:
    """ENV and LABEL: KEY=VALUE pairs (values may be quoted), or the legacy `KEY VALUE`."""
    import shlex
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise DockerfileError(f"cannot read {text!r}: {err}.") from None
    if legacy and words and "=" not in words[0]:
        return [(words[0], text.strip()[len(words[0]):].strip())]
    found = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise DockerfileError(f"{word!r} is not KEY=VALUE.")
        found.append((key, value))
    return found
