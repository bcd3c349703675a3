"""Build hook: the console's browser assets become package data at build and install time.

pusher-js (pinned in ``clients/js/package-lock.json``, installed by ``npm ci``) and the
``clients/js`` sources are copied into ``worker/web/console/static/vendor/``, so the worker
serves its console from the installed package alone and never reads repository folders.
A wheel gets them in its build folder; an editable install (``make install``) in place.
Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
JS_CLIENT = ROOT / "clients" / "js"
#: Where the console finds them, inside the ``worker`` package.
VENDOR = Path("worker") / "web" / "console" / "static" / "vendor"
#: Each vendored file: its name under ``VENDOR`` and its source in the repository.
CONSOLE_ASSETS = {
    "pusher.min.js": JS_CLIENT / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js",
    "realtime/index.js": JS_CLIENT / "src" / "index.js",
    "realtime/http.js": JS_CLIENT / "src" / "http.js",
    "realtime/seen.js": JS_CLIENT / "src" / "seen.js",
}


class BuildWithConsoleAssets(build_py):  # type: ignore[misc]  # setuptools ships no stubs
    """``build_py`` that also copies the console's vendored assets into the package."""

    def run(self) -> None:
        """Build the Python packages, then add the assets (in place when editable)."""
        super().run()
        target = (ROOT if getattr(self, "editable_mode", False) else Path(self.build_lib)) / VENDOR
        missing = [str(source) for source in CONSOLE_ASSETS.values() if not source.is_file()]
        if missing:
            raise SystemExit(
                "console assets missing (run `npm ci --prefix clients/js` first): "
                + ", ".join(missing)
            )
        for name, source in CONSOLE_ASSETS.items():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithConsoleAssets})
