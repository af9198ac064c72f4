"""Launch a script on N CPU processes (gloo on loopback) the way a user launches tenfold on N GPUs."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

WORKER = str(Path(__file__).resolve().parent / "train_worker.py")
ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


def free_port() -> int:
    """A free port, so that no other job's rendezvous can collide with ours."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script_args: list[str], procs: int, log: Path, config: str | None = None, timeout: int = 240,
           env: dict | None = None) -> str:
    """Run `script_args` on `procs` processes with torchrun, or with `accelerate launch --config_file
    recipes/accelerate/<config>` (the README's commands). Returns the log; fails the test on a non-zero exit."""
    if config is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config),
               "--num_processes", str(procs), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(free_port())]
    # loopback only: gloo must not depend on how the host name resolves
    worker_env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log, "w") as out:
        launcher = subprocess.Popen(cmd + script_args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=worker_env)
        try:
            returncode = launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # a hung worker: kill the launcher and its workers, then fail
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            returncode = f"hung for {timeout} s"
    text = log.read_text()
    assert returncode == 0, f"{cmd[2]}: {returncode}\n" + text[-3000:]
    return text
