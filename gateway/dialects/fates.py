"""The table of every contract parameter's fate in every dialect, as it stands in
docs/dialects.md: `python -m gateway.dialects.fates` prints it, and a test fails when the
document and the code disagree or a parameter lacks a fate."""

from __future__ import annotations

from gateway.dialects import DIALECTS
from gateway.dialects.base import CONTRACT_PARAMETERS

BEGIN = "<!-- fate-table:begin -->"
END = "<!-- fate-table:end -->"


def render() -> str:
    names = sorted(DIALECTS)
    lines = [
        "| parameter | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for param in CONTRACT_PARAMETERS:
        fates = [DIALECTS[name].fates[param].value for name in names]
        lines.append(f"| `{param}` | " + " | ".join(fates) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(BEGIN)
    print(render())
    print(END)
