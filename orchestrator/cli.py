"""What the command-line entry points share: where the configs are, the console log, and
Hydra's own mistakes (an unknown key, a wrong type, a missing config group, a YAML syntax
error) told as one line naming the key and the file, exit code 2, no traceback.

Entry points: ``attn-sweep`` = ``python -m orchestrator``, ``attn-report`` =
``python -m orchestrator.report``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path


def conf_dir() -> str:
    """``conf/`` of a checkout (an editable install too), or the copy a wheel carries."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "config.yaml").is_file():
        return str(packaged)
    return str(Path(__file__).resolve().parents[1] / "conf")


CONF = conf_dir()
NO_RUN = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c", "--resolve",
          "--shell-completion", "-sc"}


def report_command(cfg, output_dir: str | None) -> str:
    """The command that makes a sweep's report from its dataset, into its run folder."""
    import shlex

    words = ["python", "-m", "orchestrator.report", f"store.path={cfg.store.path}", f"sweep_name={cfg.sweep_name}"]
    if output_dir:
        words.append(f"output_dir={output_dir}")
    return " ".join(shlex.quote(w) for w in words)


def runs_cells_here(args: list[str]) -> bool:
    """Whether ``python -m orchestrator ARGS`` will likely run cells in processes forked on this
    machine (a sweep in pool isolation on a private cluster): then its fork server may start
    before the config is composed. A wrong guess costs a process that is stopped unused, or a
    fork server started a little later."""
    if os.environ.get("RAY_ADDRESS") or any(a.split("=")[0] in NO_RUN for a in args):
        return False
    return not any(a.startswith(("cluster.address=", "run.isolation=task")) and a != "cluster.address=null"
                   for a in args)


def console() -> None:
    """The project's messages on the terminal, once: information on stdout (above a live view),
    warnings and errors on stderr; Hydra's log file gets them all through the root logger."""
    from orchestrator.progress import ConsoleHandler

    lg = logging.getLogger("orchestrator")
    lg.setLevel(logging.INFO)
    if not any(isinstance(h, ConsoleHandler) for h in lg.handlers):
        info = ConsoleHandler()
        info.addFilter(lambda record: record.levelno < logging.WARNING)
        lg.addHandler(info)
        lg.addHandler(ConsoleHandler(logging.WARNING, stream="stderr"))


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span lines and chain causes: the gist, with its key and where
    it came from (the command line, or the YAML file), on one line."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen and len(parts) < 2:
        seen.add(id(exc))
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
        text = " ".join(ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type=")))
        text = text.split(" Config search path:")[0].split(" See https://hydra.cc")[0].replace("\t", " ")
        text = text.replace("Error merging override ", "command line: ")
        if key and key not in text:
            text = f"{key}: {text}"
        if text and text != "None" and "$VALUE" not in text and not any(text in p for p in parts):
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    from orchestrator.config import explain_unknown_key

    line = next(filter(None, map(explain_unknown_key, parts)), None) or " | ".join(parts)
    return _list_wanted(line) or line


def _list_wanted(line: str) -> str | None:
    """``grid.seq_lens=128``: OmegaConf says an int is not a ListConfig; say it takes a list."""
    import re

    m = re.search(r"([\w.]+): Invalid value assigned: \w+ is not a ListConfig", line)
    if not m or not line.startswith("command line: "):  # a sweep file's value: its own message names the file
        return None
    key = m.group(1)
    given = re.search(rf"(?<![\w.]){re.escape(key)}=(\S+)", line)
    value = given.group(1) if given else "..."
    return f"command line: {key}={value}: {key} takes a list, even of one value: {key}=[{value}]"


def run(app: Callable[[], None]) -> None:
    """Run a @hydra.main app. With HYDRA_FULL_ERROR=1 (yours) the traceback shows as usual."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    mine = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own traceback
    try:
        app()
    except (HydraException, OmegaConfBaseException, YAMLError) as exc:
        if mine:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
