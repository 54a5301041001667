"""Which server folders the app may read and write: the operator's allowed roots.

The app's folder inputs (`local:` and `openclip:` checkpoints, local test sets, "Save to a
folder") name paths on the machine that runs the server, typed by whoever opens the page. They
are confined to allowed roots, set by the operator:
- `streamlit run app.py -- --allow-root DIR [--allow-root DIR2]`, and/or
- `NUFILT_ALLOWED_ROOTS=DIR[:DIR2...]` (os.pathsep-separated; set but empty: no folder at all);
- neither: the folder the server was started in (the repository, with its `cache/`).
A path is inside a root when its real path (symlinks followed) is the root or below it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

ENV_ROOTS = "NUFILT_ALLOWED_ROOTS"
FLAG = "--allow-root"


def allowed_roots(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None,
                  start: str | os.PathLike | None = None) -> list[Path]:
    """The allowed roots from the script arguments (`--allow-root`), `$NUFILT_ALLOWED_ROOTS`, or
    the start folder when neither is given; each resolved to its real path."""
    environ = dict(os.environ) if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(FLAG, action="append", default=[], dest="roots")
    flagged = parser.parse_known_args(list(argv or []))[0].roots
    configured = environ.get(ENV_ROOTS)
    if not flagged and configured is None:
        return [Path(start or Path.cwd()).resolve()]
    listed = [*flagged, *((configured or "").split(os.pathsep))]
    return [Path(os.path.expanduser(item)).resolve() for item in listed if item.strip()]


def check_allowed(path: str | os.PathLike, roots: Sequence[Path], what: str = "folder") -> Path:
    """`path` resolved, if it lies inside one of `roots`; ValueError saying how to allow it."""
    text = str(path).strip()
    if not text:
        raise ValueError(f"type a {what}")
    resolved = Path(os.path.expanduser(text)).resolve()
    if any(resolved == root or root in resolved.parents for root in roots):
        return resolved
    listed = ", ".join(str(root) for root in roots) or "none"
    raise ValueError(
        f"the {what} {text} is outside the folders this app may use ({listed}); whoever runs the "
        f"server can allow more with `streamlit run app.py -- {FLAG} DIR` or {ENV_ROOTS}=DIR"
    )
