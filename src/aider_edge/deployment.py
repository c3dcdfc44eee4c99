"""Where a deployed retraining run works: the checkout that ``AIDER_EDGE_CHECKOUT`` names.

``prefect.yaml`` deploys the flow to a work pool. Its runs start on whichever machine a worker
polls from, in a temporary folder, so the deployment cannot name a path: each worker's environment
does, with ``AIDER_EDGE_CHECKOUT`` (a clone with ``make setup`` done). ``prefect.yaml`` reaches
this module three times:

- ``flow_schedule`` (build step, at ``prefect deploy``): the deployment's cron is ``flow.cron`` of
  the params.yaml being deployed, so it cannot drift from ``python flows/retrain.py --serve``;
- ``enter_checkout`` (pull step, on the worker, before the flow is loaded): work in the checkout,
  so ``flows/retrain.py`` and its DVC workspace are the checkout's;
- the flow's parameter ``project_dir: $AIDER_EDGE_CHECKOUT``: :func:`project_root` resolves it
  and refuses a missing or wrong checkout with one line, before any stage.

No Prefect import: the pull step runs in the worker's process before the flow is loaded, and the
CLI resolves ``--project-dir`` before Prefect starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from aider_edge import layout
from aider_edge.errors import AiderEdgeError

CHECKOUT_ENV = "AIDER_EDGE_CHECKOUT"
FROM_CHECKOUT_ENV = f"${CHECKOUT_ENV}"
"""The ``project_dir`` of the deployment: the checkout of the worker that runs it."""
FLOW_FILE = Path("flows/retrain.py")
"""The deployment's entrypoint file (``prefect.yaml``), relative to a checkout."""
_FIX = (
    f"set {CHECKOUT_ENV} in the worker's environment to the absolute path of a clone of "
    "aider-edge with `make setup` done, and restart the worker"
)


class CheckoutError(AiderEdgeError):
    """``AIDER_EDGE_CHECKOUT`` is unset or does not name a project checkout."""


def checkout(environ: Mapping[str, str] | None = None) -> Path:
    """The checkout ``AIDER_EDGE_CHECKOUT`` names: an absolute folder with params.yaml and dvc.yaml."""
    value = (os.environ if environ is None else environ).get(CHECKOUT_ENV, "").strip()
    if not value:
        raise CheckoutError(f"{CHECKOUT_ENV} is not set: {_FIX}")
    path = Path(value).expanduser()
    # The worker starts each run in a fresh temporary folder: a relative path means nothing there.
    if not path.is_absolute():
        raise CheckoutError(f"{CHECKOUT_ENV}={value} is not an absolute path: {_FIX}")
    if not path.is_dir():
        raise CheckoutError(f"{CHECKOUT_ENV}={value} is not a folder: {_FIX}")
    missing = [
        str(name) for name in (layout.PARAMS_FILE, layout.DVC_YAML) if not (path / name).is_file()
    ]
    if missing:
        raise CheckoutError(
            f"{CHECKOUT_ENV}={value} is not an aider-edge checkout (no {' or '.join(missing)}): {_FIX}"
        )
    return path.resolve()


def project_root(project_dir: str | Path) -> Path:
    """The flow's ``project_dir`` as a folder: ``$AIDER_EDGE_CHECKOUT`` (what the deployment
    passes) is the worker's checkout, checked by :func:`checkout`; any other value is a path."""
    if str(project_dir) == FROM_CHECKOUT_ENV:
        return checkout()
    return Path(project_dir).resolve()


def enter_checkout() -> dict[str, str]:
    """Prefect pull step: make the worker's checkout the run's working folder.

    Prefect loads the entrypoint (``flows/retrain.py``) from the folder this step returns. When
    ``AIDER_EDGE_CHECKOUT`` is unusable, the step enters the checkout this module was installed
    from instead (the worker's own ``.venv`` is an editable install of a clone), so that the flow
    loads and fails with :func:`checkout`'s line in the run's state; a failing pull step would
    only show as a Crashed run with an exit code. Only without such a checkout does the step fail.
    """
    try:
        directory = checkout()
    except CheckoutError:
        own = _installed_checkout()
        if own is None:
            raise
        directory = own
    os.chdir(directory)
    return {"directory": str(directory)}


def _installed_checkout() -> Path | None:
    """The clone this package runs from (``src/aider_edge/`` of an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    if (root / FLOW_FILE).is_file() and (root / layout.DVC_YAML).is_file():
        return root
    return None


def flow_schedule(params_file: str = str(layout.PARAMS_FILE)) -> dict[str, str]:
    """Prefect build step: ``{"cron": flow.cron}`` of the params file that is being deployed."""
    from aider_edge.config import load_params  # pydantic and yaml: only `prefect deploy` needs them

    return {"cron": load_params(Path(params_file)).flow.cron}
