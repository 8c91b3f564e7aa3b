"""API worker processes: `api.workers: N` (N > 1) processes serve the API listener from the
shared store, while the daemon's main process alone runs the scheduler, the challenge
listener, the monitor, orders and deploys.

The listening socket is bound once by the main process and handed to every worker (an
inherited file descriptor), rather than each worker binding its own with SO_REUSEPORT:
the port stays bound by the main process for the daemon's whole life, so a worker that dies
or is replaced on a reload loses no queued connection (with SO_REUSEPORT each socket has its
own accept queue, and the connections queued on a dying worker's socket are reset); no other
process of the same user can join the port's group and take a share of the connections; and
names, IPv6 and the bind errors stay the main process's, as with one process. The cost is
that the kernel wakes whichever worker is waiting in accept, which balances less evenly than
SO_REUSEPORT's hash (a busy worker accepts less, which is the point of a balance anyway).

Each worker gets the main process's config over its stdin (a pickle, then nothing: EOF on
stdin means the main process is gone, and PR_SET_PDEATHSIG stops it too), and sends back, on
a pipe, one JSON line per job a request started (certd/api/jobs.py: a new alias to issue, a
renew, a deploy, a removal): the request's store writes (the alias, the quota ledger, the
audit event) are the worker's, through the service layer (certd/aliases.py); the order and
the deploy are the main process's, once per line. A worker that exits is replaced after a
short delay; SIGHUP's reload, once the main process has accepted the new config, replaces
the workers one by one (start the new one, then stop the old, which finishes its requests).

    python -m certd.workers FD INDEX PARENT_PID     (started by WorkerPool, not by hand)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import sys

from certd import logs
from certd.api.jobs import MAX_LINE, Forward, decode, perform
from certd.config import Config, split_listen
from certd.errors import CertdError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # seconds a worker gets to finish its requests before SIGKILL
RESTART_DELAY = 0.5  # seconds before a dead worker is replaced, doubled up to RESTART_MAX
RESTART_MAX = 30.0
STABLE = 10.0  # seconds a worker must live for the delay to fall back to RESTART_DELAY
BACKLOG = 128
READY = b"ready\n"  # a worker's first line: it accepts connections now
METRICS = b"metrics\n"  # a worker asks for /metrics, rendered here; the answer on its stdin
METRICS_TIMEOUT = 10.0
READY_TIMEOUT = 30.0  # seconds a replacement gets to say READY before the old one goes anyway
PR_SET_PDEATHSIG = 1


class ListenSocketError(CertdError):
    def __init__(self, message: str, *, in_use: bool):
        self.in_use = in_use
        super().__init__(message)


def listening_socket(listen: str, backlog: int = BACKLOG) -> socket.socket:
    """A bound, listening TCP socket for `listen` (host:port), inheritable by workers."""
    host, port = split_listen(listen)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenSocketError(f"api: cannot listen on {listen}: {exc.strerror or exc}",
                                in_use=False) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenSocketError(f"api: cannot listen on {listen}: {exc.strerror or exc}",
                                in_use=exc.errno == errno.EADDRINUSE) from None
    sock.setblocking(False)
    return sock


class Worker:
    def __init__(self, index: int, proc: asyncio.subprocess.Process, started: float):
        self.index = index
        self.proc = proc
        self.started = started
        self.retired = False  # replaced on purpose: its exit is not a death to repair
        self.ready = asyncio.Event()
        self.reader: asyncio.Task | None = None


class WorkerPool:
    """N API worker processes on `sock`, kept alive; jobs they send run on `certd` here."""

    def __init__(self, config: Config, certd, sock: socket.socket, count: int,
                 metrics_sources=None) -> None:
        self.config = config
        self.metrics_sources = metrics_sources  # certd.metrics.Sources: the daemon's
        self.certd = certd
        self.sock = sock
        self.count = count
        self.workers: dict[int, Worker] = {}
        self.jobs: set[asyncio.Task] = set()
        self.restarts = 0  # workers replaced after an unplanned exit
        self._delay = {i: RESTART_DELAY for i in range(count)}
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        for index in range(self.count):
            await self._spawn(index)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.values()]

    async def _spawn(self, index: int) -> Worker:
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "certd.workers", str(self.sock.fileno()), str(index),
            str(os.getpid()), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            pass_fds=(self.sock.fileno(),), limit=MAX_LINE * 4)
        blob = pickle.dumps(self.config)
        assert proc.stdin is not None
        proc.stdin.write(struct.pack("!Q", len(blob)) + blob)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        worker = Worker(index, proc, loop.time())
        self.workers[index] = worker
        worker.reader = self._task(self._watch(worker))
        log.info("api worker %d started (pid %d)", index, proc.pid)
        return worker

    def _task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self, worker: Worker) -> None:
        """Run the jobs `worker` sends until its pipe closes; replace it if it died."""
        assert worker.proc.stdout is not None
        while True:
            try:
                line = await worker.proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                log.error("api worker %d: a job line over %d bytes; stopping it", worker.index,
                          MAX_LINE * 4)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                break
            if not line:
                break
            if line == READY:
                worker.ready.set()
                continue
            if line == METRICS:
                self._task(self._metrics(worker))
                continue
            try:
                op, args = decode(line)
            except ValueError:
                log.error("api worker %d: not a job line; ignored", worker.index)
                continue
            job = asyncio.get_running_loop().create_task(perform(self.certd, op, args))
            self.jobs.add(job)
            job.add_done_callback(self.jobs.discard)
            job.add_done_callback(_log_failure)
        code = await worker.proc.wait()
        if self._stopping or worker.retired:
            return
        loop = asyncio.get_running_loop()
        delay = self._delay[worker.index]
        lived = loop.time() - worker.started
        self._delay[worker.index] = (RESTART_DELAY if lived > STABLE
                                     else min(RESTART_MAX, delay * 2))
        if lived > STABLE:
            delay = RESTART_DELAY
        log.warning("api worker %d (pid %d) exited (%s); starting another in %.1f s",
                    worker.index, worker.proc.pid, _how(code), delay)
        await asyncio.sleep(delay)
        if not self._stopping and self.workers.get(worker.index) is worker:
            self.restarts += 1
            await self._spawn(worker.index)

    async def _metrics(self, worker: Worker) -> None:
        """Render /metrics for `worker` (this process's counters: challenges, deploys, the
        monitor) and send it down its stdin, length first."""
        from certd import metrics

        try:
            body = (await metrics.render(self.metrics_sources)
                    if self.metrics_sources is not None else b"")
        except Exception:
            log.exception("api worker %d: /metrics failed", worker.index)
            return
        stdin = worker.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(struct.pack("!Q", len(body)) + body)
            with contextlib.suppress(ConnectionError):
                await stdin.drain()

    async def restart(self, config: Config) -> None:
        """Replace every worker by one running `config`, one at a time (the new one first)."""
        self.config = config
        for index in range(self.count):
            old = self.workers.get(index)
            if old is not None:
                old.retired = True
            new = await self._spawn(index)
            if old is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(new.ready.wait(), READY_TIMEOUT)
                await _stop_process(old.proc)
        log.info("api workers restarted with the reloaded config")

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*(_stop_process(w.proc) for w in self.workers.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in list(self.jobs):
            job.cancel()
        await asyncio.gather(*self.jobs, return_exceptions=True)


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("api worker pid %d did not stop in %.0f s; killed", proc.pid,
                        STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.stdin is not None:
        proc.stdin.close()


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("api worker job failed", exc_info=task.exception())


# --- the worker process --------------------------------------------------------------------

def _die_with_parent(parent: int) -> None:
    """SIGTERM when the main process dies (Linux); exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _read_config(stream) -> Config:
    head = stream.read(8)
    if len(head) != 8:
        raise SystemExit(0)  # the main process went away before sending it
    (size,) = struct.unpack("!Q", head)
    return pickle.loads(stream.read(size))


