"""``serve --watch``: follow the repository while serving.

    watcher = Watcher(versions, config)
    task = asyncio.create_task(watcher.run())      # cancelled at shutdown

The repository is scanned every ``watch_interval_s`` (a stat of every file, in a thread), and
at once when inotify (the ``watchfiles`` package, when installed) reports a change in it. A
model whose files changed (a version added or removed, ``withdrawn.json`` written) is brought in
step by ``Versions.sync``; a changed routes file is read and applied, or refused with the
reason logged while the last good rules stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from modelport.config import ServerConfig
from modelport.errors import ModelportError, installed
from modelport.server.versions import RULES, Fingerprint, Versions, fingerprint

log = logging.getLogger("modelport.server")

Snapshot = dict[str, Any]
_SETTLE_S = 0.05


def read_routes(path: Path) -> list[str]:
    """A routes file's lines (``MODEL=VERSION:PERCENT,...``; ``#`` starts a comment)."""
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelportError(f"cannot read the routes file {path}: {exc}") from None


class Watcher:
    """Keeps a Versions in step with its repository (and routes file) until cancelled."""

    def __init__(
        self, versions: Versions, config: ServerConfig, inotify: bool | None = None
    ) -> None:
        """``inotify``: wake on inotify's reports (default: when watchfiles is installed)."""
        self.inotify = installed("watchfiles") if inotify is None else inotify
        self.versions = versions
        self.config = config
        self.routes_file = Path(config.routes_file) if config.routes_file else None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()  # ends inotify's thread (watchfiles checks it every step)
        self._last_error: str | None = None

    def _snapshot(self) -> Snapshot:
        root = self.versions.repo.root
        models: dict[str, tuple[tuple[str, Fingerprint], ...]] = {}
        for name in self.versions.repo.names():
            folder = root / name
            with contextlib.suppress(OSError):
                models[name] = tuple(
                    (entry.name, fingerprint(entry) if entry.is_dir() else _stat(entry))
                    for entry in sorted(folder.iterdir())
                    if not entry.name.startswith(".")
                )
        routes = None
        if self.routes_file is not None:
            with contextlib.suppress(OSError):
                routes = self.routes_file.read_bytes()
        return {"models": models, "routes": routes}

    async def run(self) -> None:
        notifier = None
        if self.inotify:
            notifier = asyncio.create_task(self._notify())
        mode = "inotify and a scan" if notifier is not None else "a scan"
        log.info("watching %s: %s every %g s", self.versions.repo.root, mode,
                 self.config.watch_interval_s)  # fmt: skip
        last = await asyncio.to_thread(self._snapshot)
        if not await self.versions.sync():  # what landed while the models loaded
            last = {}
        try:
            while True:
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.watch_interval_s)
                self._wake.clear()
                now = await asyncio.to_thread(self._snapshot)
                if now != last:
                    last = now if await self._apply(last, now) else {}
        finally:
            if notifier is not None:
                self._stop.set()
                notifier.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await notifier

    async def _apply(self, last: Snapshot, now: Snapshot) -> bool:
        """Apply what changed; False when something must be looked at again next time."""
        before, after = last.get("models", {}), now["models"]
        changed = {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        if self.routes_file is not None and last.get("routes") != now["routes"]:
            # A file rewritten in place is empty or half written for a moment: read it once
            # it has stayed the same a little while (writing it whole, then renaming, is best).
            await asyncio.sleep(_SETTLE_S)
            if await asyncio.to_thread(self._snapshot) != now:
                return False
            self._reload_rules()
            changed = set(after) | set(before)
        try:
            done = await self.versions.sync(changed)
        except Exception as exc:  # a repository being rewritten under us: look again later
            message = str(exc).replace(str(self.versions.repo.root), "<repository>")
            if message != self._last_error:  # once, not at every scan
                log.error("could not follow the repository's change: %s", message)
                self._last_error = message
            return False
        self._last_error = None
        return done

    def _reload_rules(self) -> None:
        assert self.routes_file is not None
        try:
            lines = [*self.config.routes, *read_routes(self.routes_file)]
            self.versions.set_rules(lines, self.config.shadows)
        except ModelportError as exc:
            RULES.labels("refused").inc()
            log.error("routes file %s refused, the last good routes stay: %s",
                      self.routes_file, exc)  # fmt: skip
            return
        log.info("routes file %s applied", self.routes_file)

    async def _notify(self) -> None:
        """Wake the scan when inotify reports a change (watchfiles; polling without it)."""
        import watchfiles

        paths = [self.versions.repo.root]
        if self.routes_file is not None:
            paths.append(self.routes_file.resolve().parent)
        try:
            async for _ in watchfiles.awatch(
                *paths, watch_filter=None, debounce=50, step=10, stop_event=self._stop
            ):
                self._wake.set()
        except Exception as exc:  # no inotify here (or too many watches): the scan goes on
            log.warning("inotify unavailable (%s); scanning every %g s", exc,
                        self.config.watch_interval_s)  # fmt: skip


def _stat(path: Path) -> Fingerprint:
    try:
        st = path.stat()
    except OSError:
        return ()
    return ((path.name, st.st_size, st.st_mtime_ns),)
