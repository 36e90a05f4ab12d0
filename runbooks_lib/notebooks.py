"""Executing a notebook headless: papermill over IPC kernels, and the executed notebook made
safe to keep (no traceback, no secret). Used for every runbook and for the health overview."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import parallel
from .target import mask_text


def notebook_dir() -> Path:
    """notebooks/ beside the package, or $RUNBOOKS_NOTEBOOK_DIR (tests use their own)."""
    env = os.environ.get("RUNBOOKS_NOTEBOOK_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(notebook_dir().glob("*.ipynb"))}


def kernel_manager_class() -> type:
    """Kernels over IPC (Unix sockets in a private directory): no "running over TCP without
    encryption" warning per run, and no port collisions between kernels started at once."""
    import subprocess
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            return str(Path(tempfile.mkdtemp(prefix="runbooks-kernel-")) / "k")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # the kernel's own stderr is no result: cell errors come back through the protocol,
            # and libzmq or the kernel's logger print tracebacks while it is torn down
            kw["stderr"] = kw["stdout"] = subprocess.DEVNULL  # its output is in the protocol
            kw["env"] = {**(kw.get("env") or os.environ), **parallel.kernel_env()}
            await AsyncKernelManager._async_launch_kernel(self, kernel_cmd, **kw)
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                parallel.kernel_started(process.pid)

    return IPCKernelManager


def execute(path: Path, nb_out: Path, parameters: dict[str, Any], timeout_s: int) -> None:
    """Notebook PATH run with PARAMETERS into NB_OUT, its kernel in NB_OUT's directory (papermill
    raises on a failed cell after saving the notebook; each cell may run TIMEOUT_S).

    The kernel gets its directory from nbclient's resources, not papermill's ``cwd``, which
    chdirs the whole process: with runbooks in threads, one thread's chdir back raced another's
    and left the process in a run directory (a relative path then pointed nowhere)."""
    import papermill

    papermill.execute_notebook(str(path), str(nb_out), parameters=parameters,
                               kernel_name="python3", progress_bar=False, log_output=False,
                               execution_timeout=timeout_s,
                               resources={"metadata": {"path": str(nb_out.parent)}},
                               kernel_manager_class=kernel_manager_class())


def sanitize(nb_path: Path, secrets: list[str]) -> Any:
    """No traceback and no secret in the executed notebook: an error output becomes one masked
    line (the step and the error), and every text output is masked."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        clean = []
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                o = nbformat.v4.new_output("stream", name="stderr",
                                           text=f"step failed: {o.ename}: {o.evalue}\n")
            if o.output_type == "stream":
                o.text = mask_text(o.text, *secrets)
            elif "data" in o:
                for mime in ("text/plain", "text/html", "text/markdown"):
                    if isinstance(o.data.get(mime), str):
                        o.data[mime] = mask_text(o.data[mime], *secrets)
            clean.append(o)
        cell.outputs = clean
    nbformat.write(nb, nb_path)
    return nb
