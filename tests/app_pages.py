"""Opening the app's pages in Streamlit's AppTest (no browser): shared by the app test modules."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent


def open_page(script: str, at: AppTest | None = None, **params: str) -> AppTest:
    """Run ``script`` (``app.py`` or ``views/...``) as a user opening it with these query parameters."""
    if at is None:  # (an AppTest is falsy before its first run: no `or` here)
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    if script != "app.py":
        at.switch_page(script)
    return at.run()


def assert_clean(at: AppTest, where: str = "") -> None:
    """No exception and no error box on the page."""
    assert not at.exception, (where, [e.message for e in at.exception])
    assert not at.error, (where, [e.value for e in at.error])