async def serve(config: Config, sock: socket.socket, index: int, jobs_fd: int) -> None:
    """Serve the API on `sock` until SIGTERM/SIGINT or the main process goes away."""
    from certd.api import alerts
    from certd.api import app as api
    from certd.api.tokens import load_or_create
    from certd.app import open_certd, start_site

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the main process reloads us

    # stdin: /metrics bodies from the main process (length first); EOF: it is gone
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def read_stdin() -> None:
        try:
            while True:
                (size,) = struct.unpack("!Q", await stdin.readexactly(8))
                answers.put_nowait(await stdin.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            stop.set()

    reader = loop.create_task(read_stdin())
    asking = asyncio.Lock()

    async def render_metrics() -> bytes:
        """/metrics as the main process renders it, one request at a time."""
        from certd.api.http import Problem

        async with asking:
            while not answers.empty():  # a late answer to an earlier request
                answers.get_nowait()
            send(METRICS)
            try:
                return await asyncio.wait_for(answers.get(), METRICS_TIMEOUT)
            except TimeoutError:
                raise Problem(503, "metrics-unavailable", "Metrics unavailable",
                              "the daemon did not answer in time") from None

    def send(line: bytes) -> None:
        try:
            os.write(jobs_fd, line)  # under PIPE_BUF: one atomic write
        except OSError as exc:  # the main process is gone; its sweep finds the work
            log.warning("api worker %d: cannot hand a job to the main process: %s", index, exc)

    async with open_certd(config) as certd:
        tokens = await asyncio.to_thread(load_or_create, config.tokens_path)
        app = api.build_app(certd, tokens, jobs=Forward(send), worker=index)
        app[alerts.RENDER] = render_metrics
        runner = await start_site(app, config.api.listen, "api", config.api.limits,
                                  sock=sock, label=f"api worker {index} (pid {os.getpid()})")
        gc.freeze()
        send(READY)
        try:
            await stop.wait()
        finally:
            reader.cancel()
            await runner.cleanup()


def main(argv: list[str]) -> None:
    fd, index, parent = (int(a) for a in argv)
    _die_with_parent(parent)
    config = _read_config(sys.stdin.buffer)
    jobs_fd = os.dup(1)  # stdout is the job pipe; anything printed goes to stderr instead
    os.dup2(2, 1)
    logs.setup(config.log_level, config.log_format, config.log_levels)
    from certd.store import storage_scheme

    if storage_scheme(config.storage) == "postgresql":  # the API worker's connections
        from certd.store import pg_pool

        pg_pool.api_worker_process()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    asyncio.run(serve(config, sock, index, jobs_fd))


if __name__ == "__main__":
    main(sys.argv[1:])
