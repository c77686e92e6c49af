"""The one error type the policy package raises for bad rule input."""

from __future__ import annotations


class PolicyError(Exception):
    """A rule file cannot be used. str() is one line: `file:line: rule 'name': message`."""

    def __init__(self, message: str, file: str = "", line: int = 0, rule: str = "") -> None:
        self.file = file
        self.line = line
        self.rule = rule
        self.message = message.strip().splitlines()[0] if message.strip() else "invalid rule"
        super().__init__(self.format())

    def format(self) -> str:
        where = (f"{self.file}:{self.line}: " if self.line > 0 else f"{self.file}: ") if self.file else ""
        who = f"rule {self.rule!r}: " if self.rule else ""
        return f"{where}{who}{self.message}"

