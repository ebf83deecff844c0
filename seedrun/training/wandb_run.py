"""W&B for a run, when SEEDRUN_LOGGERS names wandb (seedrun.training.curves): `pip install seedrun[wandb]`.

One W&B run per seedrun run, whatever its attempts: the W&B id is drawn once and kept in the run's folder
(wandb_id.txt), and every attempt (a Slurm requeue, a preemption, `seedrun retry`) opens the same id with
resume="allow". That is what users of Lightning and of the mila template ask for (a new W&B run at each
requeue), and what solo-learn does by keeping the id.

Offline by default where there is no network: WANDB_MODE wins when set; otherwise online only where W&B
has credentials (WANDB_API_KEY or a netrc entry for its host) and its host answers within 2 s. An offline
run lands in the run folder's wandb/ and `wandb sync` uploads it later. Files go under the run folder
(dir=run_dir), so they move and are deleted with it.

Steps: a resumed attempt logs from its checkpoint's step on. W&B itself refuses a step below the last one
it holds for a run, so the points an earlier attempt logged past that checkpoint stay and the resumed
attempt's same steps are dropped: the curve never repeats a step nor goes back.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional

ID_FILE = "wandb_id.txt"
DEFAULT_HOST = "https://api.wandb.ai"


def run_id(run_dir: Path) -> str:
    """The W&B id of this seedrun run: the one kept in its folder, or a new one kept there first."""
    path = run_dir / ID_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except OSError:
        kept = ""
    if kept:
        return kept
    import secrets

    from seedrun.atomic import atomic_write_text

    new = secrets.token_hex(4)  # W&B ids are short lowercase strings; 8 hex digits as wandb's own
    atomic_write_text(path, new + "\n")
    return new


def mode() -> str:
    """WANDB_MODE when set, else online where W&B can be reached with credentials, else offline."""
    chosen = os.environ.get("WANDB_MODE")
    if chosen:
        return chosen
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)).hostname or ""
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has(host)):
        return "offline"
    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        return "offline"
    return "online"


def _netrc_has(host: str) -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbWriter:
    def __init__(self, run: Any):
        self.run = run

    @classmethod
    def open(cls, run_dir: Path, label: str, config: dict[str, Any],
             log: Callable[[str], None]) -> Optional["WandbWriter"]:
        """The run's W&B run, or None (logged) where wandb is not installed: curves go to TensorBoard alone."""
        try:
            import wandb
        except ImportError:
            log("SEEDRUN_LOGGERS names wandb but it is not installed (pip install seedrun[wandb]): TensorBoard only")
            return None
        identifier, chosen = run_id(run_dir), mode()
        run = wandb.init(id=identifier, resume="allow", dir=str(run_dir), mode=chosen, name=label, config=config,
                         project=os.environ.get("WANDB_PROJECT", "seedrun"))
        log(f"W&B run {identifier} ({chosen})")
        return cls(run)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def flush(self) -> None:
        pass  # wandb writes as it goes, in its own process

    def close(self) -> None:
        self.run.finish()
