"""The workbench app (``streamlit run app.py``): names its pages; each page is a file in ``views/``.

The folder is not called ``pages/``: with a ``pages/`` folder beside the entrypoint Streamlit
also runs its older folder-based navigation, and a first visit straight to a page (a link
such as ``/Gallery?dataset=...``) then got a second menu with an extra "app" entry.
"""

import re
from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent


def _number(p: Path) -> int:
    return int(re.match(r"\d+", p.name).group())


pages = [st.Page("views/0_Home.py", title="Home", icon=":material/home:", default=True)]
pages += [st.Page(f"views/{p.name}") for p in sorted(HERE.glob("views/[1-9]*_*.py"), key=_number)]
st.navigation(pages).run()
