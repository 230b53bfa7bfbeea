"""A Dockerfile read the way BuildKit reads it, for what the image must be (`image_problems`)
and for running its command outside a container.

Enough of the syntax for deploy/Dockerfile and its broken copies: `\\` line continuations,
comment lines (also inside a continuation), global ARGs with defaults substituted into FROM,
stages (FROM ... AS name), exec-form (JSON) and shell-form arguments, ENV key=value pairs."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# An exact version (3.11.15, v2.53.0) or a digest: what the tag points at cannot move.
_PINNED = re.compile(r"(@sha256:[0-9a-f]{64}$)|(:v?\d+\.\d+\.\d+[^:@/]*$)")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# Compilers and build systems: the final stage has no business installing them.
_BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|build-base|python3?-dev|libc6?-dev)\b"
)
# Package tools, their subcommands, and those that install or build.
_SUBCOMMANDS = {
    "pip": (
        {"install", "uninstall", "wheel", "download", "list", "show", "freeze"},
        {"install", "wheel", "download"},
    ),
    "apt-get": (
        {"install", "update", "upgrade", "remove", "purge", "autoremove", "clean"},
        {"install", "upgrade"},
    ),
    "apk": ({"add", "del", "update", "upgrade"}, {"add", "upgrade"}),
}
_SUBCOMMANDS["pip3"] = _SUBCOMMANDS["pip"]
_SUBCOMMANDS["apt"] = _SUBCOMMANDS["apt-get"]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The arguments as a JSON array (exec form), or None in shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in f" {text}" else ""
            text = text.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, in order, later ones winning."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def final_stage() -> Stage:
    return parse(DOCKERFILE.read_text())[-1]


def copied_file(stage: Stage, destination_name: str) -> Path:
    """The checkout file a COPY of `stage` puts at .../`destination_name`."""
    for copy in stage.all("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        if words[-1].rsplit("/", 1)[-1] == destination_name:
            return ROOT / words[0]
    raise AssertionError(f"no COPY puts {destination_name} into the image")


def image_command(stage: Stage) -> list[str]:
    """ENTRYPOINT and CMD, as the container runs them."""
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint and cmd
    return (entrypoint.exec_form() or []) + (cmd.exec_form() or [])


def instructions(text: str) -> list[Instruction]:
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives), blank lines between instructions
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    return found


def installs(command: str) -> list[str]:
    """The package-tool subcommands in a shell command that install or build something
    (`pip install`, `pip wheel`, `apt-get install`, `apk add`...): for each tool, its first
    word that is one of its subcommands (options and their values come before it)."""
    words = shlex.split(command.replace(";", " ; ").replace("&&", " && "))
    found = []
    for i, word in enumerate(words):
        tool = word.rsplit("/", 1)[-1]
        if tool not in _SUBCOMMANDS:
            continue
        known, installing = _SUBCOMMANDS[tool]
        sub = next((w for w in words[i + 1 :] if w in known), None)
        if sub in installing:
            found.append(f"{tool} {sub}")
    return found


def parse(text: str) -> list[Stage]:
    """The stages, with the global ARG defaults substituted into each FROM."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "ARG" and not stages:
            variable, _, default = instruction.args.partition("=")
            arguments[variable] = default
        elif instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            base = _VARIABLE.sub(lambda m: arguments.get(m[1] or m[2], ""), words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def image_problems(text: str) -> list[str]:
    """What keeps this Dockerfile from being the image deploy/README.md describes."""
    stages = parse(text)
    if not stages:
        return ["no FROM"]
    problems: list[str] = []
    final, builders = stages[-1], stages[:-1]
    names = {stage.name for stage in builders}

    if not builders:
        problems.append("multi-stage: one stage only (the wheel is built in a stage of its own)")
    for stage in stages:
        if stage.base not in names and not _PINNED.search(stage.base):
            problems.append(f"pinned base: {stage.base!r} has neither a digest nor an exact tag")
    if builders and not any("pip wheel" in i.args for s in builders for i in s.all("RUN")):
        problems.append("multi-stage: no build stage runs `pip wheel`")
    copied_from = {
        word.split("=", 1)[1]
        for i in final.all("COPY")
        for word in i.args.split()
        if word.startswith("--from=")
    }
    if builders and not copied_from & names:
        problems.append("multi-stage: the final stage copies nothing from a build stage")

    for run in final.all("RUN"):
        if installs(run.args) or _BUILD_TOOLS.search(run.args):
            problems.append(f"no build tools: the final stage installs or builds (line {run.line})")
    removed = " ".join(i.args for i in final.all("RUN") if "uninstall" in i.args)
    if not all(tool in removed.split() for tool in ("setuptools", "wheel")):
        problems.append("no build tools: the base's setuptools and wheel are left in the image")

    user = final.last("USER")
    uid = user.args.split(":")[0] if user else "root"
    if not uid.isdigit() or int(uid) == 0:
        problems.append(f"non-root user: the image runs as {uid!r} (a numeric uid other than 0)")

    check = final.last("HEALTHCHECK")
    command = check.exec_form() if check else None
    if not command or "/healthz" not in " ".join(command):
        problems.append("HEALTHCHECK: none in exec form probing /healthz")
    elif command[0] in ("curl", "wget"):
        problems.append(f"HEALTHCHECK: uses {command[0]}, which the slim base does not have")

    signal = final.last("STOPSIGNAL")
    if signal is None or signal.args not in ("SIGTERM", "15"):
        problems.append("STOPSIGNAL: not SIGTERM (the signal the gateway drains on)")

    for keyword in ("ENTRYPOINT", "CMD"):
        instruction = final.last(keyword)
        if instruction is None or instruction.exec_form() is None:
            problems.append(
                f"{keyword}: not in exec form (a shell would be PID 1, not the gateway)"
            )
    env = final.env()
    for variable in ("GATEWAY_CONFIG", "GATEWAY_HOST", "GATEWAY_PORT"):
        if not env.get(variable):
            problems.append(f"ENV: no default for {variable}")
    if env.get("GATEWAY_HOST") not in (None, "0.0.0.0"):
        problems.append("ENV: GATEWAY_HOST is not 0.0.0.0 (unreachable from outside)")
    return problems
